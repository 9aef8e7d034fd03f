//! What PEARL's messages need beyond the row itself, kept current from the feed:
//! unresolved top-level comments per tracker, usernames, and item context.
//!
//! The listener owns the live state (loaded with its start snapshot, then
//! changed by every event it publishes, never by a query per event). A client
//! served from the log gets a copy moved to the seq it resumes from, by
//! undoing (or applying) the comment changes in between, read from the log:
//! so `unresolved_count` is as exact on replayed events as on live ones.

use std::collections::HashMap;

use serde_json::{json, Value};
use sqlx::PgExecutor;

use super::{Row, TrackerComment};
use crate::feed::change::{Change, Op};

/// Who receives an event: `/ws` clients see row events, the PEARL endpoint
/// sees PEARL's messages; most events are both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    All,
    /// The general feed only (a row event PEARL replaces with its own message).
    Native,
    /// The PEARL endpoint only (PEARL's shape of a change the general feed sends as a row).
    Pearl,
}

/// A message a change adds to its row event.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: &'static str,
    pub data: Value,
    pub audience: Audience,
    /// Derived from the row change (not one of the transaction's `tx_size` rows).
    pub derived: bool,
}

/// What PEARL makes of one change.
#[derive(Debug)]
pub struct Outcome {
    /// Who receives the row event `<prefix>_<verb>` itself.
    pub row_audience: Audience,
    /// The tracker's unresolved count, for the row event of a comment.
    pub unresolved_count: Option<i64>,
    /// PEARL's messages, in the order they are sent after the row event.
    pub messages: Vec<Message>,
}

impl Outcome {
    fn row_only() -> Outcome {
        Outcome {
            row_audience: Audience::All,
            unresolved_count: None,
            messages: Vec::new(),
        }
    }

    /// PEARL's clients re-read `table` (`refresh_needed` with `reason`); the
    /// general feed gets the row event.
    fn reload(reason: &str, table: &str) -> Outcome {
        Outcome {
            row_audience: Audience::Native,
            unresolved_count: None,
            messages: vec![Message {
                kind: "refresh_needed",
                data: json!({"reason": reason, "table": table}),
                audience: Audience::Pearl,
                derived: false,
            }],
        }
    }
}

/// Item context of a tracker: `{item_code, effort_id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemContext {
    pub item_code: String,
    pub effort_id: i64,
}

/// PEARL's running state. Cheap to clone for a client's replay.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Unresolved top-level comments per tracker (replies never count, as in PEARL).
    unresolved: HashMap<i64, i64>,
    usernames: HashMap<i64, String>,
    items: HashMap<i64, ItemContext>,
    /// Items deleted in the transaction being applied: a tracker deleted by the
    /// same cascade still finds its item; forgotten when the transaction ends.
    items_leaving: Vec<i64>,
    /// The last change applied: (seq, event id), 0 within seq for "all of it".
    position: (i64, i64),
}

/// A comment that counts toward its tracker's badge.
fn counts(comment: &TrackerComment) -> bool {
    comment.parent_comment_id.is_none() && !comment.is_resolved
}

impl State {
    /// The state as of the whole transaction `seq`, read in the transaction
    /// `snapshot` that `seq` is the head of. Through `pgfeed.snapshot`, as the
    /// server reads every tracked table: its role needs no SELECT on the
    /// application's tables. An untracked table reads as empty.
    pub async fn read(snapshot: &mut sqlx::PgConnection, seq: i64) -> anyhow::Result<State> {
        let mut rows = Vec::new();
        for table in State::TABLES {
            let text: Option<String> = sqlx::query_scalar("SELECT rows::text FROM pgfeed.snapshot($1)")
                .bind(table)
                .fetch_optional(&mut *snapshot)
                .await?;
            let parsed: Vec<Value> = text.map(|t| serde_json::from_str(&t)).transpose()?.unwrap_or_default();
            rows.push(parsed);
        }
        Ok(State::load(seq, &rows[0], &rows[1], &rows[2]))
    }

    /// The tables the state is read from, in the order `from_rows` takes them.
    pub const TABLES: [&'static str; 3] = ["users", "reporting_effort_items", "tracker_comments"];

    /// The state as of the whole transaction `seq`, from the rows of
    /// [`State::TABLES`] as of `seq` (`None`: not tracked, read as empty).
    pub fn from_rows(seq: i64, rows: &[Option<Vec<Value>>]) -> State {
        let table = |i: usize| rows.get(i).and_then(|r| r.as_deref()).unwrap_or_default();
        State::load(seq, table(0), table(1), table(2))
    }

    /// The state as of the whole transaction `seq`, from a snapshot taken in
    /// the same transaction as `seq` (rows as `pgfeed.snapshot` gives them).
    pub fn load(seq: i64, users: &[Value], items: &[Value], comments: &[Value]) -> State {
        let mut state = State {
            position: (seq, i64::MAX),
            ..State::default()
        };
        for user in users {
            if let Some(Ok(Row::User(user))) = super::type_row("users", user) {
                state.usernames.insert(user.id, user.username);
            }
        }
        for item in items {
            if let Some(Ok(Row::ReportingEffortItem(item))) = super::type_row("reporting_effort_items", item) {
                state.remember_item(&item);
            }
        }
        for comment in comments {
            if let Some(Ok(Row::TrackerComment(c))) = super::type_row("tracker_comments", comment) {
                if counts(&c) {
                    *state.unresolved.entry(c.tracker_id).or_default() += 1;
                }
            }
        }
        state
    }

    fn remember_item(&mut self, item: &super::ReportingEffortItem) {
        self.items.insert(
            item.id,
            ItemContext {
                item_code: item.item_code.clone(),
                effort_id: item.reporting_effort_id,
            },
        );
    }

    pub fn unresolved_count(&self, tracker: i64) -> i64 {
        self.unresolved.get(&tracker).copied().unwrap_or(0).max(0)
    }

    pub fn username(&self, user: i64) -> Option<&str> {
        self.usernames.get(&user).map(String::as_str)
    }

    pub fn item(&self, item: i64) -> Option<&ItemContext> {
        self.items.get(&item)
    }

    /// Applies one change and says what PEARL makes of it. `old` and `new` are
    /// the typed rows (`None` for a row that did not fit its type: it goes out
    /// as a plain row event to everyone).
    pub fn on_change(&mut self, change: &Change, old: Option<&Row>, new: Option<&Row>) -> Outcome {
        self.position = (change.seq, change.id);
        let outcome = if change.op == Op::Truncate {
            self.truncate(change)
        } else if change.op == Op::Schema {
            Self::reshaped(change)
        } else {
            match (change.table.as_str(), old, new) {
                ("users", old, new) => {
                    if let Some(Row::User(user)) = new {
                        self.usernames.insert(user.id, user.username.clone());
                    } else if let Some(Row::User(user)) = old {
                        self.usernames.remove(&user.id);
                    }
                    Outcome::row_only()
                }
                ("reporting_effort_items", old, new) => {
                    if let Some(Row::ReportingEffortItem(item)) = new {
                        self.remember_item(item);
                    } else if let Some(Row::ReportingEffortItem(item)) = old {
                        self.items_leaving.push(item.id);
                    }
                    Outcome::row_only()
                }
                ("tracker_comments", old, new) => self.comment(change, old, new),
                ("reporting_effort_item_tracker", old, new) => self.tracker(change, old, new),
                _ => Outcome::row_only(),
            }
        };
        if change.is_last_of_tx() {
            for item in self.items_leaving.drain(..) {
                self.items.remove(&item);
            }
            self.position = (change.seq, i64::MAX);
        }
        outcome
    }

    fn truncate(&mut self, change: &Change) -> Outcome {
        match change.table.as_str() {
            "users" => self.usernames.clear(),
            "reporting_effort_items" => self.items.clear(),
            "tracker_comments" => self.unresolved.clear(),
            _ => {}
        }
        if !super::is_pearl_table(&change.table) {
            return Outcome::row_only();
        }
        Outcome::reload("truncate", &change.table)
    }

    /// A PEARL table changed shape (or name): PEARL's clients re-read it, as
    /// they do after a truncate. The typed rows follow added columns; a row
    /// that no longer fits its type goes out generic and is counted.
    fn reshaped(change: &Change) -> Outcome {
        let table = change.renamed_from().unwrap_or(&change.table);
        if !super::is_pearl_table(table) && !super::is_pearl_table(&change.table) {
            return Outcome::row_only();
        }
        Outcome::reload("schema_changed", &change.table)
    }

    /// PEARL's `CommentWithUserInfo`: the row, the usernames, whether it is top-level.
    fn comment_with_user(&self, row: &Value, comment: &TrackerComment) -> Value {
        let mut object = row.as_object().cloned().unwrap_or_default();
        object.insert("username".into(), json!(self.username(comment.user_id)));
        object.insert(
            "resolved_by_username".into(),
            json!(comment.resolved_by_user_id.and_then(|u| self.username(u))),
        );
        object.insert("is_parent_comment".into(), json!(comment.parent_comment_id.is_none()));
        Value::Object(object)
    }

    fn comment(&mut self, change: &Change, old: Option<&Row>, new: Option<&Row>) -> Outcome {
        let old = match old {
            Some(Row::TrackerComment(c)) => Some(c),
            _ => None,
        };
        let new = match new {
            Some(Row::TrackerComment(c)) => Some(c),
            _ => None,
        };
        let typed_as_expected = match change.op {
            Op::Insert => new.is_some(),
            Op::Update => new.is_some() && old.is_some(),
            _ => old.is_some(),
        };
        if !typed_as_expected {
            return Outcome::row_only();
        }
        if let Some(old) = old.filter(|c| counts(c)) {
            *self.unresolved.entry(old.tracker_id).or_default() -= 1;
        }
        if let Some(new) = new.filter(|c| counts(c)) {
            *self.unresolved.entry(new.tracker_id).or_default() += 1;
        }
        let comment = new.or(old).expect("checked above");
        let tracker_id = comment.tracker_id;
        let unresolved_count = self.unresolved_count(tracker_id);
        let row = change.new.as_ref().or(change.old.as_ref()).expect("a typed row exists");
        let (kind, data, audience, derived) = match (change.op, old, new) {
            (Op::Insert, _, Some(c)) if c.parent_comment_id.is_none() => (
                "comment_created",
                json!({"tracker_id": tracker_id, "comment": self.comment_with_user(row, c),
                       "unresolved_count": unresolved_count}),
                Audience::Pearl,
                false,
            ),
            (Op::Insert, _, Some(c)) => (
                "comment_replied",
                json!({"tracker_id": tracker_id, "parent_comment_id": c.parent_comment_id,
                       "reply": self.comment_with_user(row, c), "unresolved_count": unresolved_count}),
                Audience::All,
                true,
            ),
            (Op::Update, Some(before), Some(after)) if !before.is_resolved && after.is_resolved => (
                "comment_resolved",
                json!({"tracker_id": tracker_id, "comment_id": after.id, "unresolved_count": unresolved_count}),
                Audience::All,
                true,
            ),
            (Op::Update, _, _) => {
                let mut data = row.as_object().cloned().unwrap_or_default();
                data.insert("unresolved_count".into(), json!(unresolved_count));
                ("comment_updated", Value::Object(data), Audience::Pearl, false)
            }
            _ => (
                "comment_deleted",
                json!({"id": comment.id, "tracker_id": tracker_id, "unresolved_count": unresolved_count}),
                Audience::Pearl,
                false,
            ),
        };
        Outcome {
            row_audience: Audience::Native,
            unresolved_count: Some(unresolved_count),
            messages: vec![Message {
                kind,
                data,
                audience,
                derived,
            }],
        }
    }

    fn tracker(&mut self, change: &Change, old: Option<&Row>, new: Option<&Row>) -> Outcome {
        match (change.op, old, new) {
            (Op::Update, Some(Row::ReportingEffortTracker(before)), Some(Row::ReportingEffortTracker(after))) => {
                let row = change.new.clone().unwrap_or(Value::Null);
                let roles = [
                    (
                        "production",
                        before.production_programmer_id,
                        after.production_programmer_id,
                    ),
                    ("qc", before.qc_programmer_id, after.qc_programmer_id),
                ];
                let messages = roles
                    .into_iter()
                    .filter(|(_, was, is)| was != is)
                    .map(|(role, _, programmer)| Message {
                        kind: "tracker_assignment_updated",
                        data: json!({"tracker": row, "assignment_type": role, "programmer_id": programmer}),
                        audience: Audience::All,
                        derived: true,
                    })
                    .collect();
                Outcome {
                    row_audience: Audience::All,
                    unresolved_count: None,
                    messages,
                }
            }
            (Op::Delete, Some(Row::ReportingEffortTracker(tracker)), _) => {
                // The actor convention: `SET LOCAL pgfeed.actor = '<users.id>'`.
                let deleted_by = change
                    .actor
                    .as_deref()
                    .and_then(|a| a.trim().parse::<i64>().ok())
                    .and_then(|id| self.username(id).map(|name| json!({"user_id": id, "username": name})));
                let item = self
                    .item(tracker.reporting_effort_item_id)
                    .map(|i| json!({"item_code": i.item_code, "effort_id": i.effort_id}));
                Outcome {
                    row_audience: Audience::Native,
                    unresolved_count: None,
                    messages: vec![Message {
                        kind: "reporting_effort_tracker_deleted",
                        data: json!({"tracker": change.old, "deleted_at": change.at,
                                     "deleted_by": deleted_by, "item": item}),
                        audience: Audience::Pearl,
                        derived: false,
                    }],
                }
            }
            _ => Outcome::row_only(),
        }
    }

    /// The last change applied: (seq, id); id `i64::MAX` means the whole of seq.
    pub fn position(&self) -> (i64, i64) {
        self.position
    }

    /// Moves the unresolved counts to just after the whole transaction `seq`,
    /// by undoing or applying the comment changes between there and the
    /// current position, as the log has them.
    pub async fn move_to<'e>(&mut self, log: impl PgExecutor<'e>, seq: i64) -> sqlx::Result<()> {
        let target = (seq, i64::MAX);
        if target == self.position {
            return Ok(());
        }
        let (low, high, sign) = if target < self.position {
            (target, self.position, -1)
        } else {
            (self.position, target, 1)
        };
        // The comments' rows are picked by table first, behind a fence
        // (`OFFSET 0`), then their JSON read: with the JSON tests beside the
        // table's, Postgres parsed every row of the range (in parallel
        // workers), 60 ms of wall time and three processes for a replay of
        // 100k events where this takes 11 ms in one.
        let deltas: Vec<(i64, i64)> = sqlx::query_as(
            r#"SELECT x.tracker, sum(x.d)::bigint
                 FROM (SELECT c.seq, e.id, e.new, e.old
                         FROM pgfeed.commits c JOIN pgfeed.events e ON e.tx = c.tx
                        WHERE c.seq BETWEEN $1 AND $3 AND e.table_name = 'tracker_comments' OFFSET 0) e
                CROSS JOIN LATERAL (VALUES (e.new, 1), (e.old, -1)) AS r(row, d)
                CROSS JOIN LATERAL (SELECT (r.row->>'tracker_id')::bigint AS tracker, r.d AS d) x
                WHERE r.row IS NOT NULL AND r.row->>'parent_comment_id' IS NULL
                  AND NOT (r.row->>'is_resolved')::boolean
                  AND (e.seq, e.id) > ($1, $2) AND (e.seq, e.id) <= ($3, $4) AND x.tracker IS NOT NULL
                GROUP BY x.tracker"#,
        )
        .bind(low.0)
        .bind(low.1)
        .bind(high.0)
        .bind(high.1)
        .fetch_all(log)
        .await?;
        for (tracker, delta) in deltas {
            *self.unresolved.entry(tracker).or_default() += sign * delta;
        }
        self.items_leaving.clear();
        self.position = target;
        Ok(())
    }
}
