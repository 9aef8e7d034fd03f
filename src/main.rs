use anyhow::{bail, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use pgfeed::config::{Cli, Command, DatabaseArgs, LogFormat, Preset};
use pgfeed::db::{self, migrate};
use pgfeed::{install, server};

async fn resolve(args: &DatabaseArgs) -> Result<db::Database> {
    let database = db::resolve(args.database_url.as_deref(), &args.data_dir).await?;
    if let Some(cluster) = &database.cluster {
        tracing::info!(data = %cluster.data_dir().display(), "started the embedded Postgres");
    }
    Ok(database)
}

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
    match cli.command {
        Command::Serve(args) => {
            // Refuse a bad configuration before starting anything.
            let settings = server::Settings::try_from(args.as_ref())?;
            settings.check_exposure()?;
            let database = resolve(&args.database).await?;
            if let Some(cluster) = &database.cluster {
                let pool = db::pool(&database.url, 2).await?;
                install::demo(&pool).await?;
                pool.close().await;
                println!("Write to it with: {}", cluster.psql_command(db::EMBEDDED_DATABASE));
            }
            let running = server::start(&database.url, settings).await?;
            let (http, ws) = if args.tls_cert.is_some() {
                ("https", "wss")
            } else {
                ("http", "ws")
            };
            println!(
                "pgfeed listening on {http}://{}  (WebSocket: {ws}://{}/ws)",
                running.addr, running.addr
            );
            let token = running.shutdown_token();
            tokio::spawn(async move {
                server::shutdown_signal().await;
                token.cancel();
            });
            running.wait().await?;
            drop(database);
            Ok(())
        }
        Command::Bench(args) => pgfeed::bench::run(args).await,
        Command::BenchPeer(args) => pgfeed::bench::peer::serve_reference(args).await,
        Command::BenchSwarm(args) => pgfeed::bench::swarm::run(args).await,
        Command::Tail(args) => pgfeed::client::tail(args).await,
        Command::Simulate(args) => pgfeed::simulate::run(args).await.map(|_| ()),
        Command::Migrate(args) => {
            let database = resolve(&args.database).await?;
            let pool = db::pool(&database.url, 2).await?;
            let sets = if args.demo_schema || database.is_embedded() {
                vec![&migrate::DEMO, &migrate::CAPTURE]
            } else {
                vec![&migrate::CAPTURE]
            };
            if args.status {
                for set in sets {
                    for m in set.status(&pool).await? {
                        let state = match (m.applied, m.changed) {
                            (true, false) => "applied",
                            (true, true) => "changed",
                            _ => "pending",
                        };
                        println!("{:<8} {:>4}  {state:<8} {}", m.set, m.version, m.description);
                    }
                }
            } else if args.print {
                for set in sets {
                    print!("{}", set.print(&pool).await?);
                }
            } else {
                let applied = if database.is_embedded() {
                    install::demo(&pool).await?
                } else {
                    install::migrate(&pool, args.demo_schema).await?
                };
                if applied.is_empty() {
                    println!("database is up to date; nothing to apply");
                }
                for m in applied {
                    println!("applied {:<8} {:>4}  {}", m.set, m.version, m.description);
                }
                if install::tracked_count(&pool).await? == 0 {
                    println!("nothing is tracked yet: run `pgfeed track --preset pearl` or `pgfeed track <table> --prefix <name>`");
                }
            }
            pool.close().await;
            Ok(())
        }
        Command::Track(args) => {
            let database = resolve(&args.database).await?;
            let pool = db::pool(&database.url, 2).await?;
            install::migrate(&pool, false).await?;
            match (args.preset, args.table, args.prefix) {
                (Some(Preset::Pearl), _, _) => {
                    let report = install::track_preset(&pool).await?;
                    for (table, prefix, exclude) in &report.tracked {
                        if exclude.is_empty() {
                            println!("tracked {table} as {prefix}_*");
                        } else {
                            println!("tracked {table} as {prefix}_*, leaving out {}", exclude.join(", "));
                        }
                    }
                    for table in &report.missing {
                        println!("not found: {table}");
                    }
                    if report.tracked.is_empty() {
                        bail!("none of PEARL's tables exist in schema public of this database");
                    }
                }
                (None, Some(table), Some(prefix)) => {
                    install::track(&pool, &table, &prefix, &args.exclude).await?;
                    println!("tracked {table} as {prefix}_*");
                }
                _ => bail!("name a table and --prefix, or --preset pearl"),
            }
            pool.close().await;
            Ok(())
        }
        Command::Untrack(args) => {
            let database = resolve(&args.database).await?;
            let pool = db::pool(&database.url, 2).await?;
            install::untrack(&pool, &args.table).await?;
            println!("untracked {}", args.table);
            pool.close().await;
            Ok(())
        }
        Command::Uninstall(args) => {
            if args.print {
                print!("{}", install::UNINSTALL_SQL);
                return Ok(());
            }
            let database = resolve(&args.database).await?;
            let pool = db::pool(&database.url, 2).await?;
            let tracked = install::uninstall(&pool).await?;
            for table in tracked {
                println!("removed the capture triggers of {table}");
            }
            println!("removed schema pgfeed");
            pool.close().await;
            Ok(())
        }
    }
}
