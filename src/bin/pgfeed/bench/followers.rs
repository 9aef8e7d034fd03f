//! What an instance costs the primary: CPU time of the primary's Postgres
//! processes while writers commit one-row transactions at a steady rate, with
//! one pgfeed instance (the leader), then with the leader and `FOLLOWERS`
//! followers that read the primary, then with as many that read a streaming
//! standby (`--replica-url`). The phases take turns, `rounds` times; the cost
//! of a follower is its phase's CPU less the leader-only phase's, divided by
//! the followers (everything it causes: its backends, and the writers' and
//! WAL's share of serving it), and, more precisely, the CPU of its own
//! backends on the primary (found by the ports of the follower's sockets).
//!
//! It runs on a primary and a standby of its own (private clusters, fsync on),
//! whatever `DATABASE_URL` says: a standby is part of what it measures. The
//! standby streams in every phase, so its WAL sender is in every figure alike.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::PgPoolOptions;

use pgfeed::db::{self, embedded};

use super::peer::Peer;
use super::{Figure, Setup};

/// Followers per phase.
const FOLLOWERS: usize = 3;
/// Writer connections sharing the rate.
const WRITERS: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Phase {
    Leader,
    OnPrimary,
    OnStandby,
}

pub async fn run(setup: &Setup, rate: u32) -> Result<Vec<Figure>> {
    let scratch = std::env::temp_dir().join(format!("pgfeed-bench-followers-{}", std::process::id()));
    let primary = embedded::Cluster::start(&scratch.join("primary"), embedded::Durability::Durable)?;
    db::create_database(&primary.url("postgres"), "followers").await?;
    let url = primary.url("followers");
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32 + 2)
        .connect(&url)
        .await?;
    pgfeed::install::migrate(&pool, false).await?;
    sqlx::raw_sql(include_str!("variants.sql")).execute(&pool).await?;
    let standby = embedded::Cluster::start_standby(&primary, &scratch.join("standby"), embedded::Durability::Durable)?;
    let replica = standby.url("followers");

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writers = write_at_rate(&pool, rate, stop.clone(), committed.clone());
    let span = setup.span.max(Duration::from_secs(3));
    let mut cpu: [Vec<f64>; 3] = Default::default();
    let mut own: [Vec<f64>; 3] = Default::default();
    let mut on_the_standby: [Vec<f64>; 3] = Default::default();
    for _ in 0..setup.rounds {
        for (i, phase) in [Phase::Leader, Phase::OnPrimary, Phase::OnStandby]
            .into_iter()
            .enumerate()
        {
            let clusters = [primary.data_dir(), standby.data_dir()];
            let (total, backends, standby_total) = measure(clusters, &pool, &url, &replica, phase, span).await?;
            cpu[i].push(total);
            own[i].push(backends / FOLLOWERS as f64);
            on_the_standby[i].push(standby_total);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await??;
    }
    let achieved = committed.load(Ordering::SeqCst) as f64;
    pool.close().await;
    drop(standby);
    drop(primary);
    let _ = std::fs::remove_dir_all(&scratch);

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (leader, on_primary, on_standby) = (mean(&cpu[0]), mean(&cpu[1]), mean(&cpu[2]));
    let per = |phase: f64| (phase - leader) / FOLLOWERS as f64;
    let rounds = |v: &[f64]| v.iter().map(|c| format!("{c:.1}")).collect::<Vec<_>>().join(", ");
    // A figure named with the rounds it is the mean or difference of.
    let figure = |name: &str, runs: &[f64], value: f64, target: &'static str| {
        Figure::alone("follow", format!("{name} ({})", rounds(runs)), value, target)
    };
    tracing::info!(achieved, "followers: transactions committed over the run");
    Ok(vec![
        figure(
            &format!("primary CPU %, leader only, {rate} tx/s"),
            &cpu[0],
            leader,
            "report",
        ),
        figure(
            "primary CPU %/follower, on a standby, all it causes",
            &cpu[2],
            per(on_standby),
            "<= 1 % of a core",
        ),
        figure(
            "primary CPU %/follower, on a standby, own backends",
            &own[2],
            mean(&own[2]),
            "<= 1 % of a core",
        ),
        figure(
            "standby CPU %/follower, on a standby, all it causes",
            &on_the_standby[2],
            (mean(&on_the_standby[2]) - mean(&on_the_standby[0])) / FOLLOWERS as f64,
            "report (standbys scale out)",
        ),
        figure(
            "primary CPU %/follower, on the primary, all it causes",
            &cpu[1],
            per(on_primary),
            "reference",
        ),
        figure(
            "primary CPU %/follower, on the primary, own backends",
            &own[1],
            mean(&own[1]),
            "reference",
        ),
    ])
}

/// The primary's CPU (% of one core) over `span` with this phase's instances
/// running, that of the followers' own backends there, and the standby's.
async fn measure(
    [data_dir, standby_dir]: [&Path; 2],
    pool: &sqlx::PgPool,
    url: &str,
    replica: &str,
    phase: Phase,
    span: Duration,
) -> Result<(f64, f64, f64)> {
    let leader = Peer::pgfeed(url, 16).await?;
    // The first instance up takes the lead; the followers find it taken.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut followers = Vec::new();
    let reading = [("PGFEED_REPLICA_URL", replica)];
    for _ in 0..FOLLOWERS {
        match phase {
            Phase::Leader => {}
            Phase::OnPrimary => followers.push(Peer::pgfeed(url, 16).await?),
            Phase::OnStandby => followers.push(Peer::pgfeed_with(url, 16, &reading).await?),
        }
    }
    // Settled: every follower ready (connected, caught up), then a second
    // more: what an instance costs once, as it starts, is not its running cost.
    for follower in &followers {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ready(follower.addr).await && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let primary_port: i32 = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map(|o| i32::from(o.get_port()))
        .unwrap_or(5432);
    let ports: Vec<i32> = followers
        .iter()
        .filter_map(|f| f.child.id())
        .flat_map(|pid| tcp_ports(pid as i32, primary_port))
        .collect();
    let backends: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1)")
        .bind(&ports)
        .fetch_all(pool)
        .await?;
    let heard = || async {
        match followers.first() {
            Some(f) => counter(f.addr, "pgfeed_notifications_received_total").await,
            None => 0.0,
        }
    };
    // The scrape first: it is not part of what is measured.
    let heard_before = heard().await;
    let before = (cluster_cpu(data_dir)?, cpu_of(&backends), cluster_cpu(standby_dir)?);
    let started = std::time::Instant::now();
    tokio::time::sleep(span).await;
    let used = (
        cluster_cpu(data_dir)? - before.0,
        cpu_of(&backends) - before.1,
        cluster_cpu(standby_dir)? - before.2,
    );
    let elapsed = started.elapsed().as_secs_f64();
    if !followers.is_empty() {
        tracing::info!(
            ?phase,
            per_second = (heard().await - heard_before) / elapsed,
            "notifications a follower heard"
        );
    }
    drop(followers);
    drop(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((
        100.0 * used.0 / elapsed,
        100.0 * used.1 / elapsed,
        100.0 * used.2 / elapsed,
    ))
}

/// A counter of the server at `addr`'s `/metrics`.
async fn counter(addr: std::net::SocketAddr, name: &str) -> f64 {
    get(addr, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Whether the server at `addr` says it is ready (`/readyz`: 200).
async fn ready(addr: std::net::SocketAddr) -> bool {
    get(addr, "/readyz")
        .await
        .is_some_and(|response| response.starts_with("HTTP/1.1 200"))
}

/// The whole response to `GET path` from the server at `addr`, if it answers.
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// The local ports of process `pid`'s TCP connections to port `to` (a port
/// number alone may stand for connections to two servers).
fn tcp_ports(pid: i32, to: i32) -> Vec<i32> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().to_string();
                    Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) = (fields.get(1), fields.get(2), fields.get(9)) else {
                continue;
            };
            let port = |address: &str| {
                address
                    .rsplit_once(':')
                    .and_then(|(_, p)| i32::from_str_radix(p, 16).ok())
            };
            if inodes.iter().any(|i| i == inode) && port(remote) == Some(to) {
                ports.extend(port(local));
            }
        }
    }
    ports
}

/// CPU seconds used so far by processes `pids` (those that are gone count 0).
/// CPU seconds used by processes `pids` so far: the scheduler's own count
/// (`/proc/<pid>/schedstat`, nanoseconds on the CPU) where the kernel keeps
/// it. Clock ticks charge a whole 10 ms to whoever runs when the timer
/// fires: a backend that works a fraction of a millisecond a second read as
/// 0.2 % in one round and 1.2 % in the next.
fn cpu_of(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|pid| {
            let on_cpu = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                .ok()
                .and_then(|stat| stat.split_whitespace().next()?.parse::<u64>().ok());
            match on_cpu {
                Some(ns) => Some(ns as f64 / 1e9),
                None => process_ticks(&format!("/proc/{pid}")).map(|(_, ticks)| ticks as f64 / clock_ticks()),
            }
        })
        .sum()
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// A process's parent and its user + system CPU ticks, from `/proc/<pid>/stat`.
fn process_ticks(dir: &str) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // After the command's closing parenthesis: state, ppid, … utime (14th field), stime (15th).
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Some((fields.get(1)?.parse().ok()?, field(14) + field(15)))
}

/// CPU seconds used so far by a cluster's postmaster and its children (backends, WAL sender, …).
fn cluster_cpu(data_dir: &Path) -> Result<f64> {
    let postmaster: i32 = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .context("reading postmaster.pid")?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("postmaster.pid names no process")?;
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((ppid, ticks)) = process_ticks(&entry.path().to_string_lossy()) {
            if pid == postmaster || ppid == postmaster {
                total += ticks;
            }
        }
    }
    Ok(total as f64 / clock_ticks())
}

/// One-row transactions into the tracked bench table at `rate` per second
/// until `stop`, from `WRITERS` connections in turn.
fn write_at_rate(
    pool: &sqlx::PgPool,
    rate: u32,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    let started = tokio::time::Instant::now();
    (0..WRITERS)
        .map(|w| {
            let (pool, stop, committed) = (pool.clone(), stop.clone(), committed.clone());
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / f64::from(rate))).await;
                    sqlx::query("INSERT INTO bench_tracked (label) VALUES ($1)")
                        .bind(format!("f-{i}"))
                        .execute(&mut *conn)
                        .await?;
                    committed.fetch_add(1, Ordering::SeqCst);
                    i += WRITERS;
                }
                anyhow::Ok(())
            })
        })
        .collect()
}
