//! A real WebSocket client and the order checks every delivery test makes.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

use pgfeed::protocol::{Action, Received};

use super::*;

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A real WebSocket client.
pub struct Client {
    pub socket: Socket,
}

impl Client {
    pub async fn connect(running: &Running, path: &str) -> Client {
        Client::connect_to(&running.addr.to_string(), path).await
    }

    /// A client of the server at `addr` (`host:port`), e.g. a `pgfeed serve` process.
    pub async fn connect_to(addr: &str, path: &str) -> Client {
        let url = format!("ws://{addr}{path}");
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
        Client { socket }
    }

    /// A client of `path` sending `headers` with the upgrade request; a refused
    /// upgrade gives (HTTP status, body).
    pub async fn try_connect(running: &Running, path: &str, headers: &[(&str, &str)]) -> Result<Client, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}{path}", running.addr).into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(Client { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().as_ref().map(|b| String::from_utf8_lossy(b).to_string());
                Err((response.status().as_u16(), body.unwrap_or_default()))
            }
            Err(other) => panic!("websocket connect: {other}"),
        }
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// The next text message as JSON, or the close frame as `{"close": code}`; None after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    // Whatever the server says in the `type` envelope is one of
                    // the protocol's own types: every test checks the vocabulary.
                    if text.starts_with("{\"type\"") {
                        if let Err(err) = Received::parse(&text) {
                            panic!("not a protocol message ({err}): {text}");
                        }
                    }
                    return Some(serde_json::from_str(&text).expect("server sends JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(serde_json::json!({"close": frame.map(|f| u16::from(f.code))}))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(serde_json::json!({"error": e.to_string()})),
                None => return Some(serde_json::json!({"closed": true})),
            }
        }
    }

    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(15))
            .await
            .expect("no message within 15 s")
    }

    /// The next message whose type is not in `skip`.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let message = self.next().await;
            if message["type"] == kind {
                return message;
            }
            assert!(
                message.get("close").is_none() && message.get("closed").is_none(),
                "closed while waiting for {kind}: {message}"
            );
        }
    }

    /// Events (messages with a seq and a table) until `count` have arrived.
    pub async fn events(&mut self, count: usize) -> Vec<Value> {
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            let message = self.next().await;
            assert!(
                message.get("close").is_none() && message.get("closed").is_none(),
                "closed after {} events: {message}",
                events.len()
            );
            if message.get("table").is_some() && message.get("op").is_some() {
                events.push(message);
            }
        }
        events
    }

    /// A client of `path` with a 4 KB receive buffer: one that does not read soon
    /// stops the server's writes to it, so it falls behind the hub every time.
    pub async fn connect_small_window(running: &Running, path: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(running.addr).await.unwrap();
        let url = format!("ws://{}{path}", running.addr);
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        Client { socket }
    }

    /// A `/ws` client past `connected` with `subscription` in force.
    pub async fn subscribed(running: &Running, subscription: Value) -> Client {
        let mut client = Client::connect(running, "/ws").await;
        client.next_of("connected").await;
        client.subscribe(subscription).await;
        client
    }

    /// Sends `subscribe` and waits for `subscribed`.
    pub async fn subscribe(&mut self, subscription: Value) -> Value {
        let subscription = serde_json::from_value(subscription).expect("a protocol subscription");
        let action = Action::Subscribe(subscription).encode();
        self.send_raw(Message::Text(action.into())).await;
        self.next_of("subscribed").await
    }
}

/// `count` clients subscribed to everything.
pub async fn subscribed_to_all(running: &Running, count: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(Client::subscribed(running, serde_json::json!({})).await);
    }
    clients
}

/// Checks a list of events is whole transactions in strictly increasing seq order.
pub fn assert_commit_order(events: &[Value]) {
    let mut previous = (0i64, -1i64);
    for event in events {
        if event.get("derived").is_some() {
            continue;
        }
        let seq = event["seq"].as_i64().unwrap();
        let index = event["tx_index"].as_i64().unwrap();
        if seq == previous.0 {
            assert_eq!(index, previous.1 + 1, "events of seq {seq} out of statement order");
        } else {
            assert!(seq > previous.0, "seq went backwards: {} then {seq}", previous.0);
            assert_eq!(index, 0, "transaction {seq} did not start at its first event");
        }
        previous = (seq, index);
    }
}
