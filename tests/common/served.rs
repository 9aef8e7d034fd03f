//! `pgfeed serve` as a separate process, as a person runs it.
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

/// A `pgfeed serve` process on a free port, as a person would run it.
pub struct Served {
    pub child: tokio::process::Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// The `psql` command it printed (embedded Postgres only).
    pub psql: Option<String>,
}

impl Served {
    /// Runs the binary with `env` (`DATABASE_URL` unset unless given) and waits
    /// until it says where it listens.
    pub async fn spawn(env: &[(&str, &str)]) -> Served {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut psql = None;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("serve did not start within 60 s")
                .unwrap()
                .expect("serve exited");
            if line.contains("psql") {
                psql = Some(line.clone());
            }
            if let Some(rest) = line.strip_prefix("pgfeed listening on http://") {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                return Served { child, addr, psql };
            }
        }
    }
}
