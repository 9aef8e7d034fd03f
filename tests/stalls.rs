//! No hung leader stops the feed, and health tells the truth (ARCHITECTURE.md
//! §3): a leader that is alive but does not tick (its process stopped) is
//! fenced by a follower within the stall timeout; a stalled sequencer makes
//! /readyz say so; heartbeats carry the head a client can compare with.

mod common;

use std::time::{Duration, Instant};

use common::{assert_matches_log, read_until_marker, Client, TestDb};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgfeed::http::Limits;
use pgfeed::server::Settings;
use serde_json::json;

fn with_stall_timeout(stall_timeout: Duration) -> Settings {
    Settings {
        limits: Limits {
            stall_timeout,
            ..Limits::default()
        },
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_fenced_and_the_feed_goes_on_without_it() {
    let db = TestDb::new().await;
    // The first to start ticks: a `pgfeed serve` process, so it can be stopped.
    let leader = common::Served::spawn(&[("DATABASE_URL", &db.url), ("PGFEED_STALL_TIMEOUT", "2s")]).await;
    let follower = db.server_with(with_stall_timeout(Duration::from_secs(2))).await;
    let mut client = Client::subscribed(&follower, json!({})).await;
    let start = 0;
    db.exec("INSERT INTO studies (study_label) VALUES ('before')").await;
    let mut events = client.events(1).await;
    assert_eq!(
        follower.state.metrics.ticks.get(),
        0,
        "the process leads; this one follows"
    );

    // Stopped, not dead: its session holds the lead and ticks no more.
    let pid = Pid::from_raw(leader.child.id().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // A tick it sent just before it stopped may still run: wait until its
    // session is idle, so what is written next can only be sequenced by another.
    let mut idle = false;
    for _ in 0..200 {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = pgfeed.leader_pid()")
                .fetch_optional(&db.pool)
                .await
                .unwrap()
                .flatten();
        if state.as_deref().is_some_and(|s| s != "active") {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(idle, "the stopped leader's session went idle");
    let stopped = Instant::now();
    db.exec("INSERT INTO studies (study_label) VALUES ('while-stopped')")
        .await;
    events.extend(client.events(1).await);
    let waited = stopped.elapsed();
    assert!(waited < Duration::from_secs(10), "delivered {waited:?} after the stop");
    assert_eq!(follower.state.metrics.leaders_fenced.get(), 1);
    assert!(follower.state.metrics.ticks.get() > 0, "the follower ticks now");

    // The old leader runs again: it finds its session ended and follows.
    kill(pid, Signal::SIGCONT).unwrap();
    let writers = common::Writers::start(&db.url, 2, 100);
    writers.finish().await;
    events.extend(read_until_marker(&db, &mut client).await);
    assert_matches_log(&db, &events, start).await;
    let mut old = Client::connect_to(&leader.addr, "/ws").await;
    old.next_of("connected").await;
    old.subscribe(json!({"tables": ["studies"]})).await;
    db.exec("INSERT INTO studies (study_label) VALUES ('after-return')")
        .await;
    // It may still be catching up from the log when the client joins: in order, then the new row.
    let mut seen = Vec::new();
    while seen
        .last()
        .is_none_or(|e: &serde_json::Value| e["data"]["study_label"] != "after-return")
    {
        seen.extend(old.events(1).await);
    }
    common::assert_commit_order(&seen);
    follower.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sequencer_makes_readyz_say_so_and_metrics_show_the_wait() {
    let db = TestDb::new().await;
    let server = db.server_with(with_stall_timeout(Duration::from_secs(1))).await;
    let (status, body) = common::http_get(&server, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready"));
    let mut client = Client::subscribed(&server, json!({"tables": ["studies"]})).await;

    // Something holds the sequencer's lock: no tick can run, writes go on.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE pgfeed.sequencer IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    db.exec("INSERT INTO studies (study_label) VALUES ('waiting')").await;
    let mut said = None;
    for _ in 0..200 {
        let (status, body) = common::http_get(&server, "/readyz").await;
        if status == 503 && body.starts_with("sequencing stalled") {
            said = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let said = said.expect("/readyz never said the sequencer stalled");
    assert!(said.contains("has waited"), "{said}");
    let (_, metrics) = common::http_get(&server, "/metrics").await;
    let waited: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pgfeed_unsequenced_age_milliseconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited > 1000.0, "{waited}");

    // Released: the transaction is sequenced and delivered, and /readyz is ready again.
    blocker.rollback().await.unwrap();
    assert_eq!(client.events(1).await[0]["data"]["study_label"], "waiting");
    let mut ready = false;
    for _ in 0..200 {
        if common::http_get(&server, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "/readyz ready again once sequencing goes on");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeats_carry_the_head_this_instance_delivered() {
    let db = TestDb::new().await;
    let server = db
        .server_with(Settings {
            limits: Limits {
                heartbeat: Duration::from_millis(300),
                ..Limits::default()
            },
            ..Settings::default()
        })
        .await;
    let mut client = Client::subscribed(&server, json!({"tables": ["studies"]})).await;
    db.exec("INSERT INTO studies (study_label) VALUES ('beat')").await;
    let event = client.events(1).await.remove(0);
    let heartbeat = client.next_of("heartbeat").await;
    assert_eq!(heartbeat["seq"], event["seq"]);
    assert_eq!(heartbeat["position"], event["position"]);
    server.stop().await.unwrap();
}

/// The stall check (/readyz, /metrics, a follower's quiet check) costs the
/// same however long the log is: each unsequenced stamp's commit is one
/// index probe, never a hash of every commit row (measured: 6.6 ms a call at
/// 24 k commit rows before, growing with the log). And no pgfeed read is
/// JIT-compiled or starts parallel workers: /metrics spent 200 ms compiling
/// `capture_state()` per scrape, and a page of the log took 15 ms of workers.
#[tokio::test]
async fn stall_checks_probe_the_log_and_compile_nothing() {
    let db = TestDb::new().await;
    // A long log, as the planner sees it: many commits and many stamps.
    db.exec(
        "INSERT INTO pgfeed.commits (seq, tx, size) SELECT g, g::text::xid8, 1 FROM generate_series(1, 30000) g;
         INSERT INTO pgfeed.stamps (tx, stamp) SELECT g::text::xid8, g FROM generate_series(1, 30000) g;
         ANALYZE pgfeed.commits; ANALYZE pgfeed.stamps",
    )
    .await;
    let body: String =
        sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE oid = 'pgfeed.unsequenced_age()'::regprocedure")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", body.trim().trim_end_matches(';')))
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(!plan.contains("Hash"), "the stall check hashes the log:\n{plan}");
    assert!(plan.contains("commits_"), "{plan}");

    let compiled: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.pronamespace = 'pgfeed'::regnamespace
            AND p.proname IN ('tick', 'read_log', 'snapshot', 'capture_state', 'unsequenced_age', 'prune', 'leader_pid')
            AND NOT COALESCE(p.proconfig @> ARRAY['jit=off', 'max_parallel_workers_per_gather=0'], false)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(compiled.is_empty(), "JIT or parallel workers may run {compiled:?}");
}
