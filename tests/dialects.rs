//! The other seeds' clients on the same machinery: verbs named with `type`,
//! `event_types`, the `{"event", "data", "timestamp"}` envelope on `/ws/updates`.

mod common;

use common::{Client, TestDb, Writers};
use serde_json::{json, Value};
use std::time::Duration;

/// (seq, type, row id) of each event, whichever envelope carried it.
fn stream(events: &[Value]) -> Vec<(i64, String, Value)> {
    events
        .iter()
        .map(|e| {
            let kind = e.get("type").or(e.get("event")).and_then(Value::as_str).unwrap();
            (e["seq"].as_i64().unwrap(), kind.to_string(), e["data"]["id"].clone())
        })
        .collect()
}

#[tokio::test]
async fn type_verbs_and_the_event_envelope_get_the_same_transactions_as_a_native_client() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut native = Client::subscribed(&server, json!({"tables": ["text_elements", "studies"]})).await;

    let mut typed = Client::connect(&server, "/ws").await;
    typed.next_of("connected").await;
    typed
        .send(json!({"type": "subscribe", "event_types": ["text_element_created", "text_element_updated", "study_created"]}))
        .await;
    typed.next_of("subscribed").await;
    typed.send(json!({"type": "ping"})).await;
    typed.next_of("pong").await;

    let mut enveloped = Client::connect(&server, "/ws/updates").await;
    let hello = enveloped.next().await;
    assert_eq!(hello["event"], "connected", "{hello}");
    assert!(hello["data"]["connection_id"].is_string());
    assert!(hello["timestamp"].as_str().unwrap().ends_with('Z'));
    enveloped.send(json!({"event": "ping"})).await;
    let pong = enveloped.next().await;
    assert_eq!(pong["event"], "pong", "{pong}");
    assert!(pong["timestamp"].as_str().unwrap().ends_with('Z'));
    enveloped
        .send(json!({"event": "subscribe", "data": {"tables": ["text_elements", "studies"]}}))
        .await;
    assert_eq!(enveloped.next().await["event"], "subscribed");

    let mut query = Client::connect(&server, "/ws?envelope=event").await;
    assert_eq!(query.next().await["event"], "connected");
    query.send(json!({"event": "subscribe", "data": {}})).await;
    assert_eq!(query.next().await["event"], "subscribed");

    let writers = Writers::start(&db.url, 4, 100);
    writers.finish().await;
    let reference = common::read_until_marker(&db, &mut native).await;
    common::assert_matches_log(&db, &reference, 0).await;
    assert_eq!(reference.len(), 400 + 100 + 1, "inserts, updates and the marker");
    for client in [&mut typed, &mut enveloped, &mut query] {
        let events = common::read_until_first_marker(client).await;
        let events: Vec<Value> = events
            .into_iter()
            .filter(|e| e["table"] != "studies" || e["data"]["study_label"].as_str().unwrap().starts_with("marker"))
            .collect();
        assert_eq!(stream(&events), stream(&reference));
    }
    let sample = &common::read_until_marker(&db, &mut query).await[0];
    assert_eq!(sample["event"], "study_created");
    assert!(sample.get("type").is_none(), "{sample}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unsubscribe_with_types_stops_only_those_and_auth_is_answered_not_enabled_when_off() {
    let db = TestDb::new().await;
    let server = db.server().await;
    // With authentication off, a token in the query is not needed and not looked at;
    // an `auth` message is answered, and the socket stays open.
    let mut client = Client::connect(&server, "/ws?token=not-a-real-token").await;
    client.next_of("connected").await;
    client.send(json!({"type": "auth", "token": "not-a-real-token"})).await;
    let refused = client.next().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("not_enabled"))
    );
    assert!(
        !refused.to_string().contains("not-a-real-token"),
        "a token is never echoed"
    );

    client.send(json!({"type": "subscribe", "tables": ["studies"]})).await;
    client.next_of("subscribed").await;
    client
        .send(json!({"type": "unsubscribe", "event_types": ["study_updated"]}))
        .await;
    let unsubscribed = client.next_of("unsubscribed").await;
    assert_eq!(unsubscribed["types"], json!(["study_updated"]));
    db.exec(
        "INSERT INTO studies (study_label) VALUES ('S1');
         UPDATE studies SET study_label = 'S2';
         DELETE FROM studies;",
    )
    .await;
    let kinds: Vec<Value> = client.events(2).await.into_iter().map(|e| e["type"].clone()).collect();
    assert_eq!(kinds, ["study_created", "study_deleted"]);

    // And the PEARL endpoint takes a token too, without closing.
    let mut pearl = Client::connect(&server, "/api/v1/ws/studies?token=x").await;
    assert_eq!(pearl.next().await["type"], "studies_update");
    pearl.send(json!({"action": "auth", "token": "x"})).await;
    assert_eq!(pearl.next().await["code"], "not_enabled");
    pearl.send(json!({"action": "ping"})).await;
    assert_eq!(pearl.next().await["type"], "pong");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn heimdall_never_subscribes_and_gets_every_change_on_ws_updates() {
    let db = TestDb::new().await;
    let server = db.server().await;
    // Heimdall's broadcast: connect, read; never a `subscribe`.
    let mut heimdall = Client::connect(&server, "/ws/updates").await;
    assert_eq!(heimdall.next().await["event"], "connected");
    // On /ws the default stays off: a client there subscribes first.
    let mut plain = Client::connect(&server, "/ws").await;
    plain.next_of("connected").await;
    db.exec("INSERT INTO studies (study_label) VALUES ('A'); INSERT INTO text_elements (type, label) VALUES ('title', 'T');")
        .await;
    let events = heimdall.events(2).await;
    assert_eq!(
        events.iter().map(|e| e["event"].as_str().unwrap()).collect::<Vec<_>>(),
        ["study_created", "text_element_created"]
    );
    common::assert_matches_log(&db, &events, 0).await;
    assert!(plain.next_within(Duration::from_millis(300)).await.is_none());
    // A `subscribe` replaces the default.
    heimdall
        .send(json!({"event": "subscribe", "data": {"tables": ["text_elements"]}}))
        .await;
    assert_eq!(heimdall.next().await["event"], "subscribed");
    db.exec("INSERT INTO studies (study_label) VALUES ('B'); INSERT INTO text_elements (type, label) VALUES ('title', 'U');")
        .await;
    assert_eq!(heimdall.events(1).await[0]["data"]["label"], "U");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn hycon_names_its_events_and_never_subscribes() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE equipment (id serial PRIMARY KEY, name text, status text)")
        .await;
    pgfeed::install::track(&db.pool, "equipment", "equipment", &[])
        .await
        .unwrap();
    let names = [
        ("created", "equipment_update"),
        ("updated", "equipment_update"),
        ("deleted", "equipment_removed"),
    ]
    .map(|(verb, name)| (verb.to_string(), name.to_string()));
    pgfeed::install::name_events(&db.pool, "equipment", &names)
        .await
        .unwrap();
    let shown: Value = sqlx::query_scalar("SELECT event_names FROM pgfeed.tracked WHERE table_name = 'equipment'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(shown["created"], "equipment_update");
    let server = db
        .server_with(pgfeed::server::Settings {
            limits: pgfeed::http::Limits {
                subscribe_all_on_ws: true,
                ..pgfeed::http::Limits::default()
            },
            ..pgfeed::server::Settings::default()
        })
        .await;
    // HyCON: /ws, no subscribe, its own event names.
    let mut hycon = Client::connect(&server, "/ws").await;
    hycon.next_of("connected").await;
    db.exec(
        "INSERT INTO equipment (name, status) VALUES ('centrifuge', 'idle');
         UPDATE equipment SET status = 'running';
         DELETE FROM equipment;",
    )
    .await;
    let events = hycon.events(3).await;
    assert_eq!(
        events.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["equipment_update", "equipment_update", "equipment_removed"]
    );
    assert_eq!(events[1]["data"]["status"], "running");
    common::assert_matches_log(&db, &events, 0).await;
    // Renamed while serving: the next events carry the new names.
    let names = [("created", "equipment_added")].map(|(verb, name)| (verb.to_string(), name.to_string()));
    pgfeed::install::name_events(&db.pool, "equipment", &names)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    db.exec("INSERT INTO equipment (name) VALUES ('scale')").await;
    assert_eq!(hycon.events(1).await[0]["type"], "equipment_added");
    // A bad name is refused with a clear error.
    let bad = [("created", "two words")].map(|(verb, name)| (verb.to_string(), name.to_string()));
    let refused = pgfeed::install::name_events(&db.pool, "equipment", &bad)
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("not an event name"), "{refused:#}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shadower_reads_connection_and_workspace_at_the_top_of_connected() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut shadower = Client::connect(&server, "/ws/updates?workspace_id=ws-7").await;
    let connected = shadower.next().await;
    assert_eq!(connected["event"], "connected", "{connected}");
    assert!(connected["connection_id"].is_string(), "{connected}");
    assert_eq!(connected["workspace_id"], "ws-7", "{connected}");
    assert_eq!(connected["data"]["connection_id"], connected["connection_id"]);
    server.stop().await.unwrap();
}
