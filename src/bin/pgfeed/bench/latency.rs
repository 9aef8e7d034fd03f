//! Commit → client latency: writers commit one-row transactions at a steady
//! rate to the tracked table while `clients` WebSocket clients of a pgfeed
//! server (its own process) note when each reaches them; then the same writes
//! to the bare-NOTIFY table, for as many clients of a bare tokio relay of that
//! table's notifications, and for one client LISTENing on its channel
//! directly; the clients are the swarm's ([`super::swarm`]), in a process of
//! their own. Latency runs from the moment the writer sends COMMIT, for all, so it
//! holds the commit's own flush; the labels also give it from the moment COMMIT
//! returned (0 for a row that arrived before: Postgres signals its listeners
//! and answers the writer together), which is what pgfeed adds to a commit.
//! Each server's CPU time per frame delivered is given too: at this many
//! clients the machine is saturated, and latency is mostly queueing for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use sqlx::postgres::PgListener;

use super::peer::Peer;
use super::swarm::{event_number, monotonic_ns, Latencies, Swarm};
use super::{quantile, Figure, Setup};

/// The quantiles reported, with their names and targets.
const QUANTILES: [(f64, &str, &str); 2] = [(0.5, "p50", "<= 1 ms"), (0.99, "p99", "<= 5 ms")];

/// When each event's COMMIT was sent and when it returned, in `CLOCK_MONOTONIC`
/// nanoseconds (0: not yet), the clock the client swarm's process reads too.
struct Clock {
    sent: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
}

impl Clock {
    fn new(events: usize) -> Arc<Clock> {
        Arc::new(Clock {
            sent: (0..events).map(|_| AtomicU64::new(0)).collect(),
            committed: (0..events).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn times(times: &[AtomicU64]) -> Vec<u64> {
        times.iter().map(|t| t.load(Ordering::Acquire)).collect()
    }

    /// Event `i`'s arrival now, in milliseconds after its COMMIT was sent and after it returned.
    fn sample(&self, i: usize) -> Option<(f64, f64)> {
        let now = monotonic_ns();
        let ms_since = |at: u64| now.saturating_sub(at) as f64 / 1e6;
        let sent = self.sent.get(i)?.load(Ordering::Acquire);
        let committed = self.committed[i].load(Ordering::Acquire);
        (sent > 0).then(|| (ms_since(sent), if committed == 0 { 0.0 } else { ms_since(committed) }))
    }
}

pub async fn run(setup: &Setup, clients: usize, rate: u32) -> Result<Vec<Figure>> {
    let span = setup.span.max(Duration::from_secs(2));
    let total = (u64::from(rate) * span.as_secs()) as usize;

    let server = Peer::pgfeed(&setup.url, clients).await?;
    let subscribe = super::subscribe_to_bench_table();
    // `connected`, then `subscribed`.
    let swarm = Swarm::start(server.addr, "/ws", Some(&subscribe), 2, clients, total).await?;
    let (ws, ws_cpu) = through_swarm(setup, &server, swarm, total, rate, "bench_tracked").await?;
    drop(server);

    // The same clients of a bare tokio relay of LISTEN: what this machine
    // takes to carry a commit to so many sockets with nothing in between.
    let relay = Peer::relay(&setup.url).await?;
    let swarm = Swarm::start(relay.addr, "/", None, 0, clients, total).await?;
    let (relayed, relay_cpu) = through_swarm(setup, &relay, swarm, total, rate, "bench_bare_notify").await?;
    drop(relay);

    let clock = Clock::new(total);
    let direct = {
        let mut listener = PgListener::connect(&setup.url).await?;
        listener.listen("bench").await?;
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut samples = Vec::with_capacity(total);
            while samples.len() < total {
                let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await else {
                    break;
                };
                if let Some(sample) = event_number(n.payload().as_bytes()).and_then(|i| clock.sample(i)) {
                    samples.push(sample);
                }
            }
            samples
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_at_rate(setup, &clock, rate, "bench_bare_notify").await?;
    let direct_samples = direct.await?;
    let sorted = |from: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = direct_samples.iter().map(from).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (direct_ms, direct_added) = (sorted(|s| s.0), sorted(|s| s.1));

    let mut figures: Vec<Figure> = QUANTILES
        .iter()
        .enumerate()
        .map(|(k, &(q, name, target))| {
            Figure::versus(
                "latency",
                format!(
                    "commit→client {name} ms vs LISTEN (after COMMIT returned {:.2} vs {:.2})",
                    ws.from_return[k],
                    quantile(&direct_added, q)
                ),
                ws.from_sent[k],
                quantile(&direct_ms, q),
                target,
            )
        })
        .collect();
    figures.extend(QUANTILES.iter().enumerate().map(|(k, &(_, name, _))| {
        Figure::versus(
            "latency",
            format!("commit→client {name} ms vs a bare relay of LISTEN to {clients}"),
            ws.from_sent[k],
            relayed.from_sent[k],
            "-",
        )
    }));
    figures.push(Figure::versus(
        "latency",
        format!("server CPU µs per delivery vs the bare relay, {clients} clients"),
        ws_cpu,
        relay_cpu,
        "report",
    ));
    figures.push(Figure::alone(
        "latency",
        format!("events delivered / sent, {clients} clients at {rate} ev/s"),
        ws.received as f64 / (total * clients).max(1) as f64,
        "1.0",
    ));
    Ok(figures)
}

/// Writes `total` events to `table` at `rate` while the swarm's clients note
/// when each reaches them; also gives `server`'s CPU time per frame delivered,
/// in microseconds.
async fn through_swarm(
    setup: &Setup,
    server: &Peer,
    swarm: Swarm,
    total: usize,
    rate: u32,
    table: &'static str,
) -> Result<(Latencies, f64)> {
    let clock = Clock::new(total);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = server.cpu_seconds()?;
    write_at_rate(setup, &clock, rate, table).await?;
    let latencies = swarm
        .finish(&Clock::times(&clock.sent), &Clock::times(&clock.committed))
        .await?;
    let cpu = server.cpu_seconds()? - cpu_before;
    let per_delivery = cpu * 1e6 / latencies.received.max(1) as f64;
    Ok((latencies, per_delivery))
}

/// Commits `clock.committed.len()` one-row transactions at `rate` per second,
/// from the bench's writers in turn, noting when each COMMIT returns.
async fn write_at_rate(setup: &Setup, clock: &Arc<Clock>, rate: u32, table: &'static str) -> Result<()> {
    let writers = setup.writers.max(1);
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (pool, clock) = (setup.pool.clone(), clock.clone());
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                for i in (w..clock.committed.len()).step_by(writers) {
                    tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / f64::from(rate))).await;
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    sqlx::query(&format!("INSERT INTO {table} (label) VALUES ($1)"))
                        .bind(format!("lat-{i}"))
                        .execute(&mut *tx)
                        .await?;
                    clock.sent[i].store(monotonic_ns(), Ordering::Release);
                    tx.commit().await?;
                    clock.committed[i].store(monotonic_ns(), Ordering::Release);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}
