//! What a client received, compared with the log: the truth.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

use super::*;

/// Asserts `events` (non-derived) are exactly the log after seq `after`, up to the
/// last event's seq: every transaction whole, once, in commit order.
pub async fn assert_matches_log(db: &TestDb, events: &[Value], after: i64) {
    assert_commit_order(events);
    let log: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT c.seq, count(*) FROM pgfeed.commits c JOIN pgfeed.events e USING (tx) WHERE c.seq > $1 AND c.seq <= $2 GROUP BY c.seq ORDER BY c.seq",
    )
    .bind(after)
    .bind(events.last().map(|e| e["seq"].as_i64().unwrap()).unwrap_or(after))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut received: Vec<(i64, i64)> = Vec::new();
    for event in events.iter().filter(|e| e.get("derived").is_none()) {
        let seq = event["seq"].as_i64().unwrap();
        match received.last_mut() {
            Some((last, count)) if *last == seq => *count += 1,
            _ => received.push((seq, 1)),
        }
    }
    if received != log {
        let missing: Vec<_> = log.iter().filter(|t| !received.contains(t)).take(10).collect();
        let extra: Vec<_> = received.iter().filter(|t| !log.contains(t)).take(10).collect();
        panic!(
            "received {} transactions, log has {}; missing {missing:?}; extra {extra:?}",
            received.len(),
            log.len()
        );
    }
}

/// A snapshot message's rows, by id.
pub fn rows_by_id(snapshot: &Value) -> std::collections::BTreeMap<i64, Value> {
    snapshot["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_i64().unwrap(), r.clone()))
        .collect()
}

/// Applies the row events `client` receives to `rows` (a snapshot at
/// `watermark`) until the study labelled `marker` arrives: each must be above
/// the watermark and fit the rows (no insert of a row they have, no update or
/// delete of one they lack). Returns how many it applied.
pub async fn apply_until_marker(
    client: &mut Client,
    rows: &mut std::collections::BTreeMap<i64, Value>,
    watermark: i64,
) -> usize {
    let mut applied = 0;
    loop {
        let event = client.next().await;
        if event.get("op").is_none() {
            continue;
        }
        assert!(
            event["seq"].as_i64().unwrap() > watermark,
            "event at or below the watermark: {event}"
        );
        let id = event["data"]["id"].as_i64().unwrap();
        match event["op"].as_str().unwrap() {
            "DELETE" => assert!(
                rows.remove(&id).is_some(),
                "delete of a row the snapshot did not have: {event}"
            ),
            "INSERT" => assert!(
                rows.insert(id, event["data"].clone()).is_none(),
                "insert of a row the snapshot had: {event}"
            ),
            _ => assert!(
                rows.insert(id, event["data"].clone()).is_some(),
                "update of a row the snapshot lacked: {event}"
            ),
        }
        applied += 1;
        if event["data"]["study_label"] == "marker" {
            return applied;
        }
    }
}

/// Asserts `rows` (ids and labels) are the `studies` table now.
pub async fn assert_rows_are_studies(db: &TestDb, rows: &std::collections::BTreeMap<i64, Value>) {
    let table: Vec<(i32, String)> = sqlx::query_as("SELECT id, study_label FROM studies ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let rebuilt: Vec<(i32, String)> = rows
        .values()
        .map(|r| {
            (
                r["id"].as_i64().unwrap() as i32,
                r["study_label"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rebuilt, table,
        "snapshot + events after the watermark must equal the table"
    );
}
