//! The database side, infrastructure only: connection pools, the embedded
//! cluster, pgfeed's migrations. Nothing here knows about the feed.

pub mod embedded;
pub mod migrate;

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// `application_name` of every pgfeed connection except the listener's.
pub const APPLICATION_NAME: &str = "pgfeed";
/// `application_name` of the LISTEN connection, so a DBA can find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "pgfeed-listener";
/// `application_name` of the listener's own connection for log reads.
pub const LOG_READER_APPLICATION_NAME: &str = "pgfeed-log-reader";

/// Connection options for `url`, named so a DBA can tell pgfeed's sessions apart.
/// Rows read from a table or column a later migration adds, on an installation
/// that does not have it yet (a server run with `--no-migrate`): none.
pub fn none_before_migration<T>(read: sqlx::Result<Vec<T>>) -> sqlx::Result<Vec<T>> {
    match read {
        // 42P01: undefined table; 42703: undefined column.
        Err(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("42P01" | "42703")) => Ok(Vec::new()),
        other => other,
    }
}

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

/// Where a command's database is: `DATABASE_URL`, or the embedded cluster.
pub struct Database {
    pub url: String,
    /// The private cluster when there is no `DATABASE_URL`; dropping it stops Postgres.
    pub cluster: Option<embedded::Cluster>,
}

impl Database {
    pub fn is_embedded(&self) -> bool {
        self.cluster.is_some()
    }
}

/// The database of `serve`, `migrate`, `track` and `uninstall`: `database_url`, or a
/// private durable cluster under `data_dir` with its database `pgfeed` created.
pub async fn resolve(database_url: Option<&str>, data_dir: &std::path::Path) -> Result<Database> {
    match database_url {
        Some(url) => Ok(Database {
            url: url.to_string(),
            cluster: None,
        }),
        None => {
            let cluster = embedded::Cluster::start(data_dir, embedded::Durability::Durable)?;
            create_database(&cluster.url("postgres"), EMBEDDED_DATABASE).await?;
            tracing::info!(data = %cluster.data_dir().display(), "started the embedded Postgres");
            Ok(Database {
                url: cluster.url(EMBEDDED_DATABASE),
                cluster: Some(cluster),
            })
        }
    }
}

impl crate::config::DatabaseArgs {
    /// The database these settings name: `DATABASE_URL`, or the embedded cluster.
    pub async fn open(&self) -> Result<Database> {
        resolve(self.database_url.as_deref(), &self.data_dir).await
    }
}

/// The database pgfeed creates in its embedded cluster.
pub const EMBEDDED_DATABASE: &str = "pgfeed";
