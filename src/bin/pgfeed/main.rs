//! `pgfeed`: parses the command line, starts logging, and runs the command.
//! What each command does lives in the library (`pgfeed::server`,
//! `pgfeed::install::commands`, `pgfeed::client`, …); the benchmark lives
//! here, beside the binary, because only measuring uses it.

mod bench;
mod cli;

use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, LogFormat};

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // Logs on stderr; stdout is for what a command prints (the address, the SQL).
    // Postgres's notices ("schema pgfeed already exists, skipping", at every
    // start) are for someone typing DDL: warnings and above only, unless RUST_LOG says.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    cli.command.run().await
}
