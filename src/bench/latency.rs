//! Commit → client latency: writers commit one-row transactions at a steady
//! rate to the tracked table while `clients` WebSocket clients of a pgfeed
//! server (its own process) note when each reaches them; then the same writes
//! to the bare-NOTIFY table, for as many clients of a bare tokio relay of that
//! table's notifications, and for one client LISTENing on its channel
//! directly. Latency runs from the moment the writer sends COMMIT, for all, so it
//! holds the commit's own flush; the labels also give it from the moment COMMIT
//! returned (0 for a row that arrived before: Postgres signals its listeners
//! and answers the writer together), which is what pgfeed adds to a commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use sqlx::postgres::PgListener;
use tokio_tungstenite::tungstenite::Message;

use super::peer::{self, Peer};
use super::{quantile, Figure, Setup};

/// When each event's COMMIT was sent and when it returned, in nanoseconds
/// since `epoch` (0: not yet).
struct Clock {
    epoch: Instant,
    sent: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
}

/// One event's arrival, in microseconds after its COMMIT was sent and after it returned.
#[derive(Clone, Copy)]
struct Sample {
    from_sent: u32,
    from_return: u32,
}

impl Clock {
    fn sample(&self, i: usize) -> Option<Sample> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let micros_since = |at: u64| (now.saturating_sub(at) / 1000) as u32;
        let sent = self.sent.get(i)?.load(Ordering::Acquire);
        let committed = self.committed[i].load(Ordering::Acquire);
        (sent > 0).then(|| Sample {
            from_sent: micros_since(sent),
            from_return: if committed == 0 { 0 } else { micros_since(committed) },
        })
    }
}

/// The event number in a frame or payload that carries `"label":"lat-<i>"`.
fn event_number(text: &str) -> Option<usize> {
    let at = text.find("\"lat-")? + 5;
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

impl Clock {
    fn new(events: usize) -> Arc<Clock> {
        Arc::new(Clock {
            epoch: Instant::now(),
            sent: (0..events).map(|_| AtomicU64::new(0)).collect(),
            committed: (0..events).map(|_| AtomicU64::new(0)).collect(),
        })
    }
}

pub async fn run(setup: &Setup, clients: usize, rate: u32) -> Result<Vec<Figure>> {
    let span = setup.span.max(Duration::from_secs(2));
    let total = (u64::from(rate) * span.as_secs()) as usize;

    let server = Peer::pgfeed(&setup.url, clients).await?;
    let sockets = peer::subscribed_clients(clients, server.addr).await?;
    let ws_samples = through_sockets(setup, sockets, total, rate, "bench_tracked").await?;
    drop(server);

    // The same clients of a bare tokio relay of LISTEN: what this machine
    // takes to carry a commit to so many sockets with nothing in between.
    let relay = Peer::relay(&setup.url).await?;
    let sockets = peer::open_many(clients, |i| async move { peer::ws_connect(i, relay.addr, "/").await }).await?;
    let relay_samples = through_sockets(setup, sockets, total, rate, "bench_bare_notify").await?;
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
                if let Some(sample) = event_number(n.payload()).and_then(|i| clock.sample(i)) {
                    samples.push(sample);
                }
            }
            samples
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_at_rate(setup, &clock, rate, "bench_bare_notify").await?;
    let direct_samples = direct.await?;

    let ms = |v: &[Sample], from: fn(&Sample) -> u32| {
        let mut v: Vec<f64> = v.iter().map(|s| f64::from(from(s)) / 1000.0).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (ws_ms, direct_ms, relay_ms) = (
        ms(&ws_samples, |s| s.from_sent),
        ms(&direct_samples, |s| s.from_sent),
        ms(&relay_samples, |s| s.from_sent),
    );
    let (ws_added, direct_added) = (
        ms(&ws_samples, |s| s.from_return),
        ms(&direct_samples, |s| s.from_return),
    );
    let delivered = ws_ms.len() as f64 / (total * clients).max(1) as f64;
    let at = |q: f64| {
        format!(
            "after COMMIT returned {:.2} vs {:.2}",
            quantile(&ws_added, q),
            quantile(&direct_added, q)
        )
    };
    let quantiles = [(0.5, "p50", "<= 1 ms"), (0.99, "p99", "<= 5 ms")];
    let mut figures: Vec<Figure> = quantiles
        .iter()
        .map(|&(q, name, target)| {
            Figure::versus(
                "latency",
                format!("commit→client {name} ms vs LISTEN ({})", at(q)),
                quantile(&ws_ms, q),
                quantile(&direct_ms, q),
                target,
            )
        })
        .collect();
    figures.extend(quantiles.iter().map(|&(q, name, _)| {
        Figure::versus(
            "latency",
            format!("commit→client {name} ms vs a bare relay of LISTEN to {clients}"),
            quantile(&ws_ms, q),
            quantile(&relay_ms, q),
            "-",
        )
    }));
    figures.push(Figure::alone(
        "latency",
        format!("events delivered / sent, {clients} clients at {rate} ev/s"),
        delivered,
        "1.0",
    ));
    Ok(figures)
}

/// Writes `total` events to `table` at `rate` while `sockets` note when each reaches them.
async fn through_sockets(
    setup: &Setup,
    sockets: Vec<peer::Client>,
    total: usize,
    rate: u32,
    table: &'static str,
) -> Result<Vec<Sample>> {
    let clock = Clock::new(total);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(total);
                while samples.len() < total {
                    let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await else {
                        break;
                    };
                    if let Message::Text(text) = message {
                        if let Some(sample) = event_number(&text).and_then(|i| clock.sample(i)) {
                            samples.push(sample);
                        }
                    }
                }
                samples
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_at_rate(setup, &clock, rate, table).await?;
    let mut samples = Vec::with_capacity(total * readers.len());
    for reader in readers {
        samples.extend(reader.await?);
    }
    Ok(samples)
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
                    clock.sent[i].store(clock.epoch.elapsed().as_nanos() as u64, Ordering::Release);
                    tx.commit().await?;
                    clock.committed[i].store(clock.epoch.elapsed().as_nanos() as u64, Ordering::Release);
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

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_event_number_in_frames_and_payloads() {
        assert_eq!(super::event_number(r#"{"data":{"label":"lat-42","n":0}}"#), Some(42));
        assert_eq!(super::event_number(r#"{"new":{"label":"lat-7"}}"#), Some(7));
        assert_eq!(super::event_number(r#"{"label":"w1-3"}"#), None);
    }
}
