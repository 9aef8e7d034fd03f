//! What every handler and socket task shares, and the limits of every connection.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::defaults;
use crate::feed::Feed;
use crate::metrics::Metrics;

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
    /// How long committed transactions may wait for a seq before `/readyz`
    /// says stalled (and a follower fences the leader that does not tick).
    pub stall_timeout: Duration,
    /// `/ws` connections see everything their token may see until they subscribe.
    pub subscribe_all_on_ws: bool,
    /// The same for `/ws/updates` (on by default: Heimdall's broadcast).
    pub subscribe_all_on_updates: bool,
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
            stall_timeout: defaults::duration(defaults::STALL_TIMEOUT),
            subscribe_all_on_ws: false,
            subscribe_all_on_updates: true,
        }
    }
}

/// Everything a request handler or socket task needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Snapshots and log reads for clients that resume or fall behind.
    pub pool: PgPool,
    /// The feed: its hub, its log, PEARL's state. Every stream a client gets comes from it.
    pub feed: Feed,
    /// Checks tokens; `None` when authentication is off (loopback only, or `--insecure`).
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// One permit per open WebSocket: the connection cap, held by the socket's task.
    pub connections: Arc<tokio::sync::Semaphore>,
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
