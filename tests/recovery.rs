//! Nothing lost, ever (ARCHITECTURE.md §3, guarantees 4–7). Every test keeps writers
//! running during the fault and then checks the client's stream against the log.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{assert_matches_log, read_until_marker, Client, TestDb, Writers};
use pgfeed::server::Settings;
use serde_json::{json, Value};

/// Keeps the events up to the last whole transaction; returns that transaction's seq.
fn keep_whole(events: &mut Vec<Value>, mut cursor: i64) -> i64 {
    while let Some(last) = events.last() {
        if last.get("derived").is_none() && last["tx_index"].as_i64().unwrap() + 1 == last["tx_size"].as_i64().unwrap()
        {
            cursor = last["seq"].as_i64().unwrap();
            break;
        }
        events.pop();
    }
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_at_random_points_under_writes_is_exactly_once_in_order() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let writers = Writers::start(&db.url, 4, 400);
    let mut received: Vec<Value> = Vec::new();
    let mut cursor = 0i64;
    let mut random = 0x2545_f491_4f6c_dd1du64;
    for round in 0..12 {
        // Alternate the two ways to resume: `?after=` on connect and the resume action.
        let mut client = if round % 2 == 0 {
            let mut c = Client::connect(&server, &format!("/ws?after={cursor}")).await;
            c.next_of("connected").await;
            c.next_of("resumed").await;
            c
        } else {
            let mut c = Client::connect(&server, "/ws").await;
            c.next_of("connected").await;
            c.send(json!({"action": "resume", "after": cursor})).await;
            c.next_of("resumed").await;
            c
        };
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let take = 20 + (random % 150) as usize;
        let mut batch = client.events(take).await;
        received.append(&mut batch);
        cursor = keep_whole(&mut received, cursor);
        drop(client);
    }
    writers.finish().await;
    let mut client = Client::connect(&server, &format!("/ws?after={cursor}")).await;
    client.next_of("resumed").await;
    received.extend(read_until_marker(&db, &mut client).await);
    assert_matches_log(&db, &received, 0).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_listener_five_times_during_twenty_thousand_events_loses_nothing() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let clients = common::subscribed_to_all(&server, 2).await;
    // 8 writers × 2000 transactions, a quarter of them two rows: 20,000 events.
    let writers = Writers::start(&db.url, 8, 2000);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { (c.events(20_000).await, c) }))
        .collect();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        common::wait_ready(&server).await;
        let killed = db
            .scalar_i64(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name = 'pgfeed-listener' AND datname = current_database()",
            )
            .await;
        assert!(killed >= 1, "no listener backend to kill");
        // Wait until the listener has noticed, so each kill is a separate failure.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.state.ready.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(writers.finish().await, 16_000);
    for reader in readers {
        let (mut events, mut client) = reader.await.unwrap();
        events.extend(read_until_marker(&db, &mut client).await);
        assert_eq!(events.len(), 20_001);
        assert_matches_log(&db, &events, 0).await;
    }
    assert!(server.state.metrics.listener_reconnects.get() >= 5);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_mid_stream_loses_nothing() {
    let dir = common::scratch_dir("restart");
    let mut cluster = pgfeed::db::embedded::Cluster::start(&dir, pgfeed::db::embedded::Durability::Throwaway).unwrap();
    pgfeed::db::create_database(&cluster.url("postgres"), "feed")
        .await
        .unwrap();
    let url = cluster.url("feed");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    pgfeed::install::demo(&pool).await.unwrap();
    let db = TestDb {
        name: "feed".into(),
        url: url.clone(),
        pool,
    };
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({})).await;
    let writers = Writers::start(&url, 4, 600);
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.restart().unwrap();
    assert!(writers.finish().await == 2400);
    let events = read_until_marker(&db, &mut client).await;
    assert_matches_log(&db, &events, 0).await;
    assert!(server.state.metrics.listener_reconnects.get() >= 1);
    server.stop().await.unwrap();
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_delays_nobody() {
    let db = TestDb::new().await;
    let settings = Settings {
        hub_capacity: 256,
        limits: pgfeed::http::Limits {
            write_timeout: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let server = db.server_with(settings).await;
    let stuck = Client::subscribed(&server, json!({})).await;
    let clients = common::subscribed_to_all(&server, 10).await;
    // 10,000 events of about 2 KB: far more than socket buffers hold.
    let writers = Writers::start_padded(&db.url, 8, 1000, 2000);
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { (c.events(10_000).await, c) }))
        .collect();
    let started = Instant::now();
    writers.finish().await;
    for reader in readers {
        let (mut events, mut client) = reader.await.unwrap();
        events.extend(read_until_marker(&db, &mut client).await);
        assert_matches_log(&db, &events, 0).await;
    }
    let elapsed = started.elapsed();
    // The stuck client is closed once a write waited longer than the timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.state.metrics.clients_closed_slow.get() == 0 {
        assert!(Instant::now() < deadline, "the stuck client was never closed");
        db.exec("INSERT INTO studies (study_label) VALUES ('push')").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Bounded memory: the hub's ring is the only queue, and no connection ever had
    // more than its capacity waiting; the stuck one was then served from the log or closed.
    let lag = server.state.metrics.client_lag_max.get();
    assert!(lag > 0 && lag <= 256, "a connection had {lag} events waiting");
    eprintln!("10 readers took {elapsed:?} for 10,000 events while one client never read");
    drop(stuck);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_gets_every_event_in_order() {
    let db = TestDb::new().await;
    let server = db
        .server_with(Settings {
            hub_capacity: 16,
            ..Default::default()
        })
        .await;
    // A small receive window: the server's writes to it stall as soon as it dawdles.
    let mut client = Client::connect_small_window(&server, "/ws").await;
    client.next_of("connected").await;
    client.subscribe(json!({})).await;
    // 2,500 events of 8 KB (each fetched from the log by the listener), read at
    // about 500 a second: far more than the socket buffers and the hub's ring hold.
    let writers = Writers::start_padded(&db.url, 4, 500, 8000);
    let mut events = client.events(10).await;
    while events.len() < 2500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        events.extend(client.events(10.min(2500 - events.len())).await);
    }
    writers.finish().await;
    events.extend(read_until_marker(&db, &mut client).await);
    assert_matches_log(&db, &events, 0).await;
    let padded = events
        .iter()
        .filter(|e| e["data"]["label"].as_str().is_some_and(|l| l.len() >= 8000));
    assert!(padded.count() >= 2000);
    assert!(
        server.state.metrics.client_catch_ups.get() >= 1,
        "the slow client should have been served from the log"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn resume_older_than_retention_gets_refresh_needed() {
    let db = TestDb::new().await;
    for i in 0..5 {
        db.exec(&format!("INSERT INTO studies (study_label) VALUES ('old{i}')"))
            .await;
    }
    let server = db
        .server_with(Settings {
            retention: Duration::from_secs(2),
            ..Default::default()
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.scalar_i64("SELECT pruned_through FROM pgfeed.retention").await < 5 {
        assert!(Instant::now() < deadline, "the server never pruned the log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.exec("INSERT INTO studies (study_label) VALUES ('new')").await;
    let mut client = Client::connect(&server, "/ws").await;
    client.next_of("connected").await;
    client.send(json!({"action": "resume", "after": 2})).await;
    let refresh = client.next().await;
    assert_eq!(refresh["type"], "refresh_needed", "{refresh}");
    assert_eq!(refresh["reason"], "pruned");
    assert_eq!(refresh["oldest_seq"], 5);
    client.send(json!({"action": "resume", "after": 5})).await;
    client.next_of("resumed").await;
    let events = client.events(1).await;
    assert_eq!(events[0]["data"]["study_label"], "new");
    assert_eq!(events[0]["seq"], 6);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_the_same_stream_and_a_client_can_move_between_them() {
    let db = TestDb::new().await;
    let a = db.server().await;
    let b = db.server().await;
    let mut on_a = Client::connect(&a, "/ws").await;
    let mut on_b = Client::connect(&b, "/ws").await;
    let mut mover = Client::connect(&a, "/ws").await;
    for c in [&mut on_a, &mut on_b, &mut mover] {
        c.next_of("connected").await;
        c.subscribe(json!({})).await;
    }
    let writers = Writers::start(&db.url, 4, 500);
    let mut moved = mover.events(700).await;
    let cursor = keep_whole(&mut moved, 0);
    drop(mover);
    let mut mover = Client::connect(&b, &format!("/ws?after={cursor}")).await;
    mover.next_of("resumed").await;
    writers.finish().await;
    moved.extend(read_until_marker(&db, &mut mover).await);
    assert_matches_log(&db, &moved, 0).await;
    let from_a = common::read_until_first_marker(&mut on_a).await;
    let from_b = common::read_until_first_marker(&mut on_b).await;
    assert_eq!(from_a, from_b, "two instances must deliver the identical stream");
    assert_matches_log(&db, &from_a, 0).await;
    assert_eq!(from_a.last(), moved.last());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_ticking_instance_stops_another_takes_over_and_nothing_is_lost() {
    let db = TestDb::new().await;
    // The first to start holds the lead and ticks; the second follows its ticks.
    let leader = db.server().await;
    let follower = db.server().await;
    let mut client = Client::subscribed(&follower, json!({})).await;
    let writers = Writers::start(&db.url, 4, 400);
    let mut events = client.events(300).await;
    assert!(leader.state.metrics.ticks.get() > 0, "the first instance ticks");
    assert_eq!(follower.state.metrics.ticks.get(), 0, "the second only follows");
    assert_eq!(
        followers_sharing_the_announcement_lock(&db).await,
        1,
        "ticks announce to it"
    );
    // The leader goes away mid-stream: writes go on, and wait for a tick.
    leader.stop().await.unwrap();
    writers.finish().await;
    events.extend(read_until_marker(&db, &mut client).await);
    assert_matches_log(&db, &events, 0).await;
    assert!(
        follower.state.metrics.ticks.get() > 0,
        "the follower took over the ticking"
    );
    assert_eq!(
        followers_sharing_the_announcement_lock(&db).await,
        0,
        "the new leader follows nobody: its ticks announce to nobody"
    );
    follower.stop().await.unwrap();
}

/// Sessions sharing (pgfe, 3) in this test's database (advisory locks are per
/// database; other tests' run in the same cluster): the followers that ticks
/// announce their heads to.
async fn followers_sharing_the_announcement_lock(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND classid::bigint = 1885824613 AND objid::bigint = 3 AND objsubid = 2",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_server_lets_the_client_resume_complete() {
    let db = TestDb::new().await;
    let first = common::Served::spawn(&[("DATABASE_URL", &db.url)]).await;
    let mut client = Client::connect_to(&first.addr, "/ws").await;
    client.next_of("connected").await;
    client.subscribe(json!({})).await;
    let writers = Writers::start(&db.url, 4, 500);
    let mut events = client.events(600).await;
    let mut first = first.child;
    first.kill().await.unwrap(); // SIGKILL: no goodbye
    let cursor = keep_whole(&mut events, 0);
    let second = common::Served::spawn(&[("DATABASE_URL", &db.url)]).await;
    let mut client = Client::connect_to(&second.addr, &format!("/ws?after={cursor}")).await;
    client.next_of("resumed").await;
    writers.finish().await;
    events.extend(read_until_marker(&db, &mut client).await);
    assert_matches_log(&db, &events, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_listener_connection_is_replaced_within_seconds() {
    let db = TestDb::new().await;
    let port: u16 = db
        .url
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = common::Proxy::start(port).await;
    let proxied = db.url.replace(&format!(":{port}/"), &format!(":{}/", proxy.port));
    let server = pgfeed::server::start(&proxied, Settings::default()).await.unwrap();
    common::wait_ready(&server).await;
    let mut client = Client::subscribed(&server, json!({})).await;
    db.exec("INSERT INTO studies (study_label) VALUES ('before')").await;
    assert_eq!(client.events(1).await[0]["data"]["study_label"], "before");

    proxy.cut_existing();
    let cut = Instant::now();
    db.exec("INSERT INTO studies (study_label) VALUES ('after the cut')")
        .await;
    let event = client.events(1).await.remove(0);
    let recovered = cut.elapsed();
    assert_eq!(event["data"]["study_label"], "after the cut");
    assert!(
        recovered < Duration::from_secs(15),
        "took {recovered:?} to notice the dead connection"
    );
    assert!(server.state.metrics.listener_reconnects.get() >= 1);
    let mut events = read_until_marker(&db, &mut client).await;

    // Under writes the leader is mostly mid-round trip (a tick, a wait for
    // writers, an unlock) when its connection dies: each must give up as soon.
    let writers = Writers::start(&db.url, 2, usize::MAX);
    for cut in 0..3 {
        events.extend(client.events(40 + 25 * cut).await);
        proxy.cut_existing();
        let cut = Instant::now();
        let mut since_cut = read_until_marker(&db, &mut client).await;
        let recovered = cut.elapsed();
        assert!(
            recovered < Duration::from_secs(15),
            "took {recovered:?} to replace the dead connection"
        );
        events.append(&mut since_cut);
    }
    writers.stop().await;
    events.extend(read_until_marker(&db, &mut client).await);
    assert_matches_log(&db, &events, 2).await;
    assert!(server.state.metrics.listener_reconnects.get() >= 4);
    // The cut connections' backends (the listener's and its log reader's) were ended.
    let mut lingering = i64::MAX;
    for _ in 0..50 {
        lingering = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name IN ('pgfeed-listener', 'pgfeed-log-reader')",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if lingering == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lingering, 2, "one listener and one log reader, not the cut ones too");
    server.stop().await.unwrap();
}
