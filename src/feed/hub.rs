//! The hub: every event once, in commit order, to every connection.
//!
//! A single ring of shared, already-encoded events, kept in batches: each
//! page the listener publishes is cut into runs of at most [`BATCH`] events
//! that lie side by side in memory. Each connection holds a cursor into the
//! ring and the batch it is reading, not a copy; it takes the ring's lock and
//! a batch's reference count once per batch, not once per event (per event,
//! those two were most of what a delivery cost beyond the socket write). A
//! connection that falls more than the ring's capacity (in events) behind is
//! told it lagged and catches up from the log (the ring is its bounded
//! queue), so a slow client never holds memory or delays anyone else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use super::event::Event;

/// The most events in one batch. A connection stuck in a socket write keeps
/// its batch alive, so this bounds what a stuck client holds; the per-batch
/// costs are spread over this many deliveries.
pub const BATCH: usize = 32;

/// Events published together, side by side.
#[derive(Debug)]
pub struct Batch {
    /// How many events the hub published before this batch's first.
    pub first: u64,
    pub events: Box<[Event]>,
}

/// The ring: the newest batches, at most `capacity` events in all (the newest
/// batch is kept whatever its size).
struct Ring {
    batches: VecDeque<Arc<Batch>>,
    /// The number of `batches[0]`: batches are numbered from 0 as published.
    first: u64,
    /// Events in `batches`.
    events: usize,
    /// The checked position of the head (`Shared::head`), written with it.
    head_position: Arc<str>,
    /// Which history the ring holds: a reset (the database's history changed
    /// under the feed) starts a new one, and every cursor of an older one is told.
    generation: u64,
}

impl Ring {
    fn end(&self) -> u64 {
        self.first + self.batches.len() as u64
    }
}

struct Shared {
    ring: RwLock<Ring>,
    /// `Ring::end`, readable without the lock: a connection that has read
    /// everything finds out without taking it.
    end: AtomicU64,
    /// Events ever published; written under the ring's write lock.
    published: AtomicU64,
    /// The last transaction published whole; written under the ring's write
    /// lock, so a reader holding the lock sees the head that goes with the batches.
    head: AtomicI64,
    /// `Ring::generation`, readable without the lock.
    generation: AtomicU64,
    /// Woken on every publish.
    published_news: Notify,
    capacity: usize,
}

/// Fan-out of live events. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl Hub {
    /// A hub whose ring holds `capacity` events.
    pub fn new(capacity: usize) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                ring: RwLock::new(Ring {
                    batches: VecDeque::new(),
                    first: 0,
                    events: 0,
                    head_position: "0".into(),
                    generation: 0,
                }),
                end: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                published: AtomicU64::new(0),
                head: AtomicI64::new(0),
                published_news: Notify::new(),
                capacity: capacity.max(1),
            }),
        }
    }

    /// Hands `events` to every subscriber, in order, and records that every
    /// transaction up to `head` is published whole. A subscriber joins either
    /// before all of them or after all of them and the head that goes with them.
    /// Subscribers are woken only when there is news: a tick that found
    /// nothing (every quiet check, and the empty ticks of a busy leader)
    /// would otherwise cost every connection a poll of its session.
    pub fn publish(&self, events: Vec<Event>, head: i64) {
        let shared = &*self.shared;
        let news = !events.is_empty() || head > shared.head.load(Ordering::SeqCst);
        if !news {
            return;
        }
        {
            let mut ring = shared.ring.write().expect("hub ring lock");
            let mut events = events.into_iter().peekable();
            while events.peek().is_some() {
                let run: Box<[Event]> = events.by_ref().take(BATCH).collect();
                let size = run.len();
                let first = shared.published.fetch_add(size as u64, Ordering::Relaxed);
                ring.batches.push_back(Arc::new(Batch { first, events: run }));
                ring.events += size;
                while ring.events > shared.capacity && ring.batches.len() > 1 {
                    let oldest = ring.batches.pop_front().expect("more than one batch");
                    ring.events -= oldest.events.len();
                    ring.first += 1;
                }
            }
            if head > shared.head.load(Ordering::SeqCst) {
                if let Some(position) = closing_position(&ring, head) {
                    ring.head_position = position;
                }
                shared.head.store(head, Ordering::SeqCst);
            }
            shared.end.store(ring.end(), Ordering::Release);
        }
        shared.published_news.notify_waiters();
    }

    /// Records that every transaction up to `seq` (at `position`) has been published.
    pub fn set_head(&self, seq: i64, position: Arc<str>) {
        let shared = &*self.shared;
        {
            let mut ring = shared.ring.write().expect("hub ring lock");
            if seq <= shared.head.load(Ordering::SeqCst) {
                return;
            }
            ring.head_position = position;
            shared.head.store(seq, Ordering::SeqCst);
        }
        shared.published_news.notify_waiters();
    }

    /// The database's history changed under the feed (a reinstall, a restore,
    /// a failover that lost commits): what the ring holds belongs to the old
    /// one. Every cursor is told (`Behind::Reset`), and the feed goes on from
    /// `head` at `position` of the new history.
    pub fn reset(&self, head: i64, position: Arc<str>) {
        let shared = &*self.shared;
        {
            let mut ring = shared.ring.write().expect("hub ring lock");
            ring.generation += 1;
            ring.first = ring.end();
            ring.batches.clear();
            ring.events = 0;
            ring.head_position = position;
            shared.head.store(head, Ordering::SeqCst);
            shared.generation.store(ring.generation, Ordering::SeqCst);
            shared.end.store(ring.end(), Ordering::Release);
        }
        shared.published_news.notify_waiters();
    }

    /// The last transaction published whole.
    pub fn head(&self) -> i64 {
        self.shared.head.load(Ordering::SeqCst)
    }

    /// The last transaction published whole, and its checked position.
    pub fn head_and_position(&self) -> (i64, Arc<str>) {
        let ring = self.shared.ring.read().expect("hub ring lock");
        (self.shared.head.load(Ordering::SeqCst), ring.head_position.clone())
    }

    /// A cursor at the live end of the ring, and the head it starts after
    /// with its position: every event after that head is the cursor's to read.
    pub fn subscribe(&self) -> (Cursor, i64, Arc<str>) {
        let ring = self.shared.ring.read().expect("hub ring lock");
        let cursor = Cursor {
            shared: self.shared.clone(),
            next: ring.end(),
            generation: ring.generation,
        };
        (
            cursor,
            self.shared.head.load(Ordering::SeqCst),
            ring.head_position.clone(),
        )
    }
}

/// The position of the newest batch's transaction `head`, when it closes there.
fn closing_position(ring: &Ring, head: i64) -> Option<Arc<str>> {
    let last = ring.batches.back()?.events.last()?;
    (last.seq == head && last.closes_tx).then(|| last.position.clone())
}

/// Why a cursor has nothing to hand out.
#[derive(Debug, PartialEq, Eq)]
pub enum Behind {
    /// Everything published was read.
    Empty,
    /// The ring let go of batches this cursor had not read.
    Lagged,
    /// The ring was reset: the cursor belongs to a history that is gone.
    Reset,
}

/// One subscriber's place in the ring.
pub struct Cursor {
    shared: Arc<Shared>,
    /// The number of the next batch to read.
    next: u64,
    /// The ring's generation when this cursor joined.
    generation: u64,
}

impl Cursor {
    /// The next batch, if it is there.
    pub fn try_next(&mut self) -> Result<Arc<Batch>, Behind> {
        if self.stale() {
            return Err(Behind::Reset);
        }
        if self.next == self.shared.end.load(Ordering::Acquire) {
            return Err(Behind::Empty);
        }
        let ring = self.shared.ring.read().expect("hub ring lock");
        if self.next < ring.first {
            return Err(Behind::Lagged);
        }
        match ring.batches.get((self.next - ring.first) as usize) {
            Some(batch) => {
                self.next += 1;
                Ok(batch.clone())
            }
            None => Err(Behind::Empty),
        }
    }

    /// The ring was reset since this cursor joined.
    pub fn stale(&self) -> bool {
        self.shared.generation.load(Ordering::SeqCst) != self.generation
    }

    /// The next batch, waiting for it. Cancel-safe: a batch is taken only
    /// when it is returned.
    pub async fn next(&mut self) -> Result<Arc<Batch>, Behind> {
        let shared = self.shared.clone();
        loop {
            // A woken connection finds its batch there: no place in the waiting
            // list, whose lock every connection on every core shares.
            match self.try_next() {
                Err(Behind::Empty) => {}
                taken => return taken,
            }
            let news = shared.published_news.notified();
            tokio::pin!(news);
            // Waiting from here on: a publish after the check below wakes us.
            news.as_mut().enable();
            match self.try_next() {
                Err(Behind::Empty) => news.await,
                taken => return taken,
            }
        }
    }

    /// Events published after `seen` of them (the lag of a subscriber that has seen `seen`).
    pub fn waiting_after(&self, seen: u64) -> u64 {
        self.shared.published.load(Ordering::Relaxed).saturating_sub(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::{Behind, Hub, BATCH};
    use crate::feed::event::Event;
    use crate::feed::pearl::Audience;
    use std::sync::Arc;

    fn events(seqs: std::ops::Range<i64>) -> Vec<Event> {
        seqs.map(|seq| Event {
            seq,
            kind: "t_created".into(),
            table: "t".into(),
            rows: Arc::new((None, None)),
            audience: Audience::All,
            opens_tx: true,
            closes_tx: true,
            frame: seq.to_string().into(),
            envelope_frame: Default::default(),
            sse_frame: Default::default(),
            position: format!("{seq}.0000000a").into(),
            schema: None,
        })
        .collect()
    }

    #[test]
    fn a_page_is_read_in_batches_and_a_new_cursor_starts_after_its_head() {
        let hub = Hub::new(1000);
        let (mut early, head, _) = hub.subscribe();
        assert_eq!(head, 0);
        hub.publish(events(1..(2 * BATCH as i64 + 2)), 2 * BATCH as i64 + 1);
        let (mut late, head, _) = hub.subscribe();
        assert_eq!(head, 2 * BATCH as i64 + 1, "a cursor and its head go together");
        assert_eq!(late.try_next().unwrap_err(), Behind::Empty);

        let sizes: Vec<usize> = std::iter::from_fn(|| early.try_next().ok())
            .map(|b| b.events.len())
            .collect();
        assert_eq!(sizes, [BATCH, BATCH, 1]);
        assert_eq!(early.try_next().unwrap_err(), Behind::Empty);
        assert_eq!(early.waiting_after(2 * BATCH as u64), 1);
    }

    #[test]
    fn the_ring_holds_its_capacity_in_events_and_an_overtaken_cursor_lags() {
        let hub = Hub::new(3 * BATCH);
        let (mut slow, _, _) = hub.subscribe();
        let (mut fast, _, _) = hub.subscribe();
        for page in 0..4 {
            let first = page * BATCH as i64 + 1;
            hub.publish(events(first..first + BATCH as i64), first + BATCH as i64 - 1);
            assert_eq!(fast.try_next().unwrap().first, page as u64 * BATCH as u64);
        }
        assert_eq!(
            slow.try_next().unwrap_err(),
            Behind::Lagged,
            "the oldest batch was let go"
        );
        // A page larger than the ring overtakes every cursor.
        hub.publish(events(1000..1000 + 4 * BATCH as i64), 2000);
        assert_eq!(fast.try_next().unwrap_err(), Behind::Lagged);

        // The newest batch is kept whatever the capacity.
        let tiny = Hub::new(1);
        let (mut cursor, _, _) = tiny.subscribe();
        tiny.publish(events(1..BATCH as i64 + 1), BATCH as i64);
        assert_eq!(cursor.try_next().unwrap().events.len(), BATCH);
    }

    #[tokio::test]
    async fn a_waiting_cursor_wakes_on_publish() {
        let hub = Hub::new(64);
        let (mut cursor, _, _) = hub.subscribe();
        let waiting = tokio::spawn(async move { cursor.next().await.map(|b| b.events[0].seq) });
        tokio::task::yield_now().await;
        hub.publish(events(7..8), 7);
        assert_eq!(waiting.await.unwrap(), Ok(7));
    }

    #[test]
    fn a_publish_without_news_wakes_nobody() {
        let hub = Hub::new(64);
        hub.publish(events(7..8), 7);
        let news = hub.shared.published_news.notified();
        tokio::pin!(news);
        news.as_mut().enable();
        // No events, and a head already published: nothing to wake for.
        hub.publish(Vec::new(), 7);
        assert!(futures_util::FutureExt::now_or_never(news.as_mut()).is_none());
        // A head that moves is news, even without events.
        hub.publish(Vec::new(), 8);
        assert!(futures_util::FutureExt::now_or_never(news.as_mut()).is_some());
    }

    #[test]
    fn the_head_keeps_its_position_and_a_reset_tells_every_cursor() {
        let hub = Hub::new(64);
        hub.set_head(4, "4.00000004".into());
        hub.publish(events(5..7), 6);
        let (mut cursor, head, position) = hub.subscribe();
        assert_eq!((head, &*position), (6, "6.0000000a"));
        hub.publish(events(7..8), 7);
        assert!(cursor.try_next().is_ok());
        hub.reset(2, "2.00000002".into());
        assert_eq!(cursor.try_next().unwrap_err(), Behind::Reset);
        assert!(cursor.stale());
        let (mut fresh, head, position) = hub.subscribe();
        assert_eq!(
            (head, &*position),
            (2, "2.00000002"),
            "the new history's head, even below the old"
        );
        assert_eq!(fresh.try_next().unwrap_err(), Behind::Empty);
        hub.publish(events(3..4), 3);
        assert_eq!(fresh.try_next().unwrap().events[0].seq, 3);
    }
}
