//! The HTTP edge: the routes. What every handler shares is in [`state`],
//! the error clients see in [`error`]; [`verbs`] decides subscribe, resume,
//! snapshot and scope once for every transport ([`ws`], [`sse`], [`rest`],
//! [`write`]).

pub mod access;
pub mod asyncapi;
pub mod error;
pub mod rest;
pub mod sse;
pub mod state;
pub mod tls;
pub mod verbs;
pub mod web;
pub mod write;
pub mod ws;

use axum::routing::{get, put};
use axum::Router;

pub use error::ApiError;
pub use state::{AppState, Limits};

/// Every accepted socket sends at once: events are small frames, and with
/// Nagle's algorithm one written while the last is unacknowledged waits for a
/// client that only reads to acknowledge, up to its delayed ACK (40 ms on Linux).
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
}

/// The router, apart from serving, so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(web::index))
        .route("/dashboard.js", get(web::dashboard_js))
        .route("/client.js", get(web::client_js))
        .route("/client.d.ts", get(web::client_types))
        .route("/style.css", get(web::style))
        .route("/asyncapi.json", get(asyncapi::document))
        .route("/api/v1", get(rest::tables))
        .route("/api/v1/status", get(rest::status))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .route("/ws", get(ws::general))
        .route("/ws/updates", get(ws::updates))
        .route("/events", get(sse::events))
        .route("/api/v1/ws/studies", get(ws::pearl))
        .route("/api/v1/{table}", get(rest::table_snapshot).post(write::create))
        .route("/api/v1/{table}/", get(rest::table_snapshot).post(write::create))
        .route(
            "/api/v1/{table}/{id}",
            put(write::update).patch(write::update).delete(write::remove),
        )
        .route(
            "/api/v1/{table}/{id}/",
            put(write::update).patch(write::update).delete(write::remove),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check_origin,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_accepted_socket_sends_without_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (mut stream, _) = accepted.unwrap();
        super::no_delay(&mut stream);
        assert!(stream.nodelay().unwrap());
    }
}
