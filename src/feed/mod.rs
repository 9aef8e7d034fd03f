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
pub mod sequencer;
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
    /// Log reads for replays and snapshots.
    pub pool: PgPool,
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
            pearl: Arc::default(),
            metrics,
            renames: Arc::default(),
            event_names: Arc::default(),
        }
    }
}
