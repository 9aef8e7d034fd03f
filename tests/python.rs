//! The Python client (`clients/python`) against a real server and Postgres:
//! its own tests, run with pytest, and the server's `/asyncapi.json` checked
//! with a real JSON Schema validator (`jsonschema`). A virtual environment
//! with `websockets`, `pytest` and `jsonschema` is made in `target/pyenv` when missing (`.ci/run` makes it
//! first); without Python 3 the test fails, never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{clients, TestDb};

/// The virtual environment's python, made if needed.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("pyenv");
    let python = venv.join("bin").join("python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import websockets, pytest, jsonschema"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 is missing: install Python 3 (.ci/run checks it)");
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "websockets>=12",
                "pytest>=7",
                "jsonschema>=4.18",
            ])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install websockets pytest failed");
    }
    python
}

#[tokio::test]
async fn the_python_client_passes_its_tests_against_a_real_server() {
    let python = python();
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut pytest = tokio::process::Command::new(&python);
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(clients::package("python"))
        .env("PYTHONPATH", clients::package("python"));
    clients::run_suite(pytest, &server, &db).await;
    server.stop().await.unwrap();
}
