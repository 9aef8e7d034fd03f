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
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::access::{until, Access};
use super::verbs::{self, ResumeFrom};
use super::{ApiError, AppState};
use crate::feed::pearl::Audience;
use crate::feed::subscriber::Next;
use crate::filter::Filter;
use crate::protocol::{Envelope, Position, ServerMessage};

#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    tables: Option<String>,
    types: Option<String>,
    event_types: Option<String>,
    #[serde(rename = "where")]
    where_: Option<String>,
    after: Option<String>,
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
    verbs::check_filter(&state, &scope, &filter)?;
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        state.metrics.connections_refused.inc();
        return Ok((StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response());
    };

    let mut sub = state.feed.subscriber(Audience::Native);
    sub.scope = Some(scope);
    sub.filter = Some(filter);
    // `Last-Event-ID` (a browser reconnecting) wins over `?after=`.
    let after = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.after.as_deref())
    {
        None => None,
        Some(text) => Some(Position::parse(text).ok_or_else(|| {
            ApiError::BadRequest("after (or Last-Event-ID) must be a seq (1234) or a position (1234.9f86d081)".into())
        })?),
    };
    let mut refresh = None;
    match &after {
        None => sub.follow_renames(),
        Some(after) => match verbs::resume_from(&state, after).await? {
            ResumeFrom::Replay { after, position, .. } => sub.resume_after(after, &position),
            ResumeFrom::Refresh { reason, oldest } => {
                sub.follow_renames();
                let live = Position::parse(sub.last_position());
                refresh = Some(message(&ServerMessage::refresh_needed(reason, after.seq, oldest, live)));
            }
        },
    }
    let connected = ServerMessage::Connected {
        connection_id: uuid::Uuid::new_v4(),
        seq: sub.last_seq(),
        position: Position::parse(sub.last_position()),
        workspace_id: None,
    };
    // The id is the position the stream starts after: a browser that
    // reconnects before any whole transaction resumes from there.
    let opening: Vec<SseEvent> = std::iter::once(message(&connected).id(sub.last_position()))
        .chain(refresh)
        .collect();
    let expires = match &access {
        Access::Granted(grant) => grant.deadline(),
        _ => None,
    };
    let shutdown = state.shutdown.clone();
    state.metrics.ws_connections_total.inc();
    // The permit and the open-connection count go with the stream, when the client leaves.
    let permit = (permit, state.metrics.connection_opened("sse"));
    let metrics = state.metrics.clone();
    // A heartbeat event (it keeps proxies from closing an idle stream, too)
    // says which transaction this instance has delivered up to.
    let every = state.limits.heartbeat;
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let hub = state.feed.hub.clone();
    let live = stream::unfold(
        (sub, permit, heartbeat, false),
        move |(mut sub, permit, mut heartbeat, done)| {
            let (shutdown, metrics, hub) = (shutdown.clone(), metrics.clone(), hub.clone());
            async move {
                if done {
                    return None;
                }
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = until(expires) => {
                            let expired = ServerMessage::error("token_expired", "the token has expired; reconnect with a fresh one");
                            return Some((message(&expired), (sub, permit, heartbeat, true)));
                        }
                        _ = heartbeat.tick() => {
                            let (seq, position) = hub.head_and_position();
                            let beat = ServerMessage::Heartbeat { seq, position: Position::parse(&position) };
                            return Some((message(&beat), (sub, permit, heartbeat, false)));
                        }
                        next = sub.next() => next,
                    };
                    let event = match next {
                        Next::Event(event) => {
                            metrics.events_delivered.inc();
                            SseEvent::default().event(&*event.kind).data(event.frame.as_str())
                        }
                        // The checked position of the transaction now whole: `Last-Event-ID` resumes after it.
                        Next::Whole(_) => SseEvent::default().id(sub.last_position()),
                        Next::Idle => continue,
                        Next::LogUnavailable => message(&ServerMessage::refresh_needed(
                            "log_unavailable",
                            sub.last_seq(),
                            None,
                            Position::parse(sub.last_position()),
                        )),
                        Next::HistoryChanged { from } => message(&ServerMessage::refresh_needed(
                            "history_changed",
                            from,
                            None,
                            Position::parse(sub.last_position()),
                        )),
                    };
                    return Some((event, (sub, permit, heartbeat, false)));
                }
            }
        },
    );
    let events = stream::iter(opening).chain(live).map(Ok::<_, Infallible>);
    Ok(Sse::new(events).into_response())
}

/// One of the server's own messages as an SSE event named by its type.
fn message(message: &ServerMessage<'_>) -> SseEvent {
    SseEvent::default()
        .event(message.kind())
        .data(message.encode(Envelope::Type))
}
