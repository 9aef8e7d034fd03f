//! What a DBA runs: install pgfeed's schema, choose what is tracked, remove it all.
//!
//! pgfeed attaches to a database that already exists. It installs only schema
//! `pgfeed`; application tables get nothing but the capture triggers
//! `pgfeed.track` attaches, and `uninstall` takes those away again.

pub mod commands;
pub mod status;

use anyhow::{Context, Result};
use sqlx::PgPool;

use crate::db::migrate::{MigrationStatus, CAPTURE, DEMO};
use crate::feed::pearl;

/// Applies the capture schema, and PEARL's demo schema first when `demo` is set
/// (it refuses to run over existing tables). Returns what it applied.
pub async fn migrate(pool: &PgPool, demo: bool) -> Result<Vec<MigrationStatus>> {
    let mut applied = Vec::new();
    if demo {
        applied.extend(DEMO.apply(pool).await?);
    }
    applied.extend(CAPTURE.apply(pool).await?);
    Ok(applied)
}

/// The embedded cluster's database: PEARL's schema, pgfeed's, and the PEARL
/// preset tracked when the demo tables are first created. Returns what it applied.
pub async fn demo(pool: &PgPool) -> Result<Vec<MigrationStatus>> {
    let applied = migrate(pool, true).await?;
    if applied.iter().any(|m| m.set == DEMO.name) {
        track_preset(pool).await?;
    }
    Ok(applied)
}

/// What `track --preset pearl` did.
#[derive(Debug, Default)]
pub struct PresetReport {
    /// (table, prefix, columns left out)
    pub tracked: Vec<(String, String, Vec<String>)>,
    /// PEARL tables this database does not have.
    pub missing: Vec<String>,
}

/// Tracks whichever PEARL tables exist in `public`, with the seed prefixes and
/// the preset's excluded columns (those the table has).
pub async fn track_preset(pool: &PgPool) -> Result<PresetReport> {
    let mut report = PresetReport::default();
    for preset in pearl::PRESET {
        let relation = format!("public.{}", preset.table);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&relation)
            .fetch_one(pool)
            .await?;
        if !exists {
            report.missing.push(preset.table.to_string());
            continue;
        }
        let exclude: Vec<String> = sqlx::query_scalar(
            "SELECT x FROM unnest($2::text[]) WITH ORDINALITY AS wanted(x, n)
              WHERE EXISTS (SELECT 1 FROM pg_attribute
                             WHERE attrelid = $1::regclass AND attname = x AND attnum > 0 AND NOT attisdropped)
              ORDER BY n",
        )
        .bind(&relation)
        .bind(preset.exclude)
        .fetch_all(pool)
        .await?;
        track(pool, &relation, preset.prefix, &exclude).await?;
        report
            .tracked
            .push((preset.table.to_string(), preset.prefix.to_string(), exclude));
    }
    Ok(report)
}

/// Tracks `table` (as SQL names it: `studies`, `lab.equipment`) with event `prefix`,
/// leaving out the columns in `exclude`. Again on a tracked table: changes both.
pub async fn track(pool: &PgPool, table: &str, prefix: &str, exclude: &[String]) -> Result<()> {
    sqlx::query("SELECT pgfeed.track($1::regclass, $2, $3)")
        .bind(table)
        .bind(prefix)
        .bind(exclude)
        .execute(pool)
        .await
        .with_context(|| format!("tracking {table}"))?;
    Ok(())
}

/// Names the events of tracked `table` (verb → name); none: `<prefix>_<verb>` for all.
pub async fn name_events(pool: &PgPool, table: &str, names: &[(String, String)]) -> Result<()> {
    let names: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|(verb, name)| (verb.clone(), name.clone().into()))
        .collect();
    sqlx::query("SELECT pgfeed.name_events($1::regclass, $2)")
        .bind(table)
        .bind(sqlx::types::Json(names))
        .execute(pool)
        .await
        .with_context(|| format!("naming the events of {table}"))?;
    Ok(())
}

/// Stops tracking `table`; its past events stay in the log until pruned. A
/// table that no longer exists is not tracked (dropping it untracked it):
/// there is nothing to do, and that is not an error.
pub async fn untrack(pool: &PgPool, table: &str) -> Result<Untracked> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .with_context(|| format!("looking up {table}"))?;
    if !exists {
        return Ok(Untracked::NoSuchTable);
    }
    sqlx::query("SELECT pgfeed.untrack($1::regclass)")
        .bind(table)
        .execute(pool)
        .await
        .with_context(|| format!("untracking {table}"))?;
    Ok(Untracked::Untracked)
}

/// What `untrack` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untracked {
    Untracked,
    /// The table does not exist (any more): nothing is tracked under its name.
    NoSuchTable,
}

/// How many tables are tracked (0 before the capture schema is installed).
pub async fn tracked_count(pool: &PgPool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CASE WHEN to_regclass('pgfeed.tracked_tables') IS NULL THEN 0
                     ELSE (SELECT count(*) FROM pgfeed.tracked_tables) END",
    )
    .fetch_one(pool)
    .await?)
}

/// Everything pgfeed ever installed, removed in one transaction: every trigger
/// whose function lives in schema `pgfeed` (tracked tables' capture triggers),
/// then the schema itself (log, commit positions, functions, migration
/// history). Application tables, their rows and constraints stay as they were.
pub const UNINSTALL_SQL: &str = r#"BEGIN;
DO $$
DECLARE
    trig record;
BEGIN
    FOR trig IN SELECT t.tgname, t.tgrelid::regclass AS target
                  FROM pg_catalog.pg_trigger t
                  JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
                  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
                 WHERE n.nspname = 'pgfeed' AND c.relnamespace <> n.oid
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trig.tgname, trig.target);
    END LOOP;
END;
$$;
DROP EVENT TRIGGER IF EXISTS pgfeed_forget_dropped;
DROP EVENT TRIGGER IF EXISTS pgfeed_follow_ddl;
DROP SCHEMA IF EXISTS pgfeed CASCADE;
COMMIT;
"#;

/// Runs [`UNINSTALL_SQL`]; returns the tables that were tracked.
pub async fn uninstall(pool: &PgPool) -> Result<Vec<String>> {
    let tracked: Vec<String> = if tracked_count(pool).await? > 0 {
        sqlx::query_scalar("SELECT table_name FROM pgfeed.tracked")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    sqlx::raw_sql(UNINSTALL_SQL)
        .execute(pool)
        .await
        .context("removing pgfeed (run `pgfeed uninstall` as the owner of schema pgfeed and the tracked tables)")?;
    Ok(tracked)
}
