//! The listener: one `LISTEN pgfeed` connection that also sequences commits,
//! turned into events in seq order.
//!
//! Writers only log their rows (migrations/capture/0002); a tick gives the
//! transactions committed since the last one their seqs, and the listener
//! delivers them from the log. One listener among all instances ticks: the one
//! holding the sequencer's session lock (the leader). While it waits for work
//! it holds a second lock, which makes writers wake it with a notification;
//! while it is ticking, writers share that lock and send nothing. The others
//! share a third lock, which makes every tick announce its head to them as
//! `{"seq": N}` (with no follower, ticks send nothing), and take over the lead
//! when its holder's session ends.
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

use super::change::{Change, Notice};
use super::event::{Encoder, Interned};
use super::hub::Hub;
use super::log;
use super::pearl;
use super::Feed;
use crate::db;
use crate::metrics::Metrics;

/// The notification channel of writers and ticks.
pub const CHANNEL: &str = "pgfeed";
/// How long the connection may be quiet before the listener checks it is alive
/// and that it has missed nothing.
const QUIET_CHECK: Duration = Duration::from_secs(3);
/// How often a follower tries for the lead: while nobody ticks, writers send
/// nothing, so this bounds how long a departed leader holds the feed up.
const FOLLOWER_CHECK: Duration = Duration::from_secs(1);
const LOG_PAGE: i64 = 2000;
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a small round trip on the listener's connection may take (a lock,
/// an unlock, a wait for writers, LISTEN): every one is bounded, or a dead
/// connection met at that moment would hold the feed up for good.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a leader whose tick found nothing waits for the writers that share
/// the waiting lock to commit before it ticks again: short at first (it cannot
/// tick while it waits, and other writers may be committing), longer while it
/// keeps finding nothing (one long transaction holds it).
const SHORTEST_PATIENCE: Duration = Duration::from_millis(1);
const LONGEST_PATIENCE: Duration = Duration::from_millis(50);
/// How many empty ticks in a row, one `tick_interval` apart, a leader ticks
/// before it waits for writers: a few while the feed is quiet, more while it
/// is busy (sequencing `BUSY_RATE` transactions a second or more). Busy,
/// commits come in bursts, one per WAL flush: with fsync on, a leader that
/// waited after its first empty tick held the waiting lock through most gaps
/// between flushes, every writer committing meanwhile sent a notification to
/// wake it, and those commits queued one by one for the notification queue's
/// lock (Lock:object at COMMIT was half of the tracked writers' samples in
/// pg_stat_activity). Quiet, a wake-up costs a writer nothing it would wait
/// for, and a leader still ticking when the next commit comes makes it wait
/// for the next tick instead (at 100 tx/s, 8 empty ticks put the p50 from
/// commit to client at 2.2-2.9 ms against 1.4-1.8 ms).
const EMPTY_TICKS_WHEN_QUIET: u32 = 2;
const EMPTY_TICKS_WHEN_BUSY: u32 = 8;
/// The gaps between WAL flushes are a span of time, not a number of ticks: a
/// busy leader ticks through this much of them (8 ticks at 2 ms apart, 16 at
/// 1 ms), and never fewer than `EMPTY_TICKS_WHEN_BUSY`.
const BUSY_PATIENCE: Duration = Duration::from_millis(16);
const BUSY_RATE: f64 = 500.0;
/// How often the leader measures its rate of transactions.
const RATE_WINDOW: Duration = Duration::from_millis(100);

/// The leader's recent rate of transactions, measured over `RATE_WINDOW`s.
struct Rate {
    since: std::time::Instant,
    /// The last seq at `since`; `None` until the first observation (a leader
    /// starts at the head, not at 0).
    seq_then: Option<i64>,
    busy: bool,
}

impl Rate {
    fn new(now: std::time::Instant) -> Rate {
        Rate {
            since: now,
            seq_then: None,
            busy: false,
        }
    }

    /// Notes the last seq given; once a window has passed, whether the feed is busy.
    fn observe(&mut self, seq: i64, now: std::time::Instant) {
        let Some(seq_then) = self.seq_then else {
            (self.since, self.seq_then) = (now, Some(seq));
            return;
        };
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= RATE_WINDOW {
            self.busy = (seq - seq_then) as f64 >= BUSY_RATE * elapsed.as_secs_f64();
            (self.since, self.seq_then) = (now, Some(seq));
        }
    }

    /// Empty ticks in a row, `interval` apart, after which the leader waits for writers.
    fn patience_in_ticks(&self, interval: Duration) -> u32 {
        if !self.busy {
            return EMPTY_TICKS_WHEN_QUIET;
        }
        if interval.is_zero() {
            // Back to back, a tick lasts as long as its round trip: no span to count by.
            return EMPTY_TICKS_WHEN_BUSY;
        }
        let spanned = BUSY_PATIENCE.as_nanos() / interval.as_nanos();
        spanned.clamp(u128::from(EMPTY_TICKS_WHEN_BUSY), 64) as u32
    }
}

/// 0x70676665, 'pgfe': the first key of pgfeed's advisory locks.
const LOCK_SPACE: i32 = 1_885_824_613;
/// Held (session) by the leader while it waits for work; writers try to share it.
const WAITING_LOCK: i32 = 1;
/// Held (session) by the one listener that ticks.
const LEADER_LOCK: i32 = 2;
/// Shared (session) by every listener that follows, from before its first read
/// of the log: a tick that cannot take it alone announces its head
/// (migrations/capture/0004).
const FOLLOWER_LOCK: i32 = 3;
/// Lets go of the waiting lock, as text: it goes ahead of the tick that a
/// wake-up starts, in the same round trip.
static RELEASE_WAITING: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT pg_advisory_unlock({LOCK_SPACE}, {WAITING_LOCK})"));

/// `SELECT <function>(LOCK_SPACE, key)`, one of Postgres's advisory-lock
/// functions, on the listener's connection, bounded like every round trip.
async fn advisory(listener: &mut PgListener, call: &'static str, key: i32) -> sqlx::Result<sqlx::postgres::PgRow> {
    let trip = sqlx::query(call).bind(LOCK_SPACE).bind(key).fetch_one(&mut *listener);
    within(ROUND_TRIP_TIMEOUT, trip).await
}

/// Tries for pgfeed's advisory lock `key` for this connection's session.
async fn try_lock(listener: &mut PgListener, key: i32) -> sqlx::Result<bool> {
    let row = advisory(listener, "SELECT pg_try_advisory_lock($1, $2)", key).await?;
    sqlx::Row::try_get(&row, 0)
}

/// Shares pgfeed's advisory lock `key` for this connection's session, waiting
/// for it (a tick holds it exclusively for a moment).
async fn share_lock(listener: &mut PgListener, key: i32) -> sqlx::Result<()> {
    advisory(listener, "SELECT pg_advisory_lock_shared($1, $2)", key)
        .await
        .map(drop)
}

/// Lets go of pgfeed's advisory lock `key`, held shared.
async fn unshare_lock(listener: &mut PgListener, key: i32) -> sqlx::Result<()> {
    advisory(listener, "SELECT pg_advisory_unlock_shared($1, $2)", key)
        .await
        .map(drop)
}

/// How long a tick or a page of the log may take before its connection counts
/// as dead (its peer gone without a word, or a proxy that swallows everything:
/// only a missing answer shows it): short, so such a connection is replaced
/// within seconds; doubled after each that ran out (a large backlog can take
/// longer), up to the longest.
const WORK_TIMEOUT: Duration = Duration::from_secs(4);
const LONGEST_WORK_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a tick or a page of the log may take: `WORK_TIMEOUT`, doubled
/// after each that ran out, the shortest again after one that did not.
struct WorkLimit {
    next: Duration,
}

impl WorkLimit {
    async fn bound<T>(&mut self, work: impl std::future::Future<Output = sqlx::Result<T>>) -> sqlx::Result<T> {
        let limit = self.next;
        match tokio::time::timeout(limit, work).await {
            Ok(done) => {
                self.next = WORK_TIMEOUT;
                done
            }
            Err(_) => {
                self.next = (limit * 2).min(LONGEST_WORK_TIMEOUT);
                Err(silence(limit))
            }
        }
    }
}

/// Which backend serves `db`, as `pid/start`: a pid alone may be reused.
async fn backend_identity<'e>(db: impl sqlx::PgExecutor<'e>) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT format('%s/%s', pid, backend_start) FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        .fetch_one(db)
        .await
}

/// A round trip that gives up after `limit`, as an error: its connection is
/// then taken for dead.
async fn within<T>(limit: Duration, trip: impl std::future::Future<Output = sqlx::Result<T>>) -> sqlx::Result<T> {
    tokio::time::timeout(limit, trip)
        .await
        .unwrap_or_else(|_| Err(silence(limit)))
}

/// The error of a round trip that got no answer within `limit`.
fn silence(limit: Duration) -> sqlx::Error {
    let what = format!("no answer within {limit:?}");
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
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
    /// (seq, events published) of a transaction published only in part.
    partial: Option<(i64, i32)>,
    /// This listener ticks (it holds the leader lock on its connection).
    leader: bool,
    /// The leader holds the waiting lock: writers wake it.
    waiting: bool,
    /// A writer woke the leader: the next tick lets go of the waiting lock first.
    woken: bool,
    /// How long the next wait for writers may take.
    patience: Duration,
    /// Ticks in a row that found nothing, since the last busy one.
    empty_ticks: u32,
    /// Whether the feed is busy, which makes the leader slower to wait.
    rate: Rate,
    /// How long the next tick or log page may take.
    work: WorkLimit,
    /// Shortest time from one busy tick's start to the next (`--tick-interval`).
    tick_interval: Duration,
    /// The backends (`pid/start`) of the previous LISTEN connection and its
    /// log reader: if they are still there (their network went away, Postgres
    /// has not noticed), the first holds the leader lock, and the new
    /// connection ends both.
    previous_backends: Vec<String>,
    /// PEARL's running state, shared with sessions that replay from the log.
    pearl: Arc<Mutex<pearl::State>>,
    /// Table names and event kinds, one text each for all events.
    names: Interned,
}

enum Stop {
    Shutdown,
    Lost(String),
}

impl Listener {
    /// The listener that keeps `feed` current from the database at `url`.
    pub fn new(url: String, feed: &Feed, ready: Arc<AtomicBool>, tick_interval: Duration) -> Listener {
        Listener {
            url,
            pool: feed.pool.clone(),
            reader: None,
            hub: feed.hub.clone(),
            metrics: feed.metrics.clone(),
            ready,
            last_seq: 0,
            partial: None,
            leader: false,
            waiting: false,
            woken: false,
            patience: SHORTEST_PATIENCE,
            empty_ticks: EMPTY_TICKS_WHEN_BUSY,
            rate: Rate::new(std::time::Instant::now()),
            work: WorkLimit { next: WORK_TIMEOUT },
            tick_interval,
            previous_backends: Vec::new(),
            pearl: feed.pearl.clone(),
            names: Interned::default(),
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
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_lazy_with(db::connect_options(&self.url, db::LISTENER_APPLICATION_NAME)?);
                let mut listener = PgListener::connect_with(&listen_pool).await.context("connecting")?;
                within(ROUND_TRIP_TIMEOUT, listener.listen(CHANNEL))
                    .await
                    .context("LISTEN")?;
                self.take_the_lead(&mut listener).await.context("taking the lead")?;
                let options = db::connect_options(&self.url, db::LOG_READER_APPLICATION_NAME)?;
                let mut reader = within(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                    .await
                    .context("connecting the log reader")?;
                let identity = within(ROUND_TRIP_TIMEOUT, backend_identity(&mut reader)).await?;
                self.previous_backends.push(identity);
                self.reader = Some(reader);
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
            tracing::info!(
                seq = self.last_seq,
                leader = self.leader,
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
        // After a tick of its own: the head covers everything its snapshot sees.
        let mut tx = log::ticked_snapshot(&self.pool).await?;
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
        self.leader = try_lock(listener, LEADER_LOCK).await?;
        // A backend just ended lets go of its locks only as it exits.
        for _ in 0..20 {
            if self.leader || !ended_one {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.leader = try_lock(listener, LEADER_LOCK).await?;
        }
        if !self.leader {
            // Before the first read of the log: every tick after that read announces.
            share_lock(listener, FOLLOWER_LOCK).await?;
        }
        self.waiting = false;
        self.woken = false;
        Ok(())
    }

    async fn follow(&mut self, listener: &mut PgListener, shutdown: &CancellationToken) -> Stop {
        loop {
            let result = if self.leader && !self.waiting {
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
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return Stop::Shutdown,
                    next = tokio::time::timeout(self.quiet_after(), listener.try_recv()) => next,
                };
                match next {
                    Ok(Ok(Some(notification))) => self.on_notification(notification.payload()).await,
                    Ok(Ok(None)) => return Stop::Lost("connection closed".into()),
                    Ok(Err(err)) => return Stop::Lost(err.to_string()),
                    Err(_quiet) => self.quiet_check(listener).await,
                }
            };
            if let Err(err) = result {
                return Stop::Lost(format!("reading the log: {err}"));
            }
            if self.leader && !self.waiting {
                if let Err(err) = self.tick_round(listener).await {
                    return Stop::Lost(format!("ticking: {err}"));
                }
            }
        }
    }

    /// How long a listener that is not ticking waits for a notification
    /// before acting without one.
    fn quiet_after(&self) -> Duration {
        if self.leader {
            QUIET_CHECK
        } else {
            FOLLOWER_CHECK
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
            Notice::Wake if self.leader && self.waiting => {
                // A writer committed while the leader waited: tick until it finds nothing.
                self.stop_waiting();
                Ok(())
            }
            Notice::Wake => Ok(()),
            Notice::Sequenced(seq) if seq > self.last_seq => self.catch_up().await,
            Notice::Sequenced(_) => Ok(()),
            Notice::Malformed => {
                self.metrics.notifications_malformed.inc();
                tracing::warn!("malformed notification on channel pgfeed; reading the log");
                self.catch_up().await
            }
        }
    }

    /// One tick, and delivery of what it gave seqs to; true when it found work.
    /// Once a few ticks in a row have found nothing (see `Rate`), the leader
    /// waits for writers, once the ones sharing the waiting lock (each
    /// counting on ticks) have committed.
    async fn tick_round(&mut self, listener: &mut PgListener) -> sqlx::Result<bool> {
        let started = std::time::Instant::now();
        let found = self.tick_and_publish(listener).await?;
        self.rate.observe(self.last_seq, std::time::Instant::now());
        if found {
            self.patience = SHORTEST_PATIENCE;
            self.empty_ticks = 0;
            self.pace(started).await;
            return Ok(true);
        }
        if self.empty_ticks < self.rate.patience_in_ticks(self.tick_interval) {
            self.empty_ticks += 1;
            self.pace(started).await;
            return Ok(false);
        }
        let wait = sqlx::query_scalar("SELECT pgfeed.await_writers(make_interval(secs => $1))")
            .bind(self.patience.as_secs_f64())
            .fetch_one(&mut *listener);
        let waiting: bool = within(ROUND_TRIP_TIMEOUT + self.patience, wait).await?;
        if !waiting {
            self.patience = (self.patience * 2).min(LONGEST_PATIENCE);
            return Ok(false);
        }
        self.patience = SHORTEST_PATIENCE;
        // Writers that committed before the lock was granted sent nothing: one last look.
        self.waiting = true;
        if self.tick_and_publish(listener).await? {
            self.stop_waiting();
            self.empty_ticks = 0;
            return Ok(true);
        }
        Ok(false)
    }

    /// After a busy tick, waits out the rest of `tick_interval` from its
    /// start. Under load a leader ticking back to back sequences one to three
    /// transactions a tick, and its backend's executor start-up and PL/pgSQL
    /// took a fifth of a 2-core machine from the writers; a tick that waits
    /// finds more to sequence at once. An idle feed is not slowed: the tick
    /// after a wake-up, and the first after a quiet spell, start at once.
    /// The wait is a thread's sleep, not a tokio timer: a timer wakes on the
    /// next millisecond of its wheel, which would make 1 ms anything up to 2.
    async fn pace(&self, started: std::time::Instant) {
        let rest = self.tick_interval.saturating_sub(started.elapsed());
        if !rest.is_zero() {
            // Only a panicking sleep fails, and then there is nothing to wait for.
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
        }
    }

    /// A tick that reads what it sequenced in the same round trip, then
    /// publishes it; true when it gave seqs.
    async fn tick_and_publish(&mut self, listener: &mut PgListener) -> sqlx::Result<bool> {
        self.metrics.ticks.inc();
        let before = self.last_seq;
        if self.partial.is_some() {
            // A transaction published in part: the catch-up knows how to continue it.
            let first = self.before_tick();
            self.work.bound(log::tick(&mut *listener, first)).await?;
            self.catch_up().await?;
            return Ok(self.last_seq > before);
        }
        let first = self.before_tick();
        let (head, changes, _) = self
            .work
            .bound(log::tick_and_read(
                &mut *listener,
                first,
                log::Cursor::after(before),
                LOG_PAGE,
            ))
            .await?;
        let full_page = changes.len() as i64 >= LOG_PAGE;
        self.publish(changes);
        if full_page || self.last_seq < head {
            self.catch_up().await?;
        }
        Ok(self.last_seq > before)
    }

    /// The leader ticks again; the next tick lets go of the waiting lock
    /// in its own round trip.
    fn stop_waiting(&mut self) {
        self.waiting = false;
        self.woken = true;
    }

    /// What the next tick runs first: letting go of the waiting lock, once
    /// after a wake-up. (A tick that fails ends its connection, lock and all.)
    fn before_tick(&mut self) -> log::Before {
        std::mem::take(&mut self.woken).then(|| RELEASE_WAITING.as_str())
    }

    /// A quiet connection: the leader ticks (a liveness check too); a follower
    /// tries for the lead, which a departed leader leaves free; both then make
    /// sure they have missed nothing.
    async fn quiet_check(&mut self, listener: &mut PgListener) -> sqlx::Result<()> {
        if self.leader {
            let before = self.before_tick();
            self.work.bound(log::tick(&mut *listener, before)).await?;
        } else {
            self.leader = try_lock(listener, LEADER_LOCK).await?;
            if self.leader {
                unshare_lock(listener, FOLLOWER_LOCK).await?;
                tracing::info!(seq = self.last_seq, "this listener now ticks");
            }
        }
        let reader = self.reader.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        if self.work.bound(log::head(reader)).await? > self.last_seq {
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

    /// Encodes `changes`, then hands their events to the hub together: a
    /// connection woken by the first finds the rest already there and writes
    /// them in one go, not one wake-up and one write each.
    fn publish(&mut self, changes: Vec<Change>) {
        let mut events = Vec::with_capacity(changes.len());
        let mut written = Vec::with_capacity(changes.len());
        {
            let mut state = self.pearl.lock().expect("pearl state lock");
            let mut encoder = Encoder {
                metrics: &self.metrics,
                pearl: &mut state,
                count_untyped: true,
                names: &mut self.names,
            };
            for change in changes {
                let (seq, whole, tx_index) = (change.seq, change.is_last_of_tx(), change.tx_index);
                if whole {
                    written.push(change.written);
                }
                events.extend(encoder.encode(change));
                self.partial = if whole { None } else { Some((seq, tx_index + 1)) };
                if whole {
                    self.last_seq = self.last_seq.max(seq);
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_rate_decides_how_many_empty_ticks_come_before_waiting() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        assert_eq!(rate.patience_in_ticks(TWO_MS), EMPTY_TICKS_WHEN_QUIET);
        // The first observation is where counting starts: a leader that
        // starts at head 1,000,000 has not given a million seqs.
        rate.observe(0, start);
        // Inside a window nothing is decided, however many were given.
        rate.observe(1_000, start + RATE_WINDOW / 2);
        assert_eq!(rate.patience_in_ticks(TWO_MS), EMPTY_TICKS_WHEN_QUIET);
        // 1,000 in 100 ms: busy.
        rate.observe(1_000, start + RATE_WINDOW);
        assert_eq!(rate.patience_in_ticks(TWO_MS), EMPTY_TICKS_WHEN_BUSY);
        // 10 in the next 100 ms (100 a second): quiet again.
        rate.observe(1_010, start + RATE_WINDOW * 2);
        assert_eq!(rate.patience_in_ticks(TWO_MS), EMPTY_TICKS_WHEN_QUIET);
        // A leader that waited a long time comes back quiet, whatever it gives first.
        rate.observe(1_060, start + Duration::from_secs(60));
        assert_eq!(rate.patience_in_ticks(TWO_MS), EMPTY_TICKS_WHEN_QUIET);
    }

    const TWO_MS: Duration = Duration::from_millis(2);

    #[test]
    fn a_busy_leader_ticks_through_the_same_span_whatever_the_interval() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        rate.observe(0, start);
        rate.observe(1_000, start + RATE_WINDOW);
        assert_eq!(rate.patience_in_ticks(TWO_MS), 8);
        assert_eq!(rate.patience_in_ticks(Duration::from_millis(1)), 16);
        assert_eq!(rate.patience_in_ticks(Duration::from_micros(100)), 64);
        // Never fewer than EMPTY_TICKS_WHEN_BUSY, and 8 when ticks come back to back.
        assert_eq!(rate.patience_in_ticks(Duration::from_millis(10)), EMPTY_TICKS_WHEN_BUSY);
        assert_eq!(rate.patience_in_ticks(Duration::ZERO), EMPTY_TICKS_WHEN_BUSY);
        // Quiet, the interval does not matter.
        rate.observe(1_001, start + RATE_WINDOW * 2);
        assert_eq!(rate.patience_in_ticks(Duration::from_millis(1)), EMPTY_TICKS_WHEN_QUIET);
    }

    #[test]
    fn a_leader_starting_at_a_high_head_is_not_busy() {
        let start = Instant::now();
        let mut rate = Rate::new(start);
        // Its first tick, a window after it was made, finds the head at a million.
        rate.observe(1_000_000, start + RATE_WINDOW);
        assert_eq!(rate.patience_in_ticks(TWO_MS), EMPTY_TICKS_WHEN_QUIET);
        // Ten more in the next window: quiet.
        rate.observe(1_000_010, start + RATE_WINDOW * 2);
        assert_eq!(rate.patience_in_ticks(TWO_MS), EMPTY_TICKS_WHEN_QUIET);
    }
}
