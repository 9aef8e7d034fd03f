//! The clients in other languages (`clients/`): their packages installed, and
//! their own test suites run against a server of the test's.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use pgfeed::server::Running;

use super::TestDb;

/// `clients/<name>` in this repository.
pub fn package(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients").join(name)
}

/// `npm ci` in `dir` unless its packages are there (`.ci/run` installs them first).
pub fn npm_ci(dir: &Path) {
    // One install at a time: a binary's tests run in parallel.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if dir.join("node_modules").join(".bin").join("esbuild").exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("npm is missing: install Node.js and npm (.ci/run does)");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// Runs a client's test suite (`command`) against `server` and `db`: it gets
/// PGFEED_URL (the server's /ws), DATABASE_URL and PGFEED_PSQL. Fails with the
/// suite's output when it fails.
pub async fn run_suite(mut command: tokio::process::Command, server: &Running, db: &TestDb) {
    let output = command
        .env("PGFEED_URL", format!("ws://{}/ws", server.addr))
        .env("DATABASE_URL", &db.url)
        .env("PGFEED_PSQL", pgfeed::db::embedded::tool("psql"))
        .output()
        .await
        .expect("the test runner is missing (.ci/run installs it)");
    assert!(
        output.status.success(),
        "the client's tests failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
