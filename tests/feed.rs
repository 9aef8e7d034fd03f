//! The live feed (ARCHITECTURE.md §3, guarantees 1–3): real server, real WebSocket
//! clients, writes made with plain SQL from separate connections.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_commit_order, seed_pearl, Client, TestDb};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn an_unmodified_pearl_client_gets_studies_update_pong_refresh_and_events() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO studies (study_label) VALUES ('ONC-001'), ('ONC-002')")
        .await;
    let server = db.server().await;
    let mut pearl = Client::connect(&server, "/api/v1/ws/studies").await;

    let hello = pearl.next().await;
    assert_eq!(hello["type"], "studies_update");
    let labels: Vec<&str> = hello["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["study_label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["ONC-001", "ONC-002"]);

    pearl.send(json!({"action": "ping"})).await;
    assert_eq!(pearl.next().await, json!({"type": "pong"}));

    db.exec("INSERT INTO studies (study_label) VALUES ('ONC-003')").await;
    let created = pearl.next().await;
    assert_eq!(created["type"], "study_created");
    assert_eq!(created["data"]["study_label"], "ONC-003");
    assert!(created["timestamp"].as_str().unwrap().ends_with('Z'));
    let id = created["data"]["id"].as_i64().unwrap();

    db.exec(&format!("UPDATE studies SET study_label = 'ONC-003b' WHERE id = {id}"))
        .await;
    let updated = pearl.next().await;
    assert_eq!(updated["type"], "study_updated");
    assert_eq!(updated["data"]["study_label"], "ONC-003b");
    let changed: Vec<&str> = updated["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(changed.contains(&"study_label"), "{changed:?}");
    assert!(!changed.contains(&"id"));

    db.exec(&format!("DELETE FROM studies WHERE id = {id}")).await;
    let deleted = pearl.next().await;
    assert_eq!(deleted["type"], "study_deleted");
    assert_eq!(deleted["data"]["id"], id);
    assert!(created["seq"].as_i64() < updated["seq"].as_i64() && updated["seq"].as_i64() < deleted["seq"].as_i64());

    pearl.send(json!({"action": "refresh"})).await;
    let refreshed = pearl.next().await;
    assert_eq!(refreshed["type"], "studies_update");
    assert_eq!(refreshed["data"].as_array().unwrap().len(), 2);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn every_pearl_entity_and_every_derived_event() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut client = Client::connect(&server, "/ws").await;
    assert_eq!(client.next().await["type"], "connected");
    client.subscribe(json!({})).await;

    seed_pearl(&db).await;
    let seeded = client.events(11).await;
    assert_commit_order(&seeded);
    let kinds: Vec<&str> = seeded.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "user_created",
            "user_created",
            "study_created",
            "database_release_created",
            "reporting_effort_created",
            "reporting_effort_item_created",
            "reporting_effort_tracker_created",
            "comment_created",
            "package_created",
            "package_item_created",
            "text_element_created"
        ]
    );
    let comment = &seeded[7];
    assert_eq!(comment["data"]["comment_text"], "check N");
    assert_eq!(comment["unresolved_count"], 1);
    assert_eq!(seeded[6]["data"]["production_programmer_id"], 1);

    // A reply: the row event (replies do not count), then comment_replied in PEARL's shape.
    db.exec(
        "INSERT INTO tracker_comments (tracker_id, user_id, parent_comment_id, comment_text) VALUES (1, 2, 1, 'done?')",
    )
    .await;
    let reply = client.events(2).await;
    assert_eq!(reply[0]["type"], "comment_created");
    assert_eq!(reply[0]["unresolved_count"], 1);
    assert_eq!(reply[1]["type"], "comment_replied");
    assert_eq!(reply[1]["data"]["parent_comment_id"], 1);
    assert_eq!(reply[1]["data"]["reply"]["username"], "ben");
    assert_eq!(reply[1]["derived"], true);
    assert_eq!(reply[1]["seq"], reply[0]["seq"]);

    // Resolving: comment_updated, then comment_resolved; the count drops.
    db.exec(
        "UPDATE tracker_comments SET is_resolved = true, resolved_by_user_id = 2, resolved_at = now() WHERE id = 1",
    )
    .await;
    let resolved = client.events(2).await;
    assert_eq!(resolved[0]["type"], "comment_updated");
    assert_eq!(resolved[0]["unresolved_count"], 0);
    assert_eq!(resolved[1]["type"], "comment_resolved");
    assert_eq!(
        resolved[1]["data"],
        json!({"tracker_id": 1, "comment_id": 1, "unresolved_count": 0})
    );

    // A new QC programmer: tracker updated, then tracker_assignment_updated.
    db.exec("UPDATE reporting_effort_item_tracker SET qc_programmer_id = 2 WHERE id = 1")
        .await;
    let assigned = client.events(2).await;
    assert_eq!(assigned[0]["type"], "reporting_effort_tracker_updated");
    assert_eq!(assigned[1]["type"], "tracker_assignment_updated");
    assert_eq!(assigned[1]["data"]["assignment_type"], "qc");
    assert_eq!(assigned[1]["data"]["programmer_id"], 2);
    assert_eq!(assigned[1]["data"]["tracker"]["qc_programmer_id"], 2);
    // A status change is not an assignment.
    db.exec("UPDATE reporting_effort_item_tracker SET production_status = 'completed' WHERE id = 1")
        .await;
    let status = client.events(1).await;
    assert_eq!(status[0]["type"], "reporting_effort_tracker_updated");

    // Updates and deletes of every entity, each with its prefix.
    for (table, prefix, set) in [
        ("users", "user", "department = 'Stats'"),
        (
            "database_releases",
            "database_release",
            "database_release_label = 'DBL-2'",
        ),
        (
            "reporting_efforts",
            "reporting_effort",
            "database_release_label = 'DBL-2'",
        ),
        ("reporting_effort_items", "reporting_effort_item", "is_active = false"),
        ("packages", "package", "package_name = 'core2'"),
        ("package_items", "package_item", "item_code = 'l_ae2'"),
        ("text_elements", "text_element", "label = 'Demography'"),
    ] {
        db.exec(&format!("UPDATE {table} SET {set} WHERE id = 1")).await;
        let e = client.events(1).await;
        assert_eq!(e[0]["type"], format!("{prefix}_updated"));
        assert_eq!(e[0]["table"], table);
    }
    db.exec("DELETE FROM packages WHERE id = 1").await;
    let gone = client.events(2).await;
    // The parent first, then what the cascade removed, in one transaction.
    assert_eq!(gone[0]["type"], "package_deleted");
    assert_eq!(gone[0]["data"]["id"], 1);
    assert_eq!(gone[1]["type"], "package_item_deleted");
    assert_eq!(gone[1]["seq"], gone[0]["seq"]);

    // Deletes of every remaining entity, children first.
    for (table, prefix) in [
        ("tracker_comments", "comment"),
        ("reporting_effort_item_tracker", "reporting_effort_tracker"),
        ("reporting_effort_items", "reporting_effort_item"),
        ("reporting_efforts", "reporting_effort"),
        ("database_releases", "database_release"),
        ("text_elements", "text_element"),
    ] {
        let rows = db.scalar_i64(&format!("SELECT count(*) FROM {table}")).await as usize;
        assert!(rows > 0);
        db.exec(&format!("DELETE FROM {table}")).await;
        for e in client.events(rows).await {
            assert_eq!(e["type"], format!("{prefix}_deleted"));
            assert!(e["data"]["id"].is_i64());
        }
    }
    db.exec("DELETE FROM users WHERE id = 2").await;
    assert_eq!(client.events(1).await[0]["type"], "user_deleted");

    // SET CONSTRAINTS ALL IMMEDIATE: the seq is taken early; both rows still arrive, in order.
    db.exec(
        "BEGIN; SET CONSTRAINTS ALL IMMEDIATE;
         INSERT INTO text_elements (type, label) VALUES ('title', 'i1');
         INSERT INTO text_elements (type, label) VALUES ('title', 'i2'); COMMIT;",
    )
    .await;
    let immediate = client.events(2).await;
    assert_eq!(
        (
            immediate[0]["data"]["label"].as_str(),
            immediate[1]["data"]["label"].as_str()
        ),
        (Some("i1"), Some("i2"))
    );
    assert_eq!(immediate[1]["tx_size"], 2);
    assert_commit_order(&immediate);

    // A column added by a DBA: said first, kept in data, and the row is still typed.
    db.exec("ALTER TABLE studies ADD COLUMN phase text; UPDATE studies SET phase = 'III' WHERE id = 1")
        .await;
    let drifted = client.events(2).await;
    assert_eq!(drifted[0]["type"], "study_schema_changed");
    assert_eq!(drifted[0]["data"]["change"], "add_column");
    let drifted = &drifted[1..];
    assert_eq!(drifted[0]["type"], "study_updated");
    assert_eq!(drifted[0]["data"]["phase"], "III");
    assert_eq!(server.state.metrics.events_untyped.get(), 0);
    // A column pgfeed needs renamed away: still delivered (generic), and counted.
    db.exec("ALTER TABLE studies RENAME COLUMN study_label TO label; UPDATE studies SET label = 'X' WHERE id = 1")
        .await;
    let drifted = client.events(2).await;
    assert_eq!(drifted[0]["data"]["change"], "rename_column");
    let drifted = &drifted[1..];
    assert_eq!(drifted[0]["type"], "study_updated");
    assert_eq!(drifted[0]["data"]["label"], "X");
    assert_eq!(server.state.metrics.events_untyped.get(), 1, "counted once per change");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn subscriptions_and_where_filters_give_each_client_exactly_its_events() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut studies = Client::connect(&server, "/ws").await;
    let mut comments_on_2 = Client::connect(&server, "/ws").await;
    let mut only_deletes = Client::connect(&server, "/ws").await;
    let mut nothing = Client::connect(&server, "/ws").await;
    for c in [&mut studies, &mut comments_on_2, &mut only_deletes, &mut nothing] {
        c.next_of("connected").await;
    }
    studies.subscribe(json!({"tables": ["studies"]})).await;
    comments_on_2
        .subscribe(json!({"tables": ["tracker_comments"], "where": {"tracker_id": [2, 3], "is_resolved": false}}))
        .await;
    only_deletes
        .subscribe(json!({"types": ["study_deleted", "user_deleted"]}))
        .await;

    seed_pearl(&db).await;
    db.exec(
        "INSERT INTO reporting_effort_items (id, reporting_effort_id, item_type, item_subtype, item_code) VALUES (2, 1, 'TLF', 'Table', 't_ae');
         INSERT INTO reporting_effort_item_tracker (id, reporting_effort_item_id) VALUES (2, 2);",
    )
    .await;
    db.exec(
        "INSERT INTO tracker_comments (tracker_id, user_id, comment_text) VALUES (2, 1, 'on two'), (1, 1, 'on one')",
    )
    .await;
    db.exec(
        "INSERT INTO tracker_comments (tracker_id, user_id, comment_text, is_resolved) VALUES (2, 1, 'resolved already', true)",
    )
    .await;
    db.exec("INSERT INTO studies (study_label) VALUES ('ONC-009')").await;
    db.exec("DELETE FROM users WHERE id = 2").await;
    db.exec("INSERT INTO studies (study_label) VALUES ('last')").await;

    let s = studies.events(2).await;
    assert_eq!(
        (
            s[0]["data"]["study_label"].as_str(),
            s[1]["data"]["study_label"].as_str()
        ),
        (Some("ONC-001"), Some("ONC-009"))
    );
    assert_eq!(studies.events(1).await[0]["data"]["study_label"], "last");

    let c = comments_on_2.events(1).await;
    assert_eq!(c[0]["data"]["comment_text"], "on two");
    let d = only_deletes.events(1).await;
    assert_eq!(d[0]["type"], "user_deleted");
    assert_eq!(d[0]["data"]["id"], 2);

    // Nothing else arrived: after a marker write, the next message is the marker.
    db.exec("INSERT INTO tracker_comments (tracker_id, user_id, comment_text) VALUES (2, 1, 'marker')")
        .await;
    assert_eq!(comments_on_2.events(1).await[0]["data"]["comment_text"], "marker");
    db.exec("DELETE FROM studies WHERE study_label = 'last'").await;
    assert_eq!(only_deletes.events(1).await[0]["type"], "study_deleted");
    assert!(
        nothing.next_within(Duration::from_millis(300)).await.is_none(),
        "an unsubscribed client got events"
    );

    // unsubscribe stops the flow.
    studies.send(json!({"action": "unsubscribe"})).await;
    studies.next_of("unsubscribed").await;
    db.exec("INSERT INTO studies (study_label) VALUES ('unseen')").await;
    assert!(studies.next_within(Duration::from_millis(300)).await.is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn snapshot_handoff_is_exact_while_writers_run() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO studies (study_label) SELECT 'S' || g FROM generate_series(1, 200) g")
        .await;
    let server = db.server().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pool = db.pool.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    // inserts, updates and deletes, with other tables mixed in
                    let sql = match i % 4 {
                        0 => format!("INSERT INTO studies (study_label) VALUES ('w{w}-{i}')"),
                        1 => format!("UPDATE studies SET study_label = study_label || '+' WHERE id = (SELECT min(id) + {w} FROM studies)"),
                        2 => format!("INSERT INTO text_elements (type, label) VALUES ('title', 'w{w}-{i}')"),
                        _ => format!("DELETE FROM studies WHERE id = (SELECT max(id) - {w} FROM studies)"),
                    };
                    sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    let mut client = Client::subscribed(&server, json!({"tables": ["studies"]})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.send(json!({"action": "snapshot", "table": "studies"})).await;
    // Events before the snapshot reply belong to before it; rebuild from the snapshot on.
    let snapshot = client.next_of("snapshot").await;
    let watermark = snapshot["seq"].as_i64().unwrap();
    let mut rows = common::rows_by_id(&snapshot);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    // A final marker write tells us when everything has arrived.
    db.exec("INSERT INTO studies (study_label) VALUES ('marker')").await;
    let applied = common::apply_until_marker(&mut client, &mut rows, watermark).await;
    assert!(applied > 1, "the writers should have run during the handoff");
    common::assert_rows_are_studies(&db, &rows).await;
    let table_len = rows.len();

    // The HTTP snapshot carries the same watermark semantics.
    let (status, body) = common::http_get(&server, "/api/v1/studies").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["rows"].as_array().unwrap().len(), table_len);
    assert_eq!(
        body["seq"].as_i64().unwrap(),
        db.scalar_i64("SELECT pgfeed.head()").await
    );
    let (status, _) = common::http_get(&server, "/api/v1/pg_authid").await;
    assert_eq!(status, 404, "only tracked tables are served");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn five_thousand_events_from_eight_writers_reach_three_clients_identically() {
    eight_writers_reach_three_clients_identically(pgfeed::server::Settings::default()).await;
}

/// The tick interval changes how many transactions a tick sequences at once,
/// never what arrives: ticks back to back, and ticks 25 ms apart under load.
#[tokio::test]
async fn the_same_holds_with_ticks_back_to_back_and_with_ticks_spaced_out() {
    for tick_interval in [Duration::ZERO, Duration::from_millis(25)] {
        eight_writers_reach_three_clients_identically(pgfeed::server::Settings {
            tick_interval,
            ..Default::default()
        })
        .await;
    }
}

/// Under a steady stream of commits, a tick that found work is followed by
/// the next only after the interval: one commit every 50 ms for a second,
/// with ticks 300 ms apart, takes a handful of ticks (each busy one, and at
/// most two empty looks around each wait for writers), where ticks back to
/// back take about three per commit.
#[tokio::test]
async fn under_steady_writes_busy_ticks_are_the_tick_interval_apart() {
    let db = TestDb::new().await;
    let interval = Duration::from_millis(300);
    let server = db
        .server_with(pgfeed::server::Settings {
            tick_interval: interval,
            ..Default::default()
        })
        .await;
    let mut client = Client::subscribed(&server, json!({"tables": ["studies"]})).await;
    let ticks = || server.state.metrics.ticks.get();
    let (before, started) = (ticks(), std::time::Instant::now());
    for i in 0..20 {
        db.exec(&format!("INSERT INTO studies (study_label) VALUES ('steady-{i}')"))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = client.events(20).await;
    assert_commit_order(&events);
    let (taken, elapsed) = (ticks() - before, started.elapsed());
    // Busy ticks: one per interval and one more; empty ones: two per busy one
    // at most; and a quiet check each 3 s.
    let busy = (elapsed.as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + 1;
    let bound = 3 * busy + elapsed.as_secs() / 3 + 1;
    assert!(
        taken <= bound,
        "{taken} ticks in {elapsed:?} at {interval:?} apart: at most {bound} expected"
    );
    server.stop().await.unwrap();
}

async fn eight_writers_reach_three_clients_identically(settings: pgfeed::server::Settings) {
    let db = TestDb::new().await;
    let server = db.server_with(settings).await;
    let mut clients = common::subscribed_to_all(&server, 3).await;
    // 8 writers × 500 transactions, a quarter of them two rows: 5,000 events.
    assert_eq!(common::Writers::start(&db.url, 8, 500).finish().await, 4000);
    let expected = 5000;
    let mut streams = Vec::new();
    for c in clients.iter_mut() {
        let events = c.events(expected).await;
        assert_commit_order(&events);
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        let mut distinct = seqs.clone();
        distinct.dedup();
        assert!(distinct.windows(2).all(|w| w[1] == w[0] + 1), "gap in the seq stream");
        assert_eq!(distinct.len(), 4000);
        streams.push(
            events
                .iter()
                .map(|e| (e["seq"].as_i64().unwrap(), e["data"]["label"].clone(), e["op"].clone()))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1], streams[2]);
    for c in clients.iter_mut() {
        assert!(
            c.next_within(Duration::from_millis(300)).await.is_none(),
            "a duplicate arrived"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_one_megabyte_row_arrives_whole_and_a_fifty_thousand_row_update_arrives_in_order() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO text_elements (type, label) SELECT 'title', 'T' || g FROM generate_series(1, 50000) g")
        .await;
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["text_elements"]})).await;

    db.exec("INSERT INTO text_elements (type, label) SELECT 'footnote', repeat('0123456789abcdef', 65536)")
        .await;
    let big = client.events(1).await;
    assert_eq!(big[0]["data"]["label"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(
        big[0]["data"]["label"].as_str().unwrap(),
        "0123456789abcdef".repeat(65536)
    );

    db.exec("UPDATE text_elements SET label = label || '!' WHERE type = 'title'")
        .await;
    let bulk = client.events(50000).await;
    assert_commit_order(&bulk);
    assert!(bulk
        .iter()
        .all(|e| e["seq"] == bulk[0]["seq"] && e["tx_size"] == 50000 && e["type"] == "text_element_updated"));
    assert_eq!(bulk[49999]["tx_index"], 49999);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_the_server_keeps_serving() {
    let db = TestDb::new().await;
    let settings = pgfeed::server::Settings {
        limits: pgfeed::http::Limits {
            max_frame: 16 * 1024,
            ..Default::default()
        },
        ..Default::default()
    };
    let server = db.server_with(settings).await;
    let mut bystander = Client::subscribed(&server, json!({"tables": ["studies"]})).await;

    let mut client = Client::connect(&server, "/ws").await;
    client.next_of("connected").await;
    for (input, expect) in [
        ("{not json", "cannot read"),
        (r#"{"action":"fly"}"#, "unknown action"),
        (r#"{"no_action":1}"#, "names no action"),
        (r#"{"action":"subscribe","tables":"studies"}"#, "invalid type"),
        (r#"{"action":"resume","after":"x"}"#, "invalid position"),
        ("[]", "cannot read"),
    ] {
        client.send_raw(Message::Text(input.into())).await;
        let reply = client.next().await;
        assert_eq!(reply["type"], "error", "{input} → {reply}");
        assert_eq!(reply["code"], "bad_request");
        assert!(reply["message"].as_str().unwrap().contains(expect), "{input} → {reply}");
    }
    client
        .send(json!({"action": "snapshot", "table": "no_such_table"}))
        .await;
    assert_eq!(client.next().await["code"], "not_found");
    client
        .send(json!({"action": "snapshot", "table": "studies; DROP TABLE studies"}))
        .await;
    assert_eq!(client.next().await["code"], "not_found");
    client.send_raw(Message::Binary(vec![0u8, 1, 2].into())).await;
    let reply = client.next().await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    client.send(json!({"action": "ping"})).await;
    assert_eq!(
        client.next().await["type"],
        "pong",
        "the connection lives on after bad input"
    );

    // Too big: 1009, and only this connection is closed.
    client.send_raw(Message::Text("x".repeat(64 * 1024).into())).await;
    let closed = client.next().await;
    assert_eq!(closed["close"], 1009, "{closed}");

    db.exec("INSERT INTO studies (study_label) VALUES ('still here')").await;
    assert_eq!(bystander.events(1).await[0]["data"]["study_label"], "still here");
    let (status, body) = common::http_get(&server, "/metrics").await;
    assert_eq!(status, 200);
    // OpenMetrics text from the registry, the database's figures read at scrape time.
    let value = |name: &str| -> f64 {
        let line = body
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("pgfeed_client_errors_total") >= 8.0);
    assert!(value("pgfeed_bytes_sent_total") > 0.0);
    assert!(value("pgfeed_events_published_total") >= 1.0);
    assert!(value("pgfeed_head_seq") >= 1.0);
    assert_eq!(value("pgfeed_ws_connections_open"), 1.0, "the bystander is still open");
    assert_eq!(value(r#"pgfeed_connections_open{endpoint="ws"}"#), 1.0, "{body}");
    assert!(value("pgfeed_events_delivered_total") >= 1.0, "the bystander's event");
    assert_eq!(value("pgfeed_log_oldest_seq"), 0.0);
    assert!(value("pgfeed_notification_queue_usage_permille") >= 0.0);
    assert!(body.contains("pgfeed_log_rows"));
    assert!(body.trim_end().ends_with("# EOF"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn serve_with_embedded_postgres_sends_1001_on_sigterm_and_exits_0() {
    let dir = common::scratch_dir("serve");
    let served = common::Served::spawn(&[("PGFEED_DATA_DIR", dir.to_str().unwrap())]).await;
    let mut child = served.child;
    let psql = served.psql.expect("serve prints the psql command");
    let port = psql.split(" -p ").nth(1).unwrap().split_whitespace().next().unwrap();
    let mut client = Client::connect_to(&served.addr, "/ws").await;
    client.next_of("connected").await;
    client.subscribe(json!({})).await;

    // A write from an ordinary client of the printed database arrives.
    let writer = sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:{port}/pgfeed"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO studies (study_label) VALUES ('via psql')")
        .execute(&writer)
        .await
        .unwrap();
    assert_eq!(client.events(1).await[0]["data"]["study_label"], "via psql");
    // The demo is PEARL's real schema, with the preset tracked.
    let tracked: Vec<(String, String)> = sqlx::query_as("SELECT table_name, prefix FROM pgfeed.tracked")
        .fetch_all(&writer)
        .await
        .unwrap();
    assert_eq!(tracked.len(), 10, "{tracked:?}");
    assert!(tracked.contains(&(
        "reporting_effort_item_tracker".into(),
        "reporting_effort_tracker".into()
    )));
    sqlx::raw_sql(
        "INSERT INTO users (username) VALUES ('ana');
         INSERT INTO database_releases (study_id, database_release_label) SELECT id, 'DBL' FROM studies;
         INSERT INTO reporting_efforts (study_id, database_release_id, database_release_label)
              SELECT study_id, id, 'RE' FROM database_releases;
         INSERT INTO reporting_effort_items (reporting_effort_id, item_type, item_subtype, item_code)
              SELECT id, 'TLF', 'Table', 't_dm' FROM reporting_efforts;
         INSERT INTO reporting_effort_item_tracker (reporting_effort_item_id) SELECT id FROM reporting_effort_items;",
    )
    .execute(&writer)
    .await
    .unwrap();
    let kinds: Vec<Value> = client.events(5).await.into_iter().map(|e| e["type"].clone()).collect();
    assert_eq!(kinds.last().unwrap(), "reporting_effort_tracker_created", "{kinds:?}");
    writer.close().await;

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(client.next().await["close"], 1001);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exited with {status}");
}

#[tokio::test]
async fn heartbeats_drop_a_silent_peer_and_health_endpoints_answer() {
    let db = TestDb::new().await;
    let settings = pgfeed::server::Settings {
        limits: pgfeed::http::Limits {
            heartbeat: Duration::from_millis(200),
            ..Default::default()
        },
        ..Default::default()
    };
    let server = db.server_with(settings).await;
    assert_eq!(common::http_get(&server, "/healthz").await.0, 200);
    assert_eq!(common::http_get(&server, "/readyz").await.0, 200);

    // A live client answers pings (its library does) and stays connected.
    let mut live = Client::connect(&server, "/ws").await;
    live.next_of("connected").await;
    // A silent peer: connected, then never reads, so it never answers a ping.
    let silent = Client::connect(&server, "/ws").await;
    assert_eq!(server.state.metrics.ws_connections.get(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.state.metrics.ws_connections.get() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the silent peer was never dropped"
        );
        // Keep the live client reading so its library answers the pings.
        let _ = live.next_within(Duration::from_millis(50)).await;
    }
    live.send(json!({"action": "ping"})).await;
    assert_eq!(live.next_of("pong").await["type"], "pong");
    drop(silent);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_connects_before_the_listener_is_ready_misses_nothing() {
    let db = TestDb::new().await;
    for i in 0..5 {
        db.exec(&format!(
            "INSERT INTO studies (study_label) VALUES ('before start {i}')"
        ))
        .await;
    }
    // No wait for readiness: the client and the writes race the listener's start.
    let server = pgfeed::server::start(&db.url, Default::default()).await.unwrap();
    let mut client = Client::connect(&server, "/ws").await;
    let connected = client.next_of("connected").await;
    assert_eq!(
        connected["seq"], 5,
        "a client starts where the feed starts: the head when the server started"
    );
    client.subscribe(json!({})).await;
    for i in 0..20 {
        db.exec(&format!("INSERT INTO studies (study_label) VALUES ('early {i}')"))
            .await;
    }
    let events = common::read_until_marker(&db, &mut client).await;
    assert_eq!(events.len(), 21);
    common::assert_matches_log(&db, &events, 5).await;
    server.stop().await.unwrap();
}
