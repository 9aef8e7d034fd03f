//! Exact snapshots read on a streaming standby, where no tick can run.
//!
//! On the primary a snapshot ticks first (`log::ticked_snapshot`): its rows
//! hold exactly the transactions up to the head it sees. A standby is read
//! only. Its snapshot holds every transaction whose commit it has replayed,
//! and some of those may be committed transactions no tick has given a seq
//! yet: they will get seqs above the head that snapshot sees. Their log rows
//! are visible in the same snapshot (a transaction's log rows commit with
//! it), so undoing them from the table's rows, newest first, leaves exactly
//! the transactions up to the head, and a client that applies the stream
//! after it applies them once.
//!
//! What cannot be undone (a truncate or a schema change among them, or a row
//! that is not where its log row says) makes the read give up; the caller
//! reads again a moment later (a tick has usually numbered them by then) or
//! asks the primary.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use super::log;

/// Rows as of one seq.
#[derive(Debug)]
pub struct Exact {
    /// Every transaction with seq ≤ `head` is in the rows, none after it.
    pub head: i64,
    /// Its checked position (`None`: retention removed its commit row).
    pub position: Option<String>,
    /// Per table asked for, its rows (`None`: not tracked).
    pub rows: Vec<Option<Vec<Value>>>,
}

/// How long a snapshot tries the standby before asking the primary.
const TRIES: u32 = 12;

/// The rows of `tables` (named as in events) as of one seq, from the standby
/// `standby`, or from `primary` after a tick when the standby cannot give
/// them exactly in a few tries.
pub async fn exact_rows(standby: &PgPool, primary: &PgPool, tables: &[&str]) -> sqlx::Result<Exact> {
    let mut wait = Duration::from_millis(1);
    for _ in 0..TRIES {
        if let Some(exact) = read(standby, tables).await? {
            return Ok(exact);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
    tracing::debug!(
        ?tables,
        "the standby's snapshot could not be made exact; reading the primary"
    );
    let mut tx = log::ticked_snapshot(primary).await?;
    let exact = read_in(&mut tx, tables).await?;
    tx.commit().await?;
    Ok(exact.0)
}

/// One try on the standby: `None` when what no tick has numbered cannot be undone.
async fn read(standby: &PgPool, tables: &[&str]) -> sqlx::Result<Option<Exact>> {
    let mut tx = standby.begin().await?;
    // No JIT and no parallel workers: the open range below is estimated at a
    // third of the log, and compiling its plan or starting workers took
    // longer than running it (migrations/capture/0015).
    sqlx::Executor::execute(
        &mut *tx,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
         SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0",
    )
    .await?;
    let (mut exact, labels) = read_in(&mut tx, tables).await?;
    // Committed, visible, and without a seq: above the last tick's xmin
    // (below it, every committed transaction got its seq at that tick). Each
    // row's commit looked up by index: a NOT EXISTS became an anti join that
    // hashed every commit row of the log (migrations/capture/0015).
    let unnumbered: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT e.table_name, e.op, e.new::jsonb::text, e.old::jsonb::text FROM pgfeed.events e \
          WHERE e.tx >= pg_snapshot_xmin((SELECT q.seen FROM pgfeed.sequencer q)) \
            AND (SELECT true FROM pgfeed.commits c WHERE c.tx = e.tx LIMIT 1) IS NULL \
          ORDER BY e.id DESC",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for (table, op, new, old) in unnumbered {
        let Some(at) = labels.iter().position(|label| label.as_deref() == Some(table.as_str())) else {
            continue;
        };
        let Some(rows) = exact.rows[at].as_mut() else {
            continue;
        };
        let (new, old) = (parse(new)?, parse(old)?);
        if !undo(rows, &op, new, old) {
            return Ok(None);
        }
    }
    Ok(Some(exact))
}

/// Rows and head in the transaction `tx`, and each table's name in events.
async fn read_in(tx: &mut sqlx::PgConnection, tables: &[&str]) -> sqlx::Result<(Exact, Vec<Option<String>>)> {
    let (head, position): (i64, Option<String>) =
        sqlx::query_as("SELECT pgfeed.head(), pgfeed.position(pgfeed.head())")
            .fetch_one(&mut *tx)
            .await?;
    let mut rows = Vec::with_capacity(tables.len());
    let mut labels = Vec::with_capacity(tables.len());
    for table in tables {
        // The name events carry now: `table` may be a former one.
        let found: Option<(Option<String>, String)> = sqlx::query_as(
            "SELECT COALESCE( \
                 (SELECT pgfeed.table_label(t.table_name) FROM pgfeed.tracked_tables t \
                   WHERE pgfeed.table_label(t.table_name) = $1), \
                 (SELECT pgfeed.table_label(t.table_name) FROM pgfeed.renames r \
                    JOIN pgfeed.tracked_tables t ON t.table_name::oid = r.table_name \
                   WHERE r.\"from\" = $1 ORDER BY r.renamed_at DESC, r.tx DESC LIMIT 1)), \
                    s.rows::text \
               FROM pgfeed.snapshot($1) s",
        )
        .bind(table)
        .fetch_optional(&mut *tx)
        .await?;
        match found {
            Some((label, text)) => {
                let parsed: Vec<Value> = serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
                rows.push(Some(parsed));
                labels.push(label);
            }
            None => {
                rows.push(None);
                labels.push(None);
            }
        }
    }
    Ok((Exact { head, position, rows }, labels))
}

fn parse(text: Option<String>) -> sqlx::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// Takes one logged row change back out of `rows`; false when it cannot.
fn undo(rows: &mut Vec<Value>, op: &str, new: Option<Value>, old: Option<Value>) -> bool {
    let find = |rows: &Vec<Value>, row: &Option<Value>| row.as_ref().and_then(|row| rows.iter().position(|r| r == row));
    match op {
        "INSERT" => match find(rows, &new) {
            Some(at) => {
                rows.remove(at);
                true
            }
            None => false,
        },
        "UPDATE" => match (find(rows, &new), old) {
            (Some(at), Some(old)) => {
                rows[at] = old;
                true
            }
            _ => false,
        },
        "DELETE" => match old {
            Some(old) => {
                // Back where `pgfeed.snapshot` orders it: by `id`.
                let at = rows.partition_point(|row| by_id(row, &old) == std::cmp::Ordering::Less);
                rows.insert(at, old);
                true
            }
            None => false,
        },
        // TRUNCATE, SCHEMA: the rows before them are not in the log.
        _ => false,
    }
}

/// The order of `pgfeed.snapshot`'s rows (jsonb's order of `id`, for numbers and texts).
fn by_id(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (&a["id"], &b["id"]) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(std::cmp::Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => std::cmp::Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn undoing_leaves_the_rows_before() {
        let mut rows = vec![json!({"id": 1, "a": "x2"}), json!({"id": 3, "a": "new"})];
        // Newest first: the insert of 3, the update of 1, the delete of 2.
        assert!(undo(&mut rows, "INSERT", Some(json!({"id": 3, "a": "new"})), None));
        assert!(undo(
            &mut rows,
            "UPDATE",
            Some(json!({"id": 1, "a": "x2"})),
            Some(json!({"id": 1, "a": "x1"}))
        ));
        assert!(undo(&mut rows, "DELETE", None, Some(json!({"id": 2, "a": "y"}))));
        assert_eq!(rows, vec![json!({"id": 1, "a": "x1"}), json!({"id": 2, "a": "y"})]);
        assert!(!undo(&mut rows, "INSERT", Some(json!({"id": 9})), None));
        assert!(!undo(&mut rows, "TRUNCATE", None, None));
    }
}
