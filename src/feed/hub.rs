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

/// A set of table or type names, sorted, without repeats. A subscription's
/// sets are looked up for every event on every connection: a hash each time
/// (SipHash at first, then foldhash) was 4% of the server's CPU in a 10k-client
/// fan-out, where a subscription names one or a few tables and a binary search
/// is one or two comparisons of short strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Names(Vec<String>);

impl Names {
    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| n.as_str().cmp(name)).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    pub fn retain(&mut self, keep: impl FnMut(&String) -> bool) {
        self.0.retain(keep);
    }
}

impl FromIterator<String> for Names {
    fn from_iter<I: IntoIterator<Item = String>>(names: I) -> Names {
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        Names(names)
    }
}

impl Extend<String> for Names {
    fn extend<I: IntoIterator<Item = String>>(&mut self, more: I) {
        self.0.extend(more);
        self.0.sort_unstable();
        self.0.dedup();
    }
}

impl IntoIterator for Names {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'de> serde::Deserialize<'de> for Names {
    fn deserialize<D: serde::Deserializer<'de>>(from: D) -> Result<Names, D::Error> {
        Vec::<String>::deserialize(from).map(Names::from_iter)
    }
}

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

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn names_are_a_set_whatever_order_they_come_in() {
        let mut names: Names = ["tracker", "study", "tracker", "comment"]
            .map(String::from)
            .into_iter()
            .collect();
        assert_eq!(names.len(), 3);
        assert!(names.contains("study") && names.contains("tracker") && names.contains("comment"));
        assert!(!names.contains("release") && !names.contains("") && !names.contains("studyx"));

        names.extend(["release", "study"].map(String::from));
        assert_eq!(
            names.iter().map(String::as_str).collect::<Vec<_>>(),
            ["comment", "release", "study", "tracker"]
        );

        let parsed: Names = serde_json::from_str(r#"["b","a","b"]"#).unwrap();
        assert_eq!(parsed, ["a", "b"].map(String::from).into_iter().collect());
        assert_eq!(serde_json::to_string(&parsed).unwrap(), r#"["a","b"]"#);

        names.retain(|n| n != "study");
        assert!(!names.contains("study") && names.contains("tracker"));
    }
}
