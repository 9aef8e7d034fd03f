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
