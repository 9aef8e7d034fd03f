//! Fan-out: `clients` WebSocket clients, then bursts of events; deliveries per
//! second from the first frame any client receives to the last frame the last
//! client receives. The reference is a bare tokio server (`bench-peer fanout`)
//! writing as many pre-encoded frames of the same size to as many sockets.
//!
//! Both servers keep their clients for the whole scenario and take turns, a
//! burst each, five times over (where the descriptor limit holds both sets of
//! clients; else pgfeed's five, then the bare server's); each figure is the
//! median of its bursts. One burst each, as before, gave 0.61 to 0.92 at 10k
//! clients in three runs of the same build, the bare server alone 1.93M to
//! 2.73M deliveries/s: client and server share two cores, and one burst lasts
//! two seconds.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::peer::{self, Client, Peer, PeerKind};
use super::{Figure, Setup};

/// Bursts per server in a full run: an odd number, for a median.
const BURSTS: usize = 5;

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
    let burst = (deliveries / clients).clamp(50, pgfeed::config::defaults::HUB_CAPACITY / 2);
    let bursts = if setup.quick { 1 } else { BURSTS };

    // Both sets of clients at once need twice the descriptors; where the
    // limit does not allow it, the bare server's bursts come after pgfeed's.
    let interleave = super::file_limit() >= 2 * clients as u64 + 1024;
    let server = Peer::pgfeed(&setup.url, clients).await?;
    let sockets = peer::subscribed_clients(clients, server.addr).await?;
    let mut ours = Side::new(server, sockets);
    let mut bare = None;
    if interleave {
        bare = Some(Side::bare(clients).await?);
    }
    let insert = async |_: &mut Peer| {
        sqlx::query("INSERT INTO bench_tracked (label) SELECT 'fan-' || g FROM generate_series(1, $1) g")
            .bind(burst as i64)
            .execute(&setup.pool)
            .await?;
        anyhow::Ok(())
    };
    for _ in 0..bursts {
        ours.burst(burst, insert).await?;
        if let Some(bare) = bare.as_mut() {
            bare.frames_burst(burst, ours.frame_len).await?;
        }
    }
    let frame_len = ours.frame_len;
    let ours = ours.done();
    let bare = match bare {
        Some(bare) => bare,
        None => {
            let mut bare = Side::bare(clients).await?;
            for _ in 0..bursts {
                bare.frames_burst(burst, frame_len).await?;
            }
            bare
        }
    }
    .done();

    let of = if bursts == 1 {
        String::new()
    } else {
        format!(", median of {bursts}")
    };
    let mut figures = vec![Figure::versus(
        "fanout",
        format!("deliveries/s, {clients} clients x {burst} events of {frame_len} B vs bare tokio{of}"),
        ours.rate,
        bare.rate,
        ">= 0.85",
    )];
    if clients == 1000 {
        figures.push(Figure::alone(
            "fanout",
            "deliveries/s at 1,000 clients".into(),
            ours.rate,
            ">= 200000",
        ));
    }
    figures.push(Figure::versus(
        "fanout",
        format!("server CPU ns per delivery at {clients} clients vs bare tokio"),
        ours.cpu_per_delivery_ns,
        bare.cpu_per_delivery_ns,
        "report",
    ));
    Ok(figures)
}

/// A server, its clients, and what its bursts so far measured.
struct Side {
    peer: Peer,
    sockets: Vec<Client>,
    rates: Vec<f64>,
    /// The server's CPU time over its bursts, and the frames they delivered.
    cpu_seconds: f64,
    frames: usize,
    /// The mean frame length of the last burst.
    frame_len: usize,
}

/// What a side measured over all its bursts.
struct Measured {
    /// Deliveries per second, the median burst.
    rate: f64,
    cpu_per_delivery_ns: f64,
}

impl Side {
    fn new(peer: Peer, sockets: Vec<Client>) -> Side {
        Side {
            peer,
            sockets,
            rates: Vec::new(),
            cpu_seconds: 0.0,
            frames: 0,
            frame_len: 0,
        }
    }

    /// The bare fan-out server with `clients` clients.
    async fn bare(clients: usize) -> Result<Side> {
        let peer = Peer::reference(PeerKind::Fanout).await?;
        let addr = peer.addr;
        let sockets = peer::open_many(clients, |i| async move { peer::ws_connect(i, addr, "/").await }).await?;
        Ok(Side::new(peer, sockets))
    }

    /// One burst of `n` frames to every client, which `start` sets off.
    async fn burst(&mut self, n: usize, start: impl AsyncFnOnce(&mut Peer) -> Result<()>) -> Result<()> {
        let readers = spawn_readers(std::mem::take(&mut self.sockets), n);
        // Every reader polling its socket before the first frame is sent.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = self.peer.cpu_seconds()?;
        start(&mut self.peer).await?;
        let (rate, seen) = deliveries_per_second(readers, &mut self.sockets).await?;
        self.cpu_seconds += self.peer.cpu_seconds()? - cpu;
        self.frames += seen.frames;
        self.frame_len = seen.bytes / seen.frames.max(1);
        self.rates.push(rate);
        Ok(())
    }

    /// One burst of the bare server: `n` pre-encoded frames of `len` bytes.
    async fn frames_burst(&mut self, n: usize, len: usize) -> Result<()> {
        self.burst(n, async |peer: &mut Peer| peer.tell(&format!("send {n} {len}")).await)
            .await
    }

    /// Stops the server and its clients.
    fn done(self) -> Measured {
        Measured {
            rate: median(self.rates),
            cpu_per_delivery_ns: self.cpu_seconds * 1e9 / self.frames.max(1) as f64,
        }
    }
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    super::quantile(&rates, 0.5)
}

fn spawn_readers(sockets: Vec<Client>, burst: usize) -> Vec<tokio::task::JoinHandle<(Seen, Client)>> {
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
                (seen, ws)
            })
        })
        .collect()
}

/// Deliveries per second over the whole burst and what all clients saw;
/// the sockets go back into `sockets`.
async fn deliveries_per_second(
    readers: Vec<tokio::task::JoinHandle<(Seen, Client)>>,
    sockets: &mut Vec<Client>,
) -> Result<(f64, Seen)> {
    let mut all = Seen {
        frames: 0,
        bytes: 0,
        first: None,
        last: None,
    };
    for reader in readers {
        let (seen, socket) = reader.await?;
        sockets.push(socket);
        all.frames += seen.frames;
        all.bytes += seen.bytes;
        all.first = match (all.first, seen.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        all.last = all.last.max(seen.last);
    }
    let rate = match (all.first, all.last) {
        (Some(first), Some(last)) => all.frames as f64 / (last - first).as_secs_f64().max(1e-6),
        _ => 0.0,
    };
    Ok((rate, all))
}
