use anyhow::Result;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use pgfeed::config::{Cli, Command, DatabaseArgs};
use pgfeed::db::{self, embedded};
use pgfeed::server;

/// The database to use: `DATABASE_URL`, or a private cluster kept alive by the returned guard.
fn database(args: &DatabaseArgs) -> Result<(String, Option<embedded::Cluster>)> {
    match &args.database_url {
        Some(url) => Ok((url.clone(), None)),
        None => {
            let cluster = embedded::Cluster::start(&args.data_dir, embedded::Durability::Durable)?;
            Ok((cluster.url("pgfeed"), Some(cluster)))
        }
    }
}

async fn ensure_embedded_database(cluster: &Option<embedded::Cluster>) -> Result<()> {
    if let Some(cluster) = cluster {
        db::create_database(&cluster.url("postgres"), "pgfeed").await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            let (url, cluster) = database(&args.database)?;
            ensure_embedded_database(&cluster).await?;
            if let Some(cluster) = &cluster {
                tracing::info!(data = %cluster.data_dir().display(), "started the embedded Postgres");
                println!("Write to it with: {}", cluster.psql_command("pgfeed"));
            }
            let running = server::start(&url, (&args).into()).await?;
            println!(
                "pgfeed listening on http://{}  (WebSocket: ws://{}/ws)",
                running.addr, running.addr
            );
            let token = running.shutdown_token();
            tokio::spawn(async move {
                server::shutdown_signal().await;
                token.cancel();
            });
            running.wait().await?;
            drop(cluster);
            Ok(())
        }
        Command::Bench(args) => pgfeed::bench::run(args).await,
        Command::Migrate(args) => {
            let (url, cluster) = database(&args.database)?;
            ensure_embedded_database(&cluster).await?;
            let pool = db::pool(&url, 2).await?;
            if args.status {
                for m in db::migration_status(&pool).await? {
                    let state = if m.applied { "applied" } else { "pending" };
                    println!("{:>4}  {state:<8} {}", m.version, m.description);
                }
            } else {
                let applied = db::migrate(&pool).await?;
                if applied.is_empty() {
                    println!("database is up to date; nothing to apply");
                }
                for m in applied {
                    println!("applied {:>4}  {}", m.version, m.description);
                }
            }
            pool.close().await;
            Ok(())
        }
    }
}
