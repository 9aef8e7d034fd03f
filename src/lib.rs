//! pgfeed turns every write to a Postgres database into a live, ordered,
//! resumable event feed for WebSocket clients.
//!
//! The path of one event, module by module:
//!
//! 1. **SQL** (`migrations/`): a trigger on each tracked table writes the row
//!    change to `pgfeed.events`; at commit a deferred trigger gives the
//!    transaction its commit position `seq` (`pgfeed.commits`) and sends
//!    `NOTIFY pgfeed`.
//! 2. [`db`]: the pool, the embedded cluster ([`db::embedded`]), migrations,
//!    and the log reads ([`db::log`]) everything that must not lose an event uses.
//! 3. [`feed::listener`]: one `LISTEN` connection; notifications become
//!    [`feed::change::Change`]s in seq order, the log fills every hole.
//! 4. [`feed::event`]: each change becomes its wire event(s), typed against the
//!    PEARL rows ([`feed::pearl`]) and encoded once.
//! 5. [`feed::hub`]: one broadcast ring of shared events; filters per client.
//! 6. [`http`]: the routes; [`http::session`] serves one WebSocket, falling back
//!    to the log whenever it is behind.
//!
//! [`server`] wires these together; [`config`] is the command line; [`bench`]
//! measures the figures of DESIGN §7.

pub mod bench;
pub mod config;
pub mod db;
pub mod feed;
pub mod http;
pub mod install;
pub mod metrics;
pub mod server;
