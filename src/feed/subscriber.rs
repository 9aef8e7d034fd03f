//! One subscriber's stream: every event it wants, in commit order, whole
//! transactions, exactly once, whatever the transport (WebSocket, SSE).
//!
//! It follows the hub while it keeps up. When it falls behind the hub's ring,
//! resumes, or joins in the middle of a transaction, it reads the log after the
//! last transaction it delivered (continuing a half-delivered one, never
//! repeating it), then follows the hub again, dropping what it already has.
//! Per table, a snapshot's watermark hides the events the snapshot already holds.
//!
//! [`Subscriber::next`] is cancel-safe: a transport may `select!` on it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::event::{Event, SchemaChange};
use super::hub::{Batch, Behind, Cursor};
use super::pearl::Audience;
use super::replay::read_ahead;
use super::Feed;
use crate::auth::Scope;
use crate::filter::Filter;

/// What the subscriber hands its transport next. An event is lent, not
/// copied: the transport takes its frame before it asks for more.
#[derive(Debug)]
pub enum Next<'a> {
    /// An event to send.
    Event(&'a Event),
    /// Transaction `seq` is now whole for this subscriber (something of it was
    /// sent): a resume cursor may name it (SSE's `id:`).
    Whole(i64),
    /// Nothing more is waiting after what was handed out: a transport flushes now.
    Idle,
    /// The log could not be read to fill a gap: the client must re-snapshot.
    LogUnavailable,
    /// The database's history changed under the feed (a reinstall, a restore,
    /// a failover that lost commits): what the client holds after `from` is of
    /// another history. The client must re-snapshot; the stream goes on after
    /// the new history's head ([`Subscriber::last_position`]).
    HistoryChanged { from: i64 },
}

/// Where a handed-out event lies: in the live batch or the replay's page.
#[derive(Debug, Clone, Copy)]
enum At {
    Live(usize),
    Replayed(usize),
}

/// What was decided, before it is lent out.
enum Out {
    Event(At),
    Whole(i64),
    Idle,
    LogUnavailable,
    HistoryChanged(i64),
}

/// What `Subscriber::step` found: something to hand out, or what to wait for.
enum Step {
    Ready(Out),
    AwaitPage,
    AwaitHub,
}

/// A replay from the log in progress. A task of its own reads and encodes
/// the pages (one page ahead of the transport), so the socket never waits on a
/// log round trip and the encoding runs beside the sending.
struct Replay {
    pages: tokio::sync::mpsc::Receiver<sqlx::Result<Vec<Event>>>,
    /// Ends the reading task when the replay ends or is dropped.
    _reader: tokio_util::task::AbortOnDropHandle<()>,
    /// (seq, n): the first n events of transaction seq were delivered already.
    skip: Option<(i64, usize)>,
    /// The page being handed out, and the index of its next event.
    page: Vec<Event>,
    at: usize,
}

pub struct Subscriber {
    sources: Feed,
    /// Which kind of endpoint this is: row events (`Native`) or PEARL's messages.
    audience: Audience,
    /// Our place in the hub's ring.
    cursor: Cursor,
    /// The batch being read from the hub, and the index of its next event.
    live: Option<(Arc<Batch>, usize)>,
    /// What the client asked for; `None`: nothing yet.
    pub filter: Option<Filter>,
    /// What the client may see; `None`: nothing (not authenticated yet).
    pub scope: Option<Scope>,
    /// The last transaction delivered whole.
    last_seq: i64,
    /// Its checked position.
    last_position: Arc<str>,
    /// The history changed after this seq; to be said next.
    history_changed: Option<i64>,
    /// The transaction being delivered (from the hub or the log), and how many of its events
    /// were handled (sent or filtered out).
    open: Option<(i64, usize)>,
    /// Whether any event of the open transaction was sent.
    sent_in_open: bool,
    /// A transaction whose last event was just handled, to be named whole next.
    whole: Option<i64>,
    /// Per table, the watermark of the client's latest snapshot of it.
    watermarks: HashMap<String, i64>,
    replay: Option<Replay>,
    /// Something was handed out since the last `Idle`.
    busy: bool,
    /// Events taken from the hub, for sampling the lag.
    received: u64,
}

/// The lag is measured about once per this many events from the hub.
const LAG_SAMPLE: u64 = 64;

impl Feed {
    /// A stream for one client of `audience`, at the live end.
    pub fn subscriber(&self, audience: Audience) -> Subscriber {
        Subscriber::new(self.clone(), audience)
    }
}

impl Subscriber {
    /// A subscriber at the live end: it receives everything after the hub's head.
    pub fn new(sources: Feed, audience: Audience) -> Subscriber {
        let (cursor, last_seq, last_position) = sources.hub.subscribe();
        Subscriber {
            sources,
            audience,
            cursor,
            live: None,
            filter: None,
            scope: None,
            last_seq,
            last_position,
            history_changed: None,
            open: None,
            sent_in_open: false,
            whole: None,
            watermarks: HashMap::new(),
            replay: None,
            busy: false,
            received: 0,
        }
    }

    /// The last transaction delivered whole.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// The checked position of `last_seq` (as `Position` writes it).
    pub fn last_position(&self) -> &str {
        &self.last_position
    }

    /// The client holds a snapshot of `table` as of `seq`: events at or below it are not sent.
    pub fn set_watermark(&mut self, table: &str, seq: i64) {
        self.watermarks.insert(table.to_string(), seq);
    }

    /// The table named `from` is now `to`: the subscription, the scope and
    /// the snapshot's watermark follow it (a table is followed by identity).
    fn follow_rename(&mut self, from: &str, to: &str) {
        if let Some(filter) = &mut self.filter {
            filter.follow_rename(from, to);
        }
        if let Some(scope) = &mut self.scope {
            scope.follow_rename(from, to);
        }
        if let Some(watermark) = self.watermarks.remove(from) {
            self.watermarks.insert(to.to_string(), watermark);
        }
    }

    /// Resolves the tables that the subscription and the scope name by a name
    /// they had before the subscriber's position to their name there. Call
    /// it after setting either; renames after the position are followed as
    /// the stream passes them.
    pub fn follow_renames(&mut self) {
        let renamed: Vec<(String, String)> = {
            let renames = self.sources.renames.read().expect("renames lock");
            let names = self.filter.iter().filter_map(|f| f.tables.as_ref());
            let scoped = self.scope.iter().filter_map(|s| s.tables.as_ref());
            names
                .chain(scoped)
                .flatten()
                .filter_map(|name| Some((name.clone(), renames.current(name, self.last_seq)?.to_string())))
                .collect()
        };
        for (from, to) in renamed {
            self.follow_rename(&from, &to);
        }
    }

    /// Replays everything after `after` from the log, then goes live (the
    /// caller has checked `after` is within the log). Subscribes to
    /// everything if nothing was asked yet.
    pub fn resume_after(&mut self, after: i64, position: &str) {
        self.resume(after, position, None);
    }

    /// As [`Subscriber::resume_after`], for a client that also holds the
    /// first `handled` events (sent or filtered out) of the transaction after
    /// `after`, as [`Subscriber::within`] counted them: the rest of that
    /// transaction comes first.
    pub fn resume_within(&mut self, after: i64, position: &str, handled: usize) {
        self.resume(after, position, Some((after + 1, handled)));
    }

    /// Where inside a transaction the stream is while one is open: its seq and
    /// how many of its events were handled (sent or filtered out) so far.
    pub fn within(&self) -> Option<(i64, usize)> {
        self.open
    }

    fn resume(&mut self, after: i64, position: &str, skip: Option<(i64, usize)>) {
        if self.filter.is_none() {
            self.filter = Some(Filter::default());
        }
        self.watermarks.clear();
        self.whole = None;
        self.last_seq = after;
        self.last_position = position.into();
        self.open = None;
        self.sent_in_open = false;
        self.follow_renames();
        self.start_replay(skip);
    }

    /// The next thing to hand the transport. Cancel-safe.
    pub async fn next(&mut self) -> Next<'_> {
        loop {
            let out = match self.step() {
                Step::Ready(out) => Some(out),
                Step::AwaitPage => {
                    let page = self
                        .replay
                        .as_mut()
                        .expect("a replay is in progress")
                        .pages
                        .recv()
                        .await;
                    self.on_page(page)
                }
                Step::AwaitHub => {
                    let taken = self.cursor.next().await;
                    self.on_taken(taken);
                    None
                }
            };
            if let Some(out) = out {
                return self.lend(out);
            }
        }
    }

    /// The next thing to hand the transport if it is there without waiting:
    /// a transport drains a burst in one go rather than one wake-up per event.
    pub fn try_next(&mut self) -> Option<Next<'_>> {
        loop {
            let out = match self.step() {
                Step::Ready(out) => Some(out),
                Step::AwaitHub => return None,
                Step::AwaitPage => match self.replay.as_mut().expect("a replay is in progress").pages.try_recv() {
                    Ok(page) => self.on_page(Some(page)),
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return None,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => self.on_page(None),
                },
            };
            if let Some(out) = out {
                return Some(self.lend(out));
            }
        }
    }

    fn lend(&self, out: Out) -> Next<'_> {
        match out {
            Out::Event(at) => Next::Event(self.event_at(at)),
            Out::Whole(seq) => Next::Whole(seq),
            Out::Idle => Next::Idle,
            Out::LogUnavailable => Next::LogUnavailable,
            Out::HistoryChanged(from) => Next::HistoryChanged { from },
        }
    }

    fn event_at(&self, at: At) -> &Event {
        match at {
            At::Live(i) => &self.live.as_ref().expect("a live batch").0.events[i],
            At::Replayed(i) => &self.replay.as_ref().expect("a replay").page[i],
        }
    }

    /// Everything that can be decided without waiting; then what to wait for.
    fn step(&mut self) -> Step {
        loop {
            if self.cursor.stale() {
                self.start_over_in_the_new_history();
            }
            if let Some(from) = self.history_changed.take() {
                self.busy = true;
                return Step::Ready(Out::HistoryChanged(from));
            }
            if let Some(seq) = self.whole.take() {
                self.busy = true;
                return Step::Ready(Out::Whole(seq));
            }
            if let Some(replay) = self.replay.as_mut() {
                if replay.at == replay.page.len() {
                    return Step::AwaitPage;
                }
                let i = replay.at;
                replay.at += 1;
                if let Some(at) = self.on_replayed(i) {
                    self.busy = true;
                    return Step::Ready(Out::Event(at));
                }
                continue;
            }
            if let Some((batch, at)) = self.live.as_mut() {
                if *at < batch.events.len() {
                    let i = *at;
                    *at += 1;
                    if let Some(at) = self.on_live(i) {
                        self.busy = true;
                        return Step::Ready(Out::Event(at));
                    }
                    continue;
                }
            }
            // What is waiting is taken without a wait; only when nothing is
            // does the transport flush.
            match self.cursor.try_next() {
                Err(Behind::Empty) if self.busy => {
                    self.busy = false;
                    return Step::Ready(Out::Idle);
                }
                Err(Behind::Empty) => return Step::AwaitHub,
                taken => self.on_taken(taken),
            }
        }
    }

    /// A batch (or news) from the hub.
    fn on_taken(&mut self, taken: Result<Arc<Batch>, Behind>) {
        match taken {
            Ok(batch) => {
                let before = self.received;
                self.received += batch.events.len() as u64;
                if before == 0 || before / LAG_SAMPLE != self.received / LAG_SAMPLE {
                    // A shared figure: measured now and then, not per event.
                    let waiting = self.cursor.waiting_after(batch.first) as i64;
                    self.sources
                        .metrics
                        .client_lag_max
                        .inner()
                        .fetch_max(waiting, Ordering::Relaxed);
                }
                self.live = Some((batch, 0));
            }
            Err(Behind::Lagged) => {
                let skip = self.open.take();
                self.start_replay(skip);
            }
            Err(Behind::Reset) => self.start_over_in_the_new_history(),
            Err(Behind::Empty) => {}
        }
    }

    /// A page from the replay's reader (`None`: the reader is gone).
    fn on_page(&mut self, page: Option<sqlx::Result<Vec<Event>>>) -> Option<Out> {
        match page {
            Some(Ok(events)) if events.is_empty() => {
                self.replay = None; // the log's end: live from here
                None
            }
            Some(Ok(events)) => {
                let replay = self.replay.as_mut().expect("a replay is in progress");
                replay.page = events;
                replay.at = 0;
                None
            }
            Some(Err(err)) => {
                tracing::error!(error = %err, "reading the log for a client");
                self.replay = None;
                Some(Out::LogUnavailable)
            }
            None => {
                tracing::error!("the log reader of a client stopped");
                self.replay = None;
                Some(Out::LogUnavailable)
            }
        }
    }

    fn wants(&self, event: &Event) -> bool {
        (event.audience == Audience::All || event.audience == self.audience)
            && self.filter.as_ref().is_some_and(|f| event.wanted_by(f))
            && self.scope.as_ref().is_some_and(|scope| event.in_scope(scope))
            && self.watermarks.get(&*event.table).is_none_or(|w| event.seq > *w)
    }

    /// Event `i` of the live batch: handed out when wanted, exactly once,
    /// whole transactions in order.
    fn on_live(&mut self, i: usize) -> Option<At> {
        let at = At::Live(i);
        let (seq, opens) = {
            let event = self.event_at(at);
            (event.seq, event.opens_tx)
        };
        if seq <= self.last_seq {
            return None; // already delivered, or before this subscriber started
        }
        let handled = match self.open {
            Some((open, handled)) if open == seq => handled,
            _ if !opens => {
                // Joined in the middle of a transaction: take it whole from the log.
                self.start_replay(self.open);
                return None;
            }
            _ => {
                self.sent_in_open = false;
                0
            }
        };
        self.open = Some((seq, handled + 1));
        self.deliver(at)
    }

    /// Event `i` of the replay's page: what was delivered already is skipped.
    fn on_replayed(&mut self, i: usize) -> Option<At> {
        let at = At::Replayed(i);
        let (seq, opens) = {
            let event = self.event_at(at);
            (event.seq, event.opens_tx)
        };
        // Counted as on the live path, skipped events too: a transport names
        // a place inside a transaction (`within`) by this count.
        let handled = match self.open {
            Some((open, handled)) if open == seq => handled,
            _ => 0,
        };
        self.open = Some((seq, handled + 1));
        let replay = self.replay.as_mut().expect("a replay is in progress");
        if let Some((skipped, n)) = replay.skip.as_mut() {
            if seq == *skipped && *n > 0 {
                *n -= 1;
                return None;
            }
        }
        if opens {
            self.sent_in_open = false;
        }
        self.deliver(at)
    }

    /// Whether the event at `at` is to be handed out; closes its transaction
    /// after its last event.
    fn deliver(&mut self, at: At) -> Option<At> {
        let event = self.event_at(at);
        if let Some(SchemaChange {
            renamed_from: Some(from),
        }) = &event.schema
        {
            let (from, to) = (from.clone(), event.table.clone());
            self.follow_rename(&from, &to);
        }
        let event = self.event_at(at);
        let (seq, closes, wanted) = (event.seq, event.closes_tx, self.wants(event));
        if closes {
            self.last_position = event.position.clone();
        }
        if wanted {
            self.sent_in_open = true;
        }
        if closes {
            self.last_seq = seq;
            self.open = None;
            if std::mem::take(&mut self.sent_in_open) {
                self.whole = Some(seq);
            }
        }
        wanted.then_some(at)
    }

    /// The hub was reset: nothing of the old history is read or sent any more;
    /// the stream says so once and goes on at the new history's live end,
    /// with the same filter and scope. The client's snapshots are of the old
    /// history: their watermarks go.
    fn start_over_in_the_new_history(&mut self) {
        let (cursor, head, position) = self.sources.hub.subscribe();
        self.history_changed = Some(self.last_seq);
        self.cursor = cursor;
        self.last_seq = head;
        self.last_position = position;
        self.live = None;
        self.replay = None;
        self.open = None;
        self.sent_in_open = false;
        self.whole = None;
        self.watermarks.clear();
    }

    /// Reads the log after `last_seq` from the next `next` call on; `skip`
    /// names the part of a transaction already delivered.
    fn start_replay(&mut self, skip: Option<(i64, usize)>) {
        // A fresh place at the live end first: whatever the hub gets from now on
        // is kept for us, and whatever it got before is in the log we read.
        let (cursor, head, position) = self.sources.hub.subscribe();
        self.cursor = cursor;
        self.live = None;
        self.open = None;
        if self.filter.is_none() {
            // Nothing is wanted: nothing to read.
            if head > self.last_seq {
                (self.last_seq, self.last_position) = (head, position);
            }
            self.replay = None;
            return;
        }
        self.sources.metrics.client_catch_ups.inc();
        let (pages, receiver) = tokio::sync::mpsc::channel(1);
        let reader = tokio::spawn(read_ahead(self.sources.clone(), self.last_seq, head, pages));
        self.replay = Some(Replay {
            pages: receiver,
            _reader: tokio_util::task::AbortOnDropHandle::new(reader),
            skip,
            page: Vec::new(),
            at: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::hub::Hub;
    use serde_json::json;
    use std::time::Duration;

    /// A subscriber whose log is unreachable: a replay ends in `LogUnavailable`.
    fn subscriber(hub: &Hub) -> Subscriber {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(50))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let sources = Feed {
            hub: hub.clone(),
            pool,
            primary: None,
            pearl: Arc::default(),
            metrics: Arc::default(),
            renames: Arc::default(),
            event_names: Arc::default(),
        };
        let mut subscriber = Subscriber::new(sources, Audience::Native);
        subscriber.filter = Some(Filter::default());
        subscriber.scope = Some(Scope::unbounded());
        subscriber
    }

    /// Event `index` of `size` in transaction `seq`, a row of `table`.
    fn event(seq: i64, index: usize, size: usize, table: &str) -> Vec<Event> {
        let row = json!({"id": seq * 10 + index as i64, "tenant": seq % 2});
        vec![Event {
            seq,
            kind: format!("{table}_created").into(),
            table: table.into(),
            rows: Arc::new((Some(row), None)),
            audience: Audience::All,
            opens_tx: index == 0,
            closes_tx: index + 1 == size,
            frame: format!("{seq}.{index}").into(),
            envelope_frame: Default::default(),
            sse_frame: Default::default(),
            position: format!("{seq}.0000000a").into(),
            schema: None,
        }]
    }

    async fn take(subscriber: &mut Subscriber, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        while got.len() < n {
            match tokio::time::timeout(Duration::from_secs(1), subscriber.next()).await {
                Ok(Next::Event(e)) => got.push(e.frame.to_string()),
                Ok(Next::Whole(seq)) => got.push(format!("whole {seq}")),
                Ok(Next::Idle) => {}
                Ok(other) => got.push(format!("{other:?}")),
                Err(_) => break,
            }
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn whole_transactions_in_order_once() {
        let hub = Hub::new(64);
        let mut s = subscriber(&hub);
        for (seq, size) in [(1, 2), (2, 1)] {
            for i in 0..size {
                hub.publish(event(seq, i, size, "t"), 0);
            }
        }
        // Seq 1 again (a listener that re-read the log): dropped.
        hub.publish(event(1, 0, 2, "t"), 0);
        hub.publish(event(3, 0, 1, "t"), 0);
        assert_eq!(
            take(&mut s, 7).await,
            ["1.0", "1.1", "whole 1", "2.0", "whole 2", "3.0", "whole 3"]
        );
        assert_eq!(s.last_seq(), 3);
        assert!(
            matches!(s.next().await, Next::Idle),
            "idle once everything was handed out"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_taken_without_waiting_and_ends_in_idle() {
        let hub = Hub::new(64);
        let mut s = subscriber(&hub);
        assert!(s.try_next().is_none(), "nothing waiting: nothing handed out");
        for i in 0..3 {
            hub.publish(event(1, i, 3, "t"), 0);
        }
        let mut taken = Vec::new();
        while let Some(next) = s.try_next() {
            taken.push(match next {
                Next::Event(e) => e.frame.to_string(),
                Next::Whole(seq) => format!("whole {seq}"),
                Next::Idle => "idle".into(),
                _ => "other".into(),
            });
        }
        assert_eq!(taken, ["1.0", "1.1", "1.2", "whole 1", "idle"]);
        // The next event after the idle comes the same way, through `next` too.
        hub.publish(event(2, 0, 1, "t"), 0);
        assert!(matches!(s.next().await, Next::Event(e) if e.seq == 2));
    }

    #[tokio::test(start_paused = true)]
    async fn filters_scopes_and_watermarks_hide_events_but_not_transaction_ends() {
        let hub = Hub::new(64);
        let mut s = subscriber(&hub);
        s.scope = Some(serde_json::from_value(json!({"where": {"tenant": 1}})).unwrap());
        s.set_watermark("a", 3);
        for seq in 1..=4 {
            hub.publish(event(seq, 0, 2, "a"), 0);
            hub.publish(event(seq, 1, 2, "b"), 0);
        }
        // Tenant 1 is odd seqs; table a at or below 3 is in the snapshot.
        assert_eq!(take(&mut s, 3).await, ["1.1", "whole 1", "3.1"]);
        assert_eq!(take(&mut s, 1).await, ["whole 3"]);
        assert!(take(&mut s, 1).await.is_empty());
        assert_eq!(
            s.last_seq(),
            4,
            "transactions with nothing wanted still advance the cursor"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_follows_its_table_through_a_rename() {
        let hub = Hub::new(64);
        let mut s = subscriber(&hub);
        s.filter = Some(Filter {
            tables: Some(["equipment".to_string()].into_iter().collect()),
            where_: Some(json!({"tenant": 1}).as_object().unwrap().clone()),
            ..Filter::default()
        });
        s.scope = Some(serde_json::from_value(json!({"tables": ["equipment"]})).unwrap());
        s.set_watermark("equipment", 2);
        let mut rename = event(3, 0, 1, "instruments");
        rename[0].schema = Some(SchemaChange {
            renamed_from: Some("equipment".into()),
        });
        rename[0].rows = Arc::new((None, None));
        hub.publish(event(1, 0, 1, "equipment"), 0);
        hub.publish(rename, 0);
        hub.publish(event(5, 0, 1, "instruments"), 0);
        hub.publish(event(7, 0, 1, "equipment"), 0);
        // Seq 1 is in the snapshot; the schema change passes `where` (it is
        // not a row); the watermark moved with the name.
        assert_eq!(take(&mut s, 4).await, ["3.0", "whole 3", "5.0", "whole 5"]);
        assert!(
            take(&mut s, 1).await.is_empty(),
            "a new table of the old name is another table"
        );
        assert_eq!(s.watermarks.get("instruments"), Some(&2));
    }

    #[tokio::test(start_paused = true)]
    async fn joining_mid_transaction_or_lagging_reads_the_log() {
        let hub = Hub::new(4);
        let mut s = subscriber(&hub);
        // The second event of a transaction whose first it never saw.
        hub.publish(event(1, 1, 2, "t"), 0);
        assert_eq!(take(&mut s, 1).await, ["LogUnavailable"]);
        // Five events into a ring of four: lagged.
        let mut s = subscriber(&hub);
        for seq in 2..7 {
            hub.publish(event(seq, 0, 1, "t"), 0);
        }
        assert_eq!(take(&mut s, 1).await, ["LogUnavailable"]);
        assert_eq!(s.sources.metrics.client_catch_ups.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_asked_means_nothing_read() {
        let hub = Hub::new(2);
        let mut s = subscriber(&hub);
        s.filter = None;
        for seq in 1..6 {
            hub.publish(event(seq, 0, 1, "t"), 0);
        }
        hub.set_head(5, "5.00000005".into());
        assert!(
            take(&mut s, 1).await.is_empty(),
            "a lag without a subscription reads no log"
        );
        assert_eq!(s.last_seq(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_hub_is_said_once_and_the_stream_goes_on_in_the_new_history() {
        let hub = Hub::new(64);
        let mut s = subscriber(&hub);
        hub.publish(event(1, 0, 1, "t"), 1);
        assert_eq!(take(&mut s, 2).await, ["1.0", "whole 1"]);
        assert_eq!(s.last_position(), "1.0000000a");
        s.set_watermark("t", 1);
        hub.reset(0, "0".into());
        assert_eq!(take(&mut s, 1).await, ["HistoryChanged { from: 1 }"]);
        assert_eq!((s.last_seq(), s.last_position()), (0, "0"));
        hub.publish(event(1, 0, 1, "t"), 1);
        assert_eq!(
            take(&mut s, 2).await,
            ["1.0", "whole 1"],
            "the new history's seq 1, after the old one's"
        );
        assert_eq!((s.last_seq(), s.last_position()), (1, "1.0000000a"));
    }
}
