//! The hub: every event once, in commit order, to every connection.
//!
//! A single broadcast ring of shared, already-encoded events. Each connection
//! holds a cursor into it, not a copy; a connection that falls more than the
//! ring's capacity behind is told it lagged and catches up from the log (the
//! ring is its bounded queue), so a slow client never holds memory or delays
//! anyone else.

use std::sync::Arc;

use serde_json::Value;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::broadcast;

use super::event::Event;

/// Fan-out of live events. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    events: broadcast::Sender<Arc<Event>>,
    /// The last transaction published whole.
    head: Arc<AtomicI64>,
}

impl Hub {
    /// A hub whose ring holds `capacity` events.
    pub fn new(capacity: usize) -> Hub {
        Hub {
            events: broadcast::channel(capacity).0,
            head: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Hands one event to every subscriber.
    pub fn publish(&self, event: Arc<Event>) {
        // An error only means nobody is subscribed right now.
        let _ = self.events.send(event);
    }

    /// Records that every transaction up to `seq` has been published.
    pub fn set_head(&self, seq: i64) {
        self.head.fetch_max(seq, Ordering::SeqCst);
    }

    /// The last transaction published whole.
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::SeqCst)
    }

    /// A cursor at the live end of the ring.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

/// A set of table or type names, with a hasher cheaper than SipHash: a
/// subscription's sets are looked up for every event on every connection,
/// where SipHash alone was 5% of the server's CPU in a fan-out.
pub type Names = std::collections::HashSet<String, foldhash::fast::RandomState>;

/// What a client asked to receive: `subscribe {tables?, types?, where?}`.
/// Absent lists mean "all"; `where` is field equality, or membership for an array.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tables: Option<Names>,
    pub types: Option<Names>,
    pub where_: Option<serde_json::Map<String, Value>>,
    /// Types unsubscribed from a subscription to all types.
    pub except_types: Names,
}

impl Filter {
    /// How many tables, types and `where` values it names (the subscription limit counts these).
    pub fn size(&self) -> usize {
        self.tables.as_ref().map_or(0, |t| t.len())
            + self.types.as_ref().map_or(0, |t| t.len())
            + self
                .where_
                .as_ref()
                .map_or(0, |w| w.values().map(|v| v.as_array().map_or(1, |a| a.len())).sum())
    }

    /// `unsubscribe {types}`: stops only these types.
    pub fn drop_types(&mut self, types: &Names) {
        match &mut self.types {
            Some(wanted) => wanted.retain(|t| !types.contains(t)),
            None => self.except_types.extend(types.iter().cloned()),
        }
    }

    /// True when `event` is wanted. Looks into the parsed row; never re-parses.
    pub fn matches(&self, event: &Event) -> bool {
        if self.tables.as_ref().is_some_and(|t| !t.contains(&event.table)) {
            return false;
        }
        if self.types.as_ref().is_some_and(|t| !t.contains(&event.kind)) || self.except_types.contains(&event.kind) {
            return false;
        }
        match &self.where_ {
            None => true,
            Some(conditions) => conditions.iter().all(|(field, wanted)| {
                let Some(value) = event.row().and_then(|row| row.get(field)) else {
                    return false;
                };
                match wanted {
                    Value::Array(options) => options.contains(value),
                    single => single == value,
                }
            }),
        }
    }
}
