//! A position names its history (ARCHITECTURE.md §3): after a reinstall, a
//! restore (of an older dump, or into another cluster) or a failover, a client
//! that resumes is served exactly when its position is of the same history,
//! and otherwise always told (`refresh_needed`: `history_changed`, `ahead`),
//! never served another history's events as if they followed its own. Real
//! clusters, real dumps, a real streaming standby.

mod common;

use std::path::Path;
use std::process::Command;

use common::{scratch_dir, wait_ready, Client, TestDb};
use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};
use serde_json::{json, Value};

/// A `/ws` client that subscribes to studies after `after` (a position), in one message.
async fn subscribed_after(running: &Running, after: &str) -> Client {
    let mut client = Client::connect(running, "/ws").await;
    client.next_of("connected").await;
    client
        .send(json!({"action": "subscribe", "tables": ["studies"], "after": after}))
        .await;
    client.next_of("subscribed").await;
    client
}

/// The next message that is not an event: what a client is told.
async fn told(client: &mut Client) -> Value {
    loop {
        let message = client.next().await;
        if message.get("table").is_none() {
            return message;
        }
    }
}

async fn insert_studies(url: &str, labels: &[&str]) {
    let pool = db::pool(url, 1).await.unwrap();
    for label in labels {
        sqlx::query("INSERT INTO studies (study_label) VALUES ($1)")
            .bind(label)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

fn positions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["position"].as_str().unwrap().to_string())
        .collect()
}

fn labels(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["data"]["study_label"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_reinstall_starts_another_history_and_every_client_is_told() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut live = Client::subscribed(&server, json!({"tables": ["studies"]})).await;
    insert_studies(&db.url, &["a", "b", "c"]).await;
    let old = positions(&live.events(3).await);

    // Reinstalled by a DBA while the server runs.
    pgfeed::install::uninstall(&db.pool).await.unwrap();
    pgfeed::install::migrate(&db.pool, false).await.unwrap();
    pgfeed::install::track_preset(&db.pool).await.unwrap();
    insert_studies(&db.url, &["new-1"]).await;

    // The connected client is told once, then gets the new history from its start.
    let refresh = told(&mut live).await;
    assert_eq!(
        (refresh["type"].as_str(), refresh["reason"].as_str()),
        (Some("refresh_needed"), Some("history_changed")),
        "{refresh}"
    );
    assert_eq!(refresh["seq"], 3, "what it held went up to seq 3");
    // The old history's seq 3 is beyond the new head: ahead.
    let mut back = subscribed_after(&server, &old[2]).await;
    let ahead = told(&mut back).await;
    assert_eq!(ahead["reason"], "ahead", "{ahead}");

    // The stream goes on after the new history's head (before or after
    // new-1, as the listener met the change); the client re-snapshots, as
    // client.js does, and applies the events after the snapshot's watermark.
    let restart = pgfeed::protocol::Position::parse(refresh["position"].as_str().unwrap()).unwrap();
    assert!(restart.seq <= 1);
    live.send(json!({"action": "snapshot", "table": "studies"})).await;
    let mut events = Vec::new();
    let snapshot = loop {
        let message = live.next().await;
        match message["type"].as_str() {
            Some("snapshot") => break message,
            _ if message.get("table").is_some() => events.push(message),
            _ => panic!("{message}"),
        }
    };
    let watermark = snapshot["seq"].as_i64().unwrap();
    insert_studies(&db.url, &["new-2", "new-3", "new-4"]).await;
    while events.last().is_none_or(|e| e["data"]["study_label"] != "new-4") {
        events.extend(live.events(1).await);
    }
    let newer: Vec<Value> = events
        .into_iter()
        .filter(|e| e["seq"].as_i64() > Some(watermark))
        .collect();
    let mut now: Vec<&str> = snapshot["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["study_label"].as_str().unwrap())
        .collect();
    now.extend(labels(&newer));
    assert_eq!(
        now,
        ["a", "b", "c", "new-1", "new-2", "new-3", "new-4"],
        "the tables themselves were never touched"
    );

    // Now the new history is past 3: the same position is another history's.
    for held in [&old[2], &old[0]] {
        let mut back = subscribed_after(&server, held).await;
        let refresh = told(&mut back).await;
        assert_eq!(refresh["reason"], "history_changed", "{held}: {refresh}");
        // The stream goes on live, after the position it names.
        insert_studies(&db.url, &[&format!("after-{held}")]).await;
        assert_eq!(labels(&back.events(1).await), [format!("after-{held}")]);
        live.events(1).await;
    }

    // A position of the new history resumes exactly.
    let mut exact = subscribed_after(&server, &exact_position(&db, 1).await).await;
    assert_eq!(labels(&exact.events(3).await), ["new-2", "new-3", "new-4"]);
    assert_eq!(positions(&newer)[2], exact_position(&db, 4).await);
    server.stop().await.unwrap();
}

/// What the log says seq `seq`'s checked position is.
async fn exact_position(db: &TestDb, seq: i64) -> String {
    sqlx::query_scalar("SELECT pgfeed.position($1)")
        .bind(seq)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(embedded::tool(tool)).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restores `dump` into a new database `name` of the cluster at `admin_url`; its URL.
async fn restore(dump: &Path, admin_url: &str, name: &str) -> String {
    db::create_database(admin_url, name).await.unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    run("pg_restore", &["--dbname", &url, dump.to_str().unwrap()]);
    url
}

#[tokio::test]
async fn a_restored_dump_resumes_what_it_holds_and_tells_clients_that_hold_more() {
    let db = TestDb::new().await;
    // Transaction ids the fresh cluster below will not have reached, restore
    // and all: its first tick adopts the dump's log as another cluster's.
    db.exec("DO $$ BEGIN FOR i IN 1..20000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$")
        .await;
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["studies"]})).await;
    insert_studies(&db.url, &["a", "b", "c"]).await;
    let held = positions(&client.events(3).await);
    let dir = scratch_dir("dumps");
    std::fs::create_dir_all(&dir).unwrap();
    let dump = dir.join(format!("{}.dump", db.name));
    run("pg_dump", &["-Fc", "-f", dump.to_str().unwrap(), &db.url]);
    insert_studies(&db.url, &["d", "e"]).await;
    let later = positions(&client.events(2).await);
    server.stop().await.unwrap();

    // Into a fresh cluster (a move, or an upgrade by dump), whose transaction
    // ids are far below the dump's: the feed goes on sequencing new writes.
    let other = embedded::Cluster::start(&dir.join("other"), embedded::Durability::Throwaway).unwrap();
    let elsewhere = restore(&dump, &other.url("postgres"), "restored").await;
    // Into the same cluster, under another name: an older dump restored.
    let shared_admin = format!("{}/postgres", db.url.rsplit_once('/').unwrap().0);
    let older = restore(&dump, &shared_admin, &format!("{}_older", db.name)).await;

    for url in [elsewhere, older] {
        let restored = server::start(&url, Settings::default()).await.unwrap();
        wait_ready(&restored).await;
        // A position the dump holds resumes exactly: its check is the same.
        let mut resumed = subscribed_after(&restored, &held[1]).await;
        let replayed = resumed.events(1).await;
        assert_eq!(
            (labels(&replayed), positions(&replayed)),
            (vec!["c"], vec![held[2].clone()])
        );
        insert_studies(&url, &["f"]).await;
        let fresh = resumed.events(1).await;
        assert_eq!(
            (labels(&fresh), fresh[0]["seq"].as_i64()),
            (vec!["f"], Some(4)),
            "{url}"
        );

        // Past the dump's head: ahead, then (once the new history passes it) another history.
        let mut ahead = subscribed_after(&restored, &later[1]).await;
        assert_eq!(told(&mut ahead).await["reason"], "ahead");
        insert_studies(&url, &["g"]).await;
        resumed.events(1).await;
        let mut other_history = subscribed_after(&restored, &later[1]).await;
        assert_eq!(told(&mut other_history).await["reason"], "history_changed");
        restored.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_promoted_standby_resumes_what_it_received_and_tells_clients_what_it_lost() {
    let dir = scratch_dir("failover");
    let mut primary = embedded::Cluster::start(&dir.join("primary"), embedded::Durability::Throwaway).unwrap();
    db::create_database(&primary.url("postgres"), "app").await.unwrap();
    let pool = db::pool(&primary.url("app"), 2).await.unwrap();
    pgfeed::install::demo(&pool).await.unwrap();
    pool.close().await;
    let standby =
        embedded::Cluster::start_standby(&primary, &dir.join("standby"), embedded::Durability::Throwaway).unwrap();

    let server = server::start(&primary.url("app"), Settings::default()).await.unwrap();
    wait_ready(&server).await;
    let mut client = Client::subscribed(&server, json!({"tables": ["studies"]})).await;
    insert_studies(&primary.url("app"), &["a", "b", "c"]).await;
    let received = positions(&client.events(3).await);
    // Wait until the standby has replayed them, then cut its replication:
    // what the primary commits from here on, the standby never receives.
    let standby_pool = db::pool(&standby.url("app"), 1).await.unwrap();
    let replayed = || async {
        let seqs: i64 = sqlx::query_scalar("SELECT count(*) FROM pgfeed.commits")
            .fetch_one(&standby_pool)
            .await
            .unwrap();
        seqs >= 3
    };
    for _ in 0..500 {
        if replayed().await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(replayed().await, "the standby replays what the primary committed");
    for sql in ["ALTER SYSTEM SET primary_conninfo = ''", "SELECT pg_reload_conf()"] {
        sqlx::query(sql).execute(&standby_pool).await.unwrap();
    }
    standby_pool.close().await;
    insert_studies(&primary.url("app"), &["lost-1", "lost-2"]).await;
    let lost = positions(&client.events(2).await);
    server.stop().await.unwrap();
    primary.stop().unwrap();

    // The standby becomes the primary; a server on it.
    standby.promote().unwrap();
    let promoted = server::start(&standby.url("app"), Settings::default()).await.unwrap();
    wait_ready(&promoted).await;
    // What the standby received resumes exactly.
    let mut resumed = subscribed_after(&promoted, &received[1]).await;
    let replayed = resumed.events(1).await;
    assert_eq!(positions(&replayed), [received[2].clone()]);
    // What it lost is told: ahead, then another history once the new primary's seqs pass it.
    let mut ahead = subscribed_after(&promoted, &lost[1]).await;
    assert_eq!(told(&mut ahead).await["reason"], "ahead");
    insert_studies(&standby.url("app"), &["new-4", "new-5"]).await;
    let fresh = resumed.events(2).await;
    assert_eq!(labels(&fresh), ["new-4", "new-5"]);
    for held in &lost {
        let mut other = subscribed_after(&promoted, held).await;
        assert_eq!(told(&mut other).await["reason"], "history_changed", "{held}");
    }
    promoted.stop().await.unwrap();
}
