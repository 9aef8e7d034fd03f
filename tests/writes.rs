//! PEARL's REST writes (`--enable-writes`): PEARL's own WebSocket tests create,
//! rename and delete a study over HTTP and watch the socket. The events come
//! from the triggers, like any other write.

mod common;

use common::{http, seed_pearl, Client, TestDb};
use pgfeed::http::Limits;
use pgfeed::server::Settings;
use serde_json::{json, Value};

fn with_writes() -> Settings {
    Settings {
        limits: Limits {
            enable_writes: true,
            ..Limits::default()
        },
        ..Settings::default()
    }
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn pearls_websocket_test_flow_create_rename_delete_a_study() {
    let db = TestDb::new().await;
    let server = db.server_with(with_writes()).await;
    let mut pearl = Client::connect(&server, "/api/v1/ws/studies").await;
    assert_eq!(pearl.next().await["type"], "studies_update");

    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/studies/",
        Some(r#"{"study_label": "WS-TEST-001"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let created = parse(&body);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["study_label"], "WS-TEST-001");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    let event = pearl.next().await;
    assert_eq!(event["type"], "study_created");
    assert_eq!(event["data"]["id"], id, "the event names the id the POST returned");

    let (status, body) = http(
        &server,
        "PUT",
        &format!("/api/v1/studies/{id}"),
        Some(r#"{"study_label": "WS-TEST-001b"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["study_label"], "WS-TEST-001b");
    let event = pearl.next().await;
    assert_eq!(
        (event["type"].as_str(), event["data"]["id"].as_i64()),
        (Some("study_updated"), Some(id))
    );
    assert_eq!(event["data"]["study_label"], "WS-TEST-001b");

    let (status, body) = http(
        &server,
        "PATCH",
        &format!("/api/v1/studies/{id}/"),
        Some(r#"{"study_label": "WS-TEST-001c"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(pearl.next().await["data"]["study_label"], "WS-TEST-001c");

    let (status, body) = http(&server, "DELETE", &format!("/api/v1/studies/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["study_label"], "WS-TEST-001c");
    let event = pearl.next().await;
    assert_eq!(
        (event["type"].as_str(), event["data"]["id"].as_i64()),
        (Some("study_deleted"), Some(id))
    );

    // The snapshot route takes the trailing slash too.
    let (status, body) = http(&server, "GET", "/api/v1/studies/", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["rows"], json!([]));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_rejected_write_gets_its_status_and_writes_nothing() {
    let db = TestDb::new().await;
    seed_pearl(&db).await;
    db.exec("CREATE TABLE untracked (id serial PRIMARY KEY, name text)")
        .await;
    let server = db.server_with(with_writes()).await;
    let mut feed = Client::subscribed(&server, json!({})).await;
    let before = db.scalar_i64("SELECT count(*) FROM pgfeed.events").await;

    for (method, path, body, status, says) in [
        (
            "POST",
            "/api/v1/studies",
            r#"{"study_label": "ONC-001"}"#,
            400,
            "duplicate key",
        ),
        (
            "POST",
            "/api/v1/studies",
            r#"{"nope": 1}"#,
            400,
            "unknown column `nope`",
        ),
        ("POST", "/api/v1/studies", r#"{"study_label": "x""#, 400, "not JSON"),
        ("POST", "/api/v1/studies", r#"["ONC-9"]"#, 400, "JSON object"),
        (
            "POST",
            "/api/v1/database_releases",
            r#"{"study_id": 999, "database_release_label": "D"}"#,
            400,
            "foreign key",
        ),
        (
            "POST",
            "/api/v1/users",
            r#"{"username": "eve", "role": "KING"}"#,
            400,
            "userrole",
        ),
        (
            "POST",
            "/api/v1/users",
            r#"{"username": "eve", "password_hash": "x"}"#,
            400,
            "unknown column `password_hash`",
        ),
        (
            "PUT",
            "/api/v1/studies/999",
            r#"{"study_label": "ghost"}"#,
            404,
            "no row with id 999",
        ),
        (
            "PUT",
            "/api/v1/studies/abc",
            r#"{"study_label": "ghost"}"#,
            400,
            "integer",
        ),
        ("PUT", "/api/v1/studies/1", r#"{}"#, 400, "nothing to update"),
        ("DELETE", "/api/v1/studies/999", "", 404, "no row with id 999"),
        ("DELETE", "/api/v1/users/1", "", 400, "foreign key"),
        ("POST", "/api/v1/untracked", r#"{"name": "x"}"#, 404, "not tracked"),
        ("DELETE", "/api/v1/untracked/1", "", 404, "not tracked"),
    ] {
        let (got, reply) = http(&server, method, path, Some(body).filter(|b| !b.is_empty())).await;
        assert_eq!(got, status, "{method} {path} {body}: {reply}");
        let reply = parse(&reply);
        let detail = reply["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{method} {path} {body}: {detail}");
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pgfeed.events").await,
        before,
        "nothing was written"
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM untracked").await, 0);
    // And nothing reached the feed: the next event is the marker.
    let events = common::read_until_marker(&db, &mut feed).await;
    assert_eq!(events.len(), 1, "{events:#?}");

    // A user written over REST: enum labels as text, credentials neither written nor returned.
    let (status, body) = http(
        &server,
        "POST",
        "/api/v1/users",
        Some(r#"{"username": "eve", "role": "EDITOR"}"#),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let user = parse(&body);
    assert_eq!(user["role"], "EDITOR");
    assert!(user.get("password_hash").is_none());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn writes_are_off_by_default() {
    let db = TestDb::new().await;
    let server = db.server().await;
    for (method, path) in [
        ("POST", "/api/v1/studies"),
        ("PUT", "/api/v1/studies/1"),
        ("DELETE", "/api/v1/studies/1"),
    ] {
        let (status, body) = http(&server, method, path, Some(r#"{"study_label": "x"}"#)).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert!(parse(&body)["detail"].as_str().unwrap().contains("--enable-writes"));
    }
    assert_eq!(db.scalar_i64("SELECT count(*) FROM studies").await, 0);
    server.stop().await.unwrap();
}
