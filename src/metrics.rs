//! Counters shown at `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Process-wide counters. Cheap to bump from any task.
#[derive(Default, Debug)]
pub struct Metrics {
    pub events_published: AtomicU64,
    pub events_untyped: AtomicU64,
    pub notifications_received: AtomicU64,
    pub notifications_malformed: AtomicU64,
    pub log_catch_ups: AtomicU64,
    pub listener_reconnects: AtomicU64,
    pub client_catch_ups: AtomicU64,
    pub clients_closed_slow: AtomicU64,
    pub ws_connections: AtomicI64,
    pub ws_connections_total: AtomicU64,
    pub client_errors: AtomicU64,
    /// Tokens refused (bad, expired, missing within the auth deadline).
    pub auth_refusals: AtomicU64,
    /// Requests and upgrades refused for their Origin.
    pub origin_refusals: AtomicU64,
    /// Client messages refused by the per-connection rate limit.
    pub rate_limited: AtomicU64,
    /// Connections refused because the connection cap was reached.
    pub connections_refused: AtomicU64,
    /// Subscribes or snapshots refused for a table outside the token's scope.
    pub forbidden: AtomicU64,
    pub head_seq: AtomicI64,
    /// The most events any connection has had waiting in the hub's ring.
    pub client_lag_max: AtomicI64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 14] = [
            (
                "pgfeed_auth_refusals_total",
                "Tokens refused: bad, expired, or missing past the auth deadline.",
                &self.auth_refusals,
            ),
            (
                "pgfeed_origin_refusals_total",
                "Requests refused for an Origin not in PGFEED_ALLOWED_ORIGINS.",
                &self.origin_refusals,
            ),
            (
                "pgfeed_rate_limited_total",
                "Client messages refused by the per-connection rate limit.",
                &self.rate_limited,
            ),
            (
                "pgfeed_connections_refused_total",
                "Connections refused at the connection cap.",
                &self.connections_refused,
            ),
            (
                "pgfeed_forbidden_total",
                "Requests refused for a table or row outside the token's scope.",
                &self.forbidden,
            ),
            (
                "pgfeed_events_published_total",
                "Events handed to the hub.",
                &self.events_published,
            ),
            (
                "pgfeed_events_untyped_total",
                "PEARL events whose row did not fit its type; delivered generic.",
                &self.events_untyped,
            ),
            (
                "pgfeed_notifications_received_total",
                "Notifications received on channel pgfeed.",
                &self.notifications_received,
            ),
            (
                "pgfeed_notifications_malformed_total",
                "Notifications that could not be parsed (resolved from the log).",
                &self.notifications_malformed,
            ),
            (
                "pgfeed_log_catch_ups_total",
                "Times the listener read the log instead of notifications.",
                &self.log_catch_ups,
            ),
            (
                "pgfeed_listener_reconnects_total",
                "Times the LISTEN connection was re-established.",
                &self.listener_reconnects,
            ),
            (
                "pgfeed_client_catch_ups_total",
                "Times a client was served from the log (resume or fell behind).",
                &self.client_catch_ups,
            ),
            (
                "pgfeed_clients_closed_slow_total",
                "Clients closed because they stopped reading.",
                &self.clients_closed_slow,
            ),
            (
                "pgfeed_client_errors_total",
                "Error messages sent to clients for bad input.",
                &self.client_errors,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let gauges: [(&str, &str, i64); 4] = [
            (
                "pgfeed_client_lag_max",
                "Most events any connection has had waiting in the hub's ring (bounded by its capacity).",
                self.client_lag_max.load(Ordering::Relaxed),
            ),
            (
                "pgfeed_ws_connections",
                "Open WebSocket connections.",
                self.ws_connections.load(Ordering::Relaxed),
            ),
            (
                "pgfeed_ws_connections_total",
                "WebSocket connections accepted.",
                self.ws_connections_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "pgfeed_head_seq",
                "Last commit position delivered to the hub.",
                self.head_seq.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}
