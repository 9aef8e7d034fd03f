//! WebSocket endpoints: the general protocol (`/ws`, `/ws/updates`) and the
//! PEARL one (`/api/v1/ws/studies`). Each handler says how the connection was
//! opened and upgrades it; [`session`] serves it (the transport), [`actions`]
//! answers the client's messages, [`rate`] bounds how fast it may send them.

mod actions;
mod rate;
pub mod session;
#[cfg(test)]
mod tests;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::access::{self, Access};
use super::AppState;
use crate::protocol::{Envelope, Position};
use session::{Opening, Protocol, Session};

#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    /// Resume right away after this position (same as a first `resume` message).
    after: Option<String>,
    /// `event`: the `{"event", "data", "timestamp"}` envelope both ways.
    envelope: Option<String>,
    /// Shadower's workspace: narrows the token's scope to `workspace_id` in these values.
    workspace_id: Option<String>,
}

pub async fn general(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<ConnectQuery>,
) -> Response {
    let envelope = match query.envelope.as_deref() {
        None | Some("type") => Envelope::Type,
        Some("event") => Envelope::Event,
        Some(_) => return (StatusCode::BAD_REQUEST, "envelope must be `type` or `event`").into_response(),
    };
    let subscribe_all = state.limits.subscribe_all_on_ws;
    general_opening(
        ws,
        state,
        query.opening(Protocol::General, envelope, access),
        subscribe_all,
    )
}

/// `/ws/updates`: the general feed in the `{"event", "data", "timestamp"}` envelope.
pub async fn updates(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<ConnectQuery>,
) -> Response {
    let subscribe_all = state.limits.subscribe_all_on_updates;
    general_opening(
        ws,
        state,
        query.opening(Protocol::General, Envelope::Event, access),
        subscribe_all,
    )
}

/// A general-protocol connection, with its endpoint's default subscription (`--default-subscription`).
fn general_opening(
    ws: WebSocketUpgrade,
    state: AppState,
    opening: Result<Opening, &'static str>,
    subscribe_all: bool,
) -> Response {
    match opening {
        Ok(opening) => upgrade(
            ws,
            state,
            Opening {
                subscribe_all,
                ..opening
            },
        ),
        Err(refused) => (StatusCode::BAD_REQUEST, refused).into_response(),
    }
}

pub async fn pearl(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<ConnectQuery>,
) -> Response {
    let query = ConnectQuery { after: None, ..query };
    match query.opening(Protocol::Pearl, Envelope::Type, access) {
        Ok(opening) => upgrade(ws, state, opening),
        Err(refused) => (StatusCode::BAD_REQUEST, refused).into_response(),
    }
}

impl ConnectQuery {
    /// How a connection with this query was opened.
    /// How a connection with this query was opened; 400 for an `after` that is no position.
    fn opening(&self, protocol: Protocol, envelope: Envelope, access: Access) -> Result<Opening, &'static str> {
        let after = match self.after.as_deref().map(Position::parse) {
            None => None,
            Some(Some(after)) => Some(after),
            Some(None) => return Err("after must be a seq (1234) or a position (1234.9f86d081)"),
        };
        Ok(Opening {
            protocol,
            envelope,
            after,
            access,
            workspace: self.workspace_id.as_deref().map(access::workspace_ids),
            subscribe_all: false,
        })
    }
}

fn upgrade(ws: WebSocketUpgrade, state: AppState, opening: Opening) -> Response {
    // The permit lives as long as the socket's task: the cap can never be exceeded.
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        state.metrics.connections_refused.inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let max = state.limits.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(crate::config::defaults::WS_READ_BUFFER)
        .write_buffer_size(crate::config::defaults::WS_WRITE_BUFFER)
        .on_upgrade(move |socket: WebSocket| {
            // No async block around `run`: it would hold a second copy of the
            // session and socket in every idle connection's task.
            let session = Session::new(state, &opening);
            session
                .state
                .sockets
                .clone()
                .track_future(session.run(socket, opening, permit))
        })
}
