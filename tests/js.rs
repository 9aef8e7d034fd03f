//! The JavaScript client (`clients/js`, the source of `/client.js`) and the
//! React bindings (`clients/react`): the builds in the repository (the
//! client's is what the server serves) are the builds of their sources, and
//! the client's own tests (Node's test runner) pass against a real server and
//! Postgres. The React hooks are tested in Chromium (tests/browser.rs). Needs Node
//! and npm; `npm ci` runs here when `node_modules` is missing (`.ci/run` runs it
//! first). Fails, never skips, without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{clients, TestDb};

fn package() -> PathBuf {
    clients::package("js")
}

fn npm_ci() {
    clients::npm_ci(&package());
}

/// Builds `dir`'s package as its `npm run build` does, into a scratch folder,
/// and checks the committed `dist/` is that build.
fn assert_dist_is_the_build(dir: &Path, name: &str) {
    clients::npm_ci(dir);
    let out = std::env::temp_dir().join(format!("pgfeed-{name}-build-{}", std::process::id()));
    let built = Command::new("npx")
        .args([
            "esbuild",
            "src/index.ts",
            "--format=esm",
            "--target=es2022",
            "--log-level=warning",
        ])
        .arg(format!("--outfile={}", out.join("index.js").display()))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(built.success(), "esbuild failed in clients/{name}");
    let typed = Command::new("npx")
        .args(["tsc", "-p", "tsconfig.json", "--outDir"])
        .arg(&out)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(typed.success(), "tsc failed: clients/{name}/src does not type-check");
    for file in ["index.js", "index.d.ts"] {
        let fresh = std::fs::read_to_string(out.join(file)).unwrap();
        let committed = std::fs::read_to_string(dir.join("dist").join(file)).unwrap();
        assert!(
            fresh == committed,
            "clients/{name}/dist/{file} is not the build of its src: run `npm run build` in clients/{name}"
        );
    }
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn the_served_client_is_the_build_of_its_source() {
    assert_dist_is_the_build(&package(), "js");
}

#[test]
fn the_react_bindings_are_the_build_of_their_source() {
    npm_ci();
    assert_dist_is_the_build(&clients::package("react"), "react");
}

#[tokio::test]
async fn the_javascript_client_passes_its_tests_against_a_real_server() {
    npm_ci();
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut node = tokio::process::Command::new("node");
    node.args(["--test", "test/"]).current_dir(package());
    clients::run_suite(node, &server, &db).await;
    server.stop().await.unwrap();
}
