//! Retention: trimming the log by dropping whole units (migrations/capture/0012)
//! beside trimming it row by row with DELETE (the release before it, whose
//! migrations this scenario installs in a database of its own), in the same run:
//!
//! - the time and the WAL to trim a log of N million rows (and, for DELETE,
//!   the vacuum that follows it; a dropped unit leaves nothing to vacuum);
//! - the writers' transactions per second while retention runs every 200 ms,
//!   with a server sequencing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use pgfeed::db::migrate::{MigrationSet, CAPTURE};

use super::peer::Peer;
use super::{write, Figure, Setup};

/// The release before rotation: capture migrations 1 to 11.
static DELETE_RELEASE: MigrationSet = MigrationSet {
    name: "capture",
    migrations: CAPTURE.migrations.split_at(11).0,
};

/// Rows per transaction while filling the log.
const ROWS_PER_TX: i64 = 1000;

/// One way of trimming: a database with the bench table tracked.
struct Log {
    name: &'static str,
    pool: PgPool,
    url: String,
    rotates: bool,
}

pub async fn run(setup: &Setup, million_rows: f64) -> Result<Vec<Figure>> {
    // Both fresh, side by side: the bench database's units are sized for
    // whatever ran before.
    let logs = [
        Log::install(setup, "rotation", &CAPTURE).await?,
        Log::install(setup, "DELETE", &DELETE_RELEASE).await?,
    ];
    let rows = (million_rows * 1e6) as i64;
    let mut trims = Vec::new();
    for log in &logs {
        trims.push(
            trim(log, rows)
                .await
                .with_context(|| format!("trimming by {}", log.name))?,
        );
    }
    let mut rates = vec![Vec::new(); logs.len()];
    for _ in 0..setup.rounds {
        for (i, log) in logs.iter().enumerate() {
            rates[i].push(write_while_pruning(log, setup).await?);
        }
    }
    for log in &logs {
        log.pool.close().await;
    }

    let (rotated, deleted) = (&trims[0], &trims[1]);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let runs = |v: &[f64]| v.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ");
    let millions = rows as f64 / 1e6;
    Ok(vec![
        Figure::versus(
            "retain",
            format!("s to trim {millions:.1} M rows: rotation vs DELETE"),
            rotated.seconds,
            deleted.seconds,
            "report",
        ),
        Figure::versus(
            "retain",
            format!("WAL MB to trim {millions:.1} M rows: rotation vs DELETE"),
            rotated.wal_bytes / 1e6,
            deleted.wal_bytes / 1e6,
            "report",
        ),
        Figure::alone(
            "retain",
            "s of the vacuum after DELETE (rotation: nothing to vacuum)".into(),
            deleted.vacuum_seconds,
            "report",
        ),
        Figure::alone(
            "retain",
            "WAL MB of the vacuum after DELETE".into(),
            deleted.vacuum_wal_bytes / 1e6,
            "report",
        ),
        Figure::versus(
            "retain",
            format!(
                "tx/s while pruning every 200 ms: rotation vs DELETE ({} | {})",
                runs(&rates[0]),
                runs(&rates[1])
            ),
            mean(&rates[0]),
            mean(&rates[1]),
            ">= 1.0",
        ),
    ])
}

impl Log {
    /// A database of its own beside the bench database, with `migrations`
    /// and the bench table tracked.
    async fn install(setup: &Setup, name: &'static str, migrations: &MigrationSet) -> Result<Log> {
        let database = format!("pgfeed_bench_{}", name.to_lowercase());
        let url = sibling_database(&setup.url, &database).await?;
        let pool = PgPoolOptions::new()
            .max_connections(setup.writers as u32 + 4)
            .connect(&url)
            .await?;
        migrations.apply(&pool).await?;
        sqlx::raw_sql(
            "CREATE TABLE bench_tracked (id bigserial PRIMARY KEY, label text NOT NULL, n integer NOT NULL DEFAULT 0,
                                         updated_at timestamptz NOT NULL DEFAULT now());
             SELECT pgfeed.track('bench_tracked', 'bench');",
        )
        .execute(&pool)
        .await?;
        Ok(Log {
            name,
            pool,
            url,
            rotates: migrations.migrations.len() == CAPTURE.migrations.len(),
        })
    }
}

/// A database beside the bench database, made anew.
async fn sibling_database(url: &str, name: &str) -> Result<String> {
    let admin = PgPoolOptions::new().max_connections(1).connect(url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
        .execute(&admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
    admin.close().await;
    Ok(format!("{}/{name}", url.rsplit_once('/').context("a database URL")?.0))
}

struct Trim {
    seconds: f64,
    wal_bytes: f64,
    vacuum_seconds: f64,
    vacuum_wal_bytes: f64,
}

/// Fills the log with `rows` rows, ages all of it past retention, and trims it.
async fn trim(log: &Log, rows: i64) -> Result<Trim> {
    let pool = &log.pool;
    let transactions = (rows / ROWS_PER_TX).max(1);
    if log.rotates {
        // About ten units for the whole log.
        let width = (transactions / 5).max(8);
        sqlx::query("UPDATE pgfeed.rotation SET min_width = $1, max_width = $1")
            .bind(width)
            .execute(pool)
            .await?;
        spend_ids(pool).await?;
    }
    for done in 0..transactions {
        sqlx::query("INSERT INTO bench_tracked (label) SELECT 'row ' || g FROM generate_series(1, $1) g")
            .bind(ROWS_PER_TX)
            .execute(pool)
            .await?;
        if done % 16 == 15 {
            pgfeed::feed::log::ticked_snapshot(pool).await?.commit().await?;
            if log.rotates {
                sqlx::query("SELECT pgfeed.prune(interval '1 day')")
                    .execute(pool)
                    .await?;
            }
        }
    }
    if log.rotates {
        // Past the newest unit, so that every unit holding rows is finished.
        spend_ids(pool).await?;
        settle(pool).await?;
    }
    pgfeed::feed::log::ticked_snapshot(pool).await?.commit().await?;
    sqlx::query("UPDATE pgfeed.commits SET committed_at = committed_at - interval '2 days'")
        .execute(pool)
        .await?;
    sqlx::query("CHECKPOINT").execute(pool).await?;
    let (seconds, wal_bytes) = timed_wal(pool, "SELECT pgfeed.prune(interval '1 day')").await?;
    let (vacuum_seconds, vacuum_wal_bytes) = timed_wal(pool, "VACUUM pgfeed.events").await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pgfeed.events")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(left < ROWS_PER_TX, "{} left {left} rows in the log", log.name);
    Ok(Trim {
        seconds,
        wal_bytes,
        vacuum_seconds,
        vacuum_wal_bytes,
    })
}

/// Waits until every transaction of the cluster that began before now has
/// ended. `prune` drops only units below the oldest running transaction (the
/// commit times here are moved back two days, so every row counts as old);
/// one open anywhere in the cluster (another scenario's, a DBA's) left the
/// newest unit to step 2, row by row: 1.8 s and 226 MB of WAL in one full
/// run, against 0.2 s and 0.5 MB.
async fn settle(pool: &PgPool) -> Result<()> {
    let now: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(pool)
        .await?;
    for _ in 0..600 {
        let oldest: i64 = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
        if oldest > now {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("retention: a transaction open elsewhere in the cluster for 60 s; the trim is timed with it");
    Ok(())
}

/// Spends the transaction ids left in the newest unit, then makes the next.
async fn spend_ids(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bench_spent_ids (n int);
         DO $$ DECLARE remaining bigint := (SELECT max(hi::text::bigint) FROM pgfeed.log_units)
                                      - pg_current_xact_id()::text::bigint;
         BEGIN FOR i IN 0..remaining LOOP
             BEGIN INSERT INTO bench_spent_ids VALUES (i); EXCEPTION WHEN others THEN NULL; END;
         END LOOP; END $$;",
    )
    .execute(pool)
    .await?;
    pgfeed::feed::log::ticked_snapshot(pool).await?.commit().await?;
    sqlx::query("SELECT pgfeed.prune(interval '1 day')")
        .execute(pool)
        .await?;
    Ok(())
}

/// Seconds and WAL bytes of one statement.
async fn timed_wal(pool: &PgPool, sql: &str) -> Result<(f64, f64)> {
    let mut conn = pool.acquire().await?;
    let before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut *conn)
        .await?;
    let started = Instant::now();
    sqlx::query(sql).execute(&mut *conn).await?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes: f64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
        .bind(before)
        .fetch_one(&mut *conn)
        .await?;
    Ok((seconds, bytes))
}

/// The writers' rate on the tracked table while a pruner keeps a quarter of the
/// span and runs every 200 ms, a server sequencing.
async fn write_while_pruning(log: &Log, setup: &Setup) -> Result<f64> {
    if log.rotates {
        sqlx::query("UPDATE pgfeed.rotation SET min_width = DEFAULT, max_width = DEFAULT")
            .execute(&log.pool)
            .await?;
    }
    let server = Peer::pgfeed_with(&log.url, 0, &[("PGFEED_NO_MIGRATE", "true")]).await?;
    let keep = setup.span.as_secs_f64() / 4.0;
    let stop = Arc::new(AtomicBool::new(false));
    let pruner = {
        let (pool, stop) = (log.pool.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                sqlx::query("SELECT pgfeed.prune(make_interval(secs => $1))")
                    .bind(keep)
                    .execute(&pool)
                    .await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        })
    };
    let rate = write::measure(&log.pool, "tracked", setup.writers, setup.span).await?;
    stop.store(true, Ordering::Relaxed);
    pruner.await??;
    drop(server);
    Ok(rate)
}
