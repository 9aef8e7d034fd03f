//! `pgfeed bench`: measures, never asserts. Reports each figure of the README's performance table
//! beside its reference, measured in the same run.
//!
//! - `write` ([`write`]): transactions per second of 8 writers on copies of one
//!   table: untracked, with a bare per-row `pg_notify` trigger, tracked by
//!   pgfeed (with a pgfeed server sequencing it), and prototypes of other
//!   write paths.
//! - `keepup`, `replay` ([`delivery`]): a WebSocket client following the
//!   writers at their top rate; another replaying it all from the log.
//! - `latency` ([`latency`]): commit → WebSocket client at a steady rate with
//!   many clients, beside a client LISTENing on Postgres directly and beside a
//!   bare tokio relay of LISTEN to as many clients.
//! - `fanout` ([`fanout`]): deliveries per second to 1k and 10k clients,
//!   beside a bare tokio server writing pre-encoded frames to as many sockets;
//!   and ([`sse`]) to 1k Server-Sent Events streams, with the server's CPU per
//!   delivery.
//! - `memory` ([`memory`]): the server's resident memory per idle WebSocket,
//!   beside a bare server holding as many plain TCP connections.
//! - `retention` ([`retention`]): trimming the log by dropping whole units
//!   beside DELETE (the release before it): time and WAL to trim, and the
//!   writers' rate while retention runs.
//!
//! - `followers` ([`followers`]): the primary's CPU per follower instance at a
//!   steady write rate, reading the primary and reading a streaming standby,
//!   beside one instance alone.
//!
//! Socket scenarios run their servers in processes of their own ([`peer`]), so
//! each server's memory and CPU are its own, not the clients'; the latency
//! scenario's clients run in one more ([`swarm`]), lean enough not to be what
//! it measures.

mod delivery;
mod fanout;
mod followers;
mod latency;
mod memory;
pub mod peer;
mod retention;
mod sse;
pub mod swarm;
mod write;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use pgfeed::db;
use pgfeed::protocol::{Action, Subscription};

/// The one subscription every bench client makes: the tracked bench table.
fn subscribe_to_bench_table() -> String {
    Action::Subscribe(Subscription {
        tables: Some(["bench_tracked".to_string()].into_iter().collect()),
        ..Subscription::default()
    })
    .encode()
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every scenario below, one table.
    All,
    /// Write cost: tracked (and prototypes) vs bare per-row NOTIFY vs plain.
    Write,
    /// Delivered/committed for one client at the writers' top rate, and the final lag.
    Keepup,
    /// Events per second streamed from the log to a client resuming from the start.
    Replay,
    /// Commit → client latency, p50 and p99, vs a direct LISTEN client and a bare relay of LISTEN.
    Latency,
    /// Deliveries per second at 1k and 10k clients vs a bare tokio fan-out.
    Fanout,
    /// Server RSS per idle WebSocket vs per idle plain TCP connection.
    Memory,
    /// Trimming the log: rotation vs DELETE (time, WAL, writers' rate meanwhile).
    Retention,
    /// Primary CPU per follower instance, reading the primary and reading a standby.
    Followers,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenario to run.
    #[arg(value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,

    /// Postgres to measure on. Unset: a private cluster with default (durable) settings.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// A short run of every figure (short measurements, few clients): to see it work, not to compare.
    #[arg(long)]
    pub quick: bool,

    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,

    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,

    /// Measurements per variant (the variants take turns).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,

    /// Clients for `latency` and `memory` (default 1,000 and 10,000), or the one
    /// client count for `fanout` (default: 1,000, then 10,000).
    #[arg(long)]
    pub clients: Option<usize>,

    /// Transactions per second (one event each) for `latency` and `followers`.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,

    /// Millions of log rows `retention` trims (default 2; 0.1 with --quick).
    #[arg(long)]
    pub million_rows: Option<f64>,

    /// Write-path variants for `write`, comma-separated (default: all of them).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
}

/// What every scenario gets: the bench database and how long to measure.
pub struct Setup {
    pub pool: PgPool,
    pub url: String,
    pub writers: usize,
    pub span: Duration,
    pub rounds: usize,
    pub quick: bool,
}

/// One line of the table: a figure beside its reference from the same run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    pub figure: String,
    pub value: f64,
    pub reference: Option<f64>,
    pub ratio: Option<f64>,
    pub target: &'static str,
}

impl Figure {
    /// A figure beside its reference, with their ratio.
    pub fn versus(scenario: &'static str, figure: String, value: f64, reference: f64, target: &'static str) -> Figure {
        Figure {
            scenario,
            figure,
            value,
            reference: Some(reference),
            ratio: Some(value / reference.max(f64::MIN_POSITIVE)),
            target,
        }
    }

    /// A figure with no reference.
    pub fn alone(scenario: &'static str, figure: String, value: f64, target: &'static str) -> Figure {
        Figure {
            scenario,
            figure,
            value,
            reference: None,
            ratio: None,
            target,
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    raise_file_limit();
    let scratch = std::env::temp_dir().join(format!("pgfeed-bench-{}", std::process::id()));
    let database = db::resolve(args.database_url.as_deref(), &scratch).await?;
    let url = database.url.clone();
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await?;
    sqlx::query("DROP DATABASE IF EXISTS pgfeed_bench")
        .execute(&admin)
        .await?;
    sqlx::query("CREATE DATABASE pgfeed_bench").execute(&admin).await?;
    admin.close().await;
    let bench_url = format!(
        "{}/pgfeed_bench",
        url.rsplit_once('/').context("DATABASE_URL has no database")?.0
    );
    let pool = PgPoolOptions::new()
        .max_connections(args.writers as u32 + 4)
        .connect(&bench_url)
        .await?;
    pgfeed::install::migrate(&pool, false).await?;
    sqlx::raw_sql(include_str!("variants.sql")).execute(&pool).await?;

    let settings: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync')",
    )
    .fetch_one(&pool)
    .await?;
    let (seconds, rounds) = if args.quick {
        (1, 1)
    } else {
        (args.seconds, args.rounds)
    };
    let header = format!(
        "pgfeed bench: {} writers, {seconds} s x {rounds} rounds; Postgres {}, synchronous_commit={}, fsync={}; {} cores",
        args.writers,
        settings.0,
        settings.1,
        settings.2,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let setup = Setup {
        pool,
        url: bench_url,
        writers: args.writers,
        span: Duration::from_secs(seconds),
        rounds,
        quick: args.quick,
    };
    let mut figures = Vec::new();
    let wants = |s: Scenario| args.scenario == Scenario::All || args.scenario == s;
    if wants(Scenario::Write) {
        figures.extend(write::run(&setup, args.variants.as_deref()).await?);
    }
    if wants(Scenario::Keepup) || wants(Scenario::Replay) {
        figures.extend(delivery::run(&setup, wants(Scenario::Keepup), wants(Scenario::Replay)).await?);
    }
    if wants(Scenario::Latency) {
        let clients = args.clients.unwrap_or(if args.quick { 50 } else { 1000 });
        figures.extend(latency::run(&setup, clients, args.rate).await?);
    }
    if wants(Scenario::Fanout) {
        let counts = match args.clients {
            Some(n) => vec![n],
            None if args.quick => vec![1000],
            None => vec![1000, 10_000],
        };
        let streams = counts[0];
        for clients in counts {
            figures.extend(fanout::run(&setup, clients).await?);
        }
        figures.extend(sse::run(&setup, streams).await?);
    }
    if wants(Scenario::Memory) {
        let clients = args.clients.unwrap_or(if args.quick { 500 } else { 10_000 });
        figures.extend(memory::run(&setup, clients).await?);
    }
    if wants(Scenario::Retention) {
        let millions = args.million_rows.unwrap_or(if args.quick { 0.1 } else { 2.0 });
        figures.extend(retention::run(&setup, millions).await?);
    }
    if wants(Scenario::Followers) {
        figures.extend(followers::run(&setup, args.rate).await?);
    }
    if args.json {
        println!("{}", serde_json::json!({"setup": header, "figures": figures}));
    } else {
        println!("{header}");
        println!(
            "  {:<8} {:<58} {:>12} {:>12} {:>7}  target",
            "scenario", "figure", "value", "reference", "ratio"
        );
        for f in &figures {
            println!(
                "  {:<8} {:<58} {:>12.2} {:>12} {:>7}  {}",
                f.scenario,
                f.figure,
                f.value,
                f.reference.map_or("-".into(), |r| format!("{r:.2}")),
                f.ratio.map_or("-".into(), |r| format!("{r:.2}")),
                f.target
            );
        }
    }
    setup.pool.close().await;
    drop(database);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Ten thousand sockets need more descriptors than a shell's default soft limit;
/// the servers this process starts inherit the raised limit. Root may raise
/// the hard limit too, up to the kernel's `fs.nr_open`.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|n| n.trim().parse::<u64>().ok());
    if let Some(most) = nr_open {
        if setrlimit(Resource::RLIMIT_NOFILE, most, most).is_ok() {
            return;
        }
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// How many descriptors this process may hold.
pub fn file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The `q`-quantile (0..=1) of sorted `samples`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}
