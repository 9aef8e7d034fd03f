//! Changes become events: the wire form of `protocol::EventFrame`, encoded once and shared
//! by every subscriber, plus PEARL's messages (`feed::pearl` says which).

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use super::change::{Change, Op};
use super::kinds::EventNames;
use super::pearl::{self, Audience};
use crate::auth::Scope;
use crate::filter::Filter;
use crate::metrics::Metrics;
use crate::protocol::EventFrame;
use crate::timestamps;

/// One event as subscribers receive it. `frame` is its JSON text, made once.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    /// `study_created`, `comment_resolved`, ...
    pub kind: Arc<str>,
    pub table: Arc<str>,
    /// The change's (new, old) rows, shared by its events: filters and scopes judge by them.
    pub rows: Arc<(Option<Value>, Option<Value>)>,
    /// Which endpoints send it.
    pub audience: Audience,
    /// The first event of its transaction.
    pub opens_tx: bool,
    /// The last event of its transaction (derived events included).
    pub closes_tx: bool,
    /// The encoded event, shared by every connection that sends it.
    pub frame: Utf8Bytes,
    /// The same in the `{"event": …}` envelope, made by the first client that wants it.
    pub envelope_frame: std::sync::OnceLock<Utf8Bytes>,
    /// The same as a Server-Sent Event, made by the first SSE stream that sends it.
    pub sse_frame: std::sync::OnceLock<bytes::Bytes>,
    /// The checked position of its transaction, shared by its events.
    pub position: Arc<str>,
    /// Set on a schema change's events (`<prefix>_schema_changed`, PEARL's `refresh_needed`).
    pub schema: Option<SchemaChange>,
}

/// What a subscriber needs of a schema change: it is about the table, not a
/// row, and it may rename the table a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaChange {
    /// The table's name before this change renamed it.
    pub renamed_from: Option<Arc<str>>,
}

impl Event {
    /// The row filters look into: the new row, or the old one for deletes.
    pub fn row(&self) -> Option<&Value> {
        self.rows.0.as_ref().or(self.rows.1.as_ref())
    }

    /// Whether a client that asked for `filter` wants this event. A schema
    /// change is about the table, not a row: `where` does not judge it.
    pub fn wanted_by(&self, filter: &Filter) -> bool {
        match self.schema {
            Some(_) => filter.matches_table(&self.table, &self.kind),
            None => filter.matches(&self.table, &self.kind, self.row()),
        }
    }

    /// Whether `scope` may see this event. A schema change (the table's
    /// columns, never its rows) is seen by every scope that sees the table.
    pub fn in_scope(&self, scope: &Scope) -> bool {
        match self.schema {
            Some(_) => scope.allows_table(&self.table),
            None => scope.allows_change(&self.table, self.rows.0.as_ref(), self.rows.1.as_ref()),
        }
    }

    /// The frame in the `{"event": …}` envelope, encoded once per event.
    pub fn enveloped(&self) -> Utf8Bytes {
        self.envelope_frame
            .get_or_init(|| event_envelope(&self.frame).into())
            .clone()
    }
}

/// An event's frame (encoded with `"type"` first, see `feed::event`) in the event envelope.
fn event_envelope(frame: &str) -> String {
    match frame.strip_prefix("{\"type\":") {
        Some(rest) => format!("{{\"event\":{rest}"),
        None => frame.to_string(),
    }
}

/// Turns changes into events, PEARL's messages included.
pub struct Encoder<'a> {
    pub metrics: &'a Metrics,
    /// PEARL's running state: the listener's own, or a client's copy for a replay.
    pub pearl: &'a mut pearl::State,
    /// Count rows that do not fit their type: true for the listener, which sees
    /// each change once; false for replays, which would count them again.
    pub count_untyped: bool,
    pub names: &'a mut Interned,
    /// Event names of tables' own.
    pub kinds: &'a EventNames,
}

/// Table names and event kinds, each kept once: the events of a table share
/// one text. Every connection compares an event's table and kind with its
/// subscription; with a text of their own per event, the first read of each
/// was a cache miss, a tenth of the server's CPU in a fan-out to 1,000 clients.
#[derive(Debug, Default)]
pub struct Interned(std::collections::HashSet<Arc<str>>);

impl Interned {
    /// Names kept at most; past it, the set starts over (names of dropped
    /// tables would otherwise stay forever).
    const MOST: usize = 4096;

    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(kept) = self.0.get(name) {
            return kept.clone();
        }
        if self.0.len() >= Self::MOST {
            self.0.clear();
        }
        let kept: Arc<str> = name.into();
        self.0.insert(kept.clone());
        kept
    }
}

impl Encoder<'_> {
    /// The events of one change: its row event, then PEARL's messages.
    pub fn encode(&mut self, mut change: Change) -> Vec<Event> {
        change
            .new
            .iter_mut()
            .chain(change.old.iter_mut())
            .for_each(timestamps::normalize_row);
        let changed = match (&change.new, &change.old) {
            (Some(Value::Object(new)), Some(Value::Object(old))) if change.op == Op::Update => Some(
                new.iter()
                    .filter(|(k, v)| old.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };

        let schema = (change.op == Op::Schema).then(|| SchemaChange {
            renamed_from: change.renamed_from().map(|name| self.names.get(name)),
        });
        let typed = |row: &Option<Value>| match change.op {
            Op::Schema => None,
            _ => row.as_ref().and_then(|row| pearl::type_row(&change.table, row)),
        };
        let (new_row, old_row) = (typed(&change.new), typed(&change.old));
        let misfit = [&new_row, &old_row]
            .into_iter()
            .flatten()
            .find_map(|typed| typed.as_ref().err());
        if let Some(err) = misfit {
            tracing::debug!(table = %change.table, error = %err, "row does not fit its PEARL type; sent generic");
            if self.count_untyped {
                self.metrics.events_untyped.inc();
            }
        }
        let (new_row, old_row) = (new_row.and_then(Result::ok), old_row.and_then(Result::ok));
        let outcome = self.pearl.on_change(&change, old_row.as_ref(), new_row.as_ref());

        let own_kind = self.kinds.name(&change.prefix, change.op.verb());
        let count = 1 + outcome.messages.len();
        // A schema change's document is its data, not a row: filters and scopes never read it.
        let schema_doc = if change.op == Op::Schema {
            change.new.take()
        } else {
            None
        };
        let rows = Arc::new((change.new.take(), change.old.take()));
        let truncated;
        // The row event's data is the row itself, not a copy of it.
        let own_data = match change.op {
            Op::Delete => rows.1.as_ref(),
            Op::Schema => schema_doc.as_ref(),
            Op::Truncate => {
                truncated = serde_json::json!({ "table": change.table });
                Some(&truncated)
            }
            _ => rows.0.as_ref(),
        };
        let table = self.names.get(&change.table);
        let position: Arc<str> = change.position.as_str().into();
        let mut events = Vec::with_capacity(count);
        let messages = std::iter::once((own_kind.as_str(), own_data, outcome.row_audience, false)).chain(
            outcome
                .messages
                .iter()
                .map(|m| (m.kind, Some(&m.data), m.audience, m.derived)),
        );
        for (n, (kind, data, audience, derived)) in messages.enumerate() {
            let wire = EventFrame {
                kind: Cow::Borrowed(kind),
                data: Cow::Borrowed(data.unwrap_or(&Value::Null)),
                seq: change.seq,
                table: Cow::Borrowed(&change.table),
                op: Cow::Borrowed(change.op.as_str()),
                changed: changed.as_deref().map(Cow::Borrowed),
                actor: change.actor.as_deref().map(Cow::Borrowed),
                timestamp: Cow::Borrowed(&change.at),
                tx_index: change.tx_index,
                tx_size: change.tx_size,
                position: Some(Cow::Borrowed(&change.position)),
                unresolved_count: if n == 0 { outcome.unresolved_count } else { None },
                derived,
            };
            // Sized for a typical row at once, rather than grown by doubling.
            let mut frame = Vec::with_capacity(256);
            serde_json::to_writer(&mut frame, &wire).expect("a Value always serializes");
            let frame = String::from_utf8(frame).expect("serde_json writes UTF-8");
            events.push(Event {
                seq: change.seq,
                kind: self.names.get(kind),
                table: table.clone(),
                rows: rows.clone(),
                audience,
                opens_tx: n == 0 && change.tx_index == 0,
                closes_tx: n + 1 == count && change.is_last_of_tx(),
                frame: frame.into(),
                envelope_frame: std::sync::OnceLock::new(),
                sse_frame: std::sync::OnceLock::new(),
                position: position.clone(),
                schema: schema.clone(),
            });
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::{event_envelope, Interned};
    use std::sync::Arc;

    #[test]
    fn a_name_is_kept_once_and_the_set_stays_bounded() {
        let mut names = Interned::default();
        let (a, b) = (names.get("study"), names.get("study"));
        assert!(Arc::ptr_eq(&a, &b), "the same name, the same text");
        assert!(!Arc::ptr_eq(&a, &names.get("tracker")));
        for i in 0..2 * Interned::MOST {
            names.get(&format!("t{i}"));
        }
        assert!(names.0.len() <= Interned::MOST);
        assert_eq!(&*names.get("study"), "study");
    }

    #[test]
    fn the_event_envelope_renames_the_type() {
        assert_eq!(
            event_envelope(r#"{"type":"study_created","data":{"id":1},"seq":2}"#),
            r#"{"event":"study_created","data":{"id":1},"seq":2}"#
        );
    }
}
