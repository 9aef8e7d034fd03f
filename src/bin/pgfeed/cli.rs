//! The command line: every command, each handed to the module that does it.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::bench;
use pgfeed::config::ServeArgs;
use pgfeed::install::commands::{MigrateArgs, StatusArgs, TrackArgs, UninstallArgs, UntrackArgs};

#[derive(Debug, Parser)]
#[command(
    name = "pgfeed",
    version,
    about = "Every write to Postgres as a live, ordered, resumable event feed"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log lines as text, or as JSON objects (one per line) for a log pipeline.
    #[arg(long, global = true, env = "PGFEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (starts a private Postgres when DATABASE_URL is not set).
    Serve(Box<ServeArgs>),
    /// Install (or upgrade) schema pgfeed; idempotent. Touches no application table.
    Migrate(MigrateArgs),
    /// Track a table (its writes become events), or PEARL's tables with --preset pearl.
    Track(TrackArgs),
    /// Stop tracking a table (its triggers are removed; its logged events stay until pruned).
    Untrack(UntrackArgs),
    /// Remove every pgfeed trigger and schema pgfeed; application tables and rows stay as they were.
    Uninstall(UninstallArgs),
    /// What is tracked and whether its capture fires; the log and the sequencer. Exits 1 when capture is off anywhere.
    Status(StatusArgs),
    /// Measure write cost against the reference designs (figures, never assertions).
    Bench(bench::BenchArgs),
    /// A bare reference server for `bench` (its own process, so its memory is its own).
    #[command(hide = true)]
    BenchPeer(bench::peer::PeerArgs),
    /// The latency scenario's clients for `bench` (their own process, reading over epoll).
    #[command(hide = true)]
    BenchSwarm(bench::swarm::SwarmArgs),
    /// Print a server's events as they happen (reconnects and resumes by itself).
    Tail(pgfeed::client::TailArgs),
    /// Write realistic PEARL activity (studies, trackers, comment threads, …) at a steady rate.
    Simulate(pgfeed::simulate::SimulateArgs),
}

impl Command {
    pub async fn run(self) -> Result<()> {
        match self {
            Command::Serve(args) => pgfeed::server::serve(&args).await,
            Command::Migrate(args) => pgfeed::install::commands::migrate(args).await,
            Command::Track(args) => pgfeed::install::commands::track(args).await,
            Command::Untrack(args) => pgfeed::install::commands::untrack(args).await,
            Command::Uninstall(args) => pgfeed::install::commands::uninstall(args).await,
            Command::Status(args) => pgfeed::install::commands::status(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchPeer(args) => bench::peer::serve_reference(args).await,
            Command::BenchSwarm(args) => bench::swarm::run(args).await,
            Command::Tail(args) => pgfeed::client::tail(args).await,
            Command::Simulate(args) => pgfeed::simulate::run(args).await.map(|_| ()),
        }
    }
}
