//! The command-line tools people touch: `pgfeed simulate` and `pgfeed tail`.

mod common;

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
    db.tick().await;
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
    assert_eq!(server.state.metrics.events_untyped.get(), 0);
    assert!(server.state.metrics.events_published.get() as i64 >= committed);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tail_prints_events_in_order_and_continues_across_a_server_restart() {
    use tokio::io::AsyncBufReadExt;
    let db = TestDb::new().await;
    let server = db.server().await;
    let addr = server.addr;
    let start = db.scalar_i64("SELECT pgfeed.head()").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args([
            "tail",
            &format!("ws://{addr}/ws"),
            "--format",
            "json",
            "--tables",
            "studies",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut state = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait until it is connected.
    loop {
        let line = state.next_line().await.unwrap().expect("tail ended");
        if line.contains("connected") {
            break;
        }
    }
    db.exec(
        "INSERT INTO studies (study_label) VALUES ('a1'), ('a2'); INSERT INTO studies (study_label) VALUES ('a3');",
    )
    .await;
    db.exec("INSERT INTO text_elements (type, label) VALUES ('title', 'not a study')")
        .await;
    let mut events = read_lines(&mut lines, 3).await;

    // The server goes away; writes go on; a new server comes up on the same address.
    server.stop().await.unwrap();
    db.exec("INSERT INTO studies (study_label) VALUES ('while-down-1')")
        .await;
    db.exec("BEGIN; INSERT INTO studies (study_label) VALUES ('while-down-2'); INSERT INTO studies (study_label) VALUES ('while-down-3'); COMMIT;")
        .await;
    let server = db
        .server_with(pgfeed::server::Settings {
            bind: addr,
            ..pgfeed::server::Settings::default()
        })
        .await;
    db.exec("INSERT INTO studies (study_label) VALUES ('after-1'), ('after-2')")
        .await;
    events.extend(read_lines(&mut lines, 5).await);
    let labels: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["study_label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "a1",
            "a2",
            "a3",
            "while-down-1",
            "while-down-2",
            "while-down-3",
            "after-1",
            "after-2"
        ]
    );
    // In commit order, each once: (seq, tx_index) strictly increasing.
    let keys: Vec<(i64, i64)> = events
        .iter()
        .map(|e| (e["seq"].as_i64().unwrap(), e["tx_index"].as_i64().unwrap()))
        .collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    assert!(keys[0].0 > start);
    assert!(events.iter().all(|e| e["table"] == "studies"));

    // Ctrl-C: exits 0.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "tail exited with {status}");
    server.stop().await.unwrap();
}

/// `tail` told that its position cannot be continued (`refresh_needed`):
/// a marker line and on, or (`--on-reset exit`) exit status 3.
#[tokio::test]
async fn tail_marks_a_reset_and_goes_on_or_exits_as_asked() {
    use tokio::io::AsyncBufReadExt;
    let db = TestDb::new().await;
    let server = db.server().await;
    db.exec("INSERT INTO studies (study_label) VALUES ('held')").await;
    // Sequenced before tail connects: a position above the head would be `ahead`.
    db.tick().await;
    // A position of another history: seq 1 with a check this history does not have.
    let elsewhere = "1.00000000";
    let tail = |on_reset: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
            .args(["tail", &format!("ws://{}/ws", server.addr), "--format", "json"])
            .args(["--tables", "studies", "--after", elsewhere, "--on-reset", on_reset])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut going_on = tail("continue");
    let mut lines = tokio::io::BufReader::new(going_on.stdout.take().unwrap()).lines();
    let marker = read_lines(&mut lines, 1).await.remove(0);
    assert_eq!(
        (marker["type"].as_str(), marker["reason"].as_str()),
        (Some("refresh_needed"), Some("history_changed")),
        "{marker}"
    );
    db.exec("INSERT INTO studies (study_label) VALUES ('after-reset')")
        .await;
    let next = read_lines(&mut lines, 1).await.remove(0);
    assert_eq!(next["data"]["study_label"], "after-reset");

    let mut exiting = tail("exit");
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), exiting.wait())
        .await
        .expect("tail --on-reset exit did not exit")
        .unwrap();
    assert_eq!(status.code(), Some(3));
    server.stop().await.unwrap();
}

/// The next `n` JSON lines a child printed.
async fn read_lines(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    n: usize,
) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("tail printed nothing within 30 s")
            .unwrap()
            .expect("tail ended");
        got.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    got
}

/// Every kind of message the server sends: each `ServerMessage` (the match
/// makes a new variant a compile error here until it is listed) and PEARL's.
fn every_server_message_type() -> Vec<String> {
    use pgfeed::protocol::ServerMessage;
    let rows = serde_json::value::RawValue::from_string("[]".into()).unwrap();
    let samples = [
        ServerMessage::Connected {
            connection_id: uuid::Uuid::nil(),
            seq: 0,
            position: None,
            workspace_id: None,
        },
        ServerMessage::AuthOk { expires_at: 0 },
        ServerMessage::Pong,
        ServerMessage::Heartbeat { seq: 0, position: None },
        ServerMessage::Subscribed {
            seq: 0,
            position: None,
            tables: None,
            types: None,
            where_: None,
        },
        ServerMessage::Unsubscribed { types: None },
        ServerMessage::Resumed { after: 0, head: 0 },
        ServerMessage::refresh_needed("pruned", 0, None, None),
        ServerMessage::Snapshot {
            table: "t".into(),
            seq: 0,
            position: None,
            rows: std::borrow::Cow::Borrowed(&rows),
        },
        ServerMessage::StudiesUpdate {
            data: std::borrow::Cow::Borrowed(&rows),
            seq: 0,
        },
        ServerMessage::error("bad_request", "m"),
    ];
    for sample in &samples {
        match sample {
            ServerMessage::Connected { .. }
            | ServerMessage::AuthOk { .. }
            | ServerMessage::Pong
            | ServerMessage::Heartbeat { .. }
            | ServerMessage::Subscribed { .. }
            | ServerMessage::Unsubscribed { .. }
            | ServerMessage::Resumed { .. }
            | ServerMessage::RefreshNeeded { .. }
            | ServerMessage::Snapshot { .. }
            | ServerMessage::StudiesUpdate { .. }
            | ServerMessage::Error { .. } => {}
        }
    }
    let mut types: Vec<String> = samples
        .iter()
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(&m.encode(pgfeed::protocol::Envelope::Type)).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    types.extend(
        [
            "row_event",
            "comment_created",
            "comment_replied",
            "comment_resolved",
            "comment_updated",
            "comment_deleted",
            "tracker_assignment_updated",
            "reporting_effort_tracker_deleted",
        ]
        .map(String::from),
    );
    types
}

#[tokio::test]
async fn the_asyncapi_document_parses_and_names_every_message() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let (status, body) = common::http_get(&server, "/asyncapi.json").await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).expect("the AsyncAPI document is JSON");
    assert_eq!(doc["asyncapi"], "3.0.0");
    let messages = doc["components"]["messages"].as_object().unwrap();
    let names: std::collections::HashSet<&str> = messages.values().map(|m| m["name"].as_str().unwrap()).collect();
    for kind in every_server_message_type() {
        assert!(
            names.contains(kind.as_str()),
            "the AsyncAPI document does not name {kind}"
        );
    }
    // Every reference resolves, and every channel has both directions where clients talk.
    for (name, channel) in doc["channels"].as_object().unwrap() {
        for (key, message) in channel["messages"].as_object().unwrap() {
            let target = message["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
            assert!(messages.contains_key(target), "{name}.{key} points at nothing");
        }
    }
    for (name, operation) in doc["operations"].as_object().unwrap() {
        let channel = operation["channel"]["$ref"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        assert!(doc["channels"].get(channel).is_some(), "{name}");
    }
    // The client and the dashboard are served too.
    for path in ["/", "/client.js", "/client.d.ts", "/dashboard.js", "/style.css"] {
        let (status, body) = common::http_get(&server, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty());
    }
    let (_, tables) = common::http_get(&server, "/api/v1").await;
    let tables: serde_json::Value = serde_json::from_str(&tables).unwrap();
    assert_eq!(tables["tables"].as_array().unwrap().len(), 10);
    assert_eq!(tables["writes"], false);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn simulate_and_serve_share_the_embedded_cluster() {
    let dir = common::scratch_dir("shared-embedded");
    let data_dir = dir.to_str().unwrap();
    let served = common::Served::spawn(&[("PGFEED_DATA_DIR", data_dir)]).await;
    let mut client = common::Client::connect_to(&served.addr, "/ws").await;
    client.next_of("connected").await;
    client.subscribe(serde_json::json!({"tables": ["studies"]})).await;
    // No DATABASE_URL: simulate finds the cluster `serve` runs, and leaves it running.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args(["simulate", "--rate", "40", "--seconds", "2"])
        .env_remove("DATABASE_URL")
        .env("PGFEED_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Its first step makes a study (no effort exists yet).
    let first = client.events(1).await;
    assert_eq!(first[0]["type"], "study_created");
    // The cluster outlived simulate: the server still answers from its database.
    let port = served
        .psql
        .as_deref()
        .unwrap()
        .split(" -p ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let pool = sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:{port}/pgfeed"))
        .await
        .unwrap();
    sqlx::query("INSERT INTO studies (study_label) VALUES ('after simulate')")
        .execute(&pool)
        .await
        .unwrap();
    loop {
        let event = client.events(1).await.remove(0);
        if event["data"]["study_label"] == "after simulate" {
            break;
        }
    }
    pool.close().await;
}

#[tokio::test]
async fn bench_quick_reports_every_figure() {
    // It measures; this checks only that every figure is there and positive, never its value.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args(["bench", "--quick", "--json"])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["setup"].as_str().unwrap().contains("fsync="));
    let figures = report["figures"].as_array().unwrap();
    let scenarios: Vec<&str> = figures.iter().map(|f| f["scenario"].as_str().unwrap()).collect();
    let mut distinct = scenarios.clone();
    distinct.dedup();
    assert_eq!(
        distinct,
        ["write", "keepup", "replay", "latency", "fanout", "memory", "retain", "follow"]
    );
    // Every write path beside the references, the three fan-out figures at
    // 1,000 clients (deliveries/s against both targets, and server CPU per
    // delivery) and the two of SSE (deliveries/s, server CPU per delivery).
    assert_eq!(scenarios.iter().filter(|s| **s == "write").count(), 7, "{figures:?}");
    assert_eq!(scenarios.iter().filter(|s| **s == "fanout").count(), 5, "{figures:?}");
    for figure in figures {
        // What a follower adds to a cluster's CPU is a difference of two
        // phases: within the noise it can come out below zero.
        if figure["figure"].as_str().unwrap().contains("all it causes") {
            assert!(figure["value"].as_f64().unwrap().is_finite(), "{figure}");
            continue;
        }
        assert!(figure["value"].as_f64().unwrap() > 0.0, "{figure}");
        if let Some(reference) = figure["reference"].as_f64() {
            assert!(reference > 0.0, "{figure}");
            assert!(figure["ratio"].as_f64().unwrap() > 0.0, "{figure}");
        }
        assert!(!figure["target"].as_str().unwrap().is_empty());
    }
}
