//! Settings: the server's and the database's, from flags or the environment
//! (one clap struct each, every field documented; `.env.example` mirrors
//! them), and the one set of defaults. The command line that holds them is
//! the binary's (`src/bin/pgfeed/cli.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// The one set of defaults: the command line shows them, and the server's and
/// HTTP layer's `Default`s (what tests and embedders get) are built from them.
pub mod defaults {
    use std::time::Duration;

    pub const BIND: &str = "127.0.0.1:8000";
    pub const RETENTION: &str = "24h";
    pub const HEARTBEAT: &str = "30s";
    pub const MAX_FRAME: usize = 64 * 1024;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const HUB_CAPACITY: usize = 8192;
    /// A WebSocket's read buffer, allocated when it opens: clients send small
    /// JSON messages, and tungstenite's default (128 KiB) was almost all of an
    /// idle connection's memory. A larger message grows it while it is read.
    pub const WS_READ_BUFFER: usize = 1024;
    /// Frames are gathered up to this size before a write; the session flushes
    /// whenever nothing more is waiting, so it only bounds a burst's batch.
    pub const WS_WRITE_BUFFER: usize = 16 * 1024;
    pub const CLIENT_WRITE_TIMEOUT: &str = "30s";
    pub const DB_POOL: u32 = 16;
    /// Measured on 2 cores, fsync on, `pgfeed bench write --variants tracked`
    /// (8 writers), tracked tx/s vs bare NOTIFY: 0.58-0.81 at 0, 0.61-1.05 at
    /// 1ms (a tick with its commit's flush already takes about that), 1.14-1.16
    /// at 2ms; `bench latency --clients 10` p50: 1.12, 0.99 and 2.36 ms.
    pub const TICK_INTERVAL: &str = "1ms";
    /// A tick takes milliseconds; a leader whose committed transactions wait
    /// seconds is hung. Followers check once a second.
    pub const STALL_TIMEOUT: &str = "5s";
    /// How many transactions this instance's delivery may be behind the log
    /// before /readyz says it lags (a tick delivers all it sequenced at once).
    pub const MAX_LAG: i64 = 10_000;
    pub const MAX_MESSAGE_RATE: u32 = 20;
    pub const MAX_SUBSCRIPTIONS: usize = 256;
    pub const AUTH_TIMEOUT: &str = "5s";

    /// A default given as text (as the command line takes it) as a duration.
    pub fn duration(text: &str) -> Duration {
        super::parse_duration(text).expect("the defaults are valid durations")
    }
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres server to use (Postgres 13 or newer). Unset: a private cluster is started.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Where the private cluster keeps its data (only without DATABASE_URL).
    #[arg(long, env = "PGFEED_DATA_DIR", default_value = ".pgfeed")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address to listen on.
    #[arg(long, env = "PGFEED_BIND", default_value = defaults::BIND)]
    pub bind: SocketAddr,

    /// How long the event log is kept; older transactions are pruned (e.g. 24h, 30m, 7d).
    #[arg(long, env = "PGFEED_RETENTION", default_value = defaults::RETENTION, value_parser = parse_duration)]
    pub retention: Duration,

    /// How often the server pings each WebSocket; a peer silent for two intervals is dropped.
    #[arg(long, env = "PGFEED_HEARTBEAT", default_value = defaults::HEARTBEAT, value_parser = parse_duration)]
    pub heartbeat: Duration,

    /// Largest inbound WebSocket message, in bytes; larger ones close the socket with 1009.
    #[arg(long, env = "PGFEED_MAX_FRAME", default_value_t = defaults::MAX_FRAME)]
    pub max_frame: usize,

    /// Most WebSocket connections at once; more are refused with 503.
    #[arg(long, env = "PGFEED_MAX_CONNECTIONS", default_value_t = defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Events the hub keeps for connections that are behind; a connection further
    /// behind is served from the log until it catches up.
    #[arg(long, env = "PGFEED_HUB_CAPACITY", default_value_t = defaults::HUB_CAPACITY)]
    pub hub_capacity: usize,

    /// How long a client may leave a message unread before it is closed as stuck.
    #[arg(long, env = "PGFEED_CLIENT_WRITE_TIMEOUT", default_value = defaults::CLIENT_WRITE_TIMEOUT, value_parser = parse_duration)]
    pub client_write_timeout: Duration,

    /// Shortest time between the starts of two ticks while writes keep coming:
    /// longer costs the writers less and adds up to that much latency (e.g. 0, 1ms, 5ms).
    #[arg(long, env = "PGFEED_TICK_INTERVAL", default_value = defaults::TICK_INTERVAL, value_parser = parse_duration)]
    pub tick_interval: Duration,

    /// How long committed transactions may wait for a seq before /readyz says
    /// sequencing is stalled and another instance ends the session of the
    /// leader that holds the lead without ticking (a hung process or host).
    #[arg(long, env = "PGFEED_STALL_TIMEOUT", default_value = defaults::STALL_TIMEOUT, value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// Database connections for snapshots and log reads.
    #[arg(long, env = "PGFEED_DB_POOL", default_value_t = defaults::DB_POOL)]
    pub db_pool: u32,

    /// A streaming standby of the database (physical replication) to read the
    /// log, snapshots and rows from. The instance still hears notifications
    /// (and writes, and ticks if it becomes the leader) on DATABASE_URL; it
    /// waits for the standby to replay what it heard of before reading.
    #[arg(long, env = "PGFEED_REPLICA_URL", hide_env_values = true)]
    pub replica_url: Option<String>,

    /// HS256 shared secret for JWTs (at least 16 bytes). With it (or a public key) every
    /// request needs a token; without either, pgfeed serves only on a loopback address.
    #[arg(
        long,
        env = "PGFEED_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<String>,

    /// RS256 or ES256 public key for JWTs: PEM text or the path of a PEM file.
    #[arg(long, env = "PGFEED_JWT_PUBLIC_KEY", hide_env_values = true)]
    pub jwt_public_key: Option<String>,

    /// Required `aud` of tokens.
    #[arg(long, env = "PGFEED_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of tokens.
    #[arg(long, env = "PGFEED_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Serve without authentication on a non-loopback address (logs a warning at every start).
    #[arg(long, env = "PGFEED_INSECURE")]
    pub insecure: bool,

    /// Origins browsers may connect from (comma-separated, e.g. https://app.example.org);
    /// others get 403. Empty: any origin.
    #[arg(long, env = "PGFEED_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Messages a connection may send per second (bursts of twice that); more get
    /// `rate_limited`, and a sustained flood closes the connection with 1008.
    #[arg(long, env = "PGFEED_MAX_MESSAGE_RATE", default_value_t = defaults::MAX_MESSAGE_RATE)]
    pub max_message_rate: u32,

    /// Most tables, types and `where` values one connection's subscription may name.
    #[arg(long, env = "PGFEED_MAX_SUBSCRIPTIONS", default_value_t = defaults::MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,

    /// How long a connection without a token may take to send `auth` before it is closed with 4401.
    #[arg(long, env = "PGFEED_AUTH_TIMEOUT", default_value = defaults::AUTH_TIMEOUT, value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// Serve HTTPS and WSS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "PGFEED_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "PGFEED_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// WebSocket endpoints whose connections get a default subscription (every
    /// change their token may see) until they send `subscribe`, for clients that
    /// never do (Heimdall's broadcast, HyCON): `updates` (/ws/updates), `ws` (/ws),
    /// both (`ws,updates`), or `none`.
    #[arg(
        long,
        env = "PGFEED_DEFAULT_SUBSCRIPTION",
        value_delimiter = ',',
        default_value = "updates"
    )]
    pub default_subscription: Vec<DefaultSubscription>,

    /// Do not apply pending migrations at start (a DBA applies them with
    /// `pgfeed migrate`, e.g. while the running release keeps serving); the
    /// server says which are pending and serves what the installed ones give.
    #[arg(long, env = "PGFEED_NO_MIGRATE")]
    pub no_migrate: bool,

    /// Serve PEARL's REST writes (POST/PUT/PATCH/DELETE /api/v1/<table>) on tracked tables.
    /// The server's role then needs INSERT, UPDATE and DELETE on those tables.
    #[arg(long, env = "PGFEED_ENABLE_WRITES")]
    pub enable_writes: bool,
}

/// An endpoint that subscribes its connections to everything until they subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultSubscription {
    /// `/ws` (and `/ws?envelope=event`).
    Ws,
    /// `/ws/updates`.
    Updates,
    /// Neither.
    None,
}

/// Parses `500ms`, `30s`, `15m`, `24h`, `7d` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 15m, 24h"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
