//! The latency scenario's clients, in a process of their own
//! (`pgfeed bench-swarm`), read by one thread over epoll.
//!
//! Why not tokio-tungstenite clients in the bench process, as before: at
//! 1,000 clients × 1,000 ev/s they were the heaviest thing on the machine,
//! 0.83 of the 2 cores against the server's 0.76 (perf, cpu-clock), most of it
//! a timer, a clock read, a frame decode, an allocation and a UTF-8 check per
//! message. A load generator that outweighs the server it loads measures
//! itself. These clients read each socket once per readiness into one shared
//! buffer, walk its frames in place and note a frame by the `"lat-<i>"` label
//! its row carries, stamping every socket of one `epoll_wait` with the moment
//! it returned: when the frame was there to read, which is what the server
//! controls. The same clients serve both servers of the scenario.
//!
//! The parent (`latency.rs`) and this process share `CLOCK_MONOTONIC`: the
//! parent sends when each COMMIT was sent and returned, in nanoseconds of that
//! clock, once the writes are done; this process answers with the quantiles.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::peer;

/// A client that has heard nothing for this long gives up.
const QUIET: Duration = Duration::from_secs(10);

/// Not arrived (yet).
const MISSING: u32 = u32::MAX;

#[derive(Debug, Clone, Args)]
pub struct SwarmArgs {
    /// The server's address.
    #[arg(long)]
    pub server: SocketAddr,

    /// The WebSocket path to open.
    #[arg(long, default_value = "/ws")]
    pub path: String,

    /// A text message each client sends once open (pgfeed's `subscribe`).
    #[arg(long)]
    pub send: Option<String>,

    /// Frames each client waits for before it counts as ready (`connected`, `subscribed`).
    #[arg(long, default_value_t = 0)]
    pub replies: usize,

    #[arg(long)]
    pub clients: usize,

    /// Events to be written: frames label theirs `lat-<i>`, `i < events`.
    #[arg(long)]
    pub events: usize,

    /// The quantiles to report, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.99")]
    pub quantiles: Vec<f64>,
}

/// What the swarm reports: frames that named an event, and latency quantiles
/// in milliseconds from the moment each COMMIT was sent and returned.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Latencies {
    pub received: usize,
    pub from_sent: Vec<f64>,
    pub from_return: Vec<f64>,
}

/// Nanoseconds of `CLOCK_MONOTONIC`: one clock for the writers' process and the swarm's.
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// The swarm's process, seen from the bench.
pub struct Swarm {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Swarm {
    /// Starts `clients` clients of `ws://server{path}` and returns once all are open (and answered).
    pub async fn start(
        server: SocketAddr,
        path: &str,
        send: Option<&str>,
        replies: usize,
        clients: usize,
        events: usize,
    ) -> Result<Swarm> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["bench-swarm", "--server", &server.to_string(), "--path", path])
            .args(["--replies", &replies.to_string(), "--clients", &clients.to_string()])
            .args(["--events", &events.to_string()]);
        if let Some(send) = send {
            command.args(["--send", send]);
        }
        let (child, mut lines) = peer::spawn_child(command, "the client swarm")?;
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the client swarm was not ready within 60 s")??;
        if ready.as_deref() != Some("ready") {
            bail!("the client swarm did not start: {ready:?}");
        }
        Ok(Swarm { child, lines })
    }

    /// Hands over when each event's COMMIT was sent and returned (`CLOCK_MONOTONIC`
    /// ns, 0: never) and waits for the clients' figures.
    pub async fn finish(mut self, sent: &[u64], committed: &[u64]) -> Result<Latencies> {
        let mut times = String::with_capacity(sent.len() * 24);
        for (s, c) in sent.iter().zip(committed) {
            let _ = writeln!(times, "{s} {c}"); // a String takes every write
        }
        let mut stdin = self.child.stdin.take().context("no stdin")?;
        stdin.write_all(times.as_bytes()).await?;
        drop(stdin); // end of input: the swarm reports once its clients are done
        let line = self
            .lines
            .next_line()
            .await?
            .context("the client swarm exited without figures")?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// `pgfeed bench-swarm`: opens the clients, says `ready`, reads until every
/// client has every event (or has heard nothing for 10 s), reads the commit
/// times on stdin until it closes, prints its `Latencies` as one JSON line.
pub async fn run(args: SwarmArgs) -> Result<()> {
    let args = std::sync::Arc::new(args);
    let conns = peer::open_many(args.clients, |i| {
        let args = args.clone();
        async move { open(i, &args).await }
    })
    .await?;
    let events = args.events;
    let base = monotonic_ns();
    let reading = std::thread::spawn(move || receive(conns, events, base));
    println!("ready");
    std::io::stdout().flush()?;

    let mut input = String::new();
    tokio::io::stdin().read_to_string(&mut input).await?;
    let times: Vec<(u64, u64)> = input
        .lines()
        .map(|line| {
            let (s, c) = line.split_once(' ').context("a line of two times")?;
            Ok((s.parse()?, c.parse()?))
        })
        .collect::<Result<_>>()?;
    let (received, arrivals) = tokio::task::spawn_blocking(move || reading.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the reading thread panicked"))??;

    // Microseconds since `base`; a COMMIT sent before `base` cannot happen (the writes start later).
    let since_base = |ns: u64| (ns.saturating_sub(base) / 1000) as f64;
    let (mut from_sent, mut from_return) = (Vec::new(), Vec::new());
    for client in &arrivals {
        for (&at, &(sent, committed)) in client.iter().zip(&times) {
            if at == MISSING || sent == 0 {
                continue;
            }
            let at = f64::from(at);
            from_sent.push((at - since_base(sent)).max(0.0) / 1000.0);
            from_return.push(if committed == 0 {
                0.0
            } else {
                (at - since_base(committed)).max(0.0) / 1000.0
            });
        }
    }
    from_sent.sort_by(f64::total_cmp);
    from_return.sort_by(f64::total_cmp);
    let latencies = Latencies {
        received,
        from_sent: args.quantiles.iter().map(|&q| super::quantile(&from_sent, q)).collect(),
        from_return: args
            .quantiles
            .iter()
            .map(|&q| super::quantile(&from_return, q))
            .collect(),
    };
    println!("{}", serde_json::to_string(&latencies)?);
    Ok(())
}

/// One open client: its socket and the bytes of a frame not yet whole.
struct Conn {
    stream: std::net::TcpStream,
    partial: Vec<u8>,
}

/// Opens client `i`: the upgrade, the message to send, the replies to wait for.
async fn open(i: usize, args: &SwarmArgs) -> Result<Conn> {
    let mut stream = peer::connect(i, args.server).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        args.path, args.server
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("the server closed during the upgrade");
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        bail!("upgrade refused: {}", String::from_utf8_lossy(&buf[..head_end]));
    }
    buf.drain(..head_end);
    if let Some(text) = &args.send {
        stream.write_all(&client_frame(0x1, text.as_bytes())).await?;
    }
    let mut replies = 0;
    loop {
        let used = frames(&buf, |_, _| replies += 1);
        buf.drain(..used);
        if replies >= args.replies {
            break;
        }
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("the server closed before its replies");
        }
    }
    Ok(Conn {
        stream: stream.into_std()?, // non-blocking, as tokio left it
        partial: buf,
    })
}

/// A client's frame: masked, as RFC 6455 requires of clients (a zero mask: it
/// protects no cache on loopback, and leaves the payload as it is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => frame.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(payload);
    frame
}

/// Calls `each(opcode, payload)` for every whole (unmasked, server) frame at
/// the start of `data`; returns how many bytes they took.
fn frames(data: &[u8], mut each: impl FnMut(u8, &[u8])) -> usize {
    let mut at = 0;
    while let [b0, b1, rest @ ..] = &data[at..] {
        let (len, header) = match b1 & 0x7f {
            126 if rest.len() >= 2 => (u16::from_be_bytes([rest[0], rest[1]]) as usize, 4),
            127 if rest.len() >= 8 => (u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) as usize, 10),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        let Some(payload) = data.get(at + header..at + header + len) else {
            break;
        };
        each(b0 & 0x0f, payload);
        at += header + len;
    }
    at
}

/// The event number in a frame or notification payload that carries `"lat-<i>"`.
pub fn event_number(payload: &[u8]) -> Option<usize> {
    let at = memchr::memmem::find(payload, b"\"lat-")? + 5;
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&payload[at..at + digits]).ok()?.parse().ok()
}

/// Reads every client until each has every event or all have been quiet for
/// `QUIET`; returns the frames that named an event and, per client, when each
/// event arrived (µs after `base`).
fn receive(mut conns: Vec<Conn>, events: usize, base: u64) -> Result<(usize, Vec<Vec<u32>>)> {
    let epoll = Epoll::new(EpollCreateFlags::empty())?;
    for (i, conn) in conns.iter().enumerate() {
        epoll.add(&conn.stream, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
    }
    let mut arrivals = vec![vec![MISSING; events]; conns.len()];
    let mut missing = conns.len() * events;
    let mut received = 0;
    let mut ready = vec![EpollEvent::empty(); 256];
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_heard = monotonic_ns();
    // Frames that came with the upgrade's answer.
    for (conn, arrived) in conns.iter_mut().zip(arrivals.iter_mut()) {
        let partial = std::mem::take(&mut conn.partial);
        let used = note(&partial, &conn.stream, arrived, &mut received, &mut missing, 0);
        conn.partial = partial[used..].to_vec();
    }
    while missing > 0 && monotonic_ns() - last_heard < QUIET.as_nanos() as u64 {
        let n = match epoll.wait(&mut ready, 200u16) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(err) => return Err(err).context("waiting for client sockets"),
        };
        let woke = monotonic_ns();
        let now = ((woke - base) / 1000) as u32;
        for event in &ready[..n] {
            let i = event.data() as usize;
            let (conn, arrived) = (&mut conns[i], &mut arrivals[i]);
            let read = match (&conn.stream).read(&mut buf) {
                Ok(read) if read > 0 => read,
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => continue,
                // Closed or reset: what it missed shows in `received`.
                _ => {
                    epoll.delete(&conn.stream)?;
                    continue;
                }
            };
            last_heard = woke;
            if conn.partial.is_empty() {
                let used = note(&buf[..read], &conn.stream, arrived, &mut received, &mut missing, now);
                conn.partial.extend_from_slice(&buf[used..read]);
            } else {
                conn.partial.extend_from_slice(&buf[..read]);
                let used = note(&conn.partial, &conn.stream, arrived, &mut received, &mut missing, now);
                conn.partial.drain(..used);
            }
        }
    }
    Ok((received, arrivals))
}

/// Notes the events in the whole frames at the start of `data` as arrived
/// `now`, answers pings; returns the bytes the frames took.
fn note(
    data: &[u8],
    mut stream: &std::net::TcpStream,
    arrived: &mut [u32],
    received: &mut usize,
    missing: &mut usize,
    now: u32,
) -> usize {
    frames(data, |opcode, payload| match opcode {
        0x1 => {
            if let Some(i) = event_number(payload) {
                *received += 1;
                if let Some(slot) = arrived.get_mut(i).filter(|slot| **slot == MISSING) {
                    *slot = now;
                    *missing -= 1;
                }
            }
        }
        // A pong of a few bytes fits any socket buffer; a client that cannot answer is dropped by the server.
        0x9 => {
            let _ = stream.write_all(&client_frame(0xA, payload));
        }
        _ => {}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_whole_frames_and_leaves_a_partial_one() {
        let mut data = vec![0x81, 5];
        data.extend_from_slice(b"hello");
        data.extend_from_slice(&[0x81, 126, 0x01, 0x00]);
        data.extend_from_slice(&[b'x'; 256]);
        data.extend_from_slice(&[0x89, 3, b'a']); // a ping, two bytes short
        let mut seen = Vec::new();
        let used = frames(&data, |op, payload| seen.push((op, payload.len())));
        assert_eq!(seen, vec![(1, 5), (1, 256)]);
        assert_eq!(used, data.len() - 3);
        assert_eq!(frames(&data[..1], |_, _| panic!("no whole frame")), 0);
    }

    #[test]
    fn finds_the_event_number() {
        assert_eq!(event_number(br#"{"data":{"label":"lat-42","n":0}}"#), Some(42));
        assert_eq!(event_number(br#"{"new":{"label":"lat-7"}}"#), Some(7));
        assert_eq!(event_number(br#"{"label":"w1-3"}"#), None);
    }

    #[test]
    fn client_frames_are_masked() {
        assert_eq!(client_frame(0xA, b"hi"), vec![0x8A, 0x82, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(&client_frame(0x1, &[b'x'; 200])[..4], &[0x81, 0x80 | 126, 0, 200]);
    }
}
