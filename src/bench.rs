//! `pgfeed bench`: measures, never asserts. Reports each figure with its
//! reference from the same run (DESIGN §7).
//!
//! `write`: transactions per second of 8 writers (a transaction = one insert +
//! one update) on three copies of one table: untracked, with a bare per-row
//! `pg_notify` trigger (the at-most-once design of pg_eventserv and
//! postgres-websockets), and tracked by pgfeed. A connection LISTENs on both
//! channels throughout, as a server would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::db;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Postgres to measure on. Unset: a private cluster with default (durable) settings.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,

    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,

    /// Measurements per variant (the variants take turns).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

const VARIANTS: [(&str, &str); 3] = [
    ("plain", "no trigger"),
    ("bare_notify", "per-row pg_notify trigger"),
    ("tracked", "pgfeed.track"),
];

pub async fn run(args: BenchArgs) -> Result<()> {
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
        .max_connections(args.writers as u32 + 2)
        .connect(&bench_url)
        .await?;
    crate::install::migrate(&pool, false).await?;
    setup(&pool).await?;

    let settings: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync')",
    )
    .fetch_one(&pool)
    .await?;
    println!(
        "pgfeed bench write: {} writers, {} s x {} rounds per variant; Postgres {}, synchronous_commit={}, fsync={}; {} cores",
        args.writers,
        args.seconds,
        args.rounds,
        settings.0,
        settings.1,
        settings.2,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let drain = tokio::spawn(drain_notifications(bench_url.clone()));
    let mut results: Vec<(&str, Vec<f64>)> = VARIANTS.iter().map(|(name, _)| (*name, Vec::new())).collect();
    for _ in 0..args.rounds {
        for (i, (name, _)) in VARIANTS.iter().enumerate() {
            let tps = measure(&pool, name, args.writers, Duration::from_secs(args.seconds)).await?;
            results[i].1.push(tps);
        }
    }
    drain.abort();

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for ((name, what), (_, runs)) in VARIANTS.iter().zip(&results) {
        let each: Vec<String> = runs.iter().map(|t| format!("{t:.0}")).collect();
        println!(
            "  {name:<12} {:>8.0} tx/s   ({what}; runs: {})",
            mean(runs),
            each.join(", ")
        );
    }
    let (plain, bare, tracked) = (mean(&results[0].1), mean(&results[1].1), mean(&results[2].1));
    println!("  tracked / bare_notify = {:.2}   (target >= 0.85)", tracked / bare);
    println!("  tracked / plain       = {:.2}", tracked / plain);
    pool.close().await;
    drop(database);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

async fn setup(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE bench_plain (id bigserial PRIMARY KEY, label text NOT NULL, n integer NOT NULL DEFAULT 0,
                                   updated_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE bench_bare_notify (LIKE bench_plain INCLUDING ALL);
         CREATE TABLE bench_tracked (LIKE bench_plain INCLUDING ALL);
         CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_notify('bench', json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
                                                          'row', row_to_json(COALESCE(NEW, OLD)))::text);
             RETURN NULL;
         END $$;
         CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE OR DELETE ON bench_bare_notify
             FOR EACH ROW EXECUTE FUNCTION bench_notify();
         SELECT pgfeed.track('bench_tracked', 'bench');",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn drain_notifications(url: String) -> Result<()> {
    let mut listener = PgListener::connect(&url).await?;
    listener.listen_all(["bench", "pgfeed"]).await?;
    loop {
        listener.recv().await?;
    }
}

/// Transactions per second of `writers` tasks on `bench_<variant>` for `span`.
async fn measure(pool: &PgPool, variant: &str, writers: usize, span: Duration) -> Result<f64> {
    let insert = format!("INSERT INTO bench_{variant} (label) VALUES ($1) RETURNING id");
    let update = format!("UPDATE bench_{variant} SET n = n + 1, updated_at = now() WHERE id = $1");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (pool, stop, done) = (pool.clone(), stop.clone(), done.clone());
            let (insert, update) = (insert.clone(), update.clone());
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    let id: i64 = sqlx::query_scalar(&insert)
                        .bind(format!("w{w}-{i}"))
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(&update).bind(id).execute(&mut *tx).await?;
                    tx.commit().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}
