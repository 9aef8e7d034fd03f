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

/// A notification on channel `pgfeed` (see migrations/0002): a row, sent at
/// write time, or the commit that closes a transaction's rows.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Notice {
    Commit {
        seq: i64,
        tx_size: i32,
        #[allow(dead_code)]
        commit: bool,
    },
    Row(RowNotice),
}

/// One row, without its commit position (known only at commit).
#[derive(Debug, Deserialize)]
pub struct RowNotice {
    pub id: i64,
    pub table: String,
    pub prefix: String,
    pub op: Op,
    #[serde(default)]
    pub new: Option<Value>,
    #[serde(default)]
    pub old: Option<Value>,
    #[serde(default)]
    pub actor: Option<String>,
    pub at: String,
    pub tx_index: i32,
    /// The row is too big for a notification: read it from the log.
    #[serde(default)]
    pub fetch: bool,
}

impl Notice {
    pub fn parse(payload: &str) -> serde_json::Result<Notice> {
        serde_json::from_str(payload)
    }
}

impl RowNotice {
    /// The change, once its commit has given it a seq and a size.
    pub fn into_change(self, seq: i64, tx_size: i32) -> Change {
        Change {
            seq,
            id: self.id,
            table: self.table,
            prefix: self.prefix,
            op: self.op,
            new: self.new,
            old: self.old,
            actor: self.actor,
            at: self.at,
            tx_index: self.tx_index,
            tx_size,
        }
    }
}
