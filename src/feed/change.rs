//! One captured row change, as the notification or the log gives it.

use serde::Deserialize;
use serde_json::Value;

/// The kind of write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// A tracked table's name, columns or partitions changed (migrations/capture/0011).
    Schema,
}

impl Op {
    pub fn parse(text: &str) -> Option<Op> {
        match text {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            "TRUNCATE" => Some(Op::Truncate),
            "SCHEMA" => Some(Op::Schema),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
            Op::Schema => "SCHEMA",
        }
    }

    /// The suffix of the event type: `study_created`, `study_truncated`, ...
    pub fn verb(self) -> &'static str {
        match self {
            Op::Insert => "created",
            Op::Update => "updated",
            Op::Delete => "deleted",
            Op::Truncate => "truncated",
            Op::Schema => "schema_changed",
        }
    }
}

/// One row of `pgfeed.events` with its transaction's commit position.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub seq: i64,
    pub id: i64,
    pub table: String,
    pub prefix: String,
    pub op: Op,
    pub new: Option<Value>,
    pub old: Option<Value>,
    pub actor: Option<String>,
    /// Write time, ISO 8601 UTC with milliseconds.
    pub at: String,
    /// The same, in seconds since 1970 (to the microsecond): for measuring.
    pub written: f64,
    /// Position within the transaction, from 0.
    pub tx_index: i32,
    /// Number of events in the transaction.
    pub tx_size: i32,
    /// The checked position of its transaction (`<seq>.<check>`, migrations/capture/0007).
    pub position: String,
}

impl Change {
    pub fn is_last_of_tx(&self) -> bool {
        self.tx_index + 1 >= self.tx_size
    }

    /// The name the table had before this schema change renamed it.
    pub fn renamed_from(&self) -> Option<&str> {
        match (self.op, &self.new) {
            (Op::Schema, Some(doc)) => doc.get("previous_table").and_then(|name| name.as_str()),
            _ => None,
        }
    }
}

/// A notification on channel `pgfeed` (migrations/capture/0002).
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// `''`: a writer committed while the leader was waiting.
    Wake,
    /// `{"seq": N}`: a tick gave seqs up to N.
    Sequenced(i64),
    /// `{"tracked": true}`: what is tracked, or how its events are named, changed.
    Tracked,
    /// Anything else (an older pgfeed's row or commit payloads, say).
    Malformed,
}

impl Notice {
    pub fn parse(payload: &str) -> Notice {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Tick {
            seq: i64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Tracked {
            tracked: bool,
        }
        if payload.is_empty() {
            return Notice::Wake;
        }
        if let Ok(tick) = serde_json::from_str::<Tick>(payload) {
            return Notice::Sequenced(tick.seq);
        }
        match serde_json::from_str::<Tracked>(payload) {
            Ok(Tracked { tracked: true }) => Notice::Tracked,
            _ => Notice::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Notice;

    #[test]
    fn notices_are_wake_ups_or_ticks() {
        assert_eq!(Notice::parse(""), Notice::Wake);
        assert_eq!(Notice::parse(r#"{"seq":12}"#), Notice::Sequenced(12));
        assert_eq!(
            Notice::parse(r#"{"seq":1,"tx_size":2,"commit":true}"#),
            Notice::Malformed
        );
        assert_eq!(Notice::parse("garbage"), Notice::Malformed);
        assert_eq!(Notice::parse(r#"{"tracked":true}"#), Notice::Tracked);
    }
}
