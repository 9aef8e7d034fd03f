//! The listener: one `LISTEN pgfeed` connection, its log reader, and what
//! they deliver, in seq order.
//!
//! Writers only log their rows (migrations/capture/0002); a tick gives the
//! transactions committed since the last one their seqs, and the listener
//! delivers them from the log. Whether this listener ticks, and when, is the
//! sequencer's to decide (`feed::sequencer`); the listener keeps the
//! connection (reconnecting with backoff), runs the ticks, catches up from
//! the log and publishes to the hub.
//!
//! Whatever happens (a reconnect, a lost lead, a malformed payload, a quiet
//! connection whose head moved), the listener reads the log after the last seq
//! it delivered instead of guessing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::bounded::{within, WorkLimit, ROUND_TRIP_TIMEOUT};
use super::change::{Change, Notice};
use super::event::SchemaChange;
use super::event::{Encoder, Interned};
use super::hub::Hub;
use super::kinds::EventNames;
use super::log;
use super::pearl;
use super::renames::Renames;
use super::sequencer::Sequencer;
use super::Feed;
use crate::backoff::Backoff;
use crate::db;
use crate::metrics::Metrics;

mod ticks;

/// The notification channel of writers and ticks.
pub const CHANNEL: &str = "pgfeed";
const LOG_PAGE: i64 = 2000;
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Which backend serves `db`, as `pid/start`: a pid alone may be reused.
async fn backend_identity<'e>(db: impl sqlx::PgExecutor<'e>) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT format('%s/%s', pid, backend_start) FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        .fetch_one(db)
        .await
}

/// How long one catch-up waits for a standby to replay what the listener
/// heard of; then it delivers what is there, and tries again shortly.
const STANDBY_WAIT: Duration = Duration::from_secs(1);
/// How soon it tries again while the standby is behind.
const STANDBY_RETRY: Duration = Duration::from_millis(20);
/// A follower on a standby looks for new seqs there, not by LISTEN on the
/// primary (each notification a listening backend handles costs the
/// primary: `bench followers` measured 2-4 % of a core per follower at
/// 1,000 tx/s from notifications alone). It looks again this soon after a
/// look that found something, and twice as late after each that did not, up
/// to `POLL_SLOWEST`.
const POLL_FASTEST: Duration = Duration::from_millis(1);
const POLL_SLOWEST: Duration = Duration::from_millis(10);

/// Where the listener's stream stands.
pub struct Listener {
    url: String,
    /// Where the log is read: `url`, or a standby's (`--replica-url`).
    reader_url: String,
    /// The primary, for the start position, renames and event names.
    pool: PgPool,
    /// The standby the log is read from, when there is one.
    standby: Option<PgPool>,
    /// The highest seq heard of (notifications, ticks): what a standby must
    /// replay before the log reader finds it.
    heard: i64,
    /// A follower on a standby: the wait before its next look there, and when
    /// it last made its quiet check (takeover, stalls) on the primary.
    poll: Duration,
    last_quiet_check: std::time::Instant,
    /// The listener's own connection for log reads, opened afresh with every
    /// LISTEN connection: a pooled one may be as dead as the connection just lost.
    reader: Option<PgConnection>,
    hub: Hub,
    metrics: Arc<Metrics>,
    /// Connected and caught up: what `/readyz` reports.
    ready: Arc<AtomicBool>,
    /// The last transaction delivered whole.
    last_seq: i64,
    /// Its checked position: what this history says it is (migrations/capture/0007).
    last_position: Arc<str>,
    /// (seq, events published) of a transaction published only in part.
    partial: Option<(i64, i32)>,
    /// Whether this listener ticks, and when.
    sequencer: Sequencer,
    /// How long the next tick or log page may take.
    work: WorkLimit,
    /// The backends (`pid/start`) of the previous LISTEN connection and its
    /// log reader: if they are still there (their network went away, Postgres
    /// has not noticed), the first holds the leader lock, and the new
    /// connection ends both.
    previous_backends: Vec<String>,
    /// PEARL's running state, shared with sessions that replay from the log.
    pearl: Arc<Mutex<pearl::State>>,
    /// Table names and event kinds, one text each for all events.
    names: Interned,
    /// The names tracked tables had, for subscriptions that use an old one.
    renames: Arc<std::sync::RwLock<Renames>>,
    /// Event names of tables' own.
    event_names: Arc<std::sync::RwLock<Arc<EventNames>>>,
}

enum Stop {
    Shutdown,
    Lost(String),
}

impl Listener {
    /// The listener that keeps `feed` current from the database at `url`;
    /// `stall_timeout`: how long committed transactions may wait for a seq
    /// before a follower ends the leader's session.
    pub fn new(
        url: String,
        feed: &Feed,
        ready: Arc<AtomicBool>,
        tick_interval: Duration,
        stall_timeout: Duration,
    ) -> Listener {
        Listener {
            reader_url: url.clone(),
            url,
            pool: feed.primary.clone().unwrap_or_else(|| feed.pool.clone()),
            standby: feed.primary.as_ref().map(|_| feed.pool.clone()),
            heard: 0,
            poll: POLL_FASTEST,
            last_quiet_check: std::time::Instant::now(),
            reader: None,
            hub: feed.hub.clone(),
            metrics: feed.metrics.clone(),
            ready,
            last_seq: 0,
            last_position: "0".into(),
            partial: None,
            sequencer: Sequencer::new(tick_interval, stall_timeout),
            work: WorkLimit::default(),
            previous_backends: Vec::new(),
            pearl: feed.pearl.clone(),
            names: Interned::default(),
            renames: feed.renames.clone(),
            event_names: feed.event_names.clone(),
        }
    }

    /// Reads the log from the standby at `url` (whose pool is the feed's).
    pub fn reading_from(mut self, url: String) -> Listener {
        self.reader_url = url;
        self.sequencer = self.sequencer.without_announcements();
        self
    }

    /// Runs until `shutdown`. Reconnects with backoff whenever the connection is lost.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        // With jitter: after a Postgres restart, every instance comes back at once.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.2);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let attempt = async {
                // A pool of its own per connection, one connection at most: a lost
                // connection is never handed back, and a DBA sees exactly one listener.
                let listen_pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_lazy_with(db::connect_options(&self.url, db::LISTENER_APPLICATION_NAME)?);
                let mut listener = PgListener::connect_with(&listen_pool).await.context("connecting")?;
                if self.standby.is_none() {
                    within(ROUND_TRIP_TIMEOUT, listener.listen(CHANNEL))
                        .await
                        .context("LISTEN")?;
                }
                self.take_the_lead(&mut listener).await.context("taking the lead")?;
                if self.standby.is_some() && self.sequencer.leads() {
                    // Leading from a standby instance: writers' wake-ups are for it.
                    within(ROUND_TRIP_TIMEOUT, listener.listen(CHANNEL))
                        .await
                        .context("LISTEN")?;
                }
                let options = db::connect_options(&self.reader_url, db::LOG_READER_APPLICATION_NAME)?;
                let mut reader = within(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                    .context("connecting the log reader")?;
                let identity = within(ROUND_TRIP_TIMEOUT, backend_identity(&mut reader)).await?;
                self.previous_backends.push(identity);
                self.reader = Some(reader);
                // Still the history it delivered? Then everything committed
                // while nobody listened is in the log.
                self.verify_history().await.context("checking the history")?;
                self.catch_up().await.context("reading the log")?;
                anyhow::Ok(listener)
            };
            let mut listener = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                attempt = attempt => match attempt {
                    Ok(listener) => listener,
                    Err(err) => {
                        let wait = backoff.next_wait();
                        tracing::warn!(error = %format!("{err:#}"), retry_in = ?wait, "listener cannot connect");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                        continue;
                    }
                },
            };
            backoff.reset();
            self.metrics.leader.set(i64::from(self.sequencer.leads()));
            self.ready.store(true, Ordering::SeqCst);
            tracing::info!(
                seq = self.last_seq,
                leader = self.sequencer.leads(),
                "listener following notifications"
            );
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
        self.read_head().await?;
        self.hub.set_head(self.last_seq, self.last_position.clone());
        Ok(())
    }

    /// The head and its position, with PEARL's state from the same snapshot.
    async fn read_head(&mut self) -> Result<()> {
        let (head, position, state) = match &self.standby {
            // Made exact on the standby (`feed::standby`): no tick on the primary.
            Some(standby) => {
                let exact = super::standby::exact_rows(standby, &self.pool, &pearl::State::TABLES).await?;
                let state = pearl::State::from_rows(exact.head, &exact.rows);
                (exact.head, exact.position, state)
            }
            None => {
                // After a tick of its own: the head covers everything its snapshot sees.
                let mut tx = log::ticked_snapshot(&self.pool).await?;
                let (head, position): (i64, Option<String>) =
                    sqlx::query_as("SELECT pgfeed.head(), pgfeed.position(pgfeed.head())")
                        .fetch_one(&mut *tx)
                        .await?;
                let state = pearl::State::read(&mut tx, head).await?;
                tx.commit().await?;
                (head, position, state)
            }
        };
        self.heard = self.heard.max(head);
        *self.renames.write().expect("renames lock") = Renames::load(&self.pool).await?;
        self.load_event_names().await?;
        self.last_seq = head;
        // A head whose commit row retention removed has no check left.
        self.last_position = position.unwrap_or_else(|| head.to_string()).into();
        self.partial = None;
        *self.pearl.lock().expect("pearl state lock") = state;
        self.metrics.head_seq.set(head);
        Ok(())
    }

    /// Checks that the transaction the feed last delivered is still that
    /// seq's in the database: a reinstall, a restore or a failover that lost
    /// commits starts another history, whose seqs name other transactions.
    /// Then the feed starts over at the new history's head, and every
    /// subscriber is told (`refresh_needed`, `history_changed`). Returns the head.
    async fn verify_history(&mut self) -> sqlx::Result<log::Standing> {
        let reader = self.reader.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        let standing = if self.standby.is_some() {
            self.work.bound(log::standing_on_standby(reader, self.last_seq)).await?
        } else {
            let standing = self.work.bound(log::standing(reader, self.last_seq)).await?;
            self.metrics
                .unsequenced_age_ms
                .set(standing.unsequenced.as_millis() as i64);
            standing
        };
        let head = standing.head;
        if head < self.last_seq && self.standby.is_some() {
            // A standby behind what was delivered (it restarted, and replays
            // again from its last restart point): it catches up; its seqs
            // are checked once it has.
            tracing::info!(
                seq = self.last_seq,
                head,
                "the standby is behind what was delivered; waiting for it"
            );
            return Ok(standing);
        }
        let changed = head < self.last_seq
            || standing
                .position
                .as_ref()
                .is_some_and(|here| **here != *self.last_position);
        if !changed {
            return Ok(standing);
        }
        tracing::warn!(
            seq = self.last_seq,
            head,
            "the database's history changed under the feed (a reinstall, a restore or a failover that lost commits); starting over at its head"
        );
        self.metrics.history_resets.inc();
        self.read_head()
            .await
            .map_err(|err| sqlx::Error::Protocol(format!("reading the new history's head: {err:#}")))?;
        self.hub.reset(self.last_seq, self.last_position.clone());
        Ok(log::Standing {
            head: self.last_seq,
            ..standing
        })
    }

    /// Ends this instance's previous backends if they linger, then tries for
    /// the lead. A new connection starts ticking (not waiting).
    async fn take_the_lead(&mut self, listener: &mut PgListener) -> sqlx::Result<()> {
        let ended_one = !self.previous_backends.is_empty();
        if ended_one {
            let end = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE format('%s/%s', pid, backend_start) = ANY($1)",
            )
            .bind(&self.previous_backends)
            .execute(&mut *listener);
            within(ROUND_TRIP_TIMEOUT, end).await?;
        }
        let identity = within(ROUND_TRIP_TIMEOUT, backend_identity(&mut *listener)).await?;
        self.previous_backends = vec![identity];
        self.sequencer.claim(listener, ended_one).await
    }

    async fn follow(&mut self, listener: &mut PgListener, shutdown: &CancellationToken) -> Stop {
        loop {
            let result = if self.standby.is_some() && !self.sequencer.leads() {
                // Following on a standby: no LISTEN; a look at the standby,
                // and now and then the quiet check on the primary.
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Stop::Shutdown,
                    next = tokio::time::timeout(self.poll, listener.try_recv()) => next,
                };
                match next {
                    Ok(Ok(Some(notification))) => self.on_notification(notification.payload()).await,
                    Ok(Ok(None)) => return Stop::Lost("connection closed".into()),
                    Ok(Err(err)) => return Stop::Lost(err.to_string()),
                    Err(_) => self.look_at_the_standby(listener).await,
                }
            } else if self.sequencer.ticking() {
                // Ticking: only the notifications the last round trips brought
                // along, then the next tick. A timeout, even of zero, would
                // sleep to the timer's next millisecond, and deliveries waited
                // for it (`bench latency --clients 10`, fsync off: p50 1.3 ms
                // with it, 0.87 ms without).
                if shutdown.is_cancelled() {
                    return Stop::Shutdown;
                }
                self.on_buffered_notifications(listener).await
            } else {
                // Behind what it heard of (a standby replaying): a look again soon.
                let behind = self.standby.is_some() && self.last_seq < self.heard;
                let wait = if behind {
                    STANDBY_RETRY
                } else {
                    self.sequencer.quiet_after()
                };
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Stop::Shutdown,
                    next = tokio::time::timeout(wait, listener.try_recv()) => next,
                };
                match next {
                    Ok(Ok(Some(notification))) => self.on_notification(notification.payload()).await,
                    Ok(Ok(None)) => return Stop::Lost("connection closed".into()),
                    Ok(Err(err)) => return Stop::Lost(err.to_string()),
                    Err(_) if behind => self.catch_up().await,
                    Err(_quiet) => self.quiet_check(listener).await,
                }
            };
            if let Err(err) = result {
                return Stop::Lost(format!("reading the log: {err}"));
            }
            if self.sequencer.ticking() {
                if let Err(err) = self.tick_round(listener).await {
                    return Stop::Lost(format!("ticking: {err}"));
                }
            }
        }
    }

    /// Handles the notifications that arrived during the last round trips.
    async fn on_buffered_notifications(&mut self, listener: &mut PgListener) -> sqlx::Result<()> {
        while let Some(notification) = listener.next_buffered() {
            self.on_notification(notification.payload()).await?;
        }
        Ok(())
    }

    async fn on_notification(&mut self, payload: &str) -> sqlx::Result<()> {
        self.metrics.notifications_received.inc();
        match Notice::parse(payload) {
            // A writer committed while the leader waited: it ticks until a tick finds nothing.
            Notice::Wake => {
                self.sequencer.woken_by_writer();
                Ok(())
            }
            Notice::Sequenced(seq) if seq > self.last_seq => {
                self.heard = self.heard.max(seq);
                self.catch_up().await
            }
            Notice::Sequenced(_) => Ok(()),
            Notice::Tracked => self.load_event_names().await,
            Notice::Malformed => {
                self.metrics.notifications_malformed.inc();
                tracing::warn!("malformed notification on channel pgfeed; reading the log");
                self.catch_up().await
            }
        }
    }

    /// Delivers everything in the log after the last whole transaction delivered.
    /// A transaction the hub already has the first events of (a catch-up that
    /// failed half way) is continued, not repeated.
    async fn catch_up(&mut self) -> sqlx::Result<()> {
        if self.standby.is_some() && self.heard > self.last_seq {
            // Read once the standby has replayed it, or read what it has.
            let reader = self.reader.as_mut().ok_or(sqlx::Error::PoolClosed)?;
            log::wait_for_head(reader, self.heard, STANDBY_WAIT).await?;
        }
        self.catch_up_from(self.last_seq, self.partial).await
    }

    /// Delivers the log after `seq`, skipping the first `n` events of transaction
    /// `s` for `skip = Some((s, n))` (already delivered).
    async fn catch_up_from(&mut self, seq: i64, skip: Option<(i64, i32)>) -> sqlx::Result<()> {
        let (skip_seq, mut skip) = skip.unwrap_or((0, 0));
        self.metrics.log_catch_ups.inc();
        let mut cursor = log::Cursor::after(seq);
        loop {
            let reader = self.reader.as_mut().ok_or(sqlx::Error::PoolClosed)?;
            let (changes, next) = self.work.bound(log::read(reader, cursor, LOG_PAGE)).await?;
            // A short page is the end of the log: no second read to learn it.
            let last_page = (changes.len() as i64) < LOG_PAGE;
            let unsent = changes.into_iter().filter(|change| {
                let sent = skip > 0 && change.seq == skip_seq;
                skip -= i32::from(sent);
                !sent
            });
            self.publish(unsent.collect());
            if last_page {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Event names of tables' own, as the database has them now.
    async fn load_event_names(&mut self) -> sqlx::Result<()> {
        let names = EventNames::load(&self.pool).await?;
        *self.event_names.write().expect("event names lock") = Arc::new(names);
        Ok(())
    }

    /// Encodes `changes`, then hands their events to the hub together: a
    /// connection woken by the first finds the rest already there and writes
    /// them in one go, not one wake-up and one write each.
    fn publish(&mut self, changes: Vec<Change>) {
        let mut events = Vec::with_capacity(changes.len());
        let mut written = Vec::with_capacity(changes.len());
        {
            let mut state = self.pearl.lock().expect("pearl state lock");
            let kinds = self.event_names.read().expect("event names lock").clone();
            let mut encoder = Encoder {
                metrics: &self.metrics,
                pearl: &mut state,
                count_untyped: true,
                names: &mut self.names,
                kinds: &kinds,
            };
            for change in changes {
                let (seq, whole, tx_index) = (change.seq, change.is_last_of_tx(), change.tx_index);
                if whole {
                    written.push(change.written);
                }
                let position: Arc<str> = change.position.as_str().into();
                events.extend(encoder.encode(change));
                self.partial = if whole { None } else { Some((seq, tx_index + 1)) };
                if whole && seq > self.last_seq {
                    self.last_seq = seq;
                    self.last_position = position;
                }
            }
        }
        // Known before any subscriber can pass the rename: one that
        // subscribes by the old name after it finds the new one.
        for event in &events {
            if let Some(SchemaChange {
                renamed_from: Some(from),
            }) = &event.schema
            {
                let mut renames = self.renames.write().expect("renames lock");
                renames.record(from, &event.table, event.seq);
            }
        }
        self.metrics.events_published.inc_by(events.len() as u64);
        // Shared only now, after the whole page is encoded: the hub keeps a
        // page's events side by side for the connections that read them in order.
        self.hub.publish(events, self.last_seq);
        self.metrics.head_seq.set(self.last_seq);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        for written in written {
            self.metrics.write_to_publish.observe((now - written).max(0.0));
        }
    }
}
