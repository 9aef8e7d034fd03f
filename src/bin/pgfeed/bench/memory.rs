//! Memory: the server's resident set before and after `clients` idle
//! connections, per connection. pgfeed's are WebSockets on `/ws` that got their
//! `connected` message; the reference is a bare tokio server holding as many
//! plain TCP connections (`bench-peer tcp`).

use std::time::Duration;

use anyhow::Result;
use futures_util::StreamExt;

use super::peer::{self, Peer, PeerKind};
use super::{Figure, Setup};

pub async fn run(setup: &Setup, clients: usize) -> Result<Vec<Figure>> {
    let server = Peer::pgfeed(&setup.url, clients).await?;
    // One connection first: what the first socket allocates for good is not per connection.
    let warm = peer::ws_connect(0, server.addr, "/ws").await?;
    let before = settle(&server).await?;
    let sockets = peer::open_many(clients, |i| async move {
        let mut ws = peer::ws_connect(i, server.addr, "/ws").await?;
        ws.next().await.transpose()?; // `connected`
        anyhow::Ok(ws)
    })
    .await?;
    let after = settle(&server).await?;
    drop((sockets, warm, server));
    let ws_kib = after.saturating_sub(before) as f64 / clients as f64;

    let bare = Peer::reference(PeerKind::Tcp).await?;
    let warm = peer::connect(0, bare.addr).await?;
    let before = settle(&bare).await?;
    let sockets = peer::open_many(clients, |i| async move { peer::connect(i, bare.addr).await }).await?;
    let after = settle(&bare).await?;
    drop((sockets, warm, bare));
    let tcp_kib = after.saturating_sub(before) as f64 / clients as f64;

    Ok(vec![Figure::versus(
        "memory",
        format!("RSS KiB per idle WebSocket vs plain TCP ({clients} connections)"),
        ws_kib,
        tcp_kib.max(0.01),
        "<= 8 KiB",
    )])
}

/// The server's RSS once it has had a moment to finish what it was doing.
async fn settle(server: &Peer) -> Result<u64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.rss_kib()
}
