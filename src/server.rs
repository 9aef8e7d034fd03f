//! Running the whole service: database, migrations, listener, pruner, HTTP.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{defaults, DefaultSubscription, ServeArgs};
use crate::db;
use crate::feed::listener::Listener;
use crate::feed::log;
use crate::feed::Feed;
use crate::http::{self, AppState, Limits};
use crate::metrics::Metrics;

/// What a server needs besides its database.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: SocketAddr,
    pub retention: Duration,
    pub hub_capacity: usize,
    pub db_pool: u32,
    /// Shortest time between the starts of two busy ticks (`--tick-interval`).
    pub tick_interval: Duration,
    pub limits: Limits,
    /// Checks tokens; `None`: authentication off, allowed only on loopback or with `insecure`.
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// Serve without authentication on a non-loopback address.
    pub insecure: bool,
    /// Serve HTTPS/WSS with this configuration (`--tls-cert`, `--tls-key`).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Apply pending migrations at start (unset by `--no-migrate`).
    pub migrate: bool,
    /// Read the log, snapshots and rows from this standby (`--replica-url`).
    pub replica_url: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        // Port 0: an embedded or test server takes any free port; `serve` binds `--bind`.
        Settings {
            bind: ([127, 0, 0, 1], 0).into(),
            retention: defaults::duration(defaults::RETENTION),
            hub_capacity: defaults::HUB_CAPACITY,
            db_pool: defaults::DB_POOL,
            tick_interval: defaults::duration(defaults::TICK_INTERVAL),
            limits: Limits::default(),
            auth: None,
            insecure: false,
            tls: None,
            migrate: true,
            replica_url: None,
        }
    }
}

impl Settings {
    /// With no key configured, pgfeed serves only on a loopback address, unless told `insecure`.
    pub fn check_exposure(&self) -> Result<()> {
        if self.auth.is_none() && !self.bind.ip().is_loopback() && !self.insecure {
            anyhow::bail!(
                "refusing to serve on {} without authentication: set PGFEED_JWT_SECRET (or PGFEED_JWT_PUBLIC_KEY) \
                 so that clients need a token, or pass --insecure (PGFEED_INSECURE=true) to serve every row \
                 to anyone who can reach the port",
                self.bind
            );
        }
        Ok(())
    }
}

impl TryFrom<&ServeArgs> for Settings {
    type Error = anyhow::Error;

    fn try_from(args: &ServeArgs) -> Result<Self> {
        let auth = crate::auth::Verifier::from_config(
            args.jwt_secret.as_deref(),
            args.jwt_public_key.as_deref(),
            args.jwt_audience.as_deref(),
            args.jwt_issuer.as_deref(),
        )?;
        Ok(Settings {
            bind: args.bind,
            retention: args.retention,
            hub_capacity: args.hub_capacity,
            db_pool: args.db_pool,
            tick_interval: args.tick_interval,
            limits: Limits {
                heartbeat: args.heartbeat,
                max_frame: args.max_frame,
                max_connections: args.max_connections,
                write_timeout: args.client_write_timeout,
                enable_writes: args.enable_writes,
                max_message_rate: args.max_message_rate,
                max_subscriptions: args.max_subscriptions,
                auth_timeout: args.auth_timeout,
                allowed_origins: args.allowed_origins.clone(),
                stall_timeout: args.stall_timeout,
                subscribe_all_on_ws: args.default_subscription.contains(&DefaultSubscription::Ws),
                subscribe_all_on_updates: args.default_subscription.contains(&DefaultSubscription::Updates),
            },
            auth: auth.map(Arc::new),
            insecure: args.insecure,
            migrate: !args.no_migrate,
            replica_url: args.replica_url.clone(),
            tls: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some(http::tls::config(cert, key)?),
                _ => None,
            },
        })
    }
}

/// A server that is up. `stop` (or the token) shuts it down gracefully.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// Closes every socket with 1001, stops the listener and the pruner, closes the pool.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task")?
    }

    /// Waits until the server ends (after its shutdown token is cancelled).
    pub async fn wait(self) -> Result<()> {
        self.task.await.context("server task")?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Migrates the database at `url` and starts serving on `settings.bind`.
pub async fn start(url: &str, settings: Settings) -> Result<Running> {
    settings.check_exposure()?;
    if settings.auth.is_none() && !settings.bind.ip().is_loopback() {
        tracing::warn!(bind = %settings.bind, "serving WITHOUT authentication on a non-loopback address (--insecure): anyone who can reach the port reads every tracked row");
    }
    let pool = db::pool(url, settings.db_pool).await?;
    if settings.migrate {
        for applied in crate::install::migrate(&pool, false).await? {
            tracing::info!(
                set = applied.set,
                version = applied.version,
                description = applied.description,
                "applied migration"
            );
        }
    } else {
        let statuses = crate::db::migrate::CAPTURE.status(&pool).await?;
        if !statuses.iter().any(|m| m.applied) {
            anyhow::bail!(
                "pgfeed is not installed in this database: run `pgfeed migrate` (or start without --no-migrate)"
            );
        }
        for pending in statuses.iter().filter(|m| !m.applied) {
            tracing::warn!(
                version = pending.version,
                description = pending.description,
                "migration pending (--no-migrate): run `pgfeed migrate`"
            );
        }
    }
    if crate::install::tracked_count(&pool).await? == 0 {
        tracing::warn!(
            "no table is tracked, so no events will flow: run `pgfeed track --preset pearl` for PEARL's tables, \
             or `pgfeed track <table> --prefix <name>` (SQL: SELECT pgfeed.track('<table>', '<name>'))"
        );
    }
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let mut feed = Feed::new(pool.clone(), settings.hub_capacity, metrics.clone());
    if let Some(replica) = &settings.replica_url {
        let standby = db::pool(replica, settings.db_pool)
            .await
            .context("connecting to the replica (--replica-url)")?;
        tracing::info!("reading the log, snapshots and rows from the replica");
        feed = feed.reading_from(standby);
    }
    let state = AppState {
        pool: pool.clone(),
        feed,
        auth: settings.auth.clone(),
        connections: Arc::new(tokio::sync::Semaphore::new(settings.limits.max_connections)),
        metrics,
        ready: Arc::new(AtomicBool::new(false)),
        limits: Arc::new(settings.limits.clone()),
        shutdown: shutdown.clone(),
        sockets: TaskTracker::new(),
    };
    let background = TaskTracker::new();
    let mut listener = Listener::new(
        url.to_string(),
        &state.feed,
        state.ready.clone(),
        settings.tick_interval,
        settings.limits.stall_timeout,
    );
    if let Some(replica) = &settings.replica_url {
        listener = listener.reading_from(replica.clone());
    }
    listener.start_at_head().await.context("reading the start position")?;
    let token = shutdown.clone();
    background.spawn(async move {
        if let Err(err) = listener.run(token).await {
            tracing::error!(error = %format!("{err:#}"), "listener stopped");
        }
    });
    // An instance on a standby prunes only while it leads: following, its
    // work on the primary is hearing notifications.
    let leads = settings.replica_url.as_ref().map(|_| state.metrics.clone());
    background.spawn(prune_periodically(
        pool.clone(),
        settings.retention,
        leads,
        shutdown.clone(),
    ));

    let tcp = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("binding {}", settings.bind))?;
    let addr = tcp.local_addr()?;
    let router = http::app(state.clone());
    let token = shutdown.clone();
    let sockets = state.sockets.clone();
    let feed = state.feed.clone();
    let tls = settings.tls.clone();
    let task = tokio::spawn(async move {
        match tls {
            None => axum::serve(tcp.tap_io(http::no_delay), router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .context("serving HTTP")?,
            Some(tls) => axum::serve(http::tls::TlsListener::new(tcp, tls)?, router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
                .context("serving HTTPS")?,
        }
        // axum's graceful shutdown does not wait for upgraded sockets: they watch the
        // same token and send 1001; wait for them, then for the background tasks.
        sockets.close();
        if tokio::time::timeout(Duration::from_secs(10), sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not close within 10 s");
        }
        background.close();
        background.wait().await;
        pool.close().await;
        if feed.primary.is_some() {
            // The feed's pool is the standby's.
            feed.pool.close().await;
        }
        Ok(())
    });
    tracing::info!(%addr, tls = settings.tls.is_some(), "pgfeed serving");
    Ok(Running {
        addr,
        state,
        shutdown,
        task,
    })
}

/// Runs `pgfeed.prune` every few minutes (and at start); with `leads`, only
/// while that instance's listener leads.
async fn prune_periodically(
    pool: sqlx::PgPool,
    retention: Duration,
    leads: Option<Arc<Metrics>>,
    shutdown: CancellationToken,
) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(300));
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if leads.as_ref().is_some_and(|metrics| metrics.leader.get() == 0) {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            pruned = log::prune(&pool, retention) => match pruned {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "pruned the event log"),
                Err(err) => tracing::warn!(error = %err, "pruning the event log"),
            },
        }
    }
}

/// `pgfeed serve`: the server on `args`, with the embedded cluster (PEARL's
/// demo schema in it) when there is no `DATABASE_URL`, until Ctrl-C or SIGTERM.
pub async fn serve(args: &ServeArgs) -> Result<()> {
    // Refuse a bad configuration before starting anything.
    let settings = Settings::try_from(args)?;
    settings.check_exposure()?;
    let database = args.database.open().await?;
    if let Some(cluster) = &database.cluster {
        let pool = db::pool(&database.url, 2).await?;
        crate::install::demo(&pool).await?;
        pool.close().await;
        println!("Write to it with: {}", cluster.psql_command(db::EMBEDDED_DATABASE));
    }
    let running = start(&database.url, settings).await?;
    let (http, ws) = if args.tls_cert.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    println!(
        "pgfeed listening on {http}://{}  (WebSocket: {ws}://{}/ws)",
        running.addr, running.addr
    );
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    running.wait().await?;
    // The embedded cluster stops with `database`, after the server.
    drop(database);
    Ok(())
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
