//! pgfeed turns every write to a Postgres database into a live, ordered,
//! resumable event feed for WebSocket clients.
//!
//! The path of one event, module by module:
//!
//! 1. **SQL** (`migrations/capture`): a trigger on each tracked table writes the
//!    row change (less its excluded columns) to `pgfeed.events`, and nothing
//!    else; after commit, `pgfeed.tick()` gives the transaction its commit
//!    position `seq` (`pgfeed.commits`). [`install`] is what a DBA runs to put
//!    it there (`migrate`, `track`, `uninstall`); it touches no application
//!    table but for the triggers `track` attaches.
//! 2. [`db`]: infrastructure only: the pool, the embedded cluster
//!    ([`db::embedded`]), pgfeed's migrations ([`db::migrate`], history in
//!    `pgfeed.migrations`).
//! 3. [`feed::log`]: the reads of the log everything that must not lose an
//!    event uses, and snapshots through `pgfeed.snapshot`.
//! 4. [`feed::listener`]: one `LISTEN` connection that ticks (on one elected
//!    instance) and reads what each tick sequenced from the log as
//!    [`feed::change::Change`]s in seq order; the others follow its ticks'
//!    `{"seq":N}` announcements, which ticks send only while someone follows.
//!    Under load its busy ticks start at most once per `--tick-interval`, and
//!    a busy leader ticks through a few empty ticks before it waits for writers
//!    to wake it.
//! 5. [`feed::event`]: each change becomes its wire event(s), timestamps in UTC
//!    ([`feed::timestamps`]), typed against PEARL's rows ([`feed::pearl`], which
//!    also holds the `track --preset pearl` list) and encoded once.
//! 6. [`feed::hub`]: one ring of shared events, kept in batches that lie side
//!    by side; filters per client. [`feed::subscriber`] is one client's exact
//!    stream over it, from the log whenever the client is behind.
//! 7. [`http`]: the routes; [`http::access`] says who is asking (one extractor
//!    for every route, with [`auth`]'s tokens and scopes), [`http::session`]
//!    serves one WebSocket, falling back to the log whenever it is behind,
//!    [`http::write`] PEARL's REST writes, [`http::tls`] optional HTTPS.
//!    [`protocol`] is every message on the wire, both dialects.
//!
//! [`server`] wires these together; [`config`] is the command line (and the
//! one set of defaults); [`bench`] measures the figures of DESIGN §7, each
//! beside its reference.

pub mod auth;
pub mod backoff;
pub mod client;
pub mod config;
pub mod db;
pub mod feed;
pub mod filter;
pub mod http;
pub mod install;
pub mod metrics;
pub mod names;
pub mod protocol;
pub mod server;
pub mod simulate;
pub mod timestamps;
