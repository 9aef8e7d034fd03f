//! What `/metrics` shows, in the Prometheus text format, through the
//! maintained `prometheus-client` crate. One registry per server (not a
//! process-global recorder), so several servers in one process, as the tests
//! run them, each count their own.
//!
//! Each field says why it is there. Counters are bumped from any task with
//! `.inc()`; tests read them with `.get()`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every figure of one server.
#[derive(Debug)]
pub struct Metrics {
    /// Events handed to the hub: the feed's throughput.
    pub events_published: Counter,
    /// PEARL rows that did not fit their type (delivered generic): schema drift to look at.
    pub events_untyped: Counter,
    /// Notifications on channel pgfeed: the fast path's volume.
    pub notifications_received: Counter,
    /// Notifications that could not be parsed (resolved from the log).
    pub notifications_malformed: Counter,
    /// Times the listener read the log: after each tick that gave seqs, on a
    /// follower's `{"seq"}` notice, after a reconnect.
    pub log_catch_ups: Counter,
    /// Ticks this listener ran (it leads): with `log_catch_ups`, how much of
    /// the sequencer's polling found work.
    pub ticks: Counter,
    /// Times the LISTEN connection was re-established: network or database trouble.
    pub listener_reconnects: Counter,
    /// Times the database's history changed under the feed (reinstall,
    /// restore, failover that lost commits) and the feed started over at its head.
    pub history_resets: Counter,
    /// Times a client was served from the log (resume or fell behind the ring).
    pub client_catch_ups: Counter,
    /// Clients closed because they stopped reading.
    pub clients_closed_slow: Counter,
    /// Open WebSocket connections (SSE streams hold a cap permit too, but are not in this gauge).
    pub ws_connections: Gauge,
    /// Connections accepted since start.
    pub ws_connections_total: Counter,
    /// Open connections by endpoint (`ws`, `pearl`, `sse`): which clients a server carries.
    connections_open: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Events written to clients' sockets and streams (counted per burst on WebSockets).
    pub events_delivered: Counter,
    /// Error messages sent to clients for bad input.
    pub client_errors: Counter,
    /// Bytes of events and messages queued to clients.
    pub bytes_sent: Counter,
    /// Tokens refused (bad, expired, missing within the auth deadline).
    pub auth_refusals: Counter,
    /// Requests and upgrades refused for their Origin.
    pub origin_refusals: Counter,
    /// Client messages refused by the per-connection rate limit.
    pub rate_limited: Counter,
    /// Connections refused because the connection cap was reached.
    pub connections_refused: Counter,
    /// Subscribes, snapshots and writes refused for a table or row outside the token's scope.
    pub forbidden: Counter,
    /// The last transaction delivered whole to the hub.
    pub head_seq: Gauge,
    /// The most events any connection has had waiting in the hub's ring (bounded by its capacity).
    pub client_lag_max: Gauge,
    /// Read from Postgres at each scrape: how full the NOTIFY queue is (0..1, as thousandths).
    pub notification_queue_usage_permille: Gauge,
    /// Read at each scrape: rows in pgfeed.events, and the oldest seq a client can resume from.
    pub log_rows: Gauge,
    pub log_oldest_seq: Gauge,
    /// Milliseconds the oldest committed transaction has waited for its seq,
    /// read at each scrape and each quiet check: a sequencer that stalls shows here.
    pub unsequenced_age_ms: Gauge,
    /// 1 while this instance holds the lead and ticks.
    pub leader: Gauge,
    /// When this instance last ticked, in seconds since 1970 (0: never).
    pub last_tick_timestamp: Gauge,
    /// Times this instance ended a hung leader's session to take the lead.
    pub leaders_fenced: Counter,
    /// Tracked tables whose capture trigger does not fire (disabled, missing,
    /// replica-only), read at /readyz and /api/v1/status: their writes never reach the feed.
    pub capture_off_tables: Gauge,
    /// Seconds from a transaction's last logged row to the listener handing its
    /// events to the hub: about commit → publish for a short transaction; the
    /// sequencer's share of what clients wait.
    pub write_to_publish: Histogram,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let events_published = counter("pgfeed_events_published", "Events handed to the hub");
        let events_untyped = counter(
            "pgfeed_events_untyped",
            "PEARL events whose row did not fit its type; delivered generic",
        );
        let notifications_received = counter(
            "pgfeed_notifications_received",
            "Notifications received on channel pgfeed",
        );
        let notifications_malformed = counter(
            "pgfeed_notifications_malformed",
            "Notifications that could not be parsed (resolved from the log)",
        );
        let log_catch_ups = counter("pgfeed_log_catch_ups", "Times the listener read the log");
        let ticks = counter(
            "pgfeed_ticks",
            "Ticks (commit sequencing rounds) this instance ran as the leader",
        );
        let listener_reconnects = counter(
            "pgfeed_listener_reconnects",
            "Times the LISTEN connection was re-established",
        );
        let history_resets = counter(
            "pgfeed_history_resets",
            "Times the database's history changed under the feed and it started over at the new head",
        );
        let client_catch_ups = counter(
            "pgfeed_client_catch_ups",
            "Times a client was served from the log (resume or fell behind)",
        );
        let clients_closed_slow = counter(
            "pgfeed_clients_closed_slow",
            "Clients closed because they stopped reading",
        );
        let ws_connections_total = counter("pgfeed_ws_connections", "WebSocket and SSE connections accepted");
        let events_delivered = counter(
            "pgfeed_events_delivered",
            "Events written to clients (each client's copy counted once)",
        );
        let client_errors = counter("pgfeed_client_errors", "Error messages sent to clients for bad input");
        let bytes_sent = counter("pgfeed_bytes_sent", "Bytes of events and messages queued to clients");
        let auth_refusals = counter(
            "pgfeed_auth_refusals",
            "Tokens refused: bad, expired, or missing past the auth deadline",
        );
        let origin_refusals = counter(
            "pgfeed_origin_refusals",
            "Requests refused for an Origin not in PGFEED_ALLOWED_ORIGINS",
        );
        let rate_limited = counter(
            "pgfeed_rate_limited",
            "Client messages refused by the per-connection rate limit",
        );
        let connections_refused = counter(
            "pgfeed_connections_refused",
            "Connections refused at the connection cap",
        );
        let forbidden = counter(
            "pgfeed_forbidden",
            "Requests refused for a table or row outside the token's scope",
        );
        let leaders_fenced = counter(
            "pgfeed_leaders_fenced",
            "Times this instance ended a hung leader's session to take the lead",
        );
        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let ws_connections = gauge("pgfeed_ws_connections_open", "Open WebSocket connections");
        let head_seq = gauge("pgfeed_head_seq", "Last commit position delivered to the hub");
        let client_lag_max = gauge(
            "pgfeed_client_lag_max",
            "Most events any connection has had waiting in the hub's ring (bounded by its capacity)",
        );
        let notification_queue_usage_permille = gauge(
            "pgfeed_notification_queue_usage_permille",
            "pg_notification_queue_usage() in thousandths, read at scrape time",
        );
        let log_rows = gauge(
            "pgfeed_log_rows",
            "Rows in pgfeed.events (the planner's estimate), read at scrape time",
        );
        let log_oldest_seq = gauge(
            "pgfeed_log_oldest_seq",
            "The oldest seq a client can resume after, read at scrape time",
        );
        let unsequenced_age_ms = gauge(
            "pgfeed_unsequenced_age_milliseconds",
            "How long the oldest committed transaction has waited for its seq, read at scrapes and quiet checks",
        );
        let leader = gauge("pgfeed_leader", "1 while this instance holds the lead and ticks");
        let last_tick_timestamp = gauge(
            "pgfeed_last_tick_timestamp_seconds",
            "When this instance last ticked, in seconds since 1970 (0: never)",
        );
        let capture_off_tables = gauge(
            "pgfeed_capture_off_tables",
            "Tracked tables whose capture trigger does not fire (disabled, missing, replica-only)",
        );
        let connections_open = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        registry.register(
            "pgfeed_connections_open",
            "Open client connections by endpoint: ws, pearl (the PEARL WebSocket), sse",
            connections_open.clone(),
        );
        // 0.25 ms to about 4 s.
        let write_to_publish = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.000_25, 2.0, 15,
        ));
        registry.register(
            "pgfeed_write_to_publish_seconds",
            "From a transaction's last logged row to its events reaching the hub",
            write_to_publish.clone(),
        );
        Metrics {
            events_published,
            events_untyped,
            notifications_received,
            notifications_malformed,
            log_catch_ups,
            ticks,
            listener_reconnects,
            history_resets,
            client_catch_ups,
            clients_closed_slow,
            ws_connections,
            ws_connections_total,
            connections_open,
            events_delivered,
            client_errors,
            bytes_sent,
            auth_refusals,
            origin_refusals,
            rate_limited,
            connections_refused,
            forbidden,
            head_seq,
            client_lag_max,
            notification_queue_usage_permille,
            log_rows,
            log_oldest_seq,
            unsequenced_age_ms,
            leader,
            last_tick_timestamp,
            leaders_fenced,
            capture_off_tables,
            write_to_publish,
            registry,
        }
    }
}

/// One open connection in `pgfeed_connections_open`, until it is dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts a connection open on `endpoint` (`ws`, `pearl`, `sse`) while the guard lives.
    pub fn connection_opened(&self, endpoint: &'static str) -> OpenConnection {
        let gauge = self.connections_open.get_or_create(&[("endpoint", endpoint)]).clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// The Prometheus (OpenMetrics) text exposition of every figure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
