//! Changes become events: the wire form of DESIGN §3, encoded once and shared
//! by every subscriber, plus the derived PEARL events.

use std::collections::HashMap;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::Value;

use super::change::{Change, Op};
use super::pearl::{self, Row};
use super::timestamps;
use crate::metrics::Metrics;

/// One event as subscribers receive it. `frame` is its JSON text, made once.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    /// `study_created`, `comment_resolved`, ...
    pub kind: String,
    pub table: String,
    /// The new row (the old row for deletes); filters look into it.
    pub data: Value,
    /// The first event of its transaction.
    pub opens_tx: bool,
    /// The last event of its transaction (derived events included).
    pub closes_tx: bool,
    /// The encoded event, shared by every connection that sends it.
    pub frame: Utf8Bytes,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a Value,
    seq: i64,
    table: &'a str,
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<&'a [String]>,
    actor: Option<&'a str>,
    timestamp: &'a str,
    tx_index: i32,
    tx_size: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    unresolved_count: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    derived: bool,
}

/// Unresolved comments per tracker, kept current from the comment events so
/// `unresolved_count` needs no query per event.
#[derive(Debug, Default, Clone)]
pub struct UnresolvedCounts(HashMap<i64, i64>);

impl UnresolvedCounts {
    pub fn new(counts: HashMap<i64, i64>) -> Self {
        UnresolvedCounts(counts)
    }

    fn apply(
        &mut self,
        op: Op,
        old: Option<&pearl::TrackerComment>,
        new: Option<&pearl::TrackerComment>,
    ) -> Option<i64> {
        if op == Op::Truncate {
            self.0.clear();
            return None;
        }
        if let Some(old) = old.filter(|c| !c.is_resolved) {
            *self.0.entry(old.tracker_id).or_default() -= 1;
        }
        if let Some(new) = new.filter(|c| !c.is_resolved) {
            *self.0.entry(new.tracker_id).or_default() += 1;
        }
        let tracker = new.or(old)?.tracker_id;
        Some(self.0.get(&tracker).copied().unwrap_or(0).max(0))
    }
}

/// Turns changes into events. Holds the listener's running state; a reader of
/// the log for one client uses it without counts (`counts: None`).
pub struct Encoder<'a> {
    pub metrics: &'a Metrics,
    pub counts: Option<&'a mut UnresolvedCounts>,
}

impl Encoder<'_> {
    /// The events of one change: its own, then any derived ones.
    pub fn encode(&mut self, mut change: Change) -> Vec<Event> {
        change
            .new
            .iter_mut()
            .chain(change.old.iter_mut())
            .for_each(timestamps::normalize_row);
        let data = match change.op {
            Op::Delete => change.old.clone().unwrap_or(Value::Null),
            Op::Truncate => serde_json::json!({ "table": change.table }),
            _ => change.new.clone().unwrap_or(Value::Null),
        };
        let changed = match (&change.new, &change.old) {
            (Some(Value::Object(new)), Some(Value::Object(old))) if change.op == Op::Update => Some(
                new.iter()
                    .filter(|(k, v)| old.get(*k) != Some(*v))
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };

        let pearl = pearl::is_pearl_table(&change.table);
        let new_row = change.new.as_ref().and_then(|row| pearl::type_row(&change.table, row));
        let old_row = change.old.as_ref().and_then(|row| pearl::type_row(&change.table, row));
        let misfit = [&new_row, &old_row]
            .into_iter()
            .flatten()
            .find_map(|typed| typed.as_ref().err());
        if let Some(err) = misfit {
            tracing::debug!(table = %change.table, error = %err, "row does not fit its PEARL type; sent generic");
            // Counted once per change, by the listener (a client's replay encodes it again).
            if self.counts.is_some() {
                Metrics::inc(&self.metrics.events_untyped);
            }
        }
        let (new_row, old_row) = (new_row.and_then(Result::ok), old_row.and_then(Result::ok));

        let mut derived: Vec<&'static str> = Vec::new();
        let mut unresolved_count = None;
        match (&old_row, &new_row) {
            (_, Some(Row::TrackerComment(new))) if change.op == Op::Insert && new.parent_comment_id.is_some() => {
                derived.push("comment_replied")
            }
            (Some(Row::TrackerComment(old)), Some(Row::TrackerComment(new))) if !old.is_resolved && new.is_resolved => {
                derived.push("comment_resolved")
            }
            (Some(Row::ReportingEffortTracker(old)), Some(Row::ReportingEffortTracker(new)))
                if old.production_programmer_id != new.production_programmer_id
                    || old.qc_programmer_id != new.qc_programmer_id =>
            {
                derived.push("tracker_assignment_updated")
            }
            _ => {}
        }
        if pearl && change.table == "tracker_comments" {
            if let Some(counts) = self.counts.as_deref_mut() {
                let comment = |row: &Option<Row>| match row {
                    Some(Row::TrackerComment(c)) => Some(c.clone()),
                    _ => None,
                };
                unresolved_count = counts.apply(change.op, comment(&old_row).as_ref(), comment(&new_row).as_ref());
            }
        }

        let own_kind = format!("{}_{}", change.prefix, change.op.verb());
        let mut events = Vec::with_capacity(1 + derived.len());
        let count = 1 + derived.len();
        for (n, (kind, is_derived)) in std::iter::once((own_kind.as_str(), false))
            .chain(derived.iter().map(|k| (*k, true)))
            .enumerate()
        {
            let wire = Wire {
                kind,
                data: &data,
                seq: change.seq,
                table: &change.table,
                op: change.op.as_str(),
                changed: changed.as_deref(),
                actor: change.actor.as_deref(),
                timestamp: &change.at,
                tx_index: change.tx_index,
                tx_size: change.tx_size,
                unresolved_count,
                derived: is_derived,
            };
            let frame = serde_json::to_string(&wire).expect("a Value always serializes");
            events.push(Event {
                seq: change.seq,
                kind: kind.to_string(),
                table: change.table.clone(),
                data: data.clone(),
                opens_tx: n == 0 && change.tx_index == 0,
                closes_tx: n + 1 == count && change.is_last_of_tx(),
                frame: frame.into(),
            });
        }
        events
    }
}
