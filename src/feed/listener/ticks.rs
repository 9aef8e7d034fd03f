//! The listener's ticks (when it leads) and its quiet look at the log (when
//! nothing arrives): the sequencer decides whether and when; these run them.

use sqlx::postgres::PgListener;

use super::{Listener, CHANNEL, LOG_PAGE, POLL_FASTEST, POLL_SLOWEST};
use crate::feed::bounded::{within, ROUND_TRIP_TIMEOUT};
use crate::feed::log;

impl Listener {
    /// One tick, and delivery of what it gave seqs to; true when it found work.
    /// The sequencer then says whether to tick again (after its pause) or to
    /// wait for writers.
    pub(super) async fn tick_round(&mut self, listener: &mut PgListener) -> sqlx::Result<bool> {
        let started = std::time::Instant::now();
        let found = self.tick_and_publish(listener).await?;
        if self.sequencer.keep_ticking(found, self.last_seq) {
            self.sequencer.pace(started).await;
            return Ok(found);
        }
        if !self.sequencer.await_writers(listener).await? {
            return Ok(false);
        }
        // Writers that committed before the lock was granted sent nothing: one last look.
        if self.tick_and_publish(listener).await? {
            self.sequencer.found_work_while_settling();
            return Ok(true);
        }
        Ok(false)
    }

    /// A tick that reads what it sequenced in the same round trip, then
    /// publishes it; true when it gave seqs.
    /// Counts a tick and when it ran.
    pub(super) fn note_tick(&self) {
        self.metrics.ticks.inc();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.metrics.last_tick_timestamp.set(now);
    }

    pub(super) async fn tick_and_publish(&mut self, listener: &mut PgListener) -> sqlx::Result<bool> {
        self.note_tick();
        let before = self.last_seq;
        if self.partial.is_some() {
            // A transaction published in part: the catch-up knows how to continue it.
            let first = self.sequencer.before_tick();
            self.work.bound(log::tick(&mut *listener, first)).await?;
            self.catch_up().await?;
            return Ok(self.last_seq > before);
        }
        let first = self.sequencer.before_tick();
        let (head, changes, _) = self
            .work
            .bound(log::tick_and_read(
                &mut *listener,
                first,
                log::Cursor::after(before),
                LOG_PAGE,
            ))
            .await?;
        self.heard = self.heard.max(head);
        if head < before {
            // The head went back: another history (see `verify_history`).
            self.verify_history().await?;
            return Ok(true);
        }
        let full_page = changes.len() as i64 >= LOG_PAGE;
        self.publish(changes);
        if full_page || self.last_seq < head {
            self.catch_up().await?;
        }
        Ok(self.last_seq > before)
    }

    /// A quiet connection: the leader ticks (a liveness check too); a follower
    /// tries for the lead, which a departed leader leaves free; both then make
    /// sure they have missed nothing.
    pub(super) async fn quiet_check(&mut self, listener: &mut PgListener) -> sqlx::Result<()> {
        if self.sequencer.leads() {
            let before = self.sequencer.before_tick();
            self.note_tick();
            self.work.bound(log::tick(&mut *listener, before)).await?;
        } else if self.sequencer.take_over_if_free(listener).await? {
            if self.standby.is_some() {
                // Writers' wake-ups are for the leader.
                within(ROUND_TRIP_TIMEOUT, listener.listen(CHANNEL)).await?;
            }
            tracing::info!(seq = self.last_seq, "this listener now ticks");
        }
        let mut standing = self.verify_history().await?;
        if standing.head > self.last_seq {
            self.catch_up().await?;
        }
        if self.standby.is_some() {
            // A standby's lag is not a stalled leader: the primary says.
            let primary = self.work.bound(log::standing(&mut *listener, self.last_seq)).await?;
            standing.unsequenced = primary.unsequenced;
            self.metrics
                .unsequenced_age_ms
                .set(standing.unsequenced.as_millis() as i64);
        }
        // Committed transactions waiting on a leader that holds the lead and does not tick.
        if self.sequencer.fence_hung_leader(listener, standing.unsequenced).await? {
            self.metrics.leaders_fenced.inc();
            tracing::warn!(
                seq = self.last_seq,
                waited = ?standing.unsequenced,
                leads = self.sequencer.leads(),
                "ended the session of a leader that held the lead without ticking"
            );
        }
        self.metrics.leader.set(i64::from(self.sequencer.leads()));
        Ok(())
    }

    /// A follower on a standby: delivers what the standby has that is new,
    /// then sets when to look again; the quiet check once in a while.
    pub(super) async fn look_at_the_standby(&mut self, listener: &mut PgListener) -> sqlx::Result<()> {
        if self.last_quiet_check.elapsed() >= self.sequencer.quiet_after() {
            self.last_quiet_check = std::time::Instant::now();
            return self.quiet_check(listener).await;
        }
        let reader = self.reader.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        let head = self.work.bound(log::head(reader)).await?;
        if head > self.last_seq {
            self.heard = self.heard.max(head);
            self.catch_up().await?;
            self.poll = POLL_FASTEST;
        } else {
            self.poll = (self.poll * 2).min(POLL_SLOWEST);
        }
        Ok(())
    }
}
