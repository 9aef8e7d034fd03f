//! A replay's reader: the log after a position, a page at a time, encoded
//! as the live events were, for a subscriber that is behind or resumes.

use sqlx::PgPool;

use super::change::Change;
use super::event::{Encoder, Event, Interned};
use super::log::{self, Cursor as LogCursor};
use super::Feed;

/// Log rows read per page while replaying.
const LOG_PAGE: i64 = 1000;

/// Reads the log after `from` for a replay and hands over each page encoded;
/// an empty page is the end. PEARL's state starts where the replay starts, so
/// replayed events carry the counts and names live ones did.
///
/// Two stages: one task reads the pages (the query, and the rows' JSON
/// parsed), this one encodes them, so Postgres reads the next page while this
/// page is encoded and the one before it is sent. In one task the two took
/// turns (`bench replay --rounds 3`: 134-151k events/s in one task, 151-161k
/// in two).
///
/// On a standby (`--replica-url`) it first waits until the standby has
/// replayed through `until`, the hub's head when the replay started: the log
/// read must reach where the hub's events take over.
pub(super) async fn read_ahead(
    sources: Feed,
    from: i64,
    until: i64,
    pages: tokio::sync::mpsc::Sender<sqlx::Result<Vec<Event>>>,
) {
    if sources.primary.is_some() {
        let waited = match sources.pool.acquire().await {
            Ok(mut db) => log::wait_for_head(&mut db, from.max(until), log::STANDBY_PATIENCE).await,
            Err(err) => Err(err),
        };
        match waited {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    seq = from.max(until),
                    "the standby has not replayed the log a replay needs"
                );
                let _ = pages.send(Err(sqlx::Error::PoolTimedOut)).await;
                return;
            }
            Err(err) => {
                let _ = pages.send(Err(err)).await;
                return;
            }
        }
    }
    let (read, mut changes) = tokio::sync::mpsc::channel(2);
    let _reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(read_pages(sources.pool.clone(), from, read)));
    let mut state = sources.pearl.lock().expect("pearl state lock").clone();
    if let Err(err) = state.move_to(&sources.pool, from).await {
        let _ = pages.send(Err(err)).await;
        return;
    }
    let mut names = Interned::default();
    while let Some(page) = changes.recv().await {
        let changes = match page {
            Ok(changes) => changes,
            Err(err) => {
                let _ = pages.send(Err(err)).await;
                return;
            }
        };
        let end = changes.is_empty();
        let kinds = sources.event_names.read().expect("event names lock").clone();
        let mut encoder = Encoder {
            metrics: &sources.metrics,
            pearl: &mut state,
            count_untyped: false,
            names: &mut names,
            kinds: &kinds,
        };
        let events: Vec<Event> = changes.into_iter().flat_map(|change| encoder.encode(change)).collect();
        if pages.send(Ok(events)).await.is_err() || end {
            return;
        }
    }
}

/// The log after `from`, a page at a time, until an empty page (the end) or an error.
///
/// Postgres reads the next page while this one's rows are decoded (their
/// JSON parsed), on another of the pool's connections: decoding waited for
/// the query and the query for decoding.
async fn read_pages(pool: PgPool, from: i64, pages: tokio::sync::mpsc::Sender<sqlx::Result<Vec<Change>>>) {
    let mut at = LogCursor::after(from);
    let mut page = log::read_rows(&pool, at, LOG_PAGE).await;
    loop {
        let (rows, next) = match page {
            Ok(page) => page,
            Err(err) => {
                let _ = pages.send(Err(err)).await;
                return;
            }
        };
        if rows.is_empty() {
            let _ = pages.send(Ok(Vec::new())).await;
            return;
        }
        let (read, decoded) = tokio::join!(log::read_rows(&pool, next, LOG_PAGE), async { log::changes(rows, at) });
        let changes = match decoded {
            Ok((changes, _)) => changes,
            Err(err) => {
                let _ = pages.send(Err(err)).await;
                return;
            }
        };
        if pages.send(Ok(changes)).await.is_err() {
            return;
        }
        (page, at) = (read, next);
    }
}
