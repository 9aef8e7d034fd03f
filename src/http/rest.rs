//! Plain HTTP: health, readiness, metrics, and table snapshots for polling clients.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::access::Access;
use super::{verbs, ApiError, AppState};
use crate::config::defaults;
use crate::feed::log;
use crate::protocol::{Envelope, Position, ServerMessage};

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready while this instance can deliver: its listener connected and caught
/// up, the sequencer not stalled, its delivery not far behind the log. Not
/// ready: 503 with the reason.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match unready_reason(&state).await {
        None => (StatusCode::OK, "ready").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// Why this instance cannot deliver now, if it cannot.
async fn unready_reason(state: &AppState) -> Option<String> {
    if !state.ready.load(Ordering::SeqCst) {
        return Some("listener not connected or catching up".into());
    }
    // Read where the log is read (a standby's, with --replica-url): what a
    // load balancer polls costs the primary nothing.
    match crate::install::status::capture_off(&state.feed.pool).await {
        Ok(off) => {
            state.metrics.capture_off_tables.set(off.len() as i64);
            if !off.is_empty() {
                return Some(format!(
                    "capture is off for {}: their writes never reach the feed",
                    off.join(", ")
                ));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "/readyz: reading the capture state");
            return Some("the database cannot be read".into());
        }
    }
    let on_standby = state.feed.primary.is_some();
    let read = async {
        if on_standby {
            log::standing_on_standby(&state.feed.pool, 0).await
        } else {
            log::standing(&state.feed.pool, 0).await
        }
    };
    let standing = match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok(standing)) => standing,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "/readyz: reading the log's standing");
            return Some("the database cannot be read".into());
        }
        Err(_) => return Some("the database does not answer within 2 s".into()),
    };
    let waited = if on_standby {
        // A standby has no stamps (they are not replicated): there, the
        // listener's last look at the primary says how long sequencing waits.
        Duration::from_millis(state.metrics.unsequenced_age_ms.get().max(0) as u64)
    } else {
        state
            .metrics
            .unsequenced_age_ms
            .set(standing.unsequenced.as_millis() as i64);
        standing.unsequenced
    };
    let head = standing.head;
    if waited > state.limits.stall_timeout {
        return Some(format!(
            "sequencing stalled: a committed transaction has waited {:.1} s for its seq",
            waited.as_secs_f64()
        ));
    }
    let behind = head - state.feed.hub.head();
    if behind > defaults::MAX_LAG {
        return Some(format!("delivery lags the log by {behind} transactions"));
    }
    None
}

/// `GET /metrics`: every figure, with the database's own read at scrape time
/// (a failed read leaves the last value; the scrape still answers).
pub async fn metrics(State(state): State<AppState>) -> Response {
    let read: sqlx::Result<(f64, f64, i64, i64)> = sqlx::query_as(
        "SELECT pg_notification_queue_usage(),
                (SELECT sum(GREATEST(c.reltuples, 0)) FROM pg_class c
                  WHERE (c.oid = 'pgfeed.events'::regclass AND c.relkind = 'r')
                     OR c.oid IN (SELECT p.relid FROM pg_partition_tree('pgfeed.events') p WHERE p.isleaf))::float8,
                (SELECT pruned_through FROM pgfeed.retention),
                (extract(epoch FROM pgfeed.unsequenced_age()) * 1000)::int8",
    )
    .fetch_one(&state.pool)
    .await;
    // What counts as capture that is off is install::status's rule, not written again here.
    match crate::install::status::capture_off(&state.pool).await {
        Ok(off) => {
            state.metrics.capture_off_tables.set(off.len() as i64);
        }
        Err(err) => tracing::warn!(error = %err, "reading the capture state for /metrics"),
    }
    match read {
        Ok((queue, rows, oldest, unsequenced_ms)) => {
            let metrics = &state.metrics;
            metrics.unsequenced_age_ms.set(unsequenced_ms);
            metrics.notification_queue_usage_permille.set((queue * 1000.0) as i64);
            metrics.log_rows.set(rows.max(0.0) as i64);
            metrics.log_oldest_seq.set(oldest);
        }
        Err(err) => tracing::warn!(error = %err, "reading the database's figures for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /api/v1/<table>`: `{"type", "table", "seq", "rows"}`; the rows reflect exactly
/// the transactions up to `seq`, so a client can follow on with `resume {after: seq}`.
pub async fn table_snapshot(
    State(state): State<AppState>,
    access: Access,
    Path(table): Path<String>,
) -> Result<Response, ApiError> {
    let scope = access.require(&state)?;
    let table = table.trim_end_matches('/');
    let snapshot = verbs::snapshot(&state, &scope, table).await?;
    let body = ServerMessage::Snapshot {
        table: table.into(),
        seq: snapshot.watermark,
        position: Position::parse(&snapshot.position),
        rows: std::borrow::Cow::Owned(verbs::raw_rows(snapshot.rows)),
    }
    .encode(Envelope::Type);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /api/v1/status`: what `pgfeed status` prints, as JSON, with the tables
/// this request may see.
pub async fn status(State(state): State<AppState>, access: Access) -> Result<Response, ApiError> {
    let scope = access.require(&state)?;
    let mut status = crate::install::status::read(&state.pool).await.map_err(|err| {
        tracing::error!(error = %format!("{err:#}"), "reading the status");
        ApiError::Unavailable("the status could not be read".into())
    })?;
    status.tables.retain(|t| scope.allows_table(&t.table));
    state.metrics.capture_off_tables.set(status.capture_off().len() as i64);
    let mut body = serde_json::to_value(&status).expect("a status serializes");
    body["capture_off"] = serde_json::json!(status.capture_off());
    Ok(axum::Json(body).into_response())
}

/// `GET /api/v1`: the tracked tables this request may see, and whether writes are on.
pub async fn tables(State(state): State<AppState>, access: Access) -> Result<Response, ApiError> {
    let scope = access.require(&state)?;
    let tracked: Vec<(String, String)> = sqlx::query_as("SELECT table_name, prefix FROM pgfeed.tracked")
        .fetch_all(&state.feed.pool)
        .await?;
    let tables: Vec<serde_json::Value> = tracked
        .into_iter()
        .filter(|(table, _)| scope.allows_table(table))
        .map(|(table, prefix)| serde_json::json!({"table": table, "prefix": prefix}))
        .collect();
    let writes = state.limits.enable_writes && scope.write;
    Ok(axum::Json(serde_json::json!({"tables": tables, "writes": writes})).into_response())
}
