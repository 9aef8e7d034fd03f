//! A fresh migrated database per test, ticks, and raw notifications.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

use super::*;

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A database like the embedded demo's: PEARL's tables, pgfeed installed, the preset tracked.
    pub async fn new() -> TestDb {
        TestDb::from_template(TEMPLATE).await
    }

    /// An application's database before pgfeed: PEARL's tables and nothing else.
    pub async fn pearl_app() -> TestDb {
        TestDb::from_template(APP_TEMPLATE).await
    }

    async fn from_template(template: &str) -> TestDb {
        let shared = shared();
        let name = format!("test_{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&shared.admin_url)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", shared.admin_url.rsplit_once('/').unwrap().0);
        let pool = PgPoolOptions::new().max_connections(20).connect(&url).await.unwrap();
        TestDb { name, url, pool }
    }

    /// Runs SQL as a writer would (a plain connection, simple-query protocol).
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT ({sql})::bigint"))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Gives committed transactions their seqs, as a running server's listener
    /// does (tests without a server tick by hand); returns the head.
    pub async fn tick(&self) -> i64 {
        tick(&self.pool).await
    }

    /// The log as a sequencer makes it: ticks, then the rows after the last
    /// one returned, each with its `seq`, `tx_size` and `tx_index`.
    pub async fn listen(&self) -> Notifications {
        Notifications {
            pool: self.pool.clone(),
            after: self.tick().await,
            ready: Default::default(),
        }
    }

    /// A LISTEN on channel pgfeed, as a raw client would.
    /// A session LISTENing on channel pgfeed as a follower does: sharing
    /// (pgfe, 3), so ticks announce their heads to it.
    pub async fn raw_listener(&self) -> PgListener {
        let mut listener = PgListener::connect(&self.url).await.unwrap();
        listener.listen("pgfeed").await.unwrap();
        sqlx::query("SELECT pg_advisory_lock_shared(1885824613, 3)")
            .execute(&mut listener)
            .await
            .unwrap();
        listener
    }

    pub async fn server(&self) -> Running {
        self.server_with(Settings::default()).await
    }

    pub async fn server_with(&self, settings: Settings) -> Running {
        let running = server::start(&self.url, settings).await.expect("starting the server");
        wait_ready(&running).await;
        running
    }
}

/// Waits until the server's listener is connected and caught up.
pub async fn wait_ready(running: &Running) {
    let url = format!("http://{}/readyz", running.addr);
    for _ in 0..500 {
        if running.state.ready.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server at {url} never became ready");
}

/// One tick on `pool` (see `TestDb::tick`).
pub async fn tick(pool: &PgPool) -> i64 {
    let mut tx = pgfeed::feed::log::ticked_snapshot(pool).await.expect("tick");
    let head: i64 = sqlx::query_scalar("SELECT pgfeed.head()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    head
}

pub struct Notifications {
    pool: PgPool,
    /// The last seq returned.
    after: i64,
    /// Rows read, not yet returned.
    ready: std::collections::VecDeque<Value>,
}

impl Notifications {
    /// The next logged row in seq order; None after `wait` with nothing new.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.ready.is_empty() {
            tick(&self.pool).await;
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT json_build_object('seq', c.seq, 'tx_size', c.size, 'id', e.id, 'table', e.table_name,
                                          'prefix', e.prefix, 'op', e.op, 'new', e.new, 'old', e.old, 'actor', e.actor,
                                          'tx_index', row_number() OVER (PARTITION BY c.seq ORDER BY e.id) - 1)::text
                   FROM pgfeed.commits c JOIN pgfeed.events e USING (tx)
                  WHERE c.seq > $1 ORDER BY c.seq, e.id",
            )
            .bind(self.after)
            .fetch_all(&self.pool)
            .await
            .unwrap();
            for row in rows {
                let row: Value = serde_json::from_str(&row).unwrap();
                self.after = self.after.max(row["seq"].as_i64().unwrap());
                self.ready.push_back(row);
            }
            if self.ready.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.ready.pop_front()
    }

    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("nothing logged within 10 s")
    }

    /// Every row until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut all = Vec::new();
        while let Some(n) = self.next_within(quiet).await {
            all.push(n);
        }
        all
    }
}
