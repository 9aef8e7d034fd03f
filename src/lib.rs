//! pgfeed turns every write to a Postgres database into a live, ordered,
//! resumable event feed for WebSocket and SSE clients. `ARCHITECTURE.md` has
//! the whole plan; this is the tour, in the order an event travels, floor by
//! floor from the bottom (a room uses only rooms below it; `tests/house.rs`
//! checks).
//!
//! **Floors 0 and 1, the vocabulary of everything above.** [`config`]: the
//! settings and the one set of defaults. [`names`]: sorted sets of table and
//! type names. [`filter`]: what a client asked for, and the one rule by which
//! a row matches a wanted value (filters and scopes alike). [`timestamps`]:
//! UTC on the wire. [`backoff`]: how long to wait before trying again.
//! [`metrics`]: the Prometheus figures, each with why it is there.
//!
//! **Floor 2.** [`db`]: infrastructure only: the pool, the embedded cluster
//! ([`db::embedded`]), pgfeed's migrations ([`db::migrate`], history in
//! `pgfeed.migrations`). [`auth`]: tokens and the scope they grant.
//! [`protocol`]: every message on the wire, in both directions: what clients
//! send ([`protocol::Action`]), the server's own messages
//! ([`protocol::ServerMessage`]) and events ([`protocol::EventFrame`]).
//!
//! **Floor 3, the feed** (SQL first: a trigger on each tracked table writes the
//! row change to `pgfeed.events`; after commit `pgfeed.tick()` gives its
//! transaction a `seq`, `migrations/capture`).
//! 1. [`feed::sequencer`]: which instance ticks (advisory locks; a follower
//!    fences a leader that holds the lead without ticking) and when (busy
//!    ticks at most once per `--tick-interval`, a few empty ticks before
//!    waiting for writers); [`feed::listener`] holds the `LISTEN` connection,
//!    runs the ticks, reads what they sequenced from the log ([`feed::log`])
//!    as [`feed::change::Change`]s, catches up from the log after anything
//!    unexpected, and starts over (telling every subscriber) when the
//!    database's history is no longer the one it delivered. With
//!    `--replica-url` it reads a streaming standby instead, after it has
//!    replayed what was heard of; a follower there looks at the standby
//!    rather than `LISTEN`ing, and [`feed::standby`] makes a snapshot read
//!    there exact without a tick.
//! 2. [`feed::event`]: each change becomes its wire event(s), typed against
//!    PEARL's rows ([`feed::pearl`], which also holds the `track --preset pearl`
//!    list), named as the table wants ([`feed::kinds`]) and encoded once. A
//!    schema change is an event too; the names tables had are kept in
//!    [`feed::renames`], so a subscription follows its table through a rename.
//! 3. [`feed::hub`]: one ring of shared events in batches; [`feed::subscriber`]
//!    is one client's exact stream over it, from the log whenever the client
//!    is behind. [`feed::Feed`] is the one handle the floors above hold.
//!
//! **Floor 4.** [`install`]: what a DBA runs (`migrate`, `track`, `untrack`,
//! `uninstall`, in [`install::commands`]).
//!
//! **Floor 5.** [`client`]: `pgfeed tail`. [`simulate`]: PEARL activity at a
//! steady rate. [`http`]: [`http::access`] says who is asking (one extractor
//! for every route); [`http::verbs`] decides subscribe, resume, snapshot and
//! scope once for every transport; [`http::ws`] serves a WebSocket (handlers,
//! the session's transport, its actions, its rate); [`http::sse`] the same
//! stream as Server-Sent Events; [`http::rest`] health, metrics and snapshots;
//! [`http::write`] PEARL's REST writes; [`http::web`] the dashboard and the
//! JavaScript client (built from `clients/js`); [`http::asyncapi`] the
//! protocol document, with this server's tables; [`http::tls`] optional HTTPS.
//!
//! **Floor 6.** [`server`] wires it together and is `pgfeed serve`.
//!
//! The binary (`src/bin/pgfeed`) is the command line, and the benchmark
//! (`pgfeed bench`), which measures the figures of ARCHITECTURE.md beside
//! their references and is not part of this library. The clients in other
//! languages live in `clients/` (ARCHITECTURE.md §5).

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
