//! `pgfeed status` and `GET /api/v1/status`: what is tracked and whether its
//! capture fires, and where the log and the sequencer stand
//! (migrations/capture/0010). Capture that is off anywhere is what a DBA must
//! see first: rows written there never reach the feed.

use anyhow::Result;
use serde::Serialize;
use sqlx::PgPool;

/// One tracked table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub prefix: String,
    pub exclude: Vec<String>,
    /// `enabled` (also in replica mode), `origin_only`, `replica_only`, `disabled`, `missing`.
    pub trigger: String,
    /// Rows of it in the log now.
    pub log_rows: i64,
}

impl TableStatus {
    /// Ordinary writes to it never reach the feed.
    pub fn capture_off(&self) -> bool {
        is_off(&self.trigger)
    }
}

fn is_off(trigger: &str) -> bool {
    matches!(trigger, "disabled" | "missing" | "replica_only")
}

/// Where pgfeed stands in this database.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub tables: Vec<TableStatus>,
    /// The newest seq.
    pub head: i64,
    /// The oldest seq a client can resume after (retention).
    pub oldest_seq: i64,
    /// How long the oldest committed transaction has waited for its seq, in ms.
    pub unsequenced_age_ms: i64,
    /// Whether some instance holds the lead, and how many follow its ticks.
    pub leader: bool,
    pub followers: i64,
    /// `pg_notification_queue_usage()`, 0..1.
    pub notification_queue_usage: f64,
}

impl Status {
    /// The tables whose capture is off, with how.
    pub fn capture_off(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter(|t| t.capture_off())
            .map(|t| format!("{} ({})", t.table, t.trigger))
            .collect()
    }
}

/// Reads the whole status (the log's rows per table: a pass over the log).
pub async fn read(pool: &PgPool) -> Result<Status> {
    let rows: Vec<(String, String, Vec<String>, String, i64)> = sqlx::query_as(
        "SELECT s.table_name, s.prefix, s.exclude, s.trigger_state,
                COALESCE((SELECT count(*) FROM pgfeed.events e WHERE e.table_name = s.table_name), 0)
           FROM pgfeed.capture_state() s",
    )
    .fetch_all(pool)
    .await?;
    let (head, oldest_seq, unsequenced_age_ms, leader, followers, notification_queue_usage): (
        i64,
        i64,
        i64,
        bool,
        i64,
        f64,
    ) = sqlx::query_as(
        "SELECT pgfeed.head(), (SELECT pruned_through FROM pgfeed.retention),
                (extract(epoch FROM pgfeed.unsequenced_age()) * 1000)::int8,
                pgfeed.leader_pid() IS NOT NULL,
                (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    AND classid::bigint = 1885824613 AND objid::bigint = 3 AND objsubid = 2),
                pg_notification_queue_usage()",
    )
    .fetch_one(pool)
    .await?;
    let tables = rows
        .into_iter()
        .map(|(table, prefix, exclude, trigger, log_rows)| TableStatus {
            table,
            prefix,
            exclude,
            trigger,
            log_rows,
        })
        .collect();
    Ok(Status {
        tables,
        head,
        oldest_seq,
        unsequenced_age_ms,
        leader,
        followers,
        notification_queue_usage,
    })
}

/// Only the tables whose capture is off (cheap: no pass over the log), for `/readyz`.
pub async fn capture_off(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    let states: Vec<(String, String)> = sqlx::query_as("SELECT table_name, trigger_state FROM pgfeed.capture_state()")
        .fetch_all(pool)
        .await?;
    Ok(states
        .into_iter()
        .filter(|(_, state)| is_off(state))
        .map(|(table, state)| format!("{table} ({state})"))
        .collect())
}
