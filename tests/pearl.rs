//! PEARL's clients, unmodified: the PEARL endpoint sends exactly PEARL's
//! messages, in PEARL's shapes, for writes made with plain SQL.

mod common;

use std::collections::HashMap;

use common::{seed_pearl, Client, TestDb};
use pgfeed::server::Settings;
use serde_json::{json, Value};

/// The PEARL messages (not replies to the client) up to and including the
/// first study whose label starts with `marker`; the marker is written here.
async fn messages_until_marker(db: &TestDb, pearl: &mut Client) -> Vec<Value> {
    db.exec("INSERT INTO studies (study_label) VALUES ('marker-' || gen_random_uuid())")
        .await;
    let mut messages = Vec::new();
    loop {
        let message = pearl.next().await;
        assert!(message.get("close").is_none(), "closed: {message}");
        let marker = message["type"] == "study_created"
            && message["data"]["study_label"]
                .as_str()
                .is_some_and(|l| l.starts_with("marker-"));
        if marker {
            return messages;
        }
        messages.push(message);
    }
}

fn kinds(messages: &[Value]) -> Vec<&str> {
    messages.iter().map(|m| m["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn every_pearl_message_in_pearls_shape() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut pearl = Client::connect(&server, "/api/v1/ws/studies").await;
    assert_eq!(pearl.next().await["type"], "studies_update");

    seed_pearl(&db).await;
    let seeded = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(
        kinds(&seeded),
        [
            "user_created",
            "user_created",
            "study_created",
            "database_release_created",
            "reporting_effort_created",
            "reporting_effort_item_created",
            "reporting_effort_tracker_created",
            "comment_created",
            "package_created",
            "package_item_created",
            "text_element_created"
        ]
    );
    let created = &seeded[7]["data"];
    assert_eq!(created["tracker_id"], 1);
    assert_eq!(created["unresolved_count"], 1);
    assert_eq!(created["comment"]["id"], 1);
    assert_eq!(created["comment"]["comment_text"], "check N");
    assert_eq!(created["comment"]["username"], "ana");
    assert_eq!(created["comment"]["is_parent_comment"], true);
    assert!(created["comment"]["created_at"].as_str().unwrap().ends_with('Z'));

    // A reply: comment_replied only; replies do not count.
    db.exec(
        "INSERT INTO tracker_comments (tracker_id, user_id, parent_comment_id, comment_text) VALUES (1, 2, 1, 'done?')",
    )
    .await;
    let reply = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(kinds(&reply), ["comment_replied"]);
    let data = &reply[0]["data"];
    assert_eq!(
        (data["tracker_id"].as_i64(), data["parent_comment_id"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(data["reply"]["username"], "ben");
    assert_eq!(data["reply"]["comment_text"], "done?");
    assert_eq!(data["reply"]["is_parent_comment"], false);
    assert_eq!(data["unresolved_count"], 1);

    // An edit: comment_updated, the row with the count.
    db.exec("UPDATE tracker_comments SET comment_text = 'check N again' WHERE id = 1")
        .await;
    let edit = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(kinds(&edit), ["comment_updated"]);
    assert_eq!(edit[0]["data"]["comment_text"], "check N again");
    assert_eq!(edit[0]["data"]["unresolved_count"], 1);

    // Resolving: comment_resolved only.
    db.exec(
        "UPDATE tracker_comments SET is_resolved = true, resolved_by_user_id = 2, resolved_at = now() WHERE id = 1",
    )
    .await;
    let resolved = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(kinds(&resolved), ["comment_resolved"]);
    assert_eq!(
        resolved[0]["data"],
        json!({"tracker_id": 1, "comment_id": 1, "unresolved_count": 0})
    );

    // Both programmers change: the tracker update, then one assignment event per role.
    db.exec("UPDATE reporting_effort_item_tracker SET production_programmer_id = 2, qc_programmer_id = 1 WHERE id = 1")
        .await;
    let assigned = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(
        kinds(&assigned),
        [
            "reporting_effort_tracker_updated",
            "tracker_assignment_updated",
            "tracker_assignment_updated"
        ]
    );
    assert_eq!(assigned[1]["data"]["assignment_type"], "production");
    assert_eq!(assigned[1]["data"]["programmer_id"], 2);
    assert_eq!(assigned[2]["data"]["assignment_type"], "qc");
    assert_eq!(assigned[2]["data"]["programmer_id"], 1);
    assert_eq!(assigned[2]["data"]["tracker"]["id"], 1);
    assert_eq!(assigned[2]["data"]["tracker"]["qc_programmer_id"], 1);

    // A deleted reply: comment_deleted {id, tracker_id, unresolved_count}.
    db.exec("DELETE FROM tracker_comments WHERE id = 101").await;
    let deleted = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(kinds(&deleted), ["comment_deleted"]);
    assert_eq!(
        deleted[0]["data"],
        json!({"id": 101, "tracker_id": 1, "unresolved_count": 0})
    );

    // A tracker deleted by user 2 (the actor convention), with its item's context.
    db.exec("BEGIN; SET LOCAL pgfeed.actor = '2'; DELETE FROM reporting_effort_item_tracker WHERE id = 1; COMMIT;")
        .await;
    let gone = messages_until_marker(&db, &mut pearl).await;
    let tracker_deleted: Vec<&Value> = gone
        .iter()
        .filter(|m| m["type"] == "reporting_effort_tracker_deleted")
        .collect();
    assert_eq!(tracker_deleted.len(), 1, "{gone:#?}");
    let data = &tracker_deleted[0]["data"];
    assert_eq!(data["tracker"]["id"], 1);
    assert_eq!(data["deleted_by"], json!({"user_id": 2, "username": "ben"}));
    assert_eq!(data["item"], json!({"item_code": "t_dm", "effort_id": 1}));
    let deleted_at = data["deleted_at"].as_str().unwrap();
    assert!(deleted_at.len() == 24 && deleted_at.ends_with('Z'), "{deleted_at}");
    // Its comment went with it (the cascade), as PEARL's delete message.
    assert_eq!(kinds(&gone).iter().filter(|k| **k == "comment_deleted").count(), 1);

    // The cascade case: the item is deleted, taking its tracker; no actor.
    db.exec(
        "INSERT INTO reporting_effort_items (id, reporting_effort_id, item_type, item_subtype, item_code) VALUES (2, 1, 'TLF', 'Table', 't_ae');
         INSERT INTO reporting_effort_item_tracker (id, reporting_effort_item_id) VALUES (2, 2);",
    )
    .await;
    messages_until_marker(&db, &mut pearl).await;
    db.exec("DELETE FROM reporting_effort_items WHERE id = 2").await;
    let cascade = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(
        kinds(&cascade),
        ["reporting_effort_item_deleted", "reporting_effort_tracker_deleted"]
    );
    assert_eq!(cascade[1]["data"]["item"], json!({"item_code": "t_ae", "effort_id": 1}));
    assert_eq!(cascade[1]["data"]["deleted_by"], Value::Null);
    assert_eq!(cascade[1]["data"]["tracker"]["reporting_effort_item_id"], 2);
    assert_eq!(cascade[0]["seq"], cascade[1]["seq"]);

    // A TRUNCATE: PEARL's clients reload.
    db.exec("TRUNCATE text_elements").await;
    let truncated = messages_until_marker(&db, &mut pearl).await;
    assert_eq!(kinds(&truncated), ["refresh_needed"]);
    assert_eq!(truncated[0]["data"]["table"], "text_elements");
    server.stop().await.unwrap();
}

/// Comment writes, each recording in the same transaction the tracker's
/// unresolved count as SQL computes it (in a table pgfeed does not track).
async fn write_comments(db: &TestDb, rounds: usize, pad: usize) {
    db.exec("CREATE TABLE expected (label text PRIMARY KEY, n bigint NOT NULL)")
        .await;
    let count = |tracker: i64| {
        format!(
            "(SELECT count(*) FROM tracker_comments WHERE tracker_id = {tracker} AND parent_comment_id IS NULL AND NOT is_resolved)"
        )
    };
    for i in 0..rounds {
        let tracker = 1 + (i % 2) as i64;
        let label = format!("c{i}-{}", "x".repeat(pad));
        let mut sql = format!(
            "BEGIN; INSERT INTO tracker_comments (tracker_id, user_id, comment_text) VALUES ({tracker}, 1, '{label}');
             INSERT INTO expected VALUES ('{label}', {});",
            count(tracker)
        );
        if i % 3 == 2 {
            // Resolve the oldest unresolved comment of the tracker.
            sql += &format!(
                "UPDATE tracker_comments SET is_resolved = true
                   WHERE id = (SELECT min(id) FROM tracker_comments WHERE tracker_id = {tracker} AND NOT is_resolved AND parent_comment_id IS NULL);
                 INSERT INTO expected VALUES ('r{i}', {});",
                count(tracker)
            );
        }
        if i % 5 == 4 {
            sql += &format!(
                "INSERT INTO tracker_comments (tracker_id, user_id, parent_comment_id, comment_text)
                      SELECT {tracker}, 2, max(id), 'reply' FROM tracker_comments WHERE tracker_id = {tracker};"
            );
        }
        sql += "COMMIT;";
        db.exec(&sql).await;
    }
}

/// Checks every comment message's count against what SQL said in its transaction.
/// Returns how many top-level comment_created and comment_resolved messages there were.
fn check_counts(messages: &[Value], expected: &HashMap<String, i64>) -> usize {
    let mut checked = 0;
    for m in messages {
        match m["type"].as_str() {
            Some("comment_created") => {
                // PEARL's shape on the PEARL endpoint, the row on /ws.
                let comment = if m["data"].get("comment").is_some() {
                    &m["data"]["comment"]
                } else {
                    &m["data"]
                };
                if !comment["parent_comment_id"].is_null() {
                    continue;
                }
                let label = comment["comment_text"].as_str().unwrap();
                let count = m["data"]["unresolved_count"]
                    .as_i64()
                    .or(m["unresolved_count"].as_i64());
                assert_eq!(count, expected.get(label).copied(), "{m}");
                checked += 1;
            }
            Some("comment_resolved") => checked += 1,
            _ => {}
        }
    }
    checked
}

async fn expected(db: &TestDb) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT label, n FROM expected")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    rows.into_iter().collect()
}

/// `comment_resolved` counts, keyed by seq, from SQL: (seq of the insert of c<i>) → r<i>.
async fn expected_resolved(messages: &[Value], expected: &HashMap<String, i64>) {
    let mut by_seq: HashMap<i64, i64> = HashMap::new();
    for m in messages {
        let comment = if m["data"].get("comment").is_some() {
            &m["data"]["comment"]
        } else {
            &m["data"]
        };
        if m["type"] == "comment_created" {
            let label = comment["comment_text"].as_str().unwrap_or("");
            if let Some(i) = label.strip_prefix('c').and_then(|l| l.split('-').next()) {
                if let Some(n) = expected.get(&format!("r{i}")) {
                    by_seq.insert(m["seq"].as_i64().unwrap(), *n);
                }
            }
        }
    }
    let resolved: Vec<&Value> = messages.iter().filter(|m| m["type"] == "comment_resolved").collect();
    assert!(!resolved.is_empty());
    for m in resolved {
        let want = by_seq.get(&m["seq"].as_i64().unwrap()).copied();
        assert_eq!(m["data"]["unresolved_count"].as_i64(), want, "{m}");
    }
}

#[tokio::test]
async fn unresolved_counts_are_exact_on_resume_from_an_earlier_seq() {
    let db = TestDb::new().await;
    seed_pearl(&db).await;
    db.exec("INSERT INTO reporting_effort_items (id, reporting_effort_id, item_type, item_subtype, item_code) VALUES (2, 1, 'TLF', 'Table', 't_ae');
             INSERT INTO reporting_effort_item_tracker (id, reporting_effort_item_id) VALUES (2, 2);")
        .await;
    let start = db.tick().await;
    write_comments(&db, 60, 0).await;
    // The server starts after the writes: every count comes from the log.
    let server = db.server().await;
    let mut client = Client::subscribed(&server, json!({"tables": ["tracker_comments", "studies"]})).await;
    client.send(json!({"action": "resume", "after": start})).await;
    client.next_of("resumed").await;
    let messages = common::read_until_marker(&db, &mut client).await;
    let expected = expected(&db).await;
    assert_eq!(check_counts(&messages, &expected), 60 + 20, "60 comments, 20 resolved");
    expected_resolved(&messages, &expected).await;
    // A resume from the middle.
    let middle = messages[messages.len() / 2]["seq"].as_i64().unwrap();
    let mut late = Client::subscribed(&server, json!({"tables": ["tracker_comments", "studies"]})).await;
    late.send(json!({"action": "resume", "after": middle})).await;
    late.next_of("resumed").await;
    let rest = common::read_until_marker(&db, &mut late).await;
    assert!(rest.iter().all(|m| m["seq"].as_i64().unwrap() > middle));
    assert!(check_counts(&rest, &expected) > 10);
    expected_resolved(&rest, &expected).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unresolved_counts_are_exact_for_a_pearl_client_that_fell_behind() {
    let db = TestDb::new().await;
    seed_pearl(&db).await;
    db.exec("INSERT INTO reporting_effort_items (id, reporting_effort_id, item_type, item_subtype, item_code) VALUES (2, 1, 'TLF', 'Table', 't_ae');
             INSERT INTO reporting_effort_item_tracker (id, reporting_effort_item_id) VALUES (2, 2);")
        .await;
    let server = db
        .server_with(Settings {
            hub_capacity: 16,
            ..Settings::default()
        })
        .await;
    // A client with a tiny receive window, unread while big comments are written:
    // far more than the socket buffers hold, so it falls behind the ring.
    let mut pearl = Client::connect_small_window(&server, "/api/v1/ws/studies").await;
    assert_eq!(pearl.next().await["type"], "studies_update");
    write_comments(&db, 200, 40_000).await;
    let messages = messages_until_marker(&db, &mut pearl).await;
    assert!(
        server.state.metrics.client_catch_ups.get() >= 1,
        "the client never fell behind; the test proves nothing"
    );
    let expected = expected(&db).await;
    let created = messages.iter().filter(|m| m["type"] == "comment_created").count();
    assert_eq!(created, 200, "top-level comments, each once");
    assert_eq!(
        check_counts(&messages, &expected),
        200 + 66,
        "200 comments, 66 resolved"
    );
    expected_resolved(&messages, &expected).await;
    assert_eq!(messages.iter().filter(|m| m["type"] == "comment_replied").count(), 40);
    server.stop().await.unwrap();
}
