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

/// Where a client resuming after a seq starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The log holds everything after `after`: replay it, then go live.
    Replay { after: i64, head: i64 },
    /// Retention dropped transactions after `after`: the client must re-snapshot.
    Pruned { oldest: i64 },
}

/// Checks `after` against the log's bounds.
pub async fn resume_from(state: &AppState, after: i64) -> Result<ResumeFrom, Refusal> {
    let bounds = async {
        let oldest = log::resumable_from(&state.pool).await?;
        let head = log::head(&state.pool).await?;
        Ok::<_, sqlx::Error>((oldest, head))
    };
    let (oldest, head) = bounds.await.map_err(|err| {
        tracing::error!(error = %err, "resume: reading the log bounds");
        Refusal::Unavailable("the event log cannot be read right now")
    })?;
    if after < oldest {
        return Ok(ResumeFrom::Pruned { oldest });
    }
    if after > head {
        return Err(Refusal::BadRequest(format!(
            "after={after} is beyond the newest seq {head}"
        )));
    }
    Ok(ResumeFrom::Replay { after, head })
}

/// The rows of `table` that `scope` may see, and the watermark they reflect.
pub async fn snapshot(state: &AppState, scope: &Scope, table: &str) -> Result<(i64, Box<RawValue>), Refusal> {
    check_table(state, scope, table)?;
    match log::snapshot(&state.pool, table, scope).await {
        Ok(Some((watermark, rows))) => Ok((watermark, RawValue::from_string(rows).expect("the log returns JSON"))),
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
