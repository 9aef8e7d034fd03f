//! The command-line tools people touch: `pgfeed simulate` and `pgfeed tail`.

mod common;

use std::sync::atomic::Ordering;

use common::TestDb;

#[tokio::test]
async fn simulate_commits_its_rate_of_valid_pearl_transactions() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let before = db.scalar_i64("SELECT count(*) FROM pgfeed.commits").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args(["simulate", "--rate", "50", "--seconds", "5"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("transactions"), "{stdout}");
    // Its users are created first, in six transactions of their own.
    let committed = db.scalar_i64("SELECT count(*) FROM pgfeed.commits").await - before - 6;
    assert!(
        (225..=275).contains(&committed),
        "{committed} transactions in 5 s at 50/s"
    );
    for table in [
        "studies",
        "reporting_effort_items",
        "reporting_effort_item_tracker",
        "tracker_comments",
    ] {
        assert!(
            db.scalar_i64(&format!("SELECT count(*) FROM {table}")).await > 0,
            "nothing in {table}"
        );
    }
    // Every row fits PEARL's types, and the feed carried it all.
    common::read_until_marker(
        &db,
        &mut common::Client::subscribed(&server, serde_json::json!({"tables": ["studies"]})).await,
    )
    .await;
    assert_eq!(server.state.metrics.events_untyped.load(Ordering::Relaxed), 0);
    assert!(server.state.metrics.events_published.load(Ordering::Relaxed) as i64 >= committed);
    server.stop().await.unwrap();
}
