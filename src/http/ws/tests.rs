//! The session over an in-memory stream: no socket, no database, tokio's
//! clock paused. What the protocol promises a client that misbehaves.

use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::session::{Opening, Protocol, Session};
use crate::feed::Feed;
use crate::http::access::Access;
use crate::http::{AppState, Limits};
use crate::protocol::{close, Envelope};

/// One end of an in-memory WebSocket: the session reads what the test sends
/// and writes what the test reads.
struct Pipe {
    incoming: mpsc::UnboundedReceiver<Message>,
    outgoing: mpsc::UnboundedSender<Message>,
}

impl Stream for Pipe {
    type Item = Result<Message, std::convert::Infallible>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_recv(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Message> for Pipe {
    type Error = ();
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), ()> {
        self.outgoing.send(message).map_err(drop)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
        Poll::Ready(Ok(()))
    }
}

/// The test's end: send text, read what the session said.
struct Peer {
    to_session: mpsc::UnboundedSender<Message>,
    from_session: mpsc::UnboundedReceiver<Message>,
}

impl Peer {
    fn send(&self, text: &str) {
        self.to_session.send(Message::Text(text.into())).unwrap();
    }

    /// The next text message as JSON, skipping the heartbeat's pings; `None` at a close.
    async fn next(&mut self) -> Option<Value> {
        loop {
            match self.from_session.recv().await? {
                Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The close frame's code, reading past anything before it.
    async fn close_code(&mut self) -> Option<u16> {
        while let Some(message) = self.from_session.recv().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| f.code);
            }
        }
        None
    }
}

fn state(limits: Limits) -> AppState {
    // Never connected: these tests stay off the log.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(50))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let metrics = Arc::default();
    AppState {
        feed: Feed::new(pool.clone(), 64, Arc::clone(&metrics)),
        pool,
        auth: None,
        connections: Arc::new(tokio::sync::Semaphore::new(4)),
        metrics,
        ready: Arc::new(AtomicBool::new(true)),
        limits: Arc::new(limits),
        shutdown: Default::default(),
        sockets: Default::default(),
    }
}

/// A general-protocol session with full access, served in a task of its own.
fn open(state: AppState) -> Peer {
    open_with(state, Access::Open)
}

/// A general-protocol session with `access`, served in a task of its own.
fn open_with(state: AppState, access: Access) -> Peer {
    let (to_session, incoming) = mpsc::unbounded_channel();
    let (outgoing, from_session) = mpsc::unbounded_channel();
    let opening = Opening {
        protocol: Protocol::General,
        envelope: Envelope::Type,
        after: None,
        access,
        workspace: None,
        subscribe_all: false,
    };
    let permit = state.connections.clone().try_acquire_owned().unwrap();
    let session = Session::new(state, &opening);
    tokio::spawn(session.run(Pipe { incoming, outgoing }, opening, permit));
    Peer {
        to_session,
        from_session,
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_input_gets_an_error_and_the_connection_goes_on() {
    let mut peer = open(state(Limits::default()));
    assert_eq!(peer.next().await.unwrap()["type"], "connected");
    for bad in [
        "{not json",
        "[1,2]",
        r#"{"action":"fly"}"#,
        r#"{"action":"resume","after":"x"}"#,
    ] {
        peer.send(bad);
        let error = peer.next().await.unwrap();
        assert_eq!(error["type"], "error", "{bad}");
        assert_eq!(error["code"], "bad_request", "{bad}");
    }
    peer.send(r#"{"type":"ping"}"#);
    assert_eq!(peer.next().await.unwrap(), json!({"type": "pong"}));
}

#[tokio::test(start_paused = true)]
async fn a_subscription_past_the_limit_is_refused_and_one_within_it_answered() {
    let limits = Limits {
        max_subscriptions: 2,
        ..Limits::default()
    };
    let mut peer = open(state(limits));
    peer.next().await.unwrap();
    peer.send(r#"{"action":"subscribe","tables":["a","b","c"]}"#);
    let refused = peer.next().await.unwrap();
    assert_eq!(refused["code"], "bad_request");
    assert!(refused["message"].as_str().unwrap().contains("the most is 2"));
    peer.send(r#"{"action":"subscribe","tables":["a"],"where":{"id":[1]}}"#);
    let subscribed = peer.next().await.unwrap();
    assert_eq!(subscribed["type"], "subscribed");
    assert_eq!(subscribed["tables"], json!(["a"]));
}

#[tokio::test(start_paused = true)]
async fn over_the_rate_the_client_is_told_once_and_a_flood_is_closed() {
    let limits = Limits {
        max_message_rate: 5,
        ..Limits::default()
    };
    let mut peer = open(state(limits));
    peer.next().await.unwrap();
    // A burst of twice the rate is answered.
    for _ in 0..10 {
        peer.send(r#"{"action":"ping"}"#);
        assert_eq!(peer.next().await.unwrap()["type"], "pong");
    }
    peer.send(r#"{"action":"ping"}"#);
    let limited = peer.next().await.unwrap();
    assert_eq!(limited["code"], "rate_limited");
    // A second later the rate allows five more.
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..5 {
        peer.send(r#"{"action":"ping"}"#);
        assert_eq!(peer.next().await.unwrap()["type"], "pong");
    }
    // Five seconds' worth over the rate, without a pause: closed with 1008.
    for _ in 0..40 {
        peer.send(r#"{"action":"ping"}"#);
    }
    assert_eq!(peer.close_code().await, Some(close::POLICY));
}

#[tokio::test(start_paused = true)]
async fn a_peer_silent_for_two_heartbeats_is_dropped() {
    let limits = Limits {
        heartbeat: Duration::from_secs(10),
        ..Limits::default()
    };
    let mut peer = open(state(limits));
    peer.next().await.unwrap();
    let mut pings = 0;
    // The clock runs on by itself while everything waits: the session pings,
    // hears nothing back, and lets go of the connection.
    while let Some(message) = peer.from_session.recv().await {
        if matches!(message, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!((2..=3).contains(&pings), "{pings} pings before giving up");
}

#[tokio::test(start_paused = true)]
async fn a_token_closes_the_socket_at_exp_unless_a_fresh_one_arrives() {
    const SECRET: &str = "a test secret of thirty-two bytes";
    let sign = |exp: u64| {
        let claims = json!({ "exp": exp });
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let verifier = crate::auth::Verifier::from_config(Some(SECRET), None, None, None)
        .unwrap()
        .unwrap();
    let grant = verifier.verify(&sign(now + 3)).unwrap();
    let mut state = state(Limits::default());
    state.auth = Some(Arc::new(verifier));
    let mut expiring = open_with(state.clone(), Access::Granted(grant.clone()));
    let mut renewed = open_with(state, Access::Granted(grant));
    assert_eq!(expiring.next().await.unwrap()["type"], "connected");
    assert_eq!(renewed.next().await.unwrap()["type"], "connected");

    tokio::time::advance(Duration::from_millis(1500)).await;
    renewed.send(&json!({"action": "auth", "token": sign(now + 30)}).to_string());
    assert_eq!(renewed.next().await.unwrap()["type"], "auth_ok");

    // The clock runs on to the first token's exp by itself.
    let started = tokio::time::Instant::now();
    assert_eq!(expiring.next().await.unwrap()["code"], "token_expired");
    assert_eq!(expiring.close_code().await, Some(close::UNAUTHORIZED));
    assert!(started.elapsed() <= Duration::from_secs(2), "closed at exp, not later");

    tokio::time::advance(Duration::from_secs(2)).await;
    renewed.send(r#"{"action":"ping"}"#);
    assert_eq!(
        renewed.next().await.unwrap()["type"],
        "pong",
        "the renewed socket is open past the first exp"
    );
}
