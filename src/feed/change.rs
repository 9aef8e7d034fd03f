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
}

impl Op {
    pub fn parse(text: &str) -> Option<Op> {
        match text {
            "INSERT" => Some(Op::Insert),
            "UPDATE" => Some(Op::Update),
            "DELETE" => Some(Op::Delete),
            "TRUNCATE" => Some(Op::Truncate),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        }
    }

    /// The suffix of the event type: `study_created`, `study_truncated`, ...
    pub fn verb(self) -> &'static str {
        match self {
            Op::Insert => "created",
            Op::Update => "updated",
            Op::Delete => "deleted",
            Op::Truncate => "truncated",
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
    /// Position within the transaction, from 0.
    pub tx_index: i32,
    /// Number of events in the transaction.
    pub tx_size: i32,
}

impl Change {
    pub fn is_last_of_tx(&self) -> bool {
        self.tx_index + 1 >= self.tx_size
    }
}

/// A notification on channel `pgfeed` (see migrations/0002). With `fetch` the
/// row (or, for a large transaction, the rows) must be read from the log.
#[derive(Debug, Deserialize)]
pub struct Notice {
    pub seq: i64,
    #[serde(default)]
    pub id: Option<i64>,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub op: Option<Op>,
    #[serde(default)]
    pub new: Option<Value>,
    #[serde(default)]
    pub old: Option<Value>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub at: Option<String>,
    pub tx_index: i32,
    pub tx_size: i32,
    #[serde(default)]
    pub fetch: bool,
}

impl Notice {
    pub fn parse(payload: &str) -> serde_json::Result<Notice> {
        serde_json::from_str(payload)
    }

    /// The change this notice carries whole, or `None` when it must be read from the log.
    pub fn into_change(self) -> Option<Change> {
        if self.fetch {
            return None;
        }
        Some(Change {
            seq: self.seq,
            id: self.id?,
            table: self.table?,
            prefix: self.prefix?,
            op: self.op?,
            new: self.new,
            old: self.old,
            actor: self.actor,
            at: self.at?,
            tx_index: self.tx_index,
            tx_size: self.tx_size,
        })
    }
}
