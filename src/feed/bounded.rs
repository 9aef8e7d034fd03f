//! Every round trip on the listener's connections is bounded: a dead
//! connection (its peer gone without a word, or a proxy that swallows
//! everything) shows only as a missing answer, and one met at the wrong
//! moment would otherwise hold the feed up for good.

use std::time::Duration;

/// Longest a small round trip on the listener's connection may take (a lock,
/// an unlock, a wait for writers, LISTEN): every one is bounded, or a dead
/// connection met at that moment would hold the feed up for good.
pub const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a tick or a page of the log may take before its connection counts
/// as dead (its peer gone without a word, or a proxy that swallows everything:
/// only a missing answer shows it): short, so such a connection is replaced
/// within seconds; doubled after each that ran out (a large backlog can take
/// longer), up to the longest.
const WORK_TIMEOUT: Duration = Duration::from_secs(4);
const LONGEST_WORK_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a tick or a page of the log may take: `WORK_TIMEOUT`, doubled
/// after each that ran out, the shortest again after one that did not.
pub struct WorkLimit {
    next: Duration,
}

impl Default for WorkLimit {
    fn default() -> WorkLimit {
        WorkLimit { next: WORK_TIMEOUT }
    }
}

impl WorkLimit {
    pub async fn bound<T>(&mut self, work: impl std::future::Future<Output = sqlx::Result<T>>) -> sqlx::Result<T> {
        let limit = self.next;
        match tokio::time::timeout(limit, work).await {
            Ok(done) => {
                self.next = WORK_TIMEOUT;
                done
            }
            Err(_) => {
                self.next = (limit * 2).min(LONGEST_WORK_TIMEOUT);
                Err(silence(limit))
            }
        }
    }
}

/// A round trip that gives up after `limit`, as an error: its connection is
/// then taken for dead.
pub async fn within<T>(limit: Duration, trip: impl std::future::Future<Output = sqlx::Result<T>>) -> sqlx::Result<T> {
    tokio::time::timeout(limit, trip)
        .await
        .unwrap_or_else(|_| Err(silence(limit)))
}

/// The error of a round trip that got no answer within `limit`.
fn silence(limit: Duration) -> sqlx::Error {
    let what = format!("no answer within {limit:?}");
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}
