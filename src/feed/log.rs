//! Reads of the pgfeed log (`pgfeed.events` joined to `pgfeed.commits`), in commit order.
//!
//! The log is the truth; notifications are only a fast path. Everything that
//! must not lose an event (the listener after a reconnect, a resuming client, a
//! client that fell behind) reads from here.

use serde_json::Value;
use sqlx::{PgExecutor, PgPool, Row};

use super::change::{Change, Op};
use crate::auth::Scope;
use crate::timestamps;

/// A position in the log: after transaction `seq`, or inside it after event `id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub seq: i64,
    /// 0 means "after the whole transaction `seq`".
    pub id: i64,
    /// Index within transaction `seq` of the next event (when `id` is not 0).
    pub next_index: i32,
}

impl Cursor {
    /// After the whole transaction `seq`.
    pub fn after(seq: i64) -> Cursor {
        Cursor {
            seq,
            id: 0,
            next_index: 0,
        }
    }
}

/// The statements that open a tick's transaction: the sequencer's lock comes
/// before the transaction's snapshot, so the tick sees the previous one's commit.
macro_rules! tick_opening {
    () => {
        concat!(locked_opening!(), "; SELECT pgfeed.tick()")
    };
}

/// The statements before the tick: nothing in them takes a snapshot.
macro_rules! locked_opening {
    () => {
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; LOCK TABLE pgfeed.sequencer IN EXCLUSIVE MODE"
    };
}

/// The log after a cursor (`pgfeed.read_log`, migrations/capture/0003): `{seq}`,
/// `{id}`, `{limit}` are filled in (by `read` with parameters, by
/// `tick_and_read` with the numbers themselves). `id = 0` means the whole of
/// `seq` was read; ids start at 1.
macro_rules! read_sql {
    ($seq:expr, $id:expr, $limit:expr) => {
        format!(
            "SELECT * FROM pgfeed.read_log({seq}, {id}, {limit})",
            seq = $seq,
            id = $id,
            limit = $limit
        )
    };
}

/// Reads up to `limit` changes after `cursor`, in (seq, statement) order, and the
/// cursor after them. An empty result means the log holds nothing after `cursor`.
pub async fn read<'e>(db: impl PgExecutor<'e>, cursor: Cursor, limit: i64) -> sqlx::Result<(Vec<Change>, Cursor)> {
    let (rows, _) = read_rows(db, cursor, limit).await?;
    changes(rows, cursor)
}

/// Log rows, as [`read`] reads them, not yet turned into changes
/// ([`changes`]), and the cursor after them: the next page can be asked for
/// while this one is decoded.
pub async fn read_rows<'e>(db: impl PgExecutor<'e>, cursor: Cursor, limit: i64) -> sqlx::Result<(Rows, Cursor)> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| read_sql!("$1", "$2", "$3"));
    let rows = sqlx::query(sql)
        .bind(cursor.seq)
        .bind(cursor.id)
        .bind(limit)
        .fetch_all(db)
        .await?;
    let mut at = cursor;
    for row in &rows {
        at = at.past(row.try_get(0)?, row.try_get(1)?, row.try_get(2)?).1;
    }
    Ok((rows, at))
}

/// Log rows as `read_sql!` selects them.
pub type Rows = Vec<sqlx::postgres::PgRow>;

impl Cursor {
    /// Past the log row of transaction `seq` (of `size` rows) with id `id`,
    /// read right after this cursor: the row's index in its transaction, and
    /// the cursor after it.
    fn past(self, seq: i64, size: i32, id: i64) -> (i32, Cursor) {
        let tx_index = if seq == self.seq && self.id > 0 {
            self.next_index
        } else {
            0
        };
        let next = if tx_index + 1 >= size {
            Cursor::after(seq)
        } else {
            Cursor {
                seq,
                id,
                next_index: tx_index + 1,
            }
        };
        (tx_index, next)
    }
}

/// A SELECT of one row that runs in a tick's round trip, in its transaction
/// right before the tick (the listener lets go of a lock with it), or none.
/// The transaction's snapshot is taken by it, after the sequencer's lock as
/// the tick needs; it must not write.
pub type Before = Option<&'static str>;

/// One tick, and up to `limit` changes after `cursor` read in the same
/// transaction: the head, the changes and the cursor after them, in one round
/// trip, after `before`. The changes are returned only once the tick has committed.
pub async fn tick_and_read(
    db: &mut sqlx::postgres::PgListener,
    before: Before,
    cursor: Cursor,
    limit: i64,
) -> sqlx::Result<(i64, Vec<Change>, Cursor)> {
    // Numbers of our own, written into the text: a simple query has no parameters.
    let read = read_sql!(cursor.seq, cursor.id, limit);
    let (head, rows) = ticked(db, before, &read).await?;
    let (changes, next) = changes(rows, cursor)?;
    Ok((head, changes, next))
}

/// Runs a tick's transaction in one round trip (a simple query): `before`,
/// the tick, then `then` (statements or nothing). The head, and the rows of `then`.
async fn ticked(
    db: &mut sqlx::postgres::PgListener,
    before: Before,
    then: &str,
) -> sqlx::Result<(i64, Vec<sqlx::postgres::PgRow>)> {
    let sql = format!(
        "BEGIN; {}; {}SELECT pgfeed.tick(); {then}{}COMMIT",
        locked_opening!(),
        before.map(|b| format!("{b}; ")).unwrap_or_default(),
        if then.is_empty() { "" } else { "; " }
    );
    let mut rows = sqlx::Executor::fetch_all(db, sql.as_str()).await?;
    let at = usize::from(before.is_some());
    if rows.len() <= at {
        return Err(sqlx::Error::Protocol("pgfeed.tick() returned nothing".into()));
    }
    let rest = rows.split_off(at + 1);
    Ok((rows[at].try_get(0)?, rest))
}

/// Log rows (as `read_sql!` selects them, after `cursor`) as changes, and the cursor after them.
pub fn changes(rows: Rows, cursor: Cursor) -> sqlx::Result<(Vec<Change>, Cursor)> {
    let mut changes = Vec::with_capacity(rows.len());
    let mut at = cursor;
    for row in rows {
        // Columns by position, in `read_sql!`'s order: by name is a hash lookup each.
        let seq: i64 = row.try_get(0)?;
        let id: i64 = row.try_get(2)?;
        let written_us: i64 = row.try_get(9)?;
        let (tx_index, next) = at.past(seq, row.try_get(1)?, id);
        let change = Change {
            seq,
            id,
            table: row.try_get(3)?,
            prefix: row.try_get(4)?,
            op: Op::parse(row.try_get(5)?)
                .ok_or_else(|| sqlx::Error::Protocol("unknown op in pgfeed.events".into()))?,
            new: parse_json(row.try_get::<Option<&str>, _>(6)?)?,
            old: parse_json(row.try_get::<Option<&str>, _>(7)?)?,
            actor: row.try_get(8)?,
            at: timestamps::from_unix_millis(written_us.div_euclid(1000)),
            written: written_us as f64 / 1e6,
            tx_index,
            tx_size: row.try_get(1)?,
            position: row.try_get(10)?,
        };
        at = next;
        changes.push(change);
    }
    Ok((changes, at))
}

fn parse_json(text: Option<&str>) -> sqlx::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(t).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()
}

/// The newest commit position visible now (0 before the first write).
pub async fn head<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT pgfeed.head()").fetch_one(db).await
}

/// How long a reader waits for a standby to replay a seq it was told of
/// before it reports the log unavailable.
pub const STANDBY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the head `pool` sees is at least `seq` (a standby replaying
/// what the primary committed); false when `patience` ran out first.
pub async fn wait_for_head(db: &mut sqlx::PgConnection, seq: i64, patience: std::time::Duration) -> sqlx::Result<bool> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_micros(250);
    loop {
        if head(&mut *db).await? >= seq {
            return Ok(true);
        }
        if started.elapsed() >= patience {
            return Ok(false);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Removes the log of transactions committed more than `keep` ago; returns the rows removed.
pub async fn prune(pool: &PgPool, keep: std::time::Duration) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT pgfeed.prune(make_interval(secs => $1))")
        .bind(keep.as_secs_f64())
        .fetch_one(pool)
        .await
}

/// One tick (see migrations/capture/0002 and 0004): gives the next seqs to every
/// transaction committed since the last tick; returns the head after it.
/// Its own transaction, in one round trip, after `before`. A failed tick
/// leaves the connection inside an aborted transaction: drop the connection.
pub async fn tick(db: &mut sqlx::postgres::PgListener, before: Before) -> sqlx::Result<i64> {
    ticked(db, before, "").await.map(|(head, _)| head)
}

/// Opens a REPEATABLE READ transaction that has just ticked: what it reads
/// reflects exactly the transactions up to `pgfeed.head()` as it sees it.
/// It holds the sequencer's lock until it ends, so keep it short.
pub async fn ticked_snapshot(pool: &PgPool) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::Executor::execute(&mut *tx, tick_opening!()).await?;
    Ok(tx)
}

/// The rows of a tracked table (named as in events) that `scope` may see, as
/// one JSON array, without its excluded columns and with UTC timestamps, and
/// the watermark seq they reflect: every transaction with seq ≤ watermark is
/// in the rows, none after it. `None` when `table` is not tracked.
pub async fn snapshot(pool: &PgPool, table: &str, scope: &Scope) -> sqlx::Result<Option<Snapshot>> {
    let mut tx = ticked_snapshot(pool).await?;
    let found: Option<(i64, Option<String>, String)> =
        sqlx::query_as("SELECT watermark, pgfeed.position(watermark), rows::text FROM pgfeed.snapshot($1)")
            .bind(table)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    let Some((watermark, position, rows)) = found else {
        return Ok(None);
    };
    let rows: Vec<Value> = serde_json::from_str(&rows).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Some(Snapshot::shaped(watermark, position, rows, scope)))
}

impl Snapshot {
    /// The rows `scope` may see, with UTC timestamps, as of `watermark`.
    pub fn shaped(watermark: i64, position: Option<String>, mut rows: Vec<Value>, scope: &Scope) -> Snapshot {
        rows.retain(|row| scope.allows_row(row));
        rows.iter_mut().for_each(timestamps::normalize_row);
        Snapshot {
            watermark,
            // A head whose commit row retention removed has no check left.
            position: position.unwrap_or_else(|| watermark.to_string()),
            rows: Value::Array(rows).to_string(),
        }
    }
}

/// A table's rows as of a watermark (see [`snapshot`]).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub watermark: i64,
    /// The watermark's checked position.
    pub position: String,
    /// A JSON array.
    pub rows: String,
}

/// Where the log stands for a client resuming after `seq`: the oldest seq it
/// can resume after, the head, and the checked position of `seq` in this
/// history (`None` when the log no longer, or does not yet, hold it).
pub async fn bounds(pool: &PgPool, seq: i64) -> sqlx::Result<(i64, i64, Option<String>)> {
    sqlx::query_as("SELECT (SELECT pruned_through FROM pgfeed.retention), pgfeed.head(), pgfeed.position($1)")
        .bind(seq)
        .fetch_one(pool)
        .await
}

/// What a listener checks on a quiet connection, in one round trip.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The newest seq.
    pub head: i64,
    /// The checked position of the seq asked about in this history (see [`bounds`]).
    pub position: Option<String>,
    /// How long the oldest committed transaction has waited for its seq (migrations/capture/0008).
    pub unsequenced: std::time::Duration,
}

/// The head, the checked position of `seq`, and how long sequencing is behind.
pub async fn standing<'e>(db: impl PgExecutor<'e>, seq: i64) -> sqlx::Result<Standing> {
    standing_by(
        db,
        seq,
        "SELECT pgfeed.head(), pgfeed.position($1), (extract(epoch FROM pgfeed.unsequenced_age()) * 1000)::int8",
    )
    .await
}

/// As [`standing`], on a standby: the stamps that time sequencing are not
/// replicated (an unlogged table), so `unsequenced` is zero; the primary says.
pub async fn standing_on_standby<'e>(db: impl PgExecutor<'e>, seq: i64) -> sqlx::Result<Standing> {
    standing_by(db, seq, "SELECT pgfeed.head(), pgfeed.position($1), 0::int8").await
}

async fn standing_by<'e>(db: impl PgExecutor<'e>, seq: i64, sql: &'static str) -> sqlx::Result<Standing> {
    let (head, position, unsequenced_ms): (i64, Option<String>, i64) =
        sqlx::query_as(sql).bind(seq).fetch_one(db).await?;
    Ok(Standing {
        head,
        position,
        unsequenced: std::time::Duration::from_millis(unsequenced_ms.max(0) as u64),
    })
}
