//! Fan-out: `clients` WebSocket clients, then a burst of events; deliveries per
//! second from the first frame any client receives to the last frame the last
//! client receives. The reference is a bare tokio server (`bench-peer fanout`)
//! writing as many pre-encoded frames of the same size to as many sockets.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::peer::{self, Client, Peer, PeerKind};
use super::{Figure, Setup};

/// What one client saw of a burst.
struct Seen {
    frames: usize,
    bytes: usize,
    first: Option<Instant>,
    last: Option<Instant>,
}

pub async fn run(setup: &Setup, clients: usize) -> Result<Vec<Figure>> {
    let deliveries = if setup.quick { 200_000 } else { 4_000_000 };
    // Within the hub's ring, so every client is served live.
    let burst = (deliveries / clients).clamp(50, crate::config::defaults::HUB_CAPACITY / 2);

    let server = Peer::pgfeed(&setup.url, clients).await?;
    let sockets = peer::subscribed_clients(clients, server.addr).await?;
    let readers = spawn_readers(sockets, burst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("INSERT INTO bench_tracked (label) SELECT 'fan-' || g FROM generate_series(1, $1) g")
        .bind(burst as i64)
        .execute(&setup.pool)
        .await?;
    let (pgfeed_rate, frame_len) = deliveries_per_second(readers).await?;
    drop(server);

    let mut bare = Peer::reference(PeerKind::Fanout).await?;
    let sockets = peer::open_many(clients, |i| async move { peer::ws_connect(i, bare.addr, "/").await }).await?;
    let readers = spawn_readers(sockets, burst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bare.tell(&format!("send {burst} {frame_len}")).await?;
    let (bare_rate, _) = deliveries_per_second(readers).await?;
    drop(bare);

    let mut figures = vec![Figure::versus(
        "fanout",
        format!("deliveries/s, {clients} clients x {burst} events of {frame_len} B vs bare tokio"),
        pgfeed_rate,
        bare_rate,
        ">= 0.85",
    )];
    if clients == 1000 {
        figures.push(Figure::alone(
            "fanout",
            "deliveries/s at 1,000 clients".into(),
            pgfeed_rate,
            ">= 200000",
        ));
    }
    Ok(figures)
}

fn spawn_readers(sockets: Vec<Client>, burst: usize) -> Vec<tokio::task::JoinHandle<Seen>> {
    sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut seen = Seen {
                    frames: 0,
                    bytes: 0,
                    first: None,
                    last: None,
                };
                while seen.frames < burst {
                    let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await else {
                        break;
                    };
                    if let Message::Text(text) = message {
                        let now = Instant::now();
                        seen.first.get_or_insert(now);
                        seen.last = Some(now);
                        seen.frames += 1;
                        seen.bytes += text.len();
                    }
                }
                seen
            })
        })
        .collect()
}

/// Deliveries per second over the whole burst, and the mean frame length.
async fn deliveries_per_second(readers: Vec<tokio::task::JoinHandle<Seen>>) -> Result<(f64, usize)> {
    let (mut frames, mut bytes, mut first, mut last) = (0usize, 0usize, None::<Instant>, None::<Instant>);
    for reader in readers {
        let seen = reader.await?;
        frames += seen.frames;
        bytes += seen.bytes;
        first = match (first, seen.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(seen.last);
    }
    let span = match (first, last) {
        (Some(first), Some(last)) => (last - first).as_secs_f64().max(1e-6),
        _ => return Ok((0.0, 0)),
    };
    Ok((frames as f64 / span, bytes / frames.max(1)))
}
