//! The HTTP edge: routes, the shared state, and the error type clients see.

pub mod access;
pub mod rest;
pub mod session;
pub mod sse;
pub mod tls;
pub mod web;
pub mod write;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::defaults;
use crate::feed::hub::Hub;
use crate::metrics::Metrics;

/// Every accepted socket sends at once: events are small frames, and with
/// Nagle's algorithm one written while the last is unacknowledged waits for a
/// client that only reads to acknowledge, up to its delayed ACK (40 ms on Linux).
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
}

/// Per-connection limits and timers.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Interval of server pings; a peer silent for two of them is dropped.
    pub heartbeat: Duration,
    /// Largest inbound message; larger ones close the socket with 1009.
    pub max_frame: usize,
    /// Most WebSocket connections at once.
    pub max_connections: usize,
    /// How long one outbound message may wait on a client that does not read.
    pub write_timeout: Duration,
    /// Whether the REST write routes are on (`--enable-writes`).
    pub enable_writes: bool,
    /// Messages per second a connection may send (bursts of twice that).
    pub max_message_rate: u32,
    /// Most tables, types and `where` values in one subscription.
    pub max_subscriptions: usize,
    /// How long a connection without a token has to send `auth`.
    pub auth_timeout: Duration,
    /// Origins browsers may connect from; empty: any.
    pub allowed_origins: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            heartbeat: defaults::duration(defaults::HEARTBEAT),
            max_frame: defaults::MAX_FRAME,
            max_connections: defaults::MAX_CONNECTIONS,
            write_timeout: defaults::duration(defaults::CLIENT_WRITE_TIMEOUT),
            enable_writes: false,
            max_message_rate: defaults::MAX_MESSAGE_RATE,
            max_subscriptions: defaults::MAX_SUBSCRIPTIONS,
            auth_timeout: defaults::duration(defaults::AUTH_TIMEOUT),
            allowed_origins: Vec::new(),
        }
    }
}

/// Everything a request handler or socket task needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Snapshots and log reads for clients that resume or fall behind.
    pub pool: PgPool,
    /// Live events, encoded once.
    pub hub: Hub,
    /// Checks tokens; `None` when authentication is off (loopback only, or `--insecure`).
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// One permit per open WebSocket: the connection cap, held by the socket's task.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// PEARL's running state (the listener's), copied by a session that replays the log.
    pub pearl: Arc<std::sync::Mutex<crate::feed::pearl::State>>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// True while the listener is connected and caught up (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// Limits and timers of every connection.
    pub limits: Arc<Limits>,
    /// Cancelled at shutdown; every socket task watches it and says 1001.
    pub shutdown: CancellationToken,
    /// The socket tasks, so shutdown can wait for their close frames.
    pub sockets: TaskTracker,
}

impl AppState {
    /// What a subscriber's stream reads from.
    pub fn sources(&self) -> crate::feed::subscriber::Sources {
        crate::feed::subscriber::Sources {
            hub: self.hub.clone(),
            pool: self.pool.clone(),
            pearl: self.pearl.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Resolves at `at`, or never (a token's expiry, for sockets and SSE streams).
pub(crate) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
        .route("/asyncapi.json", get(web::asyncapi))
        .route("/api/v1", get(rest::tables))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .route("/ws", get(session::general))
        .route("/ws/updates", get(session::updates))
        .route("/events", get(sse::events))
        .route("/api/v1/ws/studies", get(session::pearl))
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

/// What a client sees when a request fails. Database details are logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("writes are disabled on this server (start it with --enable-writes)")]
    WritesDisabled,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::WritesDisabled => (StatusCode::METHOD_NOT_ALLOWED, "writes_disabled"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Database(err) => {
                tracing::error!(error = %err, "database error serving a request");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        // `detail` is PEARL's (FastAPI's) field; `type`/`code`/`message` the native one.
        let message = self.to_string();
        (
            status,
            Json(serde_json::json!({ "detail": message, "type": "error", "code": code, "message": message })),
        )
            .into_response()
    }
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
