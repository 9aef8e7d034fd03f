//! The protocol's verbs, decided once for every transport: whether a table
//! is within a token's scope, whether a subscription may be served, where a
//! resume starts, what a snapshot holds. The WebSocket session, SSE, REST
//! reads and REST writes all ask here, so a rule is never written twice and
//! never answers differently by path; each transport only says the answer
//! its own way (an `error` message, an HTTP status).

use serde_json::value::RawValue;

use super::{ApiError, AppState};
use crate::auth::Scope;
use crate::feed::log;
use crate::filter::Filter;
use crate::protocol::Position;

/// Why a verb was refused: a code clients can act on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(String),
    Forbidden(String),
    NotFound(String),
    /// The database could not answer (the cause is logged, not shown).
    Unavailable(&'static str),
}

impl Refusal {
    /// The `code` of the protocol's `error` message.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::NotFound(_) => "not_found",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Refusal::BadRequest(m) | Refusal::Forbidden(m) | Refusal::NotFound(m) => m,
            Refusal::Unavailable(m) => m,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::BadRequest(m) => ApiError::BadRequest(m),
            Refusal::Forbidden(m) => ApiError::Forbidden(m),
            Refusal::NotFound(m) => ApiError::NotFound(m),
            Refusal::Unavailable(m) => ApiError::Unavailable(m.to_string()),
        }
    }
}

/// A table outside `scope` is refused, and counted.
pub fn check_table(state: &AppState, scope: &Scope, table: &str) -> Result<(), Refusal> {
    if scope.allows_table(table) {
        return Ok(());
    }
    state.metrics.forbidden.inc();
    // A client's table name is echoed, but never at any length.
    let shown: String = table.chars().take(64).collect();
    Err(Refusal::Forbidden(format!(
        "table `{shown}` is outside this token's scope"
    )))
}

/// A subscription is served when it names no more than the limit allows and
/// every table it names is within the scope (its rows are then judged one by
/// one, by the filter and by the scope).
pub fn check_filter(state: &AppState, scope: &Scope, filter: &Filter) -> Result<(), Refusal> {
    let size = filter.size();
    if size > state.limits.max_subscriptions {
        return Err(Refusal::BadRequest(format!(
            "this subscription names {size} tables, types and values; the most is {}",
            state.limits.max_subscriptions
        )));
    }
    filter
        .tables
        .iter()
        .flatten()
        .try_for_each(|table| check_table(state, scope, table))
}

/// Where a client resuming after a position starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The log holds everything after `after`, in the history the position
    /// came from: replay it (`position` is `after`'s, checked), then go live.
    Replay { after: i64, head: i64, position: String },
    /// The position cannot be served; the client must re-snapshot. `reason`:
    /// `pruned` (retention dropped what follows it; `oldest` is the oldest
    /// position that can be resumed), `ahead` (beyond the head), or
    /// `history_changed` (its seq names another transaction here).
    Refresh { reason: &'static str, oldest: Option<i64> },
}

/// Checks `after` against the log: its bounds, and (for a checked position)
/// that its seq names the same transaction here as where it came from.
pub async fn resume_from(state: &AppState, after: &Position) -> Result<ResumeFrom, Refusal> {
    let unreadable = |err: sqlx::Error| {
        tracing::error!(error = %err, "resume: reading the log bounds");
        Refusal::Unavailable("the event log cannot be read right now")
    };
    let (mut oldest, mut head, mut here) = log::bounds(&state.feed.pool, after.seq).await.map_err(unreadable)?;
    if let (true, Some(primary)) = (after.seq > head, &state.feed.primary) {
        // A standby that has not replayed it yet: ahead of it is not ahead of
        // the log. The replay waits for the standby (`feed::subscriber`).
        (oldest, head, here) = log::bounds(primary, after.seq).await.map_err(unreadable)?;
    }
    let refresh = |reason, oldest| Ok(ResumeFrom::Refresh { reason, oldest });
    if after.seq > head {
        return refresh("ahead", None);
    }
    if after.seq < oldest {
        return refresh("pruned", Some(oldest));
    }
    let checked = match (&after.check, &here) {
        (Some(_), Some(here)) if *here != after.to_string() => return refresh("history_changed", None),
        (_, Some(here)) => here.clone(),
        // Retention removed the commit row of `after` itself (it is the
        // oldest resumable seq): nothing to check it against.
        (_, None) => after.to_string(),
    };
    Ok(ResumeFrom::Replay {
        after: after.seq,
        head,
        position: checked,
    })
}

/// The rows of `table` that `scope` may see, and the watermark they reflect.
pub async fn snapshot(state: &AppState, scope: &Scope, table: &str) -> Result<log::Snapshot, Refusal> {
    check_table(state, scope, table)?;
    match state.feed.snapshot(table, scope).await {
        Ok(Some(snapshot)) => Ok(snapshot),
        Ok(None) => {
            let shown: String = table.chars().take(64).collect();
            Err(Refusal::NotFound(format!("table `{shown}` is not tracked")))
        }
        Err(err) => {
            tracing::error!(error = %err, "snapshot");
            Err(Refusal::Unavailable("the snapshot could not be read"))
        }
    }
}

/// A snapshot's rows as they go on the wire.
pub fn raw_rows(rows: String) -> Box<RawValue> {
    RawValue::from_string(rows).expect("the log returns JSON")
}
