//! The DBA's commands: `migrate`, `track`, `untrack`, `uninstall`. Each
//! opens its database (the embedded cluster without `DATABASE_URL`), does its
//! one job through the functions of [`super`], and says what it did.

use anyhow::{bail, Result};
use clap::Args;

use crate::config::DatabaseArgs;
use crate::db::{self, migrate};

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// List applied and pending migrations instead of applying them.
    #[arg(long, conflicts_with = "print")]
    pub status: bool,

    /// Print the SQL of the pending migrations instead of running it (apply it with your own tool).
    #[arg(long)]
    pub print: bool,

    /// Also create PEARL's demo tables (for an empty database; refused where any of them exists).
    #[arg(long)]
    pub demo_schema: bool,
}

/// The presets `track --preset` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// PEARL's tables with the seed event prefixes; credentials in `users` left out.
    Pearl,
}

#[derive(Debug, Clone, Args)]
pub struct TrackArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The table to track, as SQL names it (`studies`, `lab.equipment`).
    #[arg(required_unless_present = "preset", conflicts_with = "preset")]
    pub table: Option<String>,

    /// Event prefix: events are named <prefix>_created, _updated, _deleted, _truncated.
    #[arg(long, required_unless_present = "preset")]
    pub prefix: Option<String>,

    /// Columns never notified, logged, snapshotted or served (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,

    /// Event names of the table's own, as `verb=name` pairs (comma-separated):
    /// `created=equipment_update,updated=equipment_update,deleted=equipment_deleted`.
    /// Verbs: created, updated, deleted, truncated, schema_changed; one left out keeps
    /// <prefix>_<verb>. Shown in `pgfeed.tracked`; kept when the table is tracked
    /// again without it (`SELECT pgfeed.name_events('t', '{}')` restores the defaults).
    #[arg(long, value_delimiter = ',', conflicts_with = "preset")]
    pub event_names: Vec<String>,

    /// Track a known set of tables: whichever of them exist.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
}

#[derive(Debug, Clone, Args)]
pub struct UntrackArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The table to stop tracking.
    pub table: String,
}

#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Print the SQL instead of running it.
    #[arg(long)]
    pub print: bool,
}

/// `pgfeed migrate`: applies (or lists, or prints) pgfeed's migrations.
pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let database = args.database.open().await?;
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
            super::demo(&pool).await?
        } else {
            super::migrate(&pool, args.demo_schema).await?
        };
        if applied.is_empty() {
            println!("database is up to date; nothing to apply");
        }
        for m in applied {
            println!("applied {:<8} {:>4}  {}", m.set, m.version, m.description);
        }
        if super::tracked_count(&pool).await? == 0 {
            println!(
                "nothing is tracked yet: run `pgfeed track --preset pearl` or `pgfeed track <table> --prefix <name>`"
            );
        }
    }
    pool.close().await;
    Ok(())
}

/// `pgfeed track`: one table with its prefix, or a preset's tables.
pub async fn track(args: TrackArgs) -> Result<()> {
    let database = args.database.open().await?;
    let pool = db::pool(&database.url, 2).await?;
    super::migrate(&pool, false).await?;
    match (args.preset, args.table, args.prefix) {
        (Some(Preset::Pearl), _, _) => {
            let report = super::track_preset(&pool).await?;
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
            let names = event_names(&args.event_names)?;
            super::track(&pool, &table, &prefix, &args.exclude).await?;
            if names.is_empty() {
                println!("tracked {table} as {prefix}_*");
            } else {
                super::name_events(&pool, &table, &names).await?;
                let named: Vec<String> = names.iter().map(|(verb, name)| format!("{verb} as {name}")).collect();
                println!("tracked {table} as {prefix}_*, naming {}", named.join(", "));
            }
        }
        _ => bail!("name a table and --prefix, or --preset pearl"),
    }
    pool.close().await;
    Ok(())
}

/// `verb=name` pairs, checked by `pgfeed.name_events`.
fn event_names(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((verb, name)) if !verb.trim().is_empty() && !name.trim().is_empty() => {
                Ok((verb.trim().to_string(), name.trim().to_string()))
            }
            _ => bail!("--event-names takes verb=name pairs, like created=equipment_update; got `{pair}`"),
        })
        .collect()
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pgfeed status`: every tracked table with its capture trigger's state, and
/// where the log and the sequencer stand. Fails (exit 1) when capture is off
/// for any tracked table.
pub async fn status(args: StatusArgs) -> Result<()> {
    let database = args.database.open().await?;
    let pool = db::pool(&database.url, 2).await?;
    let status = super::status::read(&pool).await?;
    pool.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!(
            "{:<32} {:<24} {:<13} {:>10}  excluded",
            "table", "prefix", "capture", "log rows"
        );
        for t in &status.tables {
            println!(
                "{:<32} {:<24} {:<13} {:>10}  {}",
                t.table,
                t.prefix,
                t.trigger,
                t.log_rows,
                t.exclude.join(", ")
            );
        }
        println!(
            "head {}; resumable after {}; oldest unsequenced transaction waiting {} ms; leader: {}; followers: {}; notification queue {:.1}% full",
            status.head,
            status.oldest_seq,
            status.unsequenced_age_ms,
            if status.leader { "yes" } else { "none" },
            status.followers,
            status.notification_queue_usage * 100.0
        );
    }
    let off = status.capture_off();
    if !off.is_empty() {
        bail!(
            "capture is off for {}: their writes never reach the feed",
            off.join(", ")
        );
    }
    Ok(())
}

/// `pgfeed untrack`: removes one table's capture trigger.
pub async fn untrack(args: UntrackArgs) -> Result<()> {
    let database = args.database.open().await?;
    let pool = db::pool(&database.url, 2).await?;
    match super::untrack(&pool, &args.table).await? {
        super::Untracked::Untracked => println!("untracked {}", args.table),
        super::Untracked::NoSuchTable => println!("{} does not exist; nothing is tracked under that name", args.table),
    }
    pool.close().await;
    Ok(())
}

/// `pgfeed uninstall`: every capture trigger and schema pgfeed, or their SQL.
pub async fn uninstall(args: UninstallArgs) -> Result<()> {
    if args.print {
        print!("{}", super::UNINSTALL_SQL);
        return Ok(());
    }
    let database = args.database.open().await?;
    let pool = db::pool(&database.url, 2).await?;
    let tracked = super::uninstall(&pool).await?;
    for table in tracked {
        println!("removed the capture triggers of {table}");
    }
    println!("removed schema pgfeed");
    pool.close().await;
    Ok(())
}
