//! The listener: one `LISTEN pgfeed` connection turned into events, in seq order.
//!
//! Notifications are the fast path; the log is the truth. Whenever the stream
//! of notifications is not exactly the next transaction, whole and in order
//! (a reconnect, a `fetch` payload, a bulk summary, a gap, a malformed payload,
//! a quiet connection whose head moved), the listener reads the log after the
//! last seq it delivered instead of guessing, and drops notifications it has
//! already delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::change::{Change, Notice, RowNotice};
use super::event::Encoder;
use super::hub::Hub;
use super::log;
use super::pearl;
use crate::db;
use crate::metrics::Metrics;

/// The notification channel the capture triggers use.
pub const CHANNEL: &str = "pgfeed";
/// How long the connection may be quiet before the listener checks it is alive
/// and that it has missed nothing.
const QUIET_CHECK: Duration = Duration::from_secs(3);
/// How long that check may take before the connection is declared dead.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const LOG_PAGE: i64 = 2000;
/// Longest a single log read may take: a pooled connection can be silently dead too.
const LOG_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A log read that gives up after `LOG_READ_TIMEOUT`.
async fn bounded<T>(read: impl std::future::Future<Output = sqlx::Result<T>>) -> sqlx::Result<T> {
    tokio::time::timeout(LOG_READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Where the listener's stream stands.
pub struct Listener {
    url: String,
    /// For the start position only.
    pool: PgPool,
    /// The listener's own connection for log reads, opened afresh with every
    /// LISTEN connection: a pooled one may be as dead as the connection just lost.
    reader: Option<PgConnection>,
    hub: Hub,
    metrics: Arc<Metrics>,
    /// Connected and caught up: what `/readyz` reports.
    ready: Arc<AtomicBool>,
    /// The last transaction delivered whole.
    last_seq: i64,
    /// Its number of events, to recognise rows written after its seq was assigned.
    last_size: i32,
    /// (seq, events published) of a transaction published only in part.
    partial: Option<(i64, i32)>,
    /// The row notifications of the transaction being received, until its commit.
    pending: Vec<RowNotice>,
    /// PEARL's running state, shared with sessions that replay from the log.
    pearl: Arc<Mutex<pearl::State>>,
}

enum Stop {
    Shutdown,
    Lost(String),
}

impl Listener {
    pub fn new(
        url: String,
        pool: PgPool,
        hub: Hub,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        pearl: Arc<Mutex<pearl::State>>,
    ) -> Listener {
        Listener {
            url,
            pool,
            reader: None,
            hub,
            metrics,
            ready,
            last_seq: 0,
            last_size: 0,
            partial: None,
            pending: Vec::new(),
            pearl,
        }
    }

    /// Runs until `shutdown`. Reconnects with backoff whenever the connection is lost.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let attempt = async {
                // A pool of its own per connection, one connection at most: a lost
                // connection is never handed back, and a DBA sees exactly one listener.
                let listen_pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(LOG_READ_TIMEOUT)
                    .connect_lazy_with(db::connect_options(&self.url, db::LISTENER_APPLICATION_NAME)?);
                let mut listener = PgListener::connect_with(&listen_pool).await.context("connecting")?;
                listener.listen(CHANNEL).await.context("LISTEN")?;
                let options = db::connect_options(&self.url, db::LOG_READER_APPLICATION_NAME)?;
                let reader = bounded(PgConnection::connect_with(&options)).await;
                self.reader = Some(reader.context("connecting the log reader")?);
                // Everything committed while nobody listened is in the log.
                self.catch_up().await.context("reading the log")?;
                anyhow::Ok(listener)
            };
            let mut listener = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                attempt = attempt => match attempt {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), retry_in = ?backoff, "listener cannot connect");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            backoff = Duration::from_millis(100);
            self.ready.store(true, Ordering::SeqCst);
            tracing::info!(seq = self.last_seq, "listener following notifications");
            let stop = self.follow(&mut listener, &shutdown).await;
            self.ready.store(false, Ordering::SeqCst);
            match stop {
                Stop::Shutdown => return Ok(()),
                Stop::Lost(reason) => {
                    self.metrics.listener_reconnects.inc();
                    tracing::warn!(%reason, seq = self.last_seq, "listener lost its connection; reconnecting")
                }
            }
        }
    }

    /// Fixes where live delivery starts: the current head, with PEARL's state
    /// (usernames, items, unresolved counts) from the same snapshot. Call it
    /// before accepting clients: a client that connects then starts at this
    /// head, and the listener delivers everything after it.
    pub async fn start_at_head(&mut self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let head: i64 = sqlx::query_scalar("SELECT pgfeed.head()").fetch_one(&mut *tx).await?;
        // Through pgfeed.snapshot, as the server reads every tracked table: its
        // role needs no SELECT on the application's tables. Untracked: empty.
        let mut rows = Vec::new();
        for table in ["users", "reporting_effort_items", "tracker_comments"] {
            let text: Option<String> = sqlx::query_scalar("SELECT rows::text FROM pgfeed.snapshot($1)")
                .bind(table)
                .fetch_optional(&mut *tx)
                .await?;
            let parsed: Vec<serde_json::Value> =
                text.map(|t| serde_json::from_str(&t)).transpose()?.unwrap_or_default();
            rows.push(parsed);
        }
        tx.commit().await?;
        self.last_seq = head;
        *self.pearl.lock().expect("pearl state lock") = pearl::State::load(head, &rows[0], &rows[1], &rows[2]);
        self.hub.set_head(head);
        self.metrics.head_seq.set(head);
        Ok(())
    }

    async fn follow(&mut self, listener: &mut PgListener, shutdown: &CancellationToken) -> Stop {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                next = tokio::time::timeout(QUIET_CHECK, listener.try_recv()) => next,
            };
            let result = match next {
                Ok(Ok(Some(notification))) => self.on_notification(notification.payload()).await,
                Ok(Ok(None)) => return Stop::Lost("connection closed".into()),
                Ok(Err(err)) => return Stop::Lost(err.to_string()),
                Err(_quiet) => {
                    match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&mut *listener)).await {
                        Ok(Ok(_)) => self.catch_up_if_behind().await,
                        Ok(Err(err)) => return Stop::Lost(err.to_string()),
                        Err(_) => return Stop::Lost("connection did not answer within 5 s".into()),
                    }
                }
            };
            if let Err(err) = result {
                return Stop::Lost(format!("reading the log: {err}"));
            }
        }
    }

    async fn on_notification(&mut self, payload: &str) -> sqlx::Result<()> {
        self.metrics.notifications_received.inc();
        let notice = match Notice::parse(payload) {
            Ok(notice) => notice,
            Err(err) => {
                self.metrics.notifications_malformed.inc();
                tracing::warn!(error = %err, "malformed notification; reading the log");
                return self.catch_up().await;
            }
        };
        let (seq, tx_size) = match notice {
            Notice::Row(row) => {
                self.pending.push(row);
                return Ok(());
            }
            Notice::Commit { seq, tx_size, .. } => (seq, tx_size),
        };
        let rows = std::mem::take(&mut self.pending);
        if seq < self.last_seq || (seq == self.last_seq && tx_size <= self.last_size) {
            return Ok(()); // already delivered from the log
        }
        if seq == self.last_seq {
            // Rows written after the seq was assigned: the log has them whole.
            return self.catch_up_from(seq - 1, Some((seq, self.last_size))).await;
        }
        let whole = seq == self.last_seq + 1
            && rows.len() == tx_size as usize
            && rows
                .iter()
                .enumerate()
                .all(|(i, row)| row.tx_index == i as i32 && !row.fetch);
        if !whole {
            // A gap, an oversized row or a large transaction: the log says exactly what happened.
            return self.catch_up().await;
        }
        for row in rows {
            self.publish(row.into_change(seq, tx_size));
        }
        Ok(())
    }

    async fn catch_up_if_behind(&mut self) -> sqlx::Result<()> {
        if !self.pending.is_empty() || bounded(log::head(self.reader()?)).await? > self.last_seq {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// Delivers everything in the log after the last whole transaction delivered.
    /// A transaction the hub already has the first events of (a catch-up that
    /// failed half way) is continued, not repeated.
    async fn catch_up(&mut self) -> sqlx::Result<()> {
        self.catch_up_from(self.last_seq, self.partial).await
    }

    /// Delivers the log after `seq`, skipping the first `n` events of transaction
    /// `s` for `skip = Some((s, n))` (already delivered).
    async fn catch_up_from(&mut self, seq: i64, skip: Option<(i64, i32)>) -> sqlx::Result<()> {
        let (skip_seq, mut skip) = skip.unwrap_or((0, 0));
        self.metrics.log_catch_ups.inc();
        self.pending.clear();
        let mut cursor = log::Cursor::after(seq);
        loop {
            let (changes, next) = bounded(log::read(self.reader()?, cursor, LOG_PAGE)).await?;
            if changes.is_empty() {
                return Ok(());
            }
            for change in changes {
                if skip > 0 && change.seq == skip_seq {
                    skip -= 1;
                    continue;
                }
                self.publish(change);
            }
            cursor = next;
        }
    }

    fn reader(&mut self) -> sqlx::Result<&mut PgConnection> {
        self.reader.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    fn publish(&mut self, change: Change) {
        let (seq, size, whole, tx_index) = (change.seq, change.tx_size, change.is_last_of_tx(), change.tx_index);
        let mut state = self.pearl.lock().expect("pearl state lock");
        let mut encoder = Encoder {
            metrics: &self.metrics,
            pearl: &mut state,
            count_untyped: true,
        };
        for event in encoder.encode(change) {
            self.metrics.events_published.inc();
            self.hub.publish(Arc::new(event));
        }
        self.partial = if whole { None } else { Some((seq, tx_index + 1)) };
        if whole && seq >= self.last_seq {
            self.last_seq = seq;
            self.last_size = size;
            self.hub.set_head(seq);
            self.metrics.head_seq.set(seq);
        }
    }
}
