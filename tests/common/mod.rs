//! Shared test harness: one private Postgres cluster per test binary, one fresh
//! migrated database per test (cloned from a migrated template), servers on
//! port 0 and real WebSocket clients.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

/// PEARL's schema, pgfeed installed, the PEARL preset tracked: what the embedded demo has.
const TEMPLATE: &str = "pgfeed_template";
/// PEARL's schema only, as the PEARL app's own database has it before pgfeed.
const APP_TEMPLATE: &str = "pearl_app_template";

/// Where the binary's cluster listens.
struct Shared {
    admin_url: String,
    template_ready: bool,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A folder for a test cluster; removes the folders of test runs that have ended.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix("pgfeed-test-") else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    root.join(format!("pgfeed-test-{}-{tag}", std::process::id()))
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // The cluster belongs to a thread that lives as long as the test binary:
        // Postgres is stopped by a parent-death signal when that thread ends.
        std::thread::spawn(move || {
            let cluster = embedded::Cluster::start(&scratch_dir("shared"), embedded::Durability::Throwaway)
                .expect("starting the test cluster");
            let admin_url = cluster.url("postgres");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                db::create_database(&admin_url, TEMPLATE)
                    .await
                    .expect("creating the template database");
                let pool = db::pool(&cluster.url(TEMPLATE), 1).await.unwrap();
                pgfeed::install::demo(&pool)
                    .await
                    .expect("migrating the template database");
                pool.close().await;
                db::create_database(&admin_url, APP_TEMPLATE)
                    .await
                    .expect("creating the application template database");
                let pool = db::pool(&cluster.url(APP_TEMPLATE), 1).await.unwrap();
                sqlx::raw_sql(db::migrate::DEMO.migrations[0].sql)
                    .execute(&pool)
                    .await
                    .expect("creating PEARL's schema");
                pool.close().await;
            });
            tx.send(admin_url).unwrap();
            loop {
                std::thread::park();
            }
        });
        let admin_url = rx.recv().expect("the test cluster thread failed; see the panic above");
        Shared {
            admin_url,
            template_ready: true,
        }
    })
}

pub mod clients;
mod database;
mod http;
mod log;
mod pearl;
mod proxy;
mod served;
mod writers;
mod ws;

pub use database::*;
pub use http::*;
pub use log::*;
pub use pearl::*;
pub use proxy::*;
pub use served::*;
pub use writers::*;
pub use ws::*;
