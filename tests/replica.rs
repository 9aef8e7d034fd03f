//! Followers on streaming standbys (`--replica-url`, ARCHITECTURE.md §6): an
//! instance hears notifications on the primary and reads the log, snapshots
//! and rows from a standby, after it has replayed what was heard of. Each
//! test starts its own primary and standby (`pg_basebackup -R`), writes on
//! the primary, and compares what clients of the follower received with the
//! log.

mod common;

use std::time::Duration;

use common::{assert_matches_log, read_until_marker, scratch_dir, wait_ready, Client, TestDb, Writers};
use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};
use serde_json::{json, Value};
use sqlx::PgPool;

/// A primary with PEARL's tables tracked, and a streaming standby of it.
struct Pair {
    /// Stopped when the pair is dropped.
    _primary: embedded::Cluster,
    standby: embedded::Cluster,
    db: TestDb,
}

impl Pair {
    async fn start(tag: &str) -> Pair {
        let dir = scratch_dir(tag);
        let primary = embedded::Cluster::start(&dir.join("primary"), embedded::Durability::Throwaway).unwrap();
        db::create_database(&primary.url("postgres"), "app").await.unwrap();
        let url = primary.url("app");
        let pool = db::pool(&url, 20).await.unwrap();
        pgfeed::install::demo(&pool).await.unwrap();
        pgfeed::install::migrate(&pool, false).await.unwrap();
        pgfeed::install::track_preset(&pool).await.unwrap();
        let standby =
            embedded::Cluster::start_standby(&primary, &dir.join("standby"), embedded::Durability::Throwaway).unwrap();
        let db = TestDb {
            name: "app".into(),
            url,
            pool,
        };
        Pair {
            _primary: primary,
            standby,
            db,
        }
    }

    /// A server on the primary (the leader: it starts first).
    async fn leader(&self) -> Running {
        let running = server::start(&self.db.url, Settings::default()).await.unwrap();
        wait_ready(&running).await;
        running
    }

    /// A server that hears the primary and reads the standby.
    async fn follower(&self) -> Running {
        let settings = Settings {
            replica_url: Some(self.standby.url("app")),
            ..Settings::default()
        };
        let running = server::start(&self.db.url, settings).await.unwrap();
        wait_ready(&running).await;
        running
    }

    async fn standby_pool(&self) -> PgPool {
        db::pool(&self.standby.url("app"), 2).await.unwrap()
    }

    /// Waits until the standby has replayed everything the primary has committed.
    async fn replayed(&self) {
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
        let standby = self.standby_pool().await;
        for _ in 0..1000 {
            let done: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(&lsn)
                .fetch_one(&standby)
                .await
                .unwrap();
            if done {
                standby.close().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the standby did not replay {lsn}");
    }
}

/// How many log readers are connected to the database at `url`.
async fn log_readers(url: &str) -> i64 {
    let pool = db::pool(url, 1).await.unwrap();
    let n = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfeed-log-reader' AND datname = 'app'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    n
}

async fn subscribed_position(client: &mut Client, tables: Value) -> i64 {
    let position = client.subscribe(json!({ "tables": tables })).await["position"].clone();
    pgfeed::protocol::Position::parse(position.as_str().unwrap())
        .unwrap()
        .seq
}

#[tokio::test]
async fn a_follower_on_a_standby_delivers_every_event_once_in_order() {
    let pair = Pair::start("replica-order").await;
    let leader = pair.leader().await;
    let follower = pair.follower().await;
    // The follower's log reader is on the standby; the primary has the leader's only.
    assert_eq!(log_readers(&pair.db.url).await, 1);
    assert_eq!(log_readers(&pair.standby.url("app")).await, 1);

    let mut on_follower = Client::connect(&follower, "/ws").await;
    on_follower.next_of("connected").await;
    let start = subscribed_position(&mut on_follower, json!(["text_elements", "studies"])).await;
    let mut on_leader = Client::connect(&leader, "/ws").await;
    on_leader.next_of("connected").await;
    let leader_start = subscribed_position(&mut on_leader, json!(["text_elements", "studies"])).await;

    let committed = Writers::start(&pair.db.url, 4, 150).finish().await;
    assert_eq!(committed, 600);
    let received = read_until_marker(&pair.db, &mut on_follower).await;
    assert_matches_log(&pair.db, &received, start).await;
    let from_leader = common::read_until_first_marker(&mut on_leader).await;
    assert_matches_log(&pair.db, &from_leader, leader_start).await;

    // A client that resumes on the follower from where it started gets the same, from the standby's log.
    let mut resumed = Client::connect(&follower, "/ws").await;
    resumed.next_of("connected").await;
    resumed
        .send(json!({"action": "subscribe", "tables": ["text_elements", "studies"], "after": start.to_string()}))
        .await;
    let replayed = resumed.events(received.len()).await;
    let seqs = |events: &[Value]| events.iter().map(|e| e["seq"].clone()).collect::<Vec<_>>();
    assert_eq!(seqs(&replayed), seqs(&received));
    follower.stop().await.unwrap();
    leader.stop().await.unwrap();
}

/// The follower's snapshot comes from the standby while committed
/// transactions wait for their seqs (the sequencer is held): the standby sees
/// their rows, so the snapshot undoes them, and the stream brings them once.
#[tokio::test]
async fn a_snapshot_from_the_standby_hands_over_exactly() {
    let pair = Pair::start("replica-snapshot").await;
    pair.db
        .exec("INSERT INTO studies (study_label) SELECT 'S' || g FROM generate_series(1, 50) g")
        .await;
    let leader = pair.leader().await;
    let follower = pair.follower().await;
    let mut client = Client::connect(&follower, "/ws").await;
    client.next_of("connected").await;
    subscribed_position(&mut client, json!(["studies"])).await;

    // Hold the sequencer: what commits now has no seq until it is let go.
    let mut held = pair.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE pgfeed.sequencer IN EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    let before = pair.db.scalar_i64("SELECT pgfeed.head()").await;
    pair.db
        .exec(
            "INSERT INTO studies (study_label) VALUES ('new-1'), ('new-2');
             UPDATE studies SET study_label = 'changed' WHERE study_label = 'S1';
             DELETE FROM studies WHERE study_label = 'S2';
             BEGIN; INSERT INTO studies (study_label) VALUES ('new-3');
                    UPDATE studies SET study_label = study_label || '+' WHERE study_label IN ('changed', 'new-1'); COMMIT;",
        )
        .await;
    pair.replayed().await;

    client.send(json!({"action": "snapshot", "table": "studies"})).await;
    let snapshot = client.next_of("snapshot").await;
    let watermark = snapshot["seq"].as_i64().unwrap();
    assert_eq!(watermark, before, "the snapshot is as of the last seq given");
    let mut rows = common::rows_by_id(&snapshot);
    let labels: Vec<&str> = rows.values().map(|r| r["study_label"].as_str().unwrap()).collect();
    assert_eq!(labels.len(), 50, "{labels:?}");
    assert!(labels.contains(&"S1") && labels.contains(&"S2") && !labels.contains(&"new-1"));

    held.rollback().await.unwrap();
    pair.db
        .exec("INSERT INTO studies (study_label) VALUES ('marker')")
        .await;
    common::apply_until_marker(&mut client, &mut rows, watermark).await;
    common::assert_rows_are_studies(&pair.db, &rows).await;
    follower.stop().await.unwrap();
    leader.stop().await.unwrap();
}

/// The standby pauses its replay, then restarts, while writers write: the
/// follower's clients wait, and lose nothing.
#[tokio::test]
async fn a_lagging_or_restarting_standby_delays_clients_and_loses_nothing() {
    let mut pair = Pair::start("replica-lag").await;
    let leader = pair.leader().await;
    let follower = pair.follower().await;
    let mut client = Client::connect(&follower, "/ws").await;
    client.next_of("connected").await;
    let start = subscribed_position(&mut client, json!(["text_elements", "studies"])).await;

    let standby = pair.standby_pool().await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&standby)
        .await
        .unwrap();
    pair.db
        .exec("INSERT INTO studies (study_label) VALUES ('while paused')")
        .await;
    assert!(
        client.next_within(Duration::from_millis(700)).await.is_none(),
        "nothing reaches the follower's clients before the standby has it"
    );
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&standby)
        .await
        .unwrap();
    standby.close().await;
    let first = client.events(1).await;
    assert_eq!(first[0]["data"]["study_label"], "while paused");

    let writers = Writers::start(&pair.db.url, 3, 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    pair.standby.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    pair.standby.restart().unwrap();
    writers.finish().await;
    let mut received = first;
    received.extend(read_until_marker(&pair.db, &mut client).await);
    assert_matches_log(&pair.db, &received, start).await;
    follower.stop().await.unwrap();
    leader.stop().await.unwrap();
}

/// The leader goes; the follower on the standby takes the lead (it then
/// hears writers on the primary and ticks there) and its client loses nothing.
#[tokio::test]
async fn a_follower_on_a_standby_takes_the_lead_when_the_leader_goes() {
    let pair = Pair::start("replica-takeover").await;
    let leader = pair.leader().await;
    let follower = pair.follower().await;
    let mut client = Client::connect(&follower, "/ws").await;
    client.next_of("connected").await;
    let start = subscribed_position(&mut client, json!(["text_elements", "studies"])).await;
    let writers = Writers::start(&pair.db.url, 2, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    leader.stop().await.unwrap();
    writers.finish().await;
    let received = read_until_marker(&pair.db, &mut client).await;
    assert_matches_log(&pair.db, &received, start).await;
    assert_eq!(follower.state.metrics.leader.get(), 1, "the follower leads now");
    // Led from the follower, a write still arrives promptly (its ticks are woken by writers).
    let started = std::time::Instant::now();
    pair.db.exec("INSERT INTO studies (study_label) VALUES ('led')").await;
    assert_eq!(client.events(1).await[0]["data"]["study_label"], "led");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    follower.stop().await.unwrap();
}
