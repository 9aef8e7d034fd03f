//! pgfeed's own migrations: plain SQL files in `migrations/`, compiled in, with
//! their history kept inside schema `pgfeed` (`pgfeed.migrations`), never in an
//! application's `public._sqlx_migrations`.
//!
//! Two sets: `capture` (schema `pgfeed`: what `migrate` and `serve` install into
//! any database) and `demo` (PEARL's schema, for the embedded cluster or on
//! request, never over existing tables).

use anyhow::{bail, Context, Result};
use sqlx::{Connection, PgConnection, PgPool};

/// One migration file.
#[derive(Debug)]
pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// An ordered set of migrations with its own history.
#[derive(Debug)]
pub struct MigrationSet {
    /// `capture` or `demo`: the key of its rows in `pgfeed.migrations`.
    pub name: &'static str,
    pub migrations: &'static [Migration],
}

/// Schema `pgfeed`: the log, commit positions, capture, `track`/`untrack`, retention.
pub static CAPTURE: MigrationSet = MigrationSet {
    name: "capture",
    migrations: &[
        Migration {
            version: 1,
            description: "pgfeed capture schema",
            sql: include_str!("../../migrations/capture/0001_pgfeed_capture.sql"),
        },
        Migration {
            version: 2,
            description: "commit positions assigned after commit",
            sql: include_str!("../../migrations/capture/0002_post_commit_sequencer.sql"),
        },
        Migration {
            version: 3,
            description: "a tick finds its transactions by the log's index",
            sql: include_str!("../../migrations/capture/0003_tick_by_the_log_index.sql"),
        },
        Migration {
            version: 4,
            description: "a tick announces its head only to followers",
            sql: include_str!("../../migrations/capture/0004_announce_to_followers.sql"),
        },
        Migration {
            version: 5,
            description: "a tick and a page of the log keep their plans",
            sql: include_str!("../../migrations/capture/0005_plans_kept.sql"),
        },
        Migration {
            version: 6,
            description: "a tick numbers transactions by their commit stamps",
            sql: include_str!("../../migrations/capture/0006_commit_stamps.sql"),
        },
        Migration {
            version: 7,
            description: "positions name their history; a log from another cluster is adopted",
            sql: include_str!("../../migrations/capture/0007_positions_name_their_history.sql"),
        },
        Migration {
            version: 8,
            description: "a stalled sequencer is seen, and its leader fenced",
            sql: include_str!("../../migrations/capture/0008_stalls_are_seen.sql"),
        },
        Migration {
            version: 9,
            description: "a dropped tracked table is untracked",
            sql: include_str!("../../migrations/capture/0009_dropped_tables_are_untracked.sql"),
        },
        Migration {
            version: 10,
            description: "capture fires in replica mode too, and its state is visible",
            sql: include_str!("../../migrations/capture/0010_capture_state_is_visible.sql"),
        },
        Migration {
            version: 11,
            description: "schema changes are events; renames are followed; partitions are captured",
            sql: include_str!("../../migrations/capture/0011_schema_changes_are_events.sql"),
        },
        Migration {
            version: 12,
            description: "the log rotates: retention drops whole units",
            sql: include_str!("../../migrations/capture/0012_the_log_rotates.sql"),
        },
        Migration {
            version: 13,
            description: "event names of a table's own",
            sql: include_str!("../../migrations/capture/0013_event_names_of_ones_own.sql"),
        },
        Migration {
            version: 14,
            description: "a unit is attached under the log's own lock",
            sql: include_str!("../../migrations/capture/0014_units_attach_under_the_logs_lock.sql"),
        },
        Migration {
            version: 15,
            description: "pgfeed's reads do not grow with the log, and are never JIT-compiled",
            sql: include_str!("../../migrations/capture/0015_reads_that_do_not_grow_with_the_log.sql"),
        },
        Migration {
            version: 16,
            description: "a tick reads the log only through its indexes, sets up only the scans it runs, and adopts a foreign log once",
            sql: include_str!("../../migrations/capture/0016_ticks_read_by_index.sql"),
        },
    ],
};

/// PEARL's tables, as its own models create them.
pub static DEMO: MigrationSet = MigrationSet {
    name: "demo",
    migrations: &[Migration {
        version: 1,
        description: "PEARL demo schema",
        sql: include_str!("../../migrations/demo/0001_pearl_schema.sql"),
    }],
};

/// The tables the demo creates, so it can refuse to run over existing ones:
/// read from its own SQL, so the list is never written twice.
fn demo_tables() -> Vec<&'static str> {
    DEMO.migrations
        .iter()
        .flat_map(|m| m.sql.lines())
        .filter_map(|line| line.strip_prefix("CREATE TABLE public."))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

/// Creates what the history needs. Inside schema `pgfeed` only.
const BOOTSTRAP: &str = "CREATE SCHEMA IF NOT EXISTS pgfeed;
CREATE TABLE IF NOT EXISTS pgfeed.migrations (
    set_name     text NOT NULL,
    version      integer NOT NULL,
    description  text NOT NULL,
    checksum     text NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (set_name, version)
);";

/// Serializes concurrent `migrate` runs (two servers starting at once).
const MIGRATE_LOCK: i64 = 0x0070_6766_6565_646d; // 'pgfeedm' in ASCII

/// One migration and whether the database has it.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    pub set: &'static str,
    pub version: i32,
    pub description: &'static str,
    pub applied: bool,
    /// Applied from a file that has changed since (a shipped migration was edited).
    pub changed: bool,
}

impl Migration {
    /// FNV-1a of the file: tells an edited migration from the one applied.
    pub fn checksum(&self) -> String {
        let hash = self.sql.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

impl MigrationSet {
    /// Every migration of the set and whether it is applied. Reads only, so a
    /// role without CREATE can ask.
    pub async fn status(&self, pool: &PgPool) -> Result<Vec<MigrationStatus>> {
        self.status_on(&mut *pool.acquire().await?).await
    }

    async fn status_on(&self, conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
        let has_history: bool = sqlx::query_scalar("SELECT to_regclass('pgfeed.migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
        let applied: Vec<(i32, String)> = if has_history {
            sqlx::query_as("SELECT version, checksum FROM pgfeed.migrations WHERE set_name = $1")
                .bind(self.name)
                .fetch_all(&mut *conn)
                .await?
        } else {
            Vec::new()
        };
        Ok(self
            .migrations
            .iter()
            .map(|m| {
                let found = applied.iter().find(|(v, _)| *v == m.version);
                MigrationStatus {
                    set: self.name,
                    version: m.version,
                    description: m.description,
                    applied: found.is_some(),
                    changed: found.is_some_and(|(_, sum)| *sum != m.checksum()),
                }
            })
            .collect())
    }

    /// Applies the pending migrations, each in its own transaction with its
    /// history row; returns what it applied. Does nothing, and needs no
    /// privilege beyond reading, when the database is up to date.
    pub async fn apply(&self, pool: &PgPool) -> Result<Vec<MigrationStatus>> {
        let mut conn = pool.acquire().await?;
        if self.status_on(&mut conn).await?.iter().all(|m| m.applied) {
            return Ok(Vec::new());
        }
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await?;
        let result = self.apply_locked(&mut conn).await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await?;
        result
    }

    async fn apply_locked(&self, conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
        // Another instance may have applied them while we waited for the lock.
        let pending: Vec<MigrationStatus> = self.status_on(conn).await?.into_iter().filter(|m| !m.applied).collect();
        if pending.is_empty() {
            return Ok(pending);
        }
        if self.name == DEMO.name {
            refuse_existing_tables(conn).await?;
        }
        sqlx::raw_sql(BOOTSTRAP)
            .execute(&mut *conn)
            .await
            .context("creating schema pgfeed (run `pgfeed migrate` as a role that may create schemas)")?;
        for status in &pending {
            let migration = self
                .migrations
                .iter()
                .find(|m| m.version == status.version)
                .expect("status lists only this set's migrations");
            let mut tx = conn.begin().await?;
            sqlx::raw_sql(migration.sql)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("applying {} migration {}", self.name, migration.version))?;
            sqlx::query(
                "INSERT INTO pgfeed.migrations (set_name, version, description, checksum) VALUES ($1, $2, $3, $4)",
            )
            .bind(self.name)
            .bind(migration.version)
            .bind(migration.description)
            .bind(migration.checksum())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(pending
            .into_iter()
            .map(|m| MigrationStatus { applied: true, ..m })
            .collect())
    }

    /// The SQL `apply` would run for the pending migrations, history rows
    /// included, for a DBA to apply with their own tools.
    pub async fn print(&self, pool: &PgPool) -> Result<String> {
        let mut out = String::new();
        for status in self.status(pool).await?.iter().filter(|m| !m.applied) {
            let m = self
                .migrations
                .iter()
                .find(|m| m.version == status.version)
                .expect("status lists only this set's migrations");
            if out.is_empty() {
                out.push_str(&format!("-- pgfeed's migration history\n{BOOTSTRAP}\n\n"));
            }
            out.push_str(&format!(
                "-- {} migration {}: {}\nBEGIN;\n{}\nINSERT INTO pgfeed.migrations (set_name, version, description, checksum)\n    VALUES ('{}', {}, '{}', '{}');\nCOMMIT;\n\n",
                self.name,
                m.version,
                m.description,
                m.sql.trim_end(),
                self.name,
                m.version,
                m.description.replace('\'', "''"),
                m.checksum()
            ));
        }
        Ok(out)
    }
}

/// The demo is for empty databases: it never runs over an application's tables.
async fn refuse_existing_tables(conn: &mut PgConnection) -> Result<()> {
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT t FROM unnest($1::text[]) t WHERE to_regclass(format('public.%I', t)) IS NOT NULL")
            .bind(demo_tables())
            .fetch_all(&mut *conn)
            .await?;
    if !existing.is_empty() {
        bail!(
            "the demo schema was not applied: this database already has {} (the demo is for empty databases; \
             to feed an existing PEARL database run `pgfeed migrate` and `pgfeed track --preset pearl`)",
            existing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_names_the_tables_it_creates() {
        let tables = super::demo_tables();
        assert_eq!(tables.len(), 10);
        assert!(tables.contains(&"users") && tables.contains(&"reporting_effort_item_tracker"));
    }
}
