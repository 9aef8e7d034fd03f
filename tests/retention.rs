//! Retention by rotation (ARCHITECTURE.md §2): the log is kept in units of
//! transaction ids, and trimming it drops whole units. Replay crosses unit
//! boundaries, a resume into a dropped range gets `refresh_needed`/`pruned`,
//! and writers that outrun rotation lose nothing. Every test compares what a
//! client received with the log.

mod common;

use common::{assert_matches_log, Client, TestDb};
use serde_json::json;

/// Held by each test for its whole run: units are ranges of transaction ids,
/// which every database of the binary's cluster spends, so a test that
/// spends them fast (rotation_never_fails_a_writer) would outrun another's
/// narrow units, which then stay empty and are dropped.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Units of `width` transaction ids from here on: spends the ids left in the
/// unit the installation made, then lets prune make a small one. Dropping a
/// unit may wait 2 s for the log's lock, not 100 ms: on a loaded machine the
/// server's own log reads hold it longer than that, and prune would put the
/// drop off round after round.
async fn small_units(db: &TestDb, width: i64) {
    db.exec(&format!(
        "UPDATE pgfeed.rotation SET min_width = {width}, max_width = {width}, lock_timeout = '2s';
         CREATE TABLE spent_ids (n int);"
    ))
    .await;
    let left = db
        .scalar_i64("SELECT max(hi::text::bigint) - pg_current_xact_id()::text::bigint FROM pgfeed.log_units")
        .await;
    // Each subtransaction that writes takes an id of its own.
    db.exec(&format!(
        "DO $$ BEGIN FOR i IN 0..{left} LOOP
             BEGIN INSERT INTO spent_ids VALUES (i); EXCEPTION WHEN others THEN NULL; END;
         END LOOP; END $$;"
    ))
    .await;
    db.tick().await;
    db.exec("SELECT pgfeed.prune(interval '1 hour')").await;
}

async fn units(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT events FROM pgfeed.log_units ORDER BY hi")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_drops_whole_units_and_replay_crosses_them() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    small_units(&db, 6).await;
    let server = db.server().await;
    let mut live = Client::connect(&server, "/ws").await;
    live.next_of("connected").await;
    let start = live.subscribe(json!({"tables": ["studies"]})).await["position"].clone();
    let start_seq = pgfeed::protocol::Position::parse(start.as_str().unwrap()).unwrap().seq;
    for i in 0..24 {
        db.exec(&format!("INSERT INTO studies (study_label) VALUES ('s{i}')"))
            .await;
        if i % 2 == 1 {
            db.exec("SELECT pgfeed.prune(interval '1 hour')").await;
        }
    }
    let events = live.events(24).await;
    assert_matches_log(&db, &events, start_seq).await;
    let before = units(&db).await;
    assert!(before.len() >= 4, "the log rotated: {before:?}");

    // A replay from the start crosses every unit boundary.
    let mut replay = Client::connect(&server, "/ws").await;
    replay.next_of("connected").await;
    replay
        .send(json!({"action": "subscribe", "tables": ["studies"], "after": start}))
        .await;
    replay.next_of("subscribed").await;
    assert_eq!(replay.events(24).await, events);

    // The first half ages past retention.
    let half = events[11]["seq"].as_i64().unwrap();
    db.exec(&format!(
        "UPDATE pgfeed.commits SET committed_at = now() - interval '2 days' WHERE seq <= {half}"
    ))
    .await;
    // A unit is dropped once every transaction of its range has finished:
    // in this shared cluster, other tests' transactions may still run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let after = loop {
        db.tick().await;
        db.exec("SELECT pgfeed.prune(interval '1 hour')").await;
        let after = units(&db).await;
        if before.iter().any(|u| !after.contains(u)) || std::time::Instant::now() > deadline {
            break after;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let gone: Vec<&String> = before.iter().filter(|u| !after.contains(u)).collect();
    assert!(!gone.is_empty(), "whole units dropped: {before:?} -> {after:?}");
    for unit in &gone {
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(unit)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(exists, None, "{unit} is dropped, not emptied");
    }
    // The mark: everything at or below it is gone, everything above it is whole.
    let mark = db.scalar_i64("SELECT pruned_through FROM pgfeed.retention").await;
    assert!(mark >= half, "{mark} < {half}");
    assert_eq!(
        db.scalar_i64(&format!("SELECT count(*) FROM pgfeed.commits WHERE seq <= {mark}"))
            .await,
        0
    );
    let kept: Vec<_> = events
        .iter()
        .filter(|e| e["seq"].as_i64().unwrap() > mark)
        .cloned()
        .collect();
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM pgfeed.commits c JOIN pgfeed.events e USING (tx) WHERE c.seq > {mark} AND c.seq <= {}",
            events[23]["seq"]
        ))
        .await,
        kept.len() as i64
    );

    // Resuming into the dropped range: refresh_needed, pruned.
    let mut late = Client::connect(&server, "/ws").await;
    late.next_of("connected").await;
    late.send(json!({"action": "subscribe", "tables": ["studies"], "after": start}))
        .await;
    let refresh = late.next_of("refresh_needed").await;
    assert_eq!(refresh["reason"], "pruned");
    // Resuming at the mark: everything after it, across the units left.
    let mut resumed = Client::connect(&server, "/ws").await;
    resumed.next_of("connected").await;
    resumed
        .send(json!({"action": "subscribe", "tables": ["studies"], "after": mark}))
        .await;
    resumed.next_of("subscribed").await;
    assert_eq!(resumed.events(kept.len()).await, kept);

    // The live client goes on untouched.
    db.exec("INSERT INTO studies (study_label) VALUES ('after')").await;
    assert_eq!(live.events(1).await[0]["data"]["study_label"], "after");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn writers_that_outrun_rotation_lose_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    small_units(&db, 16).await;
    let server = db.server().await;
    let mut client = Client::connect(&server, "/ws").await;
    client.next_of("connected").await;
    let start = client.subscribe(json!({"tables": ["studies"]})).await["position"].clone();
    let start_seq = pgfeed::protocol::Position::parse(start.as_str().unwrap()).unwrap().seq;
    // Nobody prunes: the writers pass the newest unit.
    for i in 0..60 {
        db.exec(&format!("INSERT INTO studies (study_label) VALUES ('o{i}')"))
            .await;
    }
    let events = client.events(60).await;
    assert_matches_log(&db, &events, start_seq).await;
    assert!(db.scalar_i64("SELECT count(*) FROM pgfeed.events_overflow").await > 0);
    // Rotation picks up above what overflowed (and above the ids in use: a
    // unit attached over them could fail a writer), and the overflow is
    // trimmed by age.
    let overflowed = db
        .scalar_i64("SELECT max(tx::text::bigint) FROM pgfeed.events_overflow")
        .await;
    db.exec("SELECT pgfeed.prune(interval '1 hour')").await;
    assert!(
        db.scalar_i64(&format!(
            "SELECT count(*) FROM pgfeed.log_units WHERE lo::text::bigint > {overflowed}"
        ))
        .await
            >= 1
    );
    db.exec("INSERT INTO studies (study_label) VALUES ('after rotation')")
        .await;
    assert_eq!(client.events(1).await[0]["data"]["study_label"], "after rotation");
    db.exec("UPDATE pgfeed.commits SET committed_at = now() - interval '2 days'")
        .await;
    db.exec("SELECT pgfeed.prune(interval '1 hour')").await;
    assert_eq!(db.scalar_i64("SELECT count(*) FROM pgfeed.events_overflow").await, 0);
    server.stop().await.unwrap();
}

/// Rotation never fails a writer: units are made as fast as prune can run,
/// each just above the ids in use (the narrowest gap rotation allows), while
/// writers spend ids as fast as they can. A unit attached over an id whose
/// row was on its way to the overflow would fail that writer's insert.
#[tokio::test]
async fn rotation_never_fails_a_writer() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let db = TestDb::new().await;
    small_units(&db, 4).await;
    db.exec("UPDATE pgfeed.rotation SET min_width = 1, max_width = 4").await;
    let server = db.server().await;
    let mut client = Client::connect(&server, "/ws").await;
    client.next_of("connected").await;
    let start = client.subscribe(json!({"tables": ["studies"]})).await["position"].clone();
    let start_seq = pgfeed::protocol::Position::parse(start.as_str().unwrap()).unwrap().seq;

    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let (mut done, mut failed) = (0usize, Vec::new());
                while std::time::Instant::now() < until {
                    let sql = format!("INSERT INTO studies (study_label) VALUES ('w{w}-{done}')");
                    match sqlx::query(&sql).execute(&pool).await {
                        Ok(_) => done += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (done, failed)
            })
        })
        .collect();
    let pruner = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            while std::time::Instant::now() < until {
                sqlx::query("SELECT pgfeed.prune(interval '1 hour')")
                    .execute(&pool)
                    .await
                    .unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let mut total = 0;
    let mut failures = Vec::new();
    for writer in writers {
        let (done, failed) = writer.await.unwrap();
        total += done;
        failures.extend(failed);
    }
    let rounds = pruner.await.unwrap();
    assert!(
        failures.is_empty(),
        "writers failed: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(rounds > 10, "prune ran {rounds} times");
    assert!(db.scalar_i64("SELECT count(*) FROM pgfeed.log_units").await > 5);
    let events = client.events(total).await;
    assert_matches_log(&db, &events, start_seq).await;
    server.stop().await.unwrap();
}
