//! `GET /events`: the general feed as Server-Sent Events, for browsers'
//! `EventSource` and for `curl`.
//!
//! Each event is `event: <type>` with the event's JSON as `data:`. When a
//! transaction is whole, an `id: <seq>` line (with no data) moves the client's
//! last event id to it, so a browser that reconnects sends `Last-Event-ID` and
//! resumes exactly after the last whole transaction it holds. The stream is
//! the same `feed::subscriber` the WebSocket carries: same filters, scopes,
//! order and exactly-once delivery.
//!
//! Query: `tables=a,b`, `types=x,y` (or `event_types`), `where={"col": 1}`,
//! `after=<seq>`, `token=…`, `workspace_id=…`.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::access::Access;
use super::{until, ApiError, AppState};
use crate::feed::log;
use crate::feed::pearl::Audience;
use crate::feed::subscriber::{Next, Subscriber};
use crate::filter::Filter;

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    tables: Option<String>,
    types: Option<String>,
    event_types: Option<String>,
    #[serde(rename = "where")]
    where_: Option<String>,
    after: Option<i64>,
}

fn list(text: &Option<String>) -> Option<crate::names::Names> {
    text.as_ref().map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

pub async fn events(
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = access.require(&state)?;
    let where_: Option<Map<String, Value>> = match &query.where_ {
        None => None,
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Some(map),
            _ => {
                return Err(ApiError::BadRequest(
                    "`where` must be a JSON object like {\"study_id\":[1,2]}".into(),
                ))
            }
        },
    };
    let filter = Filter {
        tables: list(&query.tables),
        types: list(&query.types).or(list(&query.event_types)),
        where_,
        ..Filter::default()
    };
    let size = filter.size();
    if size > state.limits.max_subscriptions {
        return Err(ApiError::BadRequest(format!(
            "this subscription names {size} tables, types and values; the most is {}",
            state.limits.max_subscriptions
        )));
    }
    if let Some(table) = filter.tables.iter().flatten().find(|t| !scope.allows_table(t)) {
        state.metrics.forbidden.inc();
        return Err(ApiError::Forbidden(format!(
            "table `{}` is outside this token's scope",
            table.chars().take(64).collect::<String>()
        )));
    }
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        state.metrics.connections_refused.inc();
        return Ok((StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response());
    };

    let mut sub = Subscriber::new(state.sources(), Audience::Native);
    sub.scope = Some(scope);
    sub.filter = Some(filter);
    // `Last-Event-ID` (a browser reconnecting) wins over `?after=`.
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(query.after);
    let mut opening = vec![SseEvent::default()
        .event("connected")
        .data(format!("{{\"seq\":{}}}", sub.last_seq()))
        .id(sub.last_seq().to_string())];
    if let Some(after) = after {
        let oldest = log::resumable_from(&state.pool).await?;
        let head = log::head(&state.pool).await?;
        if after < oldest {
            opening.push(SseEvent::default().event("refresh_needed").data(format!(
                "{{\"type\":\"refresh_needed\",\"reason\":\"retention\",\"seq\":{after},\"oldest_seq\":{oldest}}}"
            )));
        } else if after > head {
            return Err(ApiError::BadRequest(format!(
                "after={after} is beyond the newest seq {head}"
            )));
        } else {
            sub.resume_after(after);
            opening[0] = SseEvent::default()
                .event("connected")
                .data(format!("{{\"seq\":{after}}}"))
                .id(after.to_string());
        }
    }
    let expires = match &access {
        Access::Granted(grant) => grant.deadline(),
        _ => None,
    };
    let shutdown = state.shutdown.clone();
    state.metrics.ws_connections_total.inc();
    // The permit and the open-connection count go with the stream, when the client leaves.
    let permit = (permit, state.metrics.connection_opened("sse"));
    let metrics = state.metrics.clone();
    let live = stream::unfold((sub, permit, false), move |(mut sub, permit, done)| {
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        async move {
            if done {
                return None;
            }
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = until(expires) => {
                        let event = SseEvent::default()
                            .event("error")
                            .data(r#"{"type":"error","code":"token_expired","message":"the token has expired; reconnect with a fresh one"}"#);
                        return Some((event, (sub, permit, true)));
                    }
                    next = sub.next() => next,
                };
                let event = match next {
                    Next::Event(event) => {
                        metrics.events_delivered.inc();
                        SseEvent::default().event(&*event.kind).data(event.frame.as_str())
                    }
                    Next::Whole(seq) => SseEvent::default().id(seq.to_string()),
                    Next::Idle => continue,
                    Next::LogUnavailable => SseEvent::default().event("refresh_needed").data(format!(
                        "{{\"type\":\"refresh_needed\",\"reason\":\"log_unavailable\",\"seq\":{}}}",
                        sub.last_seq()
                    )),
                };
                return Some((event, (sub, permit, false)));
            }
        }
    });
    let events = stream::iter(opening).chain(live).map(Ok::<_, Infallible>);
    let heartbeat = KeepAlive::new().interval(state.limits.heartbeat).text("heartbeat");
    Ok(Sse::new(events).keep_alive(heartbeat).into_response())
}
