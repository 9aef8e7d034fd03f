//! The sequencer: which listener ticks, and when. One listener among all
//! instances ticks: the one holding the leader lock (a session advisory lock
//! on its LISTEN connection). While it waits for work it holds a second lock,
//! which makes writers wake it with a notification; while it is ticking,
//! writers share that lock and send nothing. The others share a third lock,
//! which makes every tick announce its head to them as `{"seq": N}`
//! (migrations/capture/0004; with no follower, ticks send nothing), and take
//! over the lead when its holder's session ends.
//!
//! The sequencer decides; the listener (`feed::listener`) runs the ticks and
//! publishes what they sequenced.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;

use super::bounded::{within, ROUND_TRIP_TIMEOUT};
use super::log;

/// How long a listener that is not ticking waits for a notification before
/// acting without one: a leader checks its connection is alive and ticks.
const QUIET_CHECK: Duration = Duration::from_secs(3);
/// How often a follower tries for the lead: while nobody ticks, writers send
/// nothing, so this bounds how long a departed leader holds the feed up.
const FOLLOWER_CHECK: Duration = Duration::from_secs(1);
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
pub(super) async fn try_lock(listener: &mut PgListener, key: i32) -> sqlx::Result<bool> {
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

/// The lead, and the leader's pace.
pub struct Sequencer {
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
    /// Shortest time from one busy tick's start to the next (`--tick-interval`).
    tick_interval: Duration,
    /// How long committed transactions may wait for a seq before a follower
    /// ends the leader's session (`--stall-timeout`).
    stall_timeout: Duration,
    /// A follower that hears ticks' announcements (on a standby it polls the
    /// standby instead, and ticks announce nothing to it).
    hears: bool,
}

impl Sequencer {
    pub fn new(tick_interval: Duration, stall_timeout: Duration) -> Sequencer {
        Sequencer {
            leader: false,
            waiting: false,
            woken: false,
            patience: SHORTEST_PATIENCE,
            empty_ticks: EMPTY_TICKS_WHEN_BUSY,
            rate: Rate::new(Instant::now()),
            tick_interval,
            stall_timeout,
            hears: true,
        }
    }

    /// Following, it wants no announcements: it looks for new seqs itself
    /// (a follower on a standby, which polls the standby).
    pub fn without_announcements(mut self) -> Sequencer {
        self.hears = false;
        self
    }

    /// This listener ticks.
    pub fn leads(&self) -> bool {
        self.leader
    }

    /// The leader is ticking, not waiting for writers.
    pub fn ticking(&self) -> bool {
        self.leader && !self.waiting
    }

    /// Tries for the lead on a fresh connection; a follower shares the
    /// follower lock before its first read of the log, so every tick after
    /// that read announces. `after_ending_one`: this instance just ended its
    /// previous backend, which lets go of its locks only as it exits. A new
    /// connection starts ticking (not waiting).
    pub async fn claim(&mut self, listener: &mut PgListener, after_ending_one: bool) -> sqlx::Result<()> {
        self.leader = try_lock(listener, LEADER_LOCK).await?;
        for _ in 0..20 {
            if self.leader || !after_ending_one {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.leader = try_lock(listener, LEADER_LOCK).await?;
        }
        if !self.leader && self.hears {
            share_lock(listener, FOLLOWER_LOCK).await?;
        }
        self.waiting = false;
        self.woken = false;
        Ok(())
    }

    /// A quiet follower tries for the lead, which a departed leader leaves free.
    pub async fn take_over_if_free(&mut self, listener: &mut PgListener) -> sqlx::Result<bool> {
        self.leader = try_lock(listener, LEADER_LOCK).await?;
        if self.leader && self.hears {
            unshare_lock(listener, FOLLOWER_LOCK).await?;
        }
        Ok(self.leader)
    }

    /// A follower that sees committed transactions wait longer than the stall
    /// timeout ends the session holding the lead (a leader alive but hung:
    /// its process stopped, its host frozen), then takes the lead. Postgres
    /// fences the old leader: its next tick finds its connection gone, and it
    /// comes back as a follower. True when it ended a session (this listener
    /// takes the lead as soon as the session's locks are gone).
    pub async fn fence_hung_leader(&mut self, listener: &mut PgListener, unsequenced: Duration) -> sqlx::Result<bool> {
        if self.leader || unsequenced <= self.stall_timeout {
            return Ok(false);
        }
        let end = sqlx::query_scalar::<_, bool>(
            "SELECT pg_terminate_backend(pid) FROM (SELECT pgfeed.leader_pid() AS pid) l WHERE pid IS NOT NULL",
        )
        .fetch_optional(&mut *listener);
        match within(ROUND_TRIP_TIMEOUT, end).await {
            Ok(Some(true)) => {}
            // Nobody holds the lead (it was let go meanwhile), or the session was already ending.
            Ok(_) => return Ok(false),
            // Not allowed to (another role, without pg_signal_backend): /readyz says stalled.
            Err(sqlx::Error::Database(err)) => {
                tracing::warn!(error = %err, "cannot end the session of a leader that does not tick");
                return Ok(false);
            }
            Err(err) => return Err(err),
        }
        // The ended backend lets go of its locks as it exits; the next quiet
        // check tries again if it has not yet.
        for _ in 0..20 {
            if self.take_over_if_free(listener).await? {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(true)
    }

    /// How long a listener that is not ticking waits for a notification
    /// before acting without one.
    pub fn quiet_after(&self) -> Duration {
        if self.leader {
            QUIET_CHECK
        } else {
            FOLLOWER_CHECK
        }
    }

    /// A writer's wake-up: true when it ends the leader's wait (tick until a
    /// tick finds nothing).
    pub fn woken_by_writer(&mut self) -> bool {
        if self.leader && self.waiting {
            self.stop_waiting();
            return true;
        }
        false
    }

    /// After a tick that did (`found`) or did not give seqs, the last seq
    /// given being `last_seq`: true to keep ticking (after `pace`), false
    /// when the leader should wait for writers (`await_writers`). Once a few
    /// ticks in a row have found nothing (see `Rate`), the leader waits.
    pub fn keep_ticking(&mut self, found: bool, last_seq: i64) -> bool {
        self.rate.observe(last_seq, Instant::now());
        if found {
            self.patience = SHORTEST_PATIENCE;
            self.empty_ticks = 0;
            return true;
        }
        if self.empty_ticks < self.rate.patience_in_ticks(self.tick_interval) {
            self.empty_ticks += 1;
            return true;
        }
        false
    }

    /// Waits for the writers that share the waiting lock (each counting on
    /// ticks) to commit, then holds it: true when the leader now waits to be
    /// woken; false when they were still committing (it ticks again, and
    /// waits longer next time: one long transaction holds it).
    pub async fn await_writers(&mut self, listener: &mut PgListener) -> sqlx::Result<bool> {
        let wait = sqlx::query_scalar("SELECT pgfeed.await_writers(make_interval(secs => $1))")
            .bind(self.patience.as_secs_f64())
            .fetch_one(&mut *listener);
        let waiting: bool = within(ROUND_TRIP_TIMEOUT + self.patience, wait).await?;
        if !waiting {
            self.patience = (self.patience * 2).min(LONGEST_PATIENCE);
            return Ok(false);
        }
        self.patience = SHORTEST_PATIENCE;
        self.waiting = true;
        Ok(true)
    }

    /// The last look after taking the waiting lock found work: the leader ticks on.
    pub fn found_work_while_settling(&mut self) {
        self.stop_waiting();
        self.empty_ticks = 0;
    }

    /// The leader ticks again; the next tick lets go of the waiting lock
    /// in its own round trip.
    fn stop_waiting(&mut self) {
        self.waiting = false;
        self.woken = true;
    }

    /// What the next tick runs first: letting go of the waiting lock, once
    /// after a wake-up. (A tick that fails ends its connection, lock and all.)
    pub fn before_tick(&mut self) -> log::Before {
        std::mem::take(&mut self.woken).then(|| RELEASE_WAITING.as_str())
    }

    /// After a busy tick, waits out the rest of `tick_interval` from its
    /// start. Under load a leader ticking back to back sequences one to three
    /// transactions a tick, and its backend's executor start-up and PL/pgSQL
    /// took a fifth of a 2-core machine from the writers; a tick that waits
    /// finds more to sequence at once. An idle feed is not slowed: the tick
    /// after a wake-up, and the first after a quiet spell, start at once.
    /// The wait is a thread's sleep, not a tokio timer: a timer wakes on the
    /// next millisecond of its wheel, which would make 1 ms anything up to 2.
    pub async fn pace(&self, started: std::time::Instant) {
        let rest = self.tick_interval.saturating_sub(started.elapsed());
        if !rest.is_zero() {
            // Only a panicking sleep fails, and then there is nothing to wait for.
            let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
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
