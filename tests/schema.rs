//! DBAs change tracked tables (ARCHITECTURE.md §2): a dropped tracked table is
//! untracked in the same transaction, and nothing that lists tracked tables
//! breaks on one that no longer exists.

mod common;

use common::{Client, TestDb};
use pgfeed::install::Untracked;
use serde_json::{json, Value};

async fn tracked(db: &TestDb) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT table_name FROM pgfeed.tracked")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dropped_table_is_untracked_and_its_events_stay_replayable() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE SCHEMA lab; CREATE TABLE lab.equipment (id serial PRIMARY KEY, name text);
         SELECT pgfeed.track('lab.equipment', 'equipment');",
    )
    .await;
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["lab.equipment"]})).await;
    db.exec("INSERT INTO lab.equipment (name) VALUES ('scale')").await;
    let created = client.events(1).await.remove(0);
    assert_eq!(created["type"], "equipment_created");
    assert!(tracked(&db).await.contains(&Some("lab.equipment".into())));

    db.exec("BEGIN; DROP TABLE lab.equipment; COMMIT;").await;
    let names = tracked(&db).await;
    assert!(names.iter().all(Option::is_some), "no null name: {names:?}");
    assert!(!names.contains(&Some("lab.equipment".into())), "{names:?}");
    let (status, body) = common::http_get(&server, "/api/v1").await;
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        listed["tables"].as_array().unwrap().len(),
        10,
        "PEARL's ten, and not the dropped one"
    );

    // What was logged stays in the log: a client resuming from before it gets it.
    let mut resumed = Client::connect(&server, "/ws").await;
    resumed.next_of("connected").await;
    resumed
        .send(json!({"action": "subscribe", "tables": ["lab.equipment"], "after": 0}))
        .await;
    resumed.next_of("subscribed").await;
    assert_eq!(resumed.events(1).await[0]["data"]["name"], "scale");

    // `pgfeed untrack` of the dropped table is not an error.
    let untracked = pgfeed::install::untrack(&db.pool, "lab.equipment").await.unwrap();
    assert_eq!(untracked, Untracked::NoSuchTable);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_event_trigger_a_dropped_table_is_hidden_not_an_error() {
    let db = TestDb::new().await;
    // As where pgfeed was installed by a role that may not create event triggers.
    db.exec(
        "DROP EVENT TRIGGER pgfeed_forget_dropped;
         CREATE TABLE gauges (id serial PRIMARY KEY, reading int);
         SELECT pgfeed.track('gauges', 'gauge');
         DROP TABLE gauges;",
    )
    .await;
    let server = db.server().await;
    let names = tracked(&db).await;
    assert!(names.iter().all(Option::is_some), "{names:?}");
    let (status, body) = common::http_get(&server, "/api/v1").await;
    assert_eq!(status, 200, "{body}");
    // And uninstall, which lists what is tracked, goes through.
    pgfeed::install::uninstall(&db.pool).await.unwrap();
    server.stop().await.unwrap();
}

/// Runs `pgfeed status` on `db`: its exit code and what it printed.
async fn pgfeed_status(db: &TestDb) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args(["status"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn capture_that_is_off_shows_in_status_readyz_and_metrics() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let (code, text) = pgfeed_status(&db).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("studies") && text.contains("enabled"), "{text}");

    db.exec("ALTER TABLE studies DISABLE TRIGGER pgfeed_capture").await;
    let (code, text) = pgfeed_status(&db).await;
    assert_ne!(code, Some(0), "status fails while capture is off: {text}");
    assert!(text.contains("capture is off for studies (disabled)"), "{text}");
    let (status, body) = common::http_get(&server, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("capture is off for studies (disabled)"), "{body}");
    let (status, body) = common::http_get(&server, "/api/v1/status").await;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["capture_off"], json!(["studies (disabled)"]));
    let (_, metrics) = common::http_get(&server, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "pgfeed_capture_off_tables 1"), "{metrics}");

    db.exec("ALTER TABLE studies ENABLE ALWAYS TRIGGER pgfeed_capture")
        .await;
    assert_eq!(pgfeed_status(&db).await.0, Some(0));
    assert_eq!(common::http_get(&server, "/readyz").await.0, 200);
    server.stop().await.unwrap();
}

/// Decided (capture/0010): capture fires in replica mode too — a logical
/// replication apply or a load under `session_replication_role = replica`
/// changes rows clients must see.
#[tokio::test]
async fn writes_in_replica_mode_are_captured() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["studies"]})).await;
    db.exec("BEGIN; SET LOCAL session_replication_role = replica; INSERT INTO studies (study_label) VALUES ('replicated'); COMMIT;")
        .await;
    assert_eq!(client.events(1).await[0]["data"]["study_label"], "replicated");
    server.stop().await.unwrap();
}
