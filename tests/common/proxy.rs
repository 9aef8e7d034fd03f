//! A TCP proxy that can cut its connections silently.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

use super::*;

/// A TCP proxy in front of Postgres that can silently cut the connections it
/// carries (no FIN, no RST: a half-open connection), while new ones go through.
pub struct Proxy {
    pub port: u16,
    generation: std::sync::Arc<AtomicUsize>,
}

/// The halves a proxy copies between, and the generation of the link it was born in.
type Halves = (tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf);

/// Accepts on a free port, connects each client to `target`, and hands both
/// directions to `copy` with the generation the connection was born in. The
/// port and the generation counter (bumping it ends or cuts what is open).
async fn relay<F, Fut>(target: u16, copy: F) -> (u16, std::sync::Arc<AtomicUsize>)
where
    F: Fn(Halves, std::sync::Arc<AtomicUsize>, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let generation = std::sync::Arc::new(AtomicUsize::new(0));
    let gen = generation.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let born = gen.load(Ordering::SeqCst);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(copy((client_read, server_write), gen.clone(), born));
            tokio::spawn(copy((server_read, client_write), gen.clone(), born));
        }
    });
    (port, generation)
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let (port, generation) = relay(target, |(from, to), gen, born| pipe(from, to, gen, born)).await;
        Proxy { port, generation }
    }

    /// Every connection open now goes silent in both directions.
    pub fn cut_existing(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: std::sync::Arc<AtomicUsize>,
    born: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation.load(Ordering::SeqCst) != born {
            // Cut: swallow everything and keep both ends open, like a dead link.
            let _hold = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy that delays every byte by `delay` each way (a slow link:
/// throughput unchanged, latency added), and can reset every connection it
/// carries, as a flaky network does.
pub struct SlowLink {
    pub port: u16,
    generation: std::sync::Arc<AtomicUsize>,
}

impl SlowLink {
    pub async fn start(target: u16, delay: Duration) -> SlowLink {
        let (port, generation) = relay(target, move |(from, to), gen, born| delayed(from, to, delay, gen, born)).await;
        SlowLink { port, generation }
    }

    /// Every connection open now is closed (both ends see it end); new ones go through.
    pub fn reset_existing(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, until either
/// end closes or the link is reset.
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    generation: std::sync::Arc<AtomicUsize>,
    born: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (chunks, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let alive = move || generation.load(Ordering::SeqCst) == born;
    let writer = {
        let alive = alive.clone();
        tokio::spawn(async move {
            while let Some((at, chunk)) = due.recv().await {
                tokio::time::sleep_until(at).await;
                if !alive() || to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut buf = vec![0u8; 16384];
    loop {
        let read = tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await;
        if !alive() {
            break;
        }
        match read {
            Err(_elapsed) => continue,
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => {
                if chunks
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(chunks);
    // What was read before the end still arrives, unless the link was reset.
    let _ = writer.await;
}
