//! What the socket scenarios stand on: servers in processes of their own (so a
//! server's memory and CPU are its own, not the clients'), the bare reference
//! servers, and client sockets spread over loopback addresses.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdout, Command};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Client sockets per loopback source address: one address has about 28,000
/// ephemeral ports, shared by every scenario's sockets and their TIME_WAIT
/// remains, so larger runs use 127.0.0.2, ….
const SOCKETS_PER_ADDRESS: usize = 10_000;

/// A server in a child process, stopped when dropped.
pub struct Peer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Peer {
    /// `pgfeed serve` on `url`, on a free loopback port, with room for `clients` connections.
    pub async fn pgfeed(url: &str, clients: usize) -> Result<Peer> {
        Peer::pgfeed_with(url, clients, &[]).await
    }

    /// The same, with more settings in its environment.
    pub async fn pgfeed_with(url: &str, clients: usize, env: &[(&str, &str)]) -> Result<Peer> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["serve", "--bind", "127.0.0.1:0", "--max-connections"])
            .arg((clients + 16).to_string())
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        Peer::spawn(command, "pgfeed listening on http://").await
    }

    /// The bare reference server of this binary (`pgfeed bench-peer <kind>`).
    pub async fn reference(kind: PeerKind) -> Result<Peer> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("bench-peer")
            .arg(kind.to_possible_value().expect("named").get_name());
        Peer::spawn(command, "listening on ").await
    }

    /// The bare relay (`pgfeed bench-peer relay`) of channel `bench` on `url`.
    pub async fn relay(url: &str) -> Result<Peer> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["bench-peer", "relay"]).env("DATABASE_URL", url);
        Peer::spawn(command, "listening on ").await
    }

    async fn spawn(command: Command, marker: &str) -> Result<Peer> {
        let (child, mut lines) = spawn_child(command, "a server process")?;
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.split_once(marker).map(|(_, rest)| rest) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    return addr.parse::<SocketAddr>().context("server address");
                }
            }
            bail!("the server exited before saying where it listens")
        })
        .await
        .context("the server did not start within 30 s")??;
        // Keep reading its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Peer { child, addr })
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("the server has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")
    }

    /// The server's CPU time so far (user and system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let pid = self.child.id().context("the server has exited")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // After the command name, which is in parentheses and may hold spaces:
        // utime and stime are the 12th and 13th fields.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("no /proc stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields
            .get(11..13)
            .context("a short /proc stat")?
            .iter()
            .map(|f| f.parse::<f64>().unwrap_or(0.0))
            .sum();
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100);
        Ok(ticks / per_second as f64)
    }

    /// Sends the reference fan-out server a line of its control protocol.
    pub async fn tell(&mut self, line: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let stdin = self.child.stdin.as_mut().context("no stdin")?;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await?;
        Ok(())
    }
}

/// Starts a process of the bench's (`what` it is, for errors), stopped when
/// dropped, with its stdin for the bench to write and its stdout as lines.
pub fn spawn_child(mut command: Command, what: &str) -> Result<(Child, Lines<BufReader<ChildStdout>>)> {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    Ok((child, BufReader::new(stdout).lines()))
}

/// A TCP connection to `addr` from loopback source address number `i / SOCKETS_PER_ADDRESS`.
pub async fn connect(i: usize, addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // Without this, a bind takes a port no other socket on that address holds
    // (TIME_WAIT ones of an earlier scenario included); with it, the port is
    // chosen at connect, unique for the pair of addresses.
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)?;
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + (i / SOCKETS_PER_ADDRESS) as u8);
    socket.bind((source, 0).into())?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Small buffers: ten thousand of these live in the bench process.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0)
}

pub type Client = WebSocketStream<TcpStream>;

/// A WebSocket client of `ws://addr{path}`, as connection number `i`.
pub async fn ws_connect(i: usize, addr: SocketAddr, path: &str) -> Result<Client> {
    let stream = connect(i, addr).await?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(client_config())).await?;
    Ok(ws)
}

/// `n` clients of pgfeed's `/ws` at `addr`, each subscribed to the tracked bench table.
pub async fn subscribed_clients(n: usize, addr: SocketAddr) -> Result<Vec<Client>> {
    let subscribe = super::subscribe_to_bench_table();
    open_many(n, |i| {
        let subscribe = subscribe.clone();
        async move {
            let mut ws = ws_connect(i, addr, "/ws").await?;
            ws.send(Message::Text(subscribe.into())).await?;
            for _ in 0..2 {
                ws.next().await.transpose()?; // `connected`, then `subscribed`
            }
            anyhow::Ok(ws)
        }
    })
    .await
}

/// Opens `n` connections with `open`, a few hundred at a time (a listen backlog
/// is finite), in connection order.
pub async fn open_many<T, F, Fut>(n: usize, open: F) -> Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut opened = Vec::with_capacity(n);
    let mut pending = futures_util::stream::iter((0..n).map(open)).buffered(256);
    while let Some(next) = pending.next().await {
        opened.push(next?);
    }
    Ok(opened)
}

/// The reference servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerKind {
    /// Accepts plain TCP connections and holds them, reading nothing: the floor for memory.
    Tcp,
    /// Accepts WebSocket connections; on `send N LEN` (stdin) writes N pre-encoded
    /// text frames of LEN bytes to every connection: the floor for fan-out.
    Fanout,
    /// Accepts WebSocket connections and writes every notification on channel
    /// `bench` to each as a text frame: the floor for commit → client latency
    /// with as many clients, Postgres to sockets with nothing in between.
    Relay,
}

#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    #[arg(value_enum)]
    pub kind: PeerKind,

    /// For `relay`: the database to LISTEN on.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

fn reference_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(pgfeed::config::defaults::WS_READ_BUFFER)
        .write_buffer_size(pgfeed::config::defaults::WS_WRITE_BUFFER)
}

/// One relay connection: each notification as a frame, all that are waiting in one write.
async fn relay_to(stream: TcpStream, mut notifications: tokio::sync::broadcast::Receiver<Utf8Bytes>) {
    use tokio::sync::broadcast::error::RecvError;
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(reference_config())).await else {
        return;
    };
    loop {
        tokio::select! {
            next = notifications.recv() => {
                match next {
                    Ok(payload) => if ws.feed(Message::Text(payload)).await.is_err() { return; },
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
                // A lag met here is met again (and skipped) by the next recv.
                while let Ok(payload) = notifications.try_recv() {
                    if ws.feed(Message::Text(payload)).await.is_err() { return; }
                }
                if ws.flush().await.is_err() { return; }
            }
            incoming = ws.next() => if incoming.is_none() { return; },
        }
    }
}

/// `pgfeed bench-peer`: runs a reference server until its stdin closes.
pub async fn serve_reference(args: PeerArgs) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    let (frames_tx, frames_rx) = tokio::sync::watch::channel(Arc::new(Vec::<Utf8Bytes>::new()));
    let kind = args.kind;
    let (relay_tx, _) = tokio::sync::broadcast::channel::<Utf8Bytes>(65_536);
    if kind == PeerKind::Relay {
        let url = args.database_url.context("relay needs DATABASE_URL")?;
        let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
        listener.listen("bench").await?;
        let relay_tx = relay_tx.clone();
        tokio::spawn(async move {
            while let Ok(notification) = listener.recv().await {
                let _ = relay_tx.send(Utf8Bytes::from(notification.payload().to_string()));
            }
        });
    }
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            pgfeed::http::no_delay(&mut stream);
            match kind {
                PeerKind::Tcp => held.push(stream),
                PeerKind::Relay => {
                    tokio::spawn(relay_to(stream, relay_tx.subscribe()));
                }
                PeerKind::Fanout => {
                    let mut frames = frames_rx.clone();
                    tokio::spawn(async move {
                        let Ok(mut ws) =
                            tokio_tungstenite::accept_async_with_config(stream, Some(reference_config())).await
                        else {
                            return;
                        };
                        loop {
                            tokio::select! {
                                changed = frames.changed() => {
                                    if changed.is_err() { return; }
                                    let batch = frames.borrow_and_update().clone();
                                    for frame in batch.iter() {
                                        if ws.feed(Message::Text(frame.clone())).await.is_err() { return; }
                                    }
                                    if ws.flush().await.is_err() { return; }
                                }
                                incoming = ws.next() => if incoming.is_none() { return; },
                            }
                        }
                    });
                }
            }
        }
    });
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["send", n, len] = words[..] {
            let (n, len): (usize, usize) = (n.parse()?, len.parse()?);
            let frames = (0..n)
                .map(|i| {
                    let mut text = format!("{{\"type\":\"bench\",\"i\":{i},\"pad\":\"");
                    let pad = len.saturating_sub(text.len() + 2);
                    text.extend(std::iter::repeat_n('x', pad));
                    text.push_str("\"}");
                    Utf8Bytes::from(text)
                })
                .collect();
            frames_tx.send_replace(Arc::new(frames));
        }
    }
    accepting.abort();
    Ok(())
}
