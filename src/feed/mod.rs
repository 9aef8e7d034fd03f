//! The feed: the log becomes typed events in commit order (`sequencer`
//! gives seqs, `listener` reads and publishes), encoded once (`event`), fanned
//! out (`hub`), and each client's exact stream (`subscriber`).
//!
//! [`Feed`] is the one seam the layers above use: the hub to follow, the log
//! to read, and PEARL's running state, which stays inside the feed.

mod bounded;
pub mod change;
pub mod event;
pub mod hub;
pub mod kinds;
pub mod listener;
pub mod log;
pub mod pearl;
pub mod renames;
mod replay;
pub mod sequencer;
pub mod standby;
pub mod subscriber;

use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use crate::metrics::Metrics;
use hub::Hub;
use kinds::EventNames;
use renames::Renames;

/// The feed of one server. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    /// Live events, encoded once.
    pub hub: Hub,
    /// Log reads for replays and snapshots: the primary's pool, or a standby's.
    pub pool: PgPool,
    /// The primary, when `pool` is a standby's (`--replica-url`).
    pub primary: Option<PgPool>,
    /// PEARL's running state (usernames, items, unresolved counts): the
    /// listener's, kept current from the feed itself and copied by a replay,
    /// so replayed PEARL messages say what live ones said.
    pearl: Arc<Mutex<pearl::State>>,
    pub metrics: Arc<Metrics>,
    /// The names tracked tables had, kept by the listener.
    pub renames: Arc<std::sync::RwLock<Renames>>,
    /// Event names of tables' own, kept by the listener; shared by every encoder.
    pub event_names: Arc<std::sync::RwLock<Arc<EventNames>>>,
}

impl Feed {
    /// A feed whose hub keeps `hub_capacity` events.
    pub fn new(pool: PgPool, hub_capacity: usize, metrics: Arc<Metrics>) -> Feed {
        Feed {
            hub: Hub::new(hub_capacity),
            pool,
            primary: None,
            pearl: Arc::default(),
            metrics,
            renames: Arc::default(),
            event_names: Arc::default(),
        }
    }

    /// Reads the log, snapshots and rows from `standby`; `self.pool` stays the primary's.
    pub fn reading_from(mut self, standby: PgPool) -> Feed {
        self.primary = Some(std::mem::replace(&mut self.pool, standby));
        self
    }

    /// A tracked table's rows that `scope` may see, as of a watermark (see
    /// [`log::snapshot`]); on a standby, made exact there (`standby`).
    pub async fn snapshot(&self, table: &str, scope: &crate::auth::Scope) -> sqlx::Result<Option<log::Snapshot>> {
        let Some(primary) = &self.primary else {
            return log::snapshot(&self.pool, table, scope).await;
        };
        let mut exact = standby::exact_rows(&self.pool, primary, &[table]).await?;
        Ok(exact
            .rows
            .pop()
            .flatten()
            .map(|rows| log::Snapshot::shaped(exact.head, exact.position, rows, scope)))
    }
}
