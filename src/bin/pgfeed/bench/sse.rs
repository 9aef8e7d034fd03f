//! SSE fan-out: `clients` streams of `GET /events`, read as a browser's
//! `EventSource` reads them, then bursts of events written to the database, as
//! [`super::fanout`] does for the WebSocket: deliveries per second from the
//! first event any stream receives to the last event the last stream
//! receives, and the server's CPU per delivery.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::peer::{self, Peer};
use super::{Figure, Setup};

/// Bursts in a full run: an odd number, for a median.
const BURSTS: usize = 3;

/// What starts each event of the bench table on the wire.
const EVENT: &[u8] = b"\nevent: bench_";

pub async fn run(setup: &Setup, clients: usize) -> Result<Vec<Figure>> {
    let deliveries = if setup.quick { 200_000 } else { 2_000_000 };
    let burst = (deliveries / clients).clamp(50, pgfeed::config::defaults::HUB_CAPACITY / 2);
    let bursts = if setup.quick { 1 } else { BURSTS };
    let server = Peer::pgfeed(&setup.url, clients).await?;
    let mut streams = peer::open_many(clients, |i| open(i, &server)).await?;
    let (mut rates, mut cpu_seconds, mut delivered) = (Vec::new(), 0.0, 0usize);
    for _ in 0..bursts {
        let readers: Vec<_> = streams
            .drain(..)
            .map(|stream| tokio::spawn(read_events(stream, burst)))
            .collect();
        // Every reader waiting on its socket before the first event is sent.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = server.cpu_seconds()?;
        sqlx::query("INSERT INTO bench_tracked (label) SELECT 'sse-' || g FROM generate_series(1, $1) g")
            .bind(burst as i64)
            .execute(&setup.pool)
            .await?;
        let (mut first, mut last, mut seen) = (None::<Instant>, None::<Instant>, 0);
        for reader in readers {
            let read = reader.await??;
            streams.push(read.stream);
            seen += read.events;
            first = first.into_iter().chain(read.first).min();
            last = last.max(read.last);
        }
        cpu_seconds += server.cpu_seconds()? - cpu;
        delivered += seen;
        if let (Some(first), Some(last)) = (first, last) {
            rates.push(seen as f64 / (last - first).as_secs_f64().max(1e-6));
        }
    }
    rates.sort_by(f64::total_cmp);
    let of = if bursts == 1 {
        String::new()
    } else {
        format!(", median of {bursts}")
    };
    Ok(vec![
        Figure::alone(
            "fanout",
            format!("SSE deliveries/s, {clients} streams x {burst} events{of}"),
            super::quantile(&rates, 0.5),
            "report",
        ),
        Figure::alone(
            "fanout",
            format!("server CPU ns per SSE delivery at {clients} streams"),
            cpu_seconds * 1e9 / delivered.max(1) as f64,
            "report",
        ),
    ])
}

/// Stream number `i` of the bench table's events, once its `connected` event is in.
async fn open(i: usize, server: &Peer) -> Result<TcpStream> {
    let mut stream = peer::connect(i, server.addr).await?;
    stream
        .write_all(b"GET /events?tables=bench_tracked HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n")
        .await?;
    let mut opening = Vec::new();
    let mut buffer = [0u8; 4096];
    while !opening
        .windows(b"event: connected".len())
        .any(|w| w == b"event: connected")
        || !opening.ends_with(b"\n\n\r\n")
    {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer)).await??;
        ensure!(n > 0, "stream {i} closed before its connected event");
        opening.extend_from_slice(&buffer[..n]);
    }
    Ok(stream)
}

/// What one stream read of a burst.
struct Read {
    stream: TcpStream,
    events: usize,
    /// When the first and the last read holding an event returned.
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Reads `stream` until `n` events have come (or 30 s pass without one).
async fn read_events(mut stream: TcpStream, n: usize) -> Result<Read> {
    let mut buffer = vec![0u8; 64 * 1024];
    let (mut events, mut matched, mut first, mut last) = (0, 0, None, None);
    while events < n {
        let Ok(Ok(read)) = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer)).await else {
            break;
        };
        if read == 0 {
            break;
        }
        let before = events;
        // `EVENT` may be split between reads: `matched` carries its prefix over.
        for &byte in &buffer[..read] {
            matched = if byte == EVENT[matched] {
                matched + 1
            } else {
                usize::from(byte == EVENT[0])
            };
            if matched == EVENT.len() {
                events += 1;
                matched = 0;
            }
        }
        if events > before {
            let now = Instant::now();
            first.get_or_insert(now);
            last = Some(now);
        }
    }
    Ok(Read {
        stream,
        events,
        first,
        last,
    })
}
