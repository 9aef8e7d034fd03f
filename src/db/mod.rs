//! The database side: connection pools, the embedded cluster, migrations, and
//! the reads of the pgfeed log that every other module shares.

pub mod embedded;
pub mod log;

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// The SQL in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// `application_name` of every pgfeed connection except the listener's.
pub const APPLICATION_NAME: &str = "pgfeed";
/// `application_name` of the LISTEN connection, so a DBA can find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "pgfeed-listener";
/// `application_name` of the listener's own connection for log reads.
pub const LOG_READER_APPLICATION_NAME: &str = "pgfeed-log-reader";

/// Connection options for `url`, named so a DBA can tell pgfeed's sessions apart.
pub fn connect_options(url: &str, application_name: &str) -> Result<PgConnectOptions> {
    let options: PgConnectOptions = url.parse().context("parsing DATABASE_URL")?;
    Ok(options.application_name(application_name))
}

/// The pool for snapshots, log reads and pruning.
pub async fn pool(url: &str, max_connections: u32) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(url, APPLICATION_NAME)?)
        .await
        .context("connecting to Postgres")
}

/// Creates database `name` on the server of `admin_url` unless it exists.
pub async fn create_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect_with(&connect_options(admin_url, APPLICATION_NAME)?).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

/// One migration and whether it has been applied.
#[derive(Debug, Clone)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// Lists every migration in `migrations/` and whether the database has it.
pub async fn migration_status(pool: &PgPool) -> Result<Vec<MigrationStatus>> {
    let table_exists: bool = sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if table_exists {
        sqlx::query_scalar("SELECT version FROM public._sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(MIGRATOR
        .iter()
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// Applies pending migrations; returns the ones it applied (empty when up to date).
pub async fn migrate(pool: &PgPool) -> Result<Vec<MigrationStatus>> {
    let before = migration_status(pool).await?;
    MIGRATOR.run(pool).await.context("applying migrations")?;
    let after = migration_status(pool).await?;
    Ok(after
        .into_iter()
        .zip(before)
        .filter(|(now, was)| now.applied && !was.applied)
        .map(|(now, _)| now)
        .collect())
}
