//! The database contract (ARCHITECTURE.md §2): every write to a tracked table becomes a
//! log row, and every committed transaction a seq in commit order (given by a
//! tick, as a server's listener runs them), whoever writes it.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use sqlx::postgres::PgListener;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn each_pearl_table_gives_one_log_row_per_write() {
    let db = TestDb::new().await;
    let mut notes = db.listen().await;
    // (table, prefix, column to update, new value)
    let tables = [
        ("users", "user", "department", "'Biostat'"),
        ("studies", "study", "study_label", "'ONC-002'"),
        (
            "database_releases",
            "database_release",
            "database_release_label",
            "'DBL-2'",
        ),
        (
            "reporting_efforts",
            "reporting_effort",
            "database_release_label",
            "'DBL-2'",
        ),
        (
            "reporting_effort_items",
            "reporting_effort_item",
            "item_code",
            "'t_dm2'",
        ),
        (
            "reporting_effort_item_tracker",
            "reporting_effort_tracker",
            "production_status",
            "'in_progress'",
        ),
        ("tracker_comments", "comment", "comment_text", "'fixed'"),
        ("packages", "package", "package_name", "'core2'"),
        ("package_items", "package_item", "item_code", "'l_ae2'"),
        ("text_elements", "text_element", "label", "'Demography'"),
    ];
    common::seed_pearl(&db).await;
    // seed_pearl ran as one multi-statement transaction: one seq, 11 rows in order.
    let inserts = notes.drain(QUIET).await;
    assert_eq!(inserts.len(), 11, "{inserts:#?}");
    let seq = inserts[0]["seq"].as_i64().unwrap();
    for (i, n) in inserts.iter().enumerate() {
        assert_eq!(n["op"], "INSERT");
        assert_eq!(n["seq"], seq);
        assert_eq!(n["tx_index"], i);
        assert_eq!(n["tx_size"], 11);
        assert!(n["new"]["id"].is_i64());
        assert!(n["old"].is_null());
    }
    let table_order: Vec<&str> = inserts.iter().map(|n| n["table"].as_str().unwrap()).collect();
    assert_eq!(table_order[..2], ["users", "users"]);

    for (table, prefix, column, value) in tables {
        db.exec(&format!("UPDATE {table} SET {column} = {value} WHERE id = 1"))
            .await;
        let n = notes.next().await;
        assert_eq!(
            (n["table"].as_str(), n["prefix"].as_str(), n["op"].as_str()),
            (Some(table), Some(prefix), Some("UPDATE"))
        );
        assert_eq!(n["new"]["id"], 1);
        assert_eq!(n["old"]["id"], 1);
        assert_ne!(n["new"][column], n["old"][column], "{table}.{column} should differ");
        assert_ne!(
            n["new"]["updated_at"], n["old"]["updated_at"],
            "{table}.updated_at is kept current"
        );
        assert_eq!(n["tx_size"], 1);
        let logged = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM pgfeed.events WHERE table_name = '{table}' AND op = 'UPDATE' AND id = {}",
                n["id"]
            ))
            .await;
        assert_eq!(logged, 1);
    }
    // Children first, so each delete is one row.
    for (table, prefix, _, _) in tables.iter().rev() {
        db.exec(&format!("DELETE FROM {table} WHERE id = 1")).await;
        let n = notes.next().await;
        assert_eq!(
            (n["table"].as_str(), n["prefix"].as_str(), n["op"].as_str()),
            (Some(*table), Some(*prefix), Some("DELETE")),
            "{n}"
        );
        assert_eq!(n["old"]["id"], 1);
        assert!(n["new"].is_null());
        assert_eq!(n["tx_size"], 1, "{table} delete touched more than one row: {n}");
    }
    // users: id 2 is still there; nothing else was sent.
    assert_eq!(notes.drain(QUIET).await.len(), 0);
    let total = db.scalar_i64("SELECT count(*) FROM pgfeed.events").await;
    assert_eq!(total, 11 + 10 + 10);
}

#[tokio::test]
async fn a_transaction_is_one_seq_in_statement_order_and_rollbacks_send_nothing() {
    let db = TestDb::new().await;
    let mut notes = db.listen().await;
    db.exec(
        "BEGIN;
         INSERT INTO studies (study_label) VALUES ('A');
         INSERT INTO studies (study_label) VALUES ('B');
         UPDATE studies SET study_label = 'A1' WHERE study_label = 'A';
         DELETE FROM studies WHERE study_label = 'B';
         COMMIT;",
    )
    .await;
    let tx = notes.drain(QUIET).await;
    let ops: Vec<&str> = tx.iter().map(|n| n["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "INSERT", "UPDATE", "DELETE"]);
    assert!(tx.iter().all(|n| n["seq"] == tx[0]["seq"] && n["tx_size"] == 4));
    let ids: Vec<i64> = tx.iter().map(|n| n["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    db.exec("BEGIN; INSERT INTO studies (study_label) VALUES ('gone'); ROLLBACK;")
        .await;
    assert!(
        notes.next_within(QUIET).await.is_none(),
        "a rolled-back transaction was announced"
    );

    db.exec(
        "BEGIN;
         INSERT INTO studies (study_label) VALUES ('kept-1');
         SAVEPOINT s;
         INSERT INTO studies (study_label) VALUES ('undone');
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO studies (study_label) VALUES ('kept-2');
         COMMIT;",
    )
    .await;
    let tx2 = notes.drain(QUIET).await;
    let labels: Vec<&str> = tx2.iter().map(|n| n["new"]["study_label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["kept-1", "kept-2"]);
    assert_eq!(
        tx2[0]["seq"].as_i64().unwrap(),
        tx[0]["seq"].as_i64().unwrap() + 1,
        "seq is gap-free"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pgfeed.events WHERE new->>'study_label' IN ('gone', 'undone')")
            .await,
        0
    );

    // A savepoint rolled back after everything else: only the kept write remains.
    db.exec("BEGIN; SAVEPOINT s; INSERT INTO studies (study_label) VALUES ('x'); ROLLBACK TO s; COMMIT;")
        .await;
    assert!(
        notes.next_within(QUIET).await.is_none(),
        "a transaction whose writes were all rolled back was announced"
    );
}

#[tokio::test]
async fn a_transaction_gets_its_seq_when_it_commits_not_when_it_writes() {
    let db = TestDb::new().await;
    let mut notes = db.listen().await;
    // `early` writes first and commits last: it must come after `late`, which a
    // reader could see before it (an id cursor would skip it: hasura #8632).
    let mut early = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO studies (study_label) VALUES ('early')")
        .execute(&mut *early)
        .await
        .unwrap();
    db.exec("SET CONSTRAINTS ALL IMMEDIATE; INSERT INTO studies (study_label) VALUES ('late')")
        .await;
    let late = notes.next().await;
    assert_eq!(late["new"]["study_label"], "late");
    assert!(
        notes.next_within(QUIET).await.is_none(),
        "an open transaction got a seq"
    );
    early.commit().await.unwrap();
    let early = notes.next().await;
    assert_eq!(early["new"]["study_label"], "early");
    assert_eq!(early["seq"].as_i64().unwrap(), late["seq"].as_i64().unwrap() + 1);
    assert!(
        early["id"].as_i64().unwrap() < late["id"].as_i64().unwrap(),
        "logged first, sequenced second"
    );
    // A second tick with nothing new gives nothing and leaves the head alone.
    let head = db.tick().await;
    assert_eq!(db.tick().await, head);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM pgfeed.commits").await, head);
}

#[tokio::test]
async fn concurrent_writers_get_strictly_increasing_gap_free_seq_in_visibility_order() {
    const WRITERS: usize = 8;
    const TXS: usize = 500;
    let db = TestDb::new().await;
    let mut notes = db.listen().await;

    let done = Arc::new(AtomicBool::new(false));
    // A sequencer ticking while they write, as a server's listener does.
    let ticker = ticking_until(&db, &done);
    // A reader that can see seq N must see every seq below it: check while writes run.
    let observer = {
        let pool = db.pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut checks = 0;
            while !done.load(Ordering::SeqCst) {
                let (max, count): (Option<i64>, i64) = sqlx::query_as("SELECT max(seq), count(*) FROM pgfeed.commits")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(max.unwrap_or(0), count, "a later seq was visible before an earlier one");
                checks += 1;
            }
            checks
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for i in 0..TXS {
                    let mut tx = pool.begin().await.unwrap();
                    let label = format!("w{w}-{i}");
                    let (id,): (i32,) = sqlx::query_as("INSERT INTO studies (study_label) VALUES ($1) RETURNING id")
                        .bind(&label)
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    sqlx::query("UPDATE studies SET study_label = $1 || '!' WHERE id = $2")
                        .bind(&label)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    if i % 3 == 0 {
                        tokio::task::yield_now().await; // interleave the commits
                    }
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(observer.await.unwrap() > 0);
    ticker.await.unwrap();

    let mut received = Vec::new();
    while received.len() < WRITERS * TXS * 2 {
        received.push(notes.next().await);
    }
    let mut expected_seq = received[0]["seq"].as_i64().unwrap();
    assert_eq!(expected_seq, 1);
    for pair in received.chunks(2) {
        assert_eq!(pair[0]["seq"], expected_seq, "notifications out of seq order");
        assert_eq!(pair[1]["seq"], expected_seq);
        assert_eq!(
            (pair[0]["op"].as_str(), pair[1]["op"].as_str()),
            (Some("INSERT"), Some("UPDATE"))
        );
        assert_eq!(
            pair[0]["new"]["id"], pair[1]["new"]["id"],
            "one transaction's rows are contiguous"
        );
        expected_seq += 1;
    }
    assert_eq!(expected_seq - 1, (WRITERS * TXS) as i64);
    assert!(notes.next_within(QUIET).await.is_none());
}

#[tokio::test]
async fn a_one_megabyte_row_is_logged_whole_and_sends_nothing_by_itself() {
    let db = TestDb::new().await;
    let mut raw = db.raw_listener().await;
    let mut notes = db.listen().await;
    db.exec("INSERT INTO text_elements (type, label) SELECT 'footnote', repeat('0123456789abcdef', 65536)")
        .await;
    let n = notes.next().await;
    assert_eq!(n["table"], "text_elements");
    assert_eq!(n["new"]["label"].as_str().unwrap().len(), 1 << 20);
    // No payload carries rows (Postgres caps one at 8000 bytes): only the tick's announcement.
    let announced = tokio::time::timeout(Duration::from_secs(2), raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(announced.payload(), format!(r#"{{"seq":{}}}"#, n["seq"]));
}

#[tokio::test]
async fn deleting_a_study_emits_every_cascaded_delete_in_one_transaction() {
    let db = TestDb::new().await;
    common::seed_pearl(&db).await;
    db.exec(
        "INSERT INTO tracker_comments (tracker_id, user_id, parent_comment_id, comment_text) VALUES (1, 2, 1, 'reply')",
    )
    .await;
    let mut notes = db.listen().await;
    db.exec("DELETE FROM studies WHERE id = 1").await;
    let tx = notes.drain(QUIET).await;
    let deleted: HashSet<&str> = tx.iter().map(|n| n["table"].as_str().unwrap()).collect();
    for table in [
        "studies",
        "database_releases",
        "reporting_efforts",
        "reporting_effort_items",
        "reporting_effort_item_tracker",
        "tracker_comments",
    ] {
        assert!(deleted.contains(table), "no delete event for {table}: {tx:#?}");
    }
    assert_eq!(tx.iter().filter(|n| n["table"] == "tracker_comments").count(), 2);
    assert!(tx
        .iter()
        .all(|n| n["op"] == "DELETE" && n["seq"] == tx[0]["seq"] && n["tx_size"] == tx.len()));
    // PEARL's package items belong to packages, not studies: they stay.
    assert_eq!(tx.len(), 7);
}

#[tokio::test]
async fn actor_track_untrack_and_truncate() {
    let db = TestDb::new().await;
    let mut notes = db.listen().await;
    db.exec("BEGIN; SET LOCAL pgfeed.actor = 'user:7'; INSERT INTO studies (study_label) VALUES ('S'); COMMIT;")
        .await;
    assert_eq!(notes.next().await["actor"], "user:7");
    db.exec("INSERT INTO studies (study_label) VALUES ('T')").await;
    assert!(notes.next().await["actor"].is_null(), "the actor is transaction-local");

    db.exec(
        "CREATE SCHEMA lab;
         CREATE TABLE lab.equipment (id serial PRIMARY KEY, name text NOT NULL, calibrated date);
         SELECT pgfeed.track('lab.equipment', 'equipment');",
    )
    .await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pgfeed.tracked WHERE prefix = 'equipment'")
            .await,
        1
    );
    db.exec("INSERT INTO lab.equipment (name) VALUES ('centrifuge')").await;
    let n = notes.next().await;
    assert_eq!(
        (n["table"].as_str(), n["prefix"].as_str(), n["op"].as_str()),
        (Some("lab.equipment"), Some("equipment"), Some("INSERT"))
    );
    assert_eq!(n["new"]["name"], "centrifuge");

    db.exec("TRUNCATE lab.equipment").await;
    let t = notes.next().await;
    assert_eq!(
        (t["op"].as_str(), t["prefix"].as_str()),
        (Some("TRUNCATE"), Some("equipment"))
    );

    db.exec("SELECT pgfeed.untrack('lab.equipment'); INSERT INTO lab.equipment (name) VALUES ('scale');")
        .await;
    assert!(
        notes.next_within(QUIET).await.is_none(),
        "an untracked table still sends events"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pgfeed.tracked WHERE prefix = 'equipment'")
            .await,
        0
    );

    let err = sqlx::query("SELECT pgfeed.track('lab.equipment', 'Bad Prefix')")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must match"), "{err}");
}

#[tokio::test]
async fn the_tick_and_a_page_of_the_log_keep_their_plans_across_calls() {
    let db = TestDb::new().await;
    let configs: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT proname::text, proconfig FROM pg_proc
          WHERE pronamespace = 'pgfeed'::regnamespace AND proname IN ('tick', 'read_log') ORDER BY proname",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(configs.len(), 2);
    for (function, config) in configs {
        let config = config.unwrap_or_default();
        assert!(
            config.iter().any(|c| c == "plan_cache_mode=force_generic_plan"),
            "{function} would be planned anew on every call: {config:?}"
        );
    }
}

/// A log written by another cluster (a dump restored into a cluster whose
/// transaction ids are below the dump's) is adopted once: its ids move above
/// 2^62, each transaction keeping its own, what it held unsequenced gets seqs,
/// and the ticks after that sequence new writes as usual.
#[tokio::test]
async fn a_foreign_log_is_adopted_once_and_sequencing_goes_on() {
    let db = TestDb::new().await;
    let ahead = db
        .scalar_i64("pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000000")
        .await;
    // Three transactions of the other cluster: two sequenced there, one not.
    db.exec(&format!(
        "SET pgfeed.stamp_queued = 'yes';
         INSERT INTO pgfeed.events (tx, table_name, prefix, op, new)
         SELECT ({ahead} + g)::text::xid8, 'studies', 'study', 'INSERT', json_build_object('id', g)
           FROM generate_series(0, 2) g;
         INSERT INTO pgfeed.commits (seq, tx, size)
         SELECT pgfeed.head() + 1 + g, ({ahead} + g)::text::xid8, 1 FROM generate_series(0, 1) g;
         UPDATE pgfeed.sequencer SET last_seq = last_seq + 2;
         RESET pgfeed.stamp_queued"
    ))
    .await;
    let head = db.tick().await;
    let expected: Vec<String> = (0..3).map(|g| (ADOPTED + ahead + g).to_string()).collect();
    assert_eq!(
        adopted_ids(&db).await,
        expected,
        "each foreign transaction moves once, keeping its own id"
    );
    assert_eq!(
        db.scalar_i64(&format!(
            "(SELECT seq FROM pgfeed.commits WHERE tx = '{}')",
            expected[2]
        ))
        .await,
        head,
        "what the other cluster left unsequenced gets the next seq"
    );

    db.exec("INSERT INTO studies (study_label) VALUES ('after the adoption')")
        .await;
    assert_eq!(db.tick().await, head + 1);
    assert_eq!(db.tick().await, head + 1);
    assert_eq!(
        adopted_ids(&db).await,
        expected,
        "an adopted log stays where it was moved"
    );
}

/// Where an adopted log's transaction ids go: 2^62 above where they were.
const ADOPTED: i64 = 1 << 62;

/// The transaction ids of the log rows in the adopted range, in order.
async fn adopted_ids(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT tx::text FROM pgfeed.events WHERE tx >= $1::text::xid8 ORDER BY tx")
        .bind(ADOPTED.to_string())
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// A tick reads the log through its index whatever size the planner saw a
/// unit at: its plan is kept for the session, and a scan of a unit chosen
/// while the unit was small would be paid by every tick as the unit grows.
#[tokio::test]
async fn a_tick_reads_the_log_only_through_its_index() {
    let db = TestDb::new().await;
    // A unit of a few hundred rows, one transaction each, as the planner sees it.
    for i in 0..300 {
        db.exec(&format!("INSERT INTO studies (study_label) VALUES ('study {i}')"))
            .await;
    }
    db.tick().await;
    db.exec("ANALYZE pgfeed.events").await;
    // In progress through one tick, committed before the next: the next finds it
    // among the transactions the last one saw in progress.
    let mut open = db.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO studies (study_label) VALUES ('in progress')")
        .execute(&mut *open)
        .await
        .unwrap();
    let before = db.tick().await;
    open.commit().await.unwrap();

    assert_eq!(tick_by_index(&db, before).await, before + 1, "the tick numbers it");

    // Nothing in progress at the last tick: the next looks only past it.
    db.exec("INSERT INTO studies (study_label) VALUES ('after')").await;
    assert_eq!(tick_by_index(&db, before + 1).await, before + 2);
}

/// A tick and a read of the log after `after`, in one transaction as the
/// listener runs them; fails if either scanned any table of the log whole.
/// The one seq read.
async fn tick_by_index(db: &TestDb, after: i64) -> i64 {
    let mut tick = pgfeed::feed::log::ticked_snapshot(&db.pool).await.unwrap();
    let read: Vec<i64> = sqlx::query_scalar("SELECT seq FROM pgfeed.read_log($1, 0, 2000)")
        .bind(after)
        .fetch_all(&mut *tick)
        .await
        .unwrap();
    let scanned: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_xact_user_tables
          WHERE schemaname = 'pgfeed' AND relname ~ '^(events|commits|stamps)' AND seq_scan > 0",
    )
    .fetch_all(&mut *tick)
    .await
    .unwrap();
    tick.commit().await.unwrap();
    assert!(scanned.is_empty(), "a tick and its read scanned {scanned:?} whole");
    assert_eq!(read.len(), 1, "{read:?}");
    read[0]
}

#[tokio::test]
async fn a_tick_announces_its_head_only_while_some_session_follows() {
    let db = TestDb::new().await;
    let mut bystander = PgListener::connect(&db.url).await.unwrap();
    bystander.listen("pgfeed").await.unwrap();
    db.exec("INSERT INTO studies (study_label) VALUES ('heard by nobody')")
        .await;
    db.tick().await;
    assert!(quiet(&mut bystander).await, "with no follower a tick sends nothing");

    let mut follower = db.raw_listener().await;
    db.exec("INSERT INTO studies (study_label) VALUES ('announced')").await;
    let head = db.tick().await;
    for listener in [&mut follower, &mut bystander] {
        let announced = tokio::time::timeout(Duration::from_secs(2), listener.recv())
            .await
            .expect("an announcement")
            .unwrap();
        assert_eq!(announced.payload(), format!(r#"{{"seq":{head}}}"#));
    }

    sqlx::query("SELECT pg_advisory_unlock_shared(1885824613, 3)")
        .execute(&mut follower)
        .await
        .unwrap();
    db.exec("INSERT INTO studies (study_label) VALUES ('after the follower left')")
        .await;
    db.tick().await;
    assert!(
        quiet(&mut follower).await,
        "the last follower gone, ticks are silent again"
    );
}

/// Nothing arrives within a second.
async fn quiet(listener: &mut PgListener) -> bool {
    tokio::time::timeout(Duration::from_secs(1), listener.recv())
        .await
        .is_err()
}

#[tokio::test]
async fn a_fifty_thousand_row_update_is_one_seq_and_at_most_one_wake_up() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO text_elements (type, label) SELECT 'title', 'T' || g FROM generate_series(1, 50000) g")
        .await;
    db.tick().await;
    let mut raw = db.raw_listener().await;
    // A sequencer waiting for work holds this lock: writers then wake it, once per transaction.
    let mut waiting = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(1885824613, 1)")
        .execute(&mut *waiting)
        .await
        .unwrap();
    db.exec("UPDATE text_elements SET label = label || '!'").await;
    let wake = tokio::time::timeout(Duration::from_secs(5), raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(wake.payload(), "", "a wake-up carries nothing");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), raw.recv()).await.is_err(),
        "a bulk transaction must not send a notification per row"
    );
    // While the sequencer ticks (nobody holds the lock), writers send nothing at all.
    sqlx::query("SELECT pg_advisory_unlock(1885824613, 1)")
        .execute(&mut *waiting)
        .await
        .unwrap();
    db.exec("UPDATE text_elements SET label = label || '?' WHERE id <= 10")
        .await;
    assert!(tokio::time::timeout(Duration::from_secs(1), raw.recv()).await.is_err());

    let seq = db.tick().await - 1;
    let announced = tokio::time::timeout(Duration::from_secs(2), raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        announced.payload(),
        format!(r#"{{"seq":{}}}"#, seq + 1),
        "one announcement per tick"
    );
    let (size, logged): (i32, i64) = sqlx::query_as(
        "SELECT c.size, count(*) FROM pgfeed.events e JOIN pgfeed.commits c USING (tx)
          WHERE c.seq = $1 AND e.op = 'UPDATE' GROUP BY c.size",
    )
    .bind(seq)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((size, logged), (50000, 50000));
}

#[tokio::test]
async fn prune_removes_old_transactions_and_nothing_newer() {
    let db = TestDb::new().await;
    for i in 0..10 {
        db.exec(&format!("INSERT INTO studies (study_label) VALUES ('s{i}')"))
            .await;
        db.tick().await;
    }
    db.exec("UPDATE pgfeed.commits SET committed_at = now() - interval '2 days' WHERE seq <= 4")
        .await;
    db.exec("UPDATE pgfeed.commits SET committed_at = now() - interval '50 minutes' WHERE seq = 5")
        .await;
    let removed = db.scalar_i64("SELECT pgfeed.prune(interval '1 hour')").await;
    assert_eq!(removed, 4);
    assert_eq!(db.scalar_i64("SELECT min(seq) FROM pgfeed.commits").await, 5);
    assert_eq!(db.scalar_i64("SELECT count(*) FROM pgfeed.events").await, 6);
    assert_eq!(db.scalar_i64("SELECT pruned_through FROM pgfeed.retention").await, 4);
    assert_eq!(db.scalar_i64("SELECT pgfeed.head()").await, 10);
    assert_eq!(
        db.scalar_i64("SELECT pgfeed.prune(interval '1 hour')").await,
        0,
        "prune twice removes nothing more"
    );
    // Everything pruned: the head stays where it was.
    db.exec("UPDATE pgfeed.commits SET committed_at = now() - interval '2 days'")
        .await;
    assert_eq!(db.scalar_i64("SELECT pgfeed.prune(interval '1 hour')").await, 6);
    assert_eq!(db.scalar_i64("SELECT pgfeed.head()").await, 10);
}

#[test]
fn the_embedded_cluster_starts_and_runs_unprivileged() {
    let dir = common::scratch_dir("embedded");
    let cluster = pgfeed::db::embedded::Cluster::start(&dir, pgfeed::db::embedded::Durability::Throwaway).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        pgfeed::db::create_database(&cluster.url("postgres"), "pgfeed")
            .await
            .unwrap();
        let pool = pgfeed::db::pool(&cluster.url("pgfeed"), 1).await.unwrap();
        let applied = pgfeed::install::demo(&pool).await.unwrap();
        assert_eq!(
            applied.len(),
            1 + pgfeed::db::migrate::CAPTURE.migrations.len(),
            "the demo schema and the capture schema"
        );
        let version: i64 = sqlx::query_scalar("SELECT current_setting('server_version_num')::bigint")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(version >= 130000);
        pool.close().await;
    });
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(cluster.data_dir()).unwrap());
    if nix::unistd::geteuid().is_root() {
        assert_ne!(owner, 0, "as root, the cluster must belong to an unprivileged user");
    }
    drop(cluster);
}

/// Seq order respects dependencies that go only through an untracked table
/// (capture/0006): each transaction logs a tracked row, then bumps a shared
/// untracked counter, which row-locks it until commit, so the counter's order
/// is the commit order. A transaction that waited for another's counter lock
/// must get the larger seq.
#[tokio::test]
async fn a_transaction_that_waited_for_another_gets_the_larger_seq_through_any_table() {
    const WRITERS: usize = 8;
    const TXS: usize = 150;
    let db = TestDb::new().await;
    db.exec("CREATE TABLE counter (n bigint NOT NULL); INSERT INTO counter VALUES (0);")
        .await;
    let done = Arc::new(AtomicBool::new(false));
    let ticker = ticking_until(&db, &done);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut taken = Vec::with_capacity(TXS);
                for i in 0..TXS {
                    let mut tx = pool.begin().await.unwrap();
                    let label = format!("w{w}-{i}");
                    sqlx::query("INSERT INTO studies (study_label) VALUES ($1)")
                        .bind(&label)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    let (n,): (i64,) = sqlx::query_as("UPDATE counter SET n = n + 1 RETURNING n")
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    taken.push((label, n));
                }
                taken
            })
        })
        .collect();
    let mut counter_of = std::collections::HashMap::new();
    for writer in writers {
        counter_of.extend(writer.await.unwrap());
    }
    done.store(true, Ordering::SeqCst);
    ticker.await.unwrap();
    common::tick(&db.pool).await;
    let sequenced: Vec<(i64, String)> = sqlx::query_as(
        "SELECT c.seq, e.new->>'study_label' FROM pgfeed.commits c JOIN pgfeed.events e USING (tx)
          WHERE e.table_name = 'studies' ORDER BY c.seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(sequenced.len(), WRITERS * TXS);
    let counters: Vec<i64> = sequenced.iter().map(|(_, label)| counter_of[label]).collect();
    let out_of_order = counters.windows(2).filter(|pair| pair[0] > pair[1]).count();
    assert_eq!(
        out_of_order,
        0,
        "seq order against the counter's (commit) order: {out_of_order} of {}",
        counters.len()
    );
}

/// A sequencer ticking every millisecond, as a server's listener does, until `done`.
fn ticking_until(db: &TestDb, done: &Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let (pool, done) = (db.pool.clone(), done.clone());
    tokio::spawn(async move {
        while !done.load(Ordering::SeqCst) {
            common::tick(&pool).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}
