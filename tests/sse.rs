//! `GET /events`: Server-Sent Events with `id: <seq>` per whole transaction,
//! so `Last-Event-ID` resumes exactly; same filters and scopes as `/ws`.

mod common;

use std::time::Duration;

use common::TestDb;
use pgfeed::server::Running;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A minimal SSE client over HTTP/1.1 chunked encoding, as a browser's EventSource reads it.
struct EventSource {
    reader: BufReader<tokio::net::TcpStream>,
    /// Decoded bytes not yet parsed into events.
    buffer: String,
    /// The `id:` of the last event, as EventSource keeps it.
    last_event_id: Option<String>,
}

/// One dispatched event: (event type, data).
type SseEvent = (String, String);

impl EventSource {
    async fn open(running: &Running, path: &str, last_event_id: Option<&str>) -> Result<EventSource, u16> {
        let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{resume}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        let code: u16 = status[9..12].parse().unwrap();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await.unwrap();
            if header == "\r\n" {
                break;
            }
        }
        if code != 200 {
            return Err(code);
        }
        Ok(EventSource {
            reader,
            buffer: String::new(),
            last_event_id: last_event_id.map(String::from),
        })
    }

    /// Reads one chunk of the body into the buffer.
    async fn read_chunk(&mut self) {
        let mut size = String::new();
        self.reader.read_line(&mut size).await.unwrap();
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        let mut chunk = vec![0u8; size + 2];
        self.reader.read_exact(&mut chunk).await.unwrap();
        self.buffer.push_str(std::str::from_utf8(&chunk[..size]).unwrap());
    }

    /// The next dispatched event (comments and id-only blocks update state only), or None after `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut kind, mut data) = (String::from("message"), Vec::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                    } else if let Some(v) = line.strip_prefix("id:") {
                        self.last_event_id = Some(v.trim().to_string());
                    }
                }
                if !data.is_empty() {
                    return Some((kind, data.join("\n")));
                }
            }
            tokio::time::timeout_at(deadline, self.read_chunk()).await.ok()?;
        }
    }

    /// Whether the server ends the stream (the last, empty chunk) within `wait`.
    async fn ends_within(&mut self, wait: Duration) -> bool {
        let mut size = String::new();
        let read = tokio::time::timeout(wait, self.reader.read_line(&mut size)).await;
        matches!(read, Ok(Ok(_))) && size.trim() == "0"
    }

    async fn next(&mut self) -> SseEvent {
        self.next_within(Duration::from_secs(15))
            .await
            .expect("no event within 15 s")
    }

    /// Row events (JSON with a seq) until `count` have arrived.
    async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::new();
        while events.len() < count {
            let (_, data) = self.next().await;
            let event: Value = serde_json::from_str(&data).unwrap();
            if event.get("table").is_some() {
                events.push(event);
            }
        }
        events
    }
}

#[tokio::test]
async fn ids_are_seqs_of_whole_transactions_and_last_event_id_resumes_exactly() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut source = EventSource::open(&server, "/events?tables=studies,text_elements", None)
        .await
        .unwrap();
    let (kind, data) = source.next().await;
    assert_eq!(kind, "connected", "{data}");
    let start = pgfeed::protocol::Position::parse(source.last_event_id.as_deref().unwrap())
        .unwrap()
        .seq;

    db.exec("INSERT INTO studies (study_label) VALUES ('S1')").await;
    db.exec("BEGIN; INSERT INTO studies (study_label) VALUES ('S2'); INSERT INTO text_elements (type, label) VALUES ('title', 'T'); COMMIT;")
        .await;
    // The id moves with the last event of each transaction, in the same
    // block: the client holds an event and the id after it, or neither.
    let checked_seq = |source: &EventSource| {
        source
            .last_event_id
            .as_deref()
            .and_then(pgfeed::protocol::Position::parse)
            .filter(|position| position.check.is_some())
            .map(|position| position.seq)
    };
    let s1 = source.events(1).await.remove(0);
    assert_eq!(s1["type"], "study_created");
    assert_eq!(checked_seq(&source), s1["seq"].as_i64());
    let s1_id = source.last_event_id.clone().unwrap();
    let s2 = source.events(1).await.remove(0);
    assert_eq!(
        source.last_event_id.as_deref(),
        Some(format!("{s1_id}:1").as_str()),
        "inside a transaction, the id is the last whole one's and how far into the next"
    );
    let t = source.events(1).await.remove(0);
    assert_eq!(s2["seq"], t["seq"], "one transaction");
    assert_eq!(checked_seq(&source), t["seq"].as_i64());
    db.exec("INSERT INTO studies (study_label) VALUES ('S3')").await;
    let s3 = source.events(1).await.remove(0);
    let seen_through = s3["seq"].as_i64().unwrap();
    // What a browser sends back: the checked position of S3's transaction.
    let last_event_id = source.last_event_id.clone().unwrap();
    assert_eq!(
        pgfeed::protocol::Position::parse(&last_event_id).unwrap().seq,
        seen_through
    );
    drop(source);

    // Writes while the client is away.
    let writers = common::Writers::start(&db.url, 2, 50);
    writers.finish().await;
    db.exec("INSERT INTO studies (study_label) VALUES ('marker-back')")
        .await;
    // The browser reconnects naming S3's transaction.
    let mut resumed = EventSource::open(&server, "/events?tables=studies,text_elements", Some(&last_event_id))
        .await
        .unwrap();
    let (kind, _) = resumed.next().await;
    assert_eq!(kind, "connected");
    let mut events = Vec::new();
    loop {
        let event = resumed.events(1).await.remove(0);
        let done = event["data"]["study_label"] == "marker-back";
        events.push(event);
        if done {
            break;
        }
    }
    common::assert_matches_log(&db, &events, seen_through).await;
    assert!(events.iter().all(|e| e["seq"].as_i64().unwrap() > seen_through));
    assert!(start < seen_through);
    // The stream counts as an open SSE connection, and its events as delivered.
    let (_, metrics) = common::http_get(&server, "/metrics").await;
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} ")));
        line.unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // At least: the first stream's close is seen only when a write to it fails.
    assert!(value(r#"pgfeed_connections_open{endpoint="sse"}"#) >= 1.0);
    assert!(value("pgfeed_events_delivered_total") >= (events.len() + 4) as f64);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn filters_and_bad_requests() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let mut only_deletes = EventSource::open(&server, "/events?types=study_deleted", None)
        .await
        .unwrap();
    let mut where_ = EventSource::open(
        &server,
        "/events?tables=studies&where=%7B%22study_label%22%3A%22B%22%7D",
        None,
    )
    .await
    .unwrap();
    for s in [&mut only_deletes, &mut where_] {
        assert_eq!(s.next().await.0, "connected");
    }
    db.exec("INSERT INTO studies (study_label) VALUES ('A'), ('B'); DELETE FROM studies WHERE study_label = 'A';")
        .await;
    let deleted = only_deletes.events(1).await;
    assert_eq!(
        (deleted[0]["type"].as_str(), deleted[0]["data"]["study_label"].as_str()),
        (Some("study_deleted"), Some("A"))
    );
    let b = where_.events(1).await;
    assert_eq!(b[0]["data"]["study_label"], "B");
    assert!(where_.next_within(Duration::from_millis(300)).await.is_none());

    let bad = EventSource::open(&server, "/events?where=nope", None).await;
    assert_eq!(bad.err(), Some(400));
    // A position beyond the head is not an error: the client is told to start over, and the stream goes on.
    let mut ahead = EventSource::open(&server, "/events?after=999999", None).await.unwrap();
    assert_eq!(ahead.next().await.0, "connected");
    let (kind, data) = ahead.next().await;
    let refresh: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (kind.as_str(), refresh["reason"].as_str()),
        ("refresh_needed", Some("ahead"))
    );
    let bad_position = EventSource::open(&server, "/events?after=12.nope", None).await;
    assert_eq!(bad_position.err(), Some(400));
    server.stop().await.unwrap();
}

/// One rule for `where` on every path (src/filter.rs): a number and the
/// string of its text match, other spellings do not. A WebSocket
/// subscription, an SSE query and a snapshot under a token's scope (its
/// unit test in src/auth.rs) all follow it.
#[tokio::test]
async fn a_number_and_its_text_match_alike_on_the_websocket_and_sse() {
    let db = TestDb::new().await;
    let server = db.server().await;
    // where {"id": ["2", "07", 3]}: ids 2 and 3 match, "07" matches nothing.
    let mut sse = EventSource::open(
        &server,
        "/events?tables=studies&where=%7B%22id%22%3A%5B%222%22%2C%2207%22%2C3%5D%7D",
        None,
    )
    .await
    .unwrap();
    assert_eq!(sse.next().await.0, "connected");
    let mut ws = common::Client::subscribed(
        &server,
        serde_json::json!({"tables": ["studies"], "where": {"id": ["2", "07", 3]}}),
    )
    .await;
    db.exec("INSERT INTO studies (id, study_label) VALUES (1, 'one'), (2, 'two'), (7, 'seven'), (3, 'three')")
        .await;
    let over_sse: Vec<Value> = sse
        .events(2)
        .await
        .into_iter()
        .map(|e| e["data"]["id"].clone())
        .collect();
    let over_ws: Vec<Value> = ws
        .events(2)
        .await
        .into_iter()
        .map(|e| e["data"]["id"].clone())
        .collect();
    assert_eq!(over_sse, [serde_json::json!(2), serde_json::json!(3)]);
    assert_eq!(over_ws, over_sse);
}

/// A stream opened with a token ends at the token's `exp` with a
/// `token_expired` error, after every event written before it; SSE has no
/// `auth` message to renew it, so the client reconnects with a fresh token.
#[tokio::test]
async fn a_token_ends_the_stream_at_exp_after_everything_before_it() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    const SECRET: &str = "a-test-secret-of-32-bytes-length";
    let db = TestDb::new().await;
    let verifier = pgfeed::auth::Verifier::from_config(Some(SECRET), None, None, None)
        .unwrap()
        .unwrap();
    let server = db
        .server_with(pgfeed::server::Settings {
            auth: Some(std::sync::Arc::new(verifier)),
            ..pgfeed::server::Settings::default()
        })
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |exp: u64| {
        encode(
            &Header::default(),
            &serde_json::json!({"sub": "u1", "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let mut expiring = EventSource::open(
        &server,
        &format!("/events?tables=studies&token={}", token(now + 2)),
        None,
    )
    .await
    .unwrap();
    let mut lasting = EventSource::open(
        &server,
        &format!("/events?tables=studies&token={}", token(now + 60)),
        None,
    )
    .await
    .unwrap();
    for s in [&mut expiring, &mut lasting] {
        assert_eq!(s.next().await.0, "connected");
    }
    let started = tokio::time::Instant::now();
    db.exec("INSERT INTO studies (study_label) SELECT 'S' || g FROM generate_series(1, 20) g")
        .await;
    assert_eq!(expiring.events(20).await.len(), 20);
    let (kind, data) = expiring.next().await;
    let error: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (kind.as_str(), error["code"].as_str()),
        ("error", Some("token_expired")),
        "{data}"
    );
    assert!(
        expiring.ends_within(Duration::from_secs(5)).await,
        "the stream ends after token_expired"
    );
    let lived = started.elapsed();
    assert!(
        lived > Duration::from_millis(500) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
    // The other stream goes on past the first token's exp.
    db.exec("INSERT INTO studies (study_label) VALUES ('after')").await;
    let events = lasting.events(21).await;
    assert_eq!(events[20]["data"]["study_label"], "after");
    server.stop().await.unwrap();
}

/// A browser cut off inside a transaction holds some of its events and, in
/// the last one's block, an id that says how far into it: it resumes with the
/// rest of that transaction, nothing twice.
#[tokio::test]
async fn an_id_inside_a_transaction_resumes_with_the_rest_of_it() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let path = "/events?tables=text_elements";
    let mut source = EventSource::open(&server, path, None).await.unwrap();
    assert_eq!(source.next().await.0, "connected");
    db.exec("INSERT INTO text_elements (type, label) SELECT 'title', 'T' || g FROM generate_series(1, 5) g")
        .await;
    db.exec("INSERT INTO text_elements (type, label) VALUES ('title', 'after')")
        .await;
    let held = source.events(2).await;
    let id = source.last_event_id.clone().unwrap();
    assert!(id.ends_with(":2"), "two events into the transaction: {id}");
    drop(source);

    let mut resumed = EventSource::open(&server, path, Some(&id)).await.unwrap();
    assert_eq!(resumed.next().await.0, "connected");
    let rest = resumed.events(4).await;
    let labels: Vec<&str> = held
        .iter()
        .chain(&rest)
        .map(|e| e["data"]["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["T1", "T2", "T3", "T4", "T5", "after"]);
    assert_eq!(rest[0]["seq"], held[0]["seq"]);
    assert_eq!(rest[0]["tx_index"], 2);
    // The rest of the transaction ends with its position: a later cut resumes after it.
    let whole = pgfeed::protocol::Position::parse(resumed.last_event_id.as_deref().unwrap()).unwrap();
    assert_eq!(Some(whole.seq), rest[3]["seq"].as_i64());
    let bad = EventSource::open(&server, path, Some(&format!("{}:x", id.split(':').next().unwrap()))).await;
    assert_eq!(bad.err(), Some(400));
    server.stop().await.unwrap();
}
