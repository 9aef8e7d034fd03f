//! DBAs run migrations on tracked tables (ARCHITECTURE.md §2): column
//! changes, renames, drops and partitions reach clients as `schema_changed`
//! events at their place in the stream, subscriptions follow a renamed table,
//! partitioned tables are captured under their own name, and a live
//! installation is upgraded while writers and clients run. Every test
//! compares what a client received with the log.

mod common;

use std::time::Duration;

use common::{assert_matches_log, Client, TestDb, Writers};
use pgfeed::db::migrate::{MigrationSet, CAPTURE};
use pgfeed::server::Settings;
use serde_json::{json, Value};

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn column_names(schema_changed: &Value) -> Vec<&str> {
    schema_changed["data"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn column_changes_are_events_at_their_place_in_the_stream() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE equipment (id serial PRIMARY KEY, name text, kind text, secret text);
         SELECT pgfeed.track('equipment', 'equipment', ARRAY['secret']);",
    )
    .await;
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["equipment"]})).await;
    // Rows, then one DDL per transaction, each with rows after it; one
    // transaction holds a DDL between two rows.
    for sql in [
        "INSERT INTO equipment (name, kind, secret) VALUES ('scale', 'balance', 's1')",
        "ALTER TABLE equipment ADD COLUMN serial text",
        "INSERT INTO equipment (name, kind, serial, secret) VALUES ('pump', 'fluidics', 'P-1', 's2')",
        "ALTER TABLE equipment RENAME COLUMN kind TO model",
        "BEGIN;
         UPDATE equipment SET serial = '7' WHERE name = 'pump';
         ALTER TABLE equipment ALTER COLUMN serial TYPE integer USING serial::integer;
         UPDATE equipment SET serial = serial + 1 WHERE name = 'pump';
         COMMIT;",
        "ALTER TABLE equipment DROP COLUMN name, ALTER COLUMN model SET NOT NULL",
        "ALTER TABLE equipment RENAME COLUMN secret TO hidden",
        "ALTER TABLE equipment ADD CONSTRAINT model_known CHECK (model <> '')",
        "INSERT INTO equipment (model, serial, hidden) VALUES ('centrifuge', 9, 's3')",
    ] {
        db.exec(sql).await;
    }
    let events = client.events(9).await;
    assert_eq!(
        kinds(&events),
        [
            "equipment_created",
            "equipment_schema_changed",
            "equipment_created",
            "equipment_schema_changed",
            "equipment_updated",
            "equipment_schema_changed",
            "equipment_updated",
            "equipment_schema_changed",
            "equipment_created",
        ],
        "a renamed excluded column and a constraint change nothing a client sees"
    );
    let changes: Vec<&Value> = events.iter().filter(|e| e["op"] == "SCHEMA").collect();
    assert_eq!(changes[0]["data"]["change"], "add_column");
    assert_eq!(
        changes[0]["data"]["changes"],
        json!([{"change": "add_column", "column": "serial"}])
    );
    assert_eq!(
        column_names(changes[0]),
        ["id", "name", "kind", "serial"],
        "never the excluded column"
    );
    assert_eq!(
        changes[1]["data"]["changes"],
        json!([{"change": "rename_column", "column": "model", "from": "kind"}])
    );
    assert_eq!(
        changes[2]["data"]["changes"],
        json!([{"change": "alter_type", "column": "serial", "from": "text", "to": "integer"}])
    );
    assert_eq!(changes[2]["table"], "equipment");
    assert_eq!(
        changes[3]["data"]["changes"],
        json!([{"change": "drop_column", "column": "name"}, {"change": "set_not_null", "column": "model"}])
    );
    assert_eq!(column_names(changes[3]), ["id", "model", "serial"]);
    // The DDL inside a transaction is at its place among that transaction's rows.
    assert_eq!(events[4]["seq"], events[6]["seq"]);
    assert_eq!(
        (events[5]["tx_index"].as_i64(), events[5]["tx_size"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(events[6]["data"]["serial"], 8);
    // Each row has the shape the last schema change announced; the renamed
    // excluded column stays excluded under its new name.
    let last = events.last().unwrap();
    let mut keys: Vec<&str> = last["data"].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["id", "model", "serial"]);
    assert_matches_log(&db, &events, 0).await;
    let exclude: Vec<String> = sqlx::query_scalar("SELECT exclude FROM pgfeed.tracked WHERE table_name = 'equipment'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(exclude, ["hidden"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_subscription_follows_its_table_through_a_rename() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE equipment (id serial PRIMARY KEY, name text);
         SELECT pgfeed.track('equipment', 'equipment');
         INSERT INTO equipment (name) VALUES ('scale');",
    )
    .await;
    let server = db.server().await;
    let mut before = Client::connect(&server, "/ws").await;
    before.next_of("connected").await;
    let start = before.subscribe(json!({"tables": ["equipment"]})).await["position"].clone();
    let start_seq = pgfeed::protocol::Position::parse(start.as_str().unwrap()).unwrap().seq;
    db.exec("INSERT INTO equipment (name) VALUES ('pump')").await;
    db.exec("ALTER TABLE equipment RENAME TO instruments").await;
    db.exec("INSERT INTO instruments (name) VALUES ('centrifuge')").await;
    let events = before.events(3).await;
    assert_eq!(
        kinds(&events),
        ["equipment_created", "equipment_schema_changed", "equipment_created"]
    );
    assert_eq!(events[0]["table"], "equipment");
    assert_eq!(events[1]["table"], "instruments", "events carry the current name");
    assert_eq!(events[1]["data"]["change"], "rename_table");
    assert_eq!(events[1]["data"]["previous_table"], "equipment");
    assert_eq!(events[2]["table"], "instruments");
    assert_eq!(events[2]["data"]["name"], "centrifuge");
    assert_matches_log(&db, &events, start_seq).await;

    // Subscribed afterwards by the old name: the table it names now.
    let mut after = Client::subscribed(&server, json!({"tables": ["equipment"]})).await;
    // Resumed from before the rename by the old name: the replay follows it.
    let mut resumed = Client::connect(&server, "/ws").await;
    resumed.next_of("connected").await;
    resumed
        .send(json!({"action": "subscribe", "tables": ["equipment"], "after": start}))
        .await;
    resumed.next_of("subscribed").await;
    // A snapshot by the old name is the renamed table's.
    after.send(json!({"action": "snapshot", "table": "equipment"})).await;
    let snapshot = after.next_of("snapshot").await;
    assert_eq!(snapshot["rows"].as_array().unwrap().len(), 3, "{snapshot}");

    db.exec("INSERT INTO instruments (name) VALUES ('balance')").await;
    let live = after.events(1).await;
    assert_eq!(
        (live[0]["table"].as_str(), live[0]["data"]["name"].as_str()),
        (Some("instruments"), Some("balance"))
    );
    let replayed = resumed.events(4).await;
    assert_eq!(
        replayed.iter().map(|e| e["data"]["name"].as_str()).collect::<Vec<_>>(),
        [Some("pump"), None, Some("centrifuge"), Some("balance")]
    );
    server.stop().await.unwrap();

    // A server started after the rename knows it too.
    let server = db.server().await;
    let mut fresh = Client::subscribed(&server, json!({"tables": ["equipment"]})).await;
    db.exec("INSERT INTO instruments (name) VALUES ('pipette')").await;
    assert_eq!(fresh.events(1).await[0]["data"]["name"], "pipette");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_table_is_announced_at_its_place_in_the_stream() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE gauges (id serial PRIMARY KEY, reading int);
         SELECT pgfeed.track('gauges', 'gauge');",
    )
    .await;
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["gauges"]})).await;
    db.exec("INSERT INTO gauges (reading) VALUES (1)").await;
    db.exec("DROP TABLE gauges").await;
    let events = client.events(2).await;
    assert_eq!(kinds(&events), ["gauge_created", "gauge_schema_changed"]);
    assert_eq!(events[1]["data"]["change"], "drop_table");
    assert_eq!(events[1]["data"]["columns"], json!([]));
    assert_matches_log(&db, &events, 0).await;
    let (status, body) = common::http_get(&server, "/api/v1").await;
    assert_eq!(status, 200, "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_partitioned_table_is_captured_under_its_own_name() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE measurements (id bigint, taken date NOT NULL, value int) PARTITION BY RANGE (taken);
         CREATE TABLE measurements_2026_11 PARTITION OF measurements FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
         CREATE TABLE measurements_2026_12 PARTITION OF measurements FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');",
    )
    .await;
    // A partition alone is refused, naming the table to track.
    let refused = pgfeed::install::track(&db.pool, "measurements_2026_11", "m", &[])
        .await
        .unwrap_err();
    let message = format!("{refused:#}");
    assert!(message.contains("partition of measurements"), "{message}");
    pgfeed::install::track(&db.pool, "measurements", "measurement", &[])
        .await
        .unwrap();
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["measurements"]})).await;
    db.exec(
        "INSERT INTO measurements VALUES (1, '2026-11-05', 10), (2, '2026-12-05', 20);
         INSERT INTO measurements_2026_12 VALUES (3, '2026-12-06', 30);
         UPDATE measurements SET taken = '2026-12-07' WHERE id = 1;
         CREATE TABLE measurements_2027 PARTITION OF measurements FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         INSERT INTO measurements VALUES (4, '2027-01-02', 40);
         CREATE TABLE measurements_old (id bigint, taken date NOT NULL, value int);
         INSERT INTO measurements_old VALUES (0, '2026-10-10', 0);
         ALTER TABLE measurements ATTACH PARTITION measurements_old FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
         INSERT INTO measurements VALUES (5, '2026-10-11', 50);
         ALTER TABLE measurements DETACH PARTITION measurements_2026_11;
         DROP TABLE measurements_2027;
         TRUNCATE measurements;",
    )
    .await;
    let events = client.events(11).await;
    assert_eq!(
        kinds(&events),
        [
            "measurement_created",
            "measurement_created",
            "measurement_created",
            // moved between partitions: a delete from one and an insert into the other
            "measurement_deleted",
            "measurement_created",
            "measurement_created",
            "measurement_schema_changed",
            "measurement_created",
            "measurement_schema_changed",
            "measurement_schema_changed",
            "measurement_truncated",
        ]
    );
    assert!(events.iter().all(|e| e["table"] == "measurements"), "{events:?}");
    let changes: Vec<&Value> = events.iter().filter(|e| e["op"] == "SCHEMA").collect();
    assert_eq!(
        changes[0]["data"]["changes"],
        json!([{"change": "attach_partition", "partition": "measurements_old"}]),
        "the rows an attached partition brings are not events: the client re-reads"
    );
    assert_eq!(changes[1]["data"]["change"], "detach_partition");
    assert_eq!(
        changes[2]["data"]["changes"],
        json!([{"change": "drop_partition", "partition": "measurements_2027"}])
    );
    assert_matches_log(&db, &events, 0).await;
    let state: Vec<(String, String)> = sqlx::query_as("SELECT table_name, trigger_state FROM pgfeed.capture_state()")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert!(state.contains(&("measurements".into(), "enabled".into())), "{state:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_disabled_partition_shows_as_capture_off() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE readings (id bigint, at date NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE readings_a PARTITION OF readings FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         SELECT pgfeed.track('readings', 'reading');
         ALTER TABLE readings_a DISABLE TRIGGER pgfeed_capture;",
    )
    .await;
    let off = pgfeed::install::status::read(&db.pool).await.unwrap();
    let readings = off.tables.iter().find(|t| t.table == "readings").unwrap();
    assert_eq!(readings.trigger, "disabled");
}

#[tokio::test]
async fn pearl_clients_reload_on_a_schema_change_and_typed_rows_survive_added_columns() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut general = Client::subscribed(&server, json!({"tables": ["text_elements"]})).await;
    let mut pearl = Client::connect(&server, "/api/v1/ws/studies").await;
    db.exec("ALTER TABLE text_elements ADD COLUMN reviewed boolean NOT NULL DEFAULT false")
        .await;
    let reload = pearl.next_of("refresh_needed").await;
    assert_eq!(
        reload["data"],
        json!({"reason": "schema_changed", "table": "text_elements"})
    );
    db.exec("INSERT INTO text_elements (type, label) VALUES ('title', 'Table 1')")
        .await;
    let created = pearl.next_of("text_element_created").await;
    assert_eq!(created["data"]["reviewed"], false);
    assert_eq!(
        server.state.metrics.events_untyped.get(),
        0,
        "an added column still fits"
    );

    // A column PEARL's type needs is dropped: the rows still go out, counted.
    db.exec("ALTER TABLE text_elements DROP COLUMN label").await;
    db.exec("INSERT INTO text_elements (type) VALUES ('footnote')").await;
    let events = general.events(4).await;
    assert_eq!(
        kinds(&events),
        [
            "text_element_schema_changed",
            "text_element_created",
            "text_element_schema_changed",
            "text_element_created"
        ]
    );
    assert!(events[3]["data"].get("label").is_none());
    assert_eq!(server.state.metrics.events_untyped.get(), 1);
    assert_matches_log(&db, &events, 0).await;
    server.stop().await.unwrap();
}

/// The previous release: every capture migration before this release's.
static PREVIOUS_RELEASE: MigrationSet = MigrationSet {
    name: "capture",
    migrations: CAPTURE.migrations.split_at(10).0,
};

#[tokio::test]
async fn migrate_upgrades_a_live_installation() {
    let db = TestDb::pearl_app().await;
    PREVIOUS_RELEASE.apply(&db.pool).await.unwrap();
    pgfeed::install::track_preset(&db.pool).await.unwrap();
    // A server of this release serving the previous release's schema, as
    // during a rolling upgrade; writers and a client running throughout.
    let server = db
        .server_with(Settings {
            migrate: false,
            ..Settings::default()
        })
        .await;
    let mut client = Client::subscribed(&server, json!({"tables": ["text_elements", "studies"]})).await;
    let writers = Writers::start(&db.url, 3, usize::MAX);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applied = pgfeed::install::migrate(&db.pool, false).await.unwrap();
    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        CAPTURE.migrations[10..].iter().map(|m| m.version).collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // What this release adds works on the upgraded installation.
    db.exec("ALTER TABLE text_elements ADD COLUMN reviewed boolean").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = writers.stop().await;
    assert!(written > 10, "the writers kept writing: {written}");
    let events = common::read_until_marker(&db, &mut client).await;
    assert_matches_log(&db, &events, 0).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "text_element_schema_changed")
            .count(),
        1
    );
    server.stop().await.unwrap();
}
