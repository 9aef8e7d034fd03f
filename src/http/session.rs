//! One WebSocket connection: the general protocol (`/ws`) and the PEARL one
//! (`/api/v1/ws/studies`), over any `Stream`/`Sink` of messages.
//!
//! A session delivers whole transactions in seq order. It follows the hub while
//! it keeps up; when it falls behind the hub's ring, resumes, or joins in the
//! middle of a transaction, it reads the log after the last transaction it
//! delivered and then follows the hub again, dropping what it already sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;

use super::rest::snapshot_message;
use super::AppState;
use crate::feed::event::{Encoder, Event};
use crate::feed::hub::Filter;
use crate::feed::log::{self, Cursor};
use crate::feed::pearl::{self, Audience};
use crate::metrics::Metrics;

/// Close codes of DESIGN §4.
pub mod close {
    pub const SHUTDOWN: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
}

const LOG_PAGE: i64 = 1000;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `/ws`: `connected`, explicit `subscribe`, snapshots with watermarks, resume.
    General,
    /// `/api/v1/ws/studies`: `studies_update` on connect, every PEARL event pushed.
    Pearl,
}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    /// Resume right away after this seq (same as a first `resume` message).
    after: Option<i64>,
}

pub async fn general(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    Query(query): Query<ConnectQuery>,
) -> Response {
    upgrade(ws, state, Protocol::General, query.after)
}

pub async fn pearl(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    upgrade(ws, state, Protocol::Pearl, None)
}

fn upgrade(ws: WebSocketUpgrade, state: AppState, protocol: Protocol, after: Option<i64>) -> Response {
    let open = state.metrics.ws_connections.load(Ordering::Relaxed);
    if open >= state.limits.max_connections as i64 {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    }
    let max = state.limits.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket: WebSocket| {
            let sockets = state.sockets.clone();
            sockets.track_future(async move {
                let session = Session::new(state, protocol);
                session.run(socket, after).await;
            })
        })
}

/// A client message. Unknown actions and fields are refused with a clear error.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
enum Action {
    Ping,
    Subscribe {
        #[serde(default)]
        tables: Option<HashSet<String>>,
        #[serde(default)]
        types: Option<HashSet<String>>,
        #[serde(default, rename = "where")]
        where_: Option<serde_json::Map<String, serde_json::Value>>,
    },
    Unsubscribe,
    Snapshot {
        table: String,
    },
    Resume {
        after: i64,
    },
    Refresh,
    Auth {
        #[allow(dead_code)]
        token: String,
    },
}

/// Why a session ended early.
#[derive(Debug)]
enum End {
    /// The socket is gone or closed.
    Gone,
    /// The client left a message unread past the write timeout.
    Stuck,
}

pub struct Session {
    state: AppState,
    protocol: Protocol,
    id: uuid::Uuid,
    /// Our place in the hub's ring.
    rx: broadcast::Receiver<Arc<Event>>,
    /// What the client wants; `None` before `subscribe`.
    filter: Option<Filter>,
    /// The last transaction delivered whole.
    last_seq: i64,
    /// The transaction being delivered from the hub.
    open_seq: Option<i64>,
    /// How many of its events the session has handled (sent or filtered out).
    open_seen: usize,
    /// Per table, the watermark of the client's latest snapshot of it: events
    /// at or below it are already in the snapshot.
    watermarks: HashMap<String, i64>,
}

impl Session {
    pub fn new(state: AppState, protocol: Protocol) -> Session {
        // Subscribe before reading the head, so nothing after the head is missed.
        let rx = state.hub.subscribe();
        let last_seq = state.hub.head();
        let filter = match protocol {
            Protocol::General => None,
            Protocol::Pearl => Some(Filter {
                tables: Some(pearl::TABLES.iter().map(|t| t.to_string()).collect()),
                ..Filter::default()
            }),
        };
        Session {
            state,
            protocol,
            id: uuid::Uuid::new_v4(),
            rx,
            filter,
            last_seq,
            open_seq: None,
            open_seen: 0,
            watermarks: HashMap::new(),
        }
    }

    /// Serves the connection until the client leaves, stops reading, or the server shuts down.
    pub async fn run<S, E>(mut self, mut socket: S, after: Option<i64>)
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: std::fmt::Display,
    {
        let metrics = self.state.metrics.clone();
        metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&metrics.ws_connections_total);
        tracing::debug!(connection = %self.id, protocol = ?self.protocol, "connected");
        let end = self.serve(&mut socket, after).await;
        if let Err(End::Stuck) = end {
            Metrics::inc(&metrics.clients_closed_slow);
            tracing::info!(connection = %self.id, "closing a client that stopped reading");
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                socket.send(close_frame(close::POLICY, "not reading")),
            )
            .await;
        }
        metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(connection = %self.id, "disconnected");
    }

    async fn serve<S, E>(&mut self, socket: &mut S, after: Option<i64>) -> Result<(), End>
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: std::fmt::Display,
    {
        match self.protocol {
            Protocol::General => {
                let hello = json!({"type": "connected", "connection_id": self.id, "seq": self.last_seq});
                self.send(socket, text(hello.to_string())).await?;
                if let Some(after) = after {
                    self.resume(socket, after).await?;
                }
            }
            Protocol::Pearl => self.studies_update(socket).await?,
        }
        let heartbeat = self.state.limits.heartbeat;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut last_heard = Instant::now();
        let shutdown = self.state.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = self.send(socket, close_frame(close::SHUTDOWN, "server shutdown")).await;
                    return Ok(());
                }
                incoming = socket.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        None | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Err(err)) => {
                            let err = err.to_string();
                            if err.contains("too long") || err.contains("Space limit") {
                                Metrics::inc(&self.state.metrics.client_errors);
                                let _ = self.send(socket, close_frame(close::TOO_BIG, "message too big")).await;
                            }
                            return Ok(());
                        }
                        Some(Ok(Message::Text(message))) => self.on_message(socket, &message).await?,
                        Some(Ok(Message::Binary(_))) => {
                            self.error(socket, "bad_request", "binary frames are not supported; send JSON text").await?
                        }
                        Some(Ok(_)) => {} // ping/pong: answered by the WebSocket layer
                    }
                }
                event = self.rx.recv() => match event {
                    Ok(event) => {
                        self.state.metrics.client_lag_max.fetch_max(self.rx.len() as i64 + 1, Ordering::Relaxed);
                        self.on_event(socket, &event).await?;
                        if self.rx.is_empty() {
                            self.flush(socket).await?;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up(socket).await?,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = ticker.tick() => {
                    if last_heard.elapsed() > heartbeat * 2 {
                        tracing::debug!(connection = %self.id, "peer silent for two heartbeats; dropping");
                        return Ok(());
                    }
                    self.send(socket, Message::Ping(Default::default())).await?;
                }
            }
        }
    }

    async fn on_message<S>(&mut self, socket: &mut S, message: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let action: Action = match serde_json::from_str(message) {
            Ok(action) => action,
            Err(err) => {
                return self
                    .error(socket, "bad_request", &format!("cannot read that message: {err}"))
                    .await
            }
        };
        match (self.protocol, action) {
            (_, Action::Ping) => self.send(socket, text(r#"{"type":"pong"}"#.to_string())).await,
            (Protocol::Pearl, Action::Refresh) => self.studies_update(socket).await,
            (Protocol::Pearl, _) => {
                self.error(
                    socket,
                    "bad_request",
                    "this endpoint takes the actions ping and refresh",
                )
                .await
            }
            (Protocol::General, Action::Subscribe { tables, types, where_ }) => {
                let filter = Filter { tables, types, where_ };
                let reply = json!({
                    "type": "subscribed", "seq": self.last_seq,
                    "tables": filter.tables, "types": filter.types, "where": filter.where_,
                });
                self.filter = Some(filter);
                self.send(socket, text(reply.to_string())).await
            }
            (Protocol::General, Action::Unsubscribe) => {
                self.filter = None;
                self.send(socket, text(r#"{"type":"unsubscribed"}"#.to_string())).await
            }
            (Protocol::General, Action::Snapshot { table }) => self.snapshot(socket, &table).await,
            (Protocol::General, Action::Resume { after }) => self.resume(socket, after).await,
            (Protocol::General, Action::Refresh) => {
                self.error(
                    socket,
                    "bad_request",
                    "refresh is for /api/v1/ws/studies; use snapshot {table}",
                )
                .await
            }
            (Protocol::General, Action::Auth { .. }) => {
                self.error(socket, "bad_request", "authentication is not enabled on this server")
                    .await
            }
        }
    }

    /// An event from the hub: sent when wanted, exactly once, whole transactions in order.
    async fn on_event<S>(&mut self, socket: &mut S, event: &Arc<Event>) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        if event.seq <= self.last_seq {
            return Ok(()); // already delivered, or before this session started
        }
        if self.open_seq != Some(event.seq) {
            if !event.opens_tx {
                // We joined in the middle of a transaction: take it whole from the log.
                return self.catch_up(socket).await;
            }
            self.open_seq = Some(event.seq);
            self.open_seen = 0;
        }
        if self.wants(event) {
            self.feed(socket, Message::Text(event.frame.clone())).await?;
        }
        self.open_seen += 1;
        if event.closes_tx {
            self.last_seq = event.seq;
            self.open_seq = None;
        }
        Ok(())
    }

    fn wants(&self, event: &Event) -> bool {
        let audience = match self.protocol {
            Protocol::General => Audience::Native,
            Protocol::Pearl => Audience::Pearl,
        };
        (event.audience == Audience::All || event.audience == audience)
            && self.filter.as_ref().is_some_and(|f| f.matches(event))
            && self
                .watermarks
                .get(&event.table)
                .is_none_or(|watermark| event.seq > *watermark)
    }

    /// Sends every wanted event after `last_seq` from the log, then follows the hub again.
    async fn catch_up<S>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        // A fresh place at the live end first: whatever the hub gets from now on
        // is kept for us, and whatever it got before is in the log we read next.
        self.rx = self.state.hub.subscribe();
        // Part of a transaction may be out already: the log continues it, not repeats it.
        let (partial_seq, mut partial_seen) = (self.open_seq.take(), std::mem::take(&mut self.open_seen));
        if self.filter.is_none() {
            self.last_seq = self.state.hub.head();
            return Ok(());
        }
        Metrics::inc(&self.state.metrics.client_catch_ups);
        // PEARL's state as of where the replay starts, so replayed events carry
        // the same counts and names live ones did.
        let mut pearl = self.state.pearl.lock().expect("pearl state lock").clone();
        if let Err(err) = pearl.move_to(&self.state.pool, self.last_seq).await {
            tracing::error!(connection = %self.id, error = %err, "reading the log for a client");
            let message = json!({"type": "refresh_needed", "reason": "log_unavailable", "seq": self.last_seq});
            return self.send(socket, text(message.to_string())).await;
        }
        let mut cursor = Cursor::after(self.last_seq);
        loop {
            let (changes, next) = match log::read(&self.state.pool, cursor, LOG_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::error!(connection = %self.id, error = %err, "reading the log for a client");
                    let message = json!({"type": "refresh_needed", "reason": "log_unavailable", "seq": self.last_seq});
                    return self.send(socket, text(message.to_string())).await;
                }
            };
            if changes.is_empty() {
                return self.flush(socket).await;
            }
            let mut encoder = Encoder {
                metrics: &self.state.metrics,
                pearl: &mut pearl,
                count_untyped: false,
            };
            for change in changes {
                for event in encoder.encode(change) {
                    if Some(event.seq) == partial_seq && partial_seen > 0 {
                        partial_seen -= 1;
                    } else if self.wants(&event) {
                        self.feed(socket, Message::Text(event.frame.clone())).await?;
                    }
                    if event.closes_tx {
                        self.last_seq = event.seq;
                    }
                }
            }
            cursor = next;
        }
    }

    async fn resume<S>(&mut self, socket: &mut S, after: i64) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let bounds = async {
            let oldest = log::resumable_from(&self.state.pool).await?;
            let head = log::head(&self.state.pool).await?;
            Ok::<_, sqlx::Error>((oldest, head))
        };
        let (oldest, head) = match bounds.await {
            Ok(bounds) => bounds,
            Err(err) => {
                tracing::error!(connection = %self.id, error = %err, "resume: reading the log bounds");
                return self
                    .error(socket, "unavailable", "the event log cannot be read right now")
                    .await;
            }
        };
        if after < oldest {
            let message =
                json!({"type": "refresh_needed", "reason": "retention", "oldest_seq": oldest, "after": after});
            return self.send(socket, text(message.to_string())).await;
        }
        if after > head {
            return self
                .error(
                    socket,
                    "bad_request",
                    &format!("after={after} is beyond the newest seq {head}"),
                )
                .await;
        }
        if self.filter.is_none() {
            self.filter = Some(Filter::default());
        }
        self.watermarks.clear();
        self.last_seq = after;
        self.send(
            socket,
            text(json!({"type": "resumed", "after": after, "head": head}).to_string()),
        )
        .await?;
        self.catch_up(socket).await
    }

    async fn snapshot<S>(&mut self, socket: &mut S, table: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        match log::snapshot(&self.state.pool, table).await {
            Ok(Some((watermark, rows))) => {
                self.send(socket, text(snapshot_message("snapshot", table, watermark, &rows)))
                    .await?;
                self.watermarks.insert(table.to_string(), watermark);
                Ok(())
            }
            Ok(None) => {
                self.error(socket, "not_found", &format!("table `{table}` is not tracked"))
                    .await
            }
            Err(err) => {
                tracing::error!(connection = %self.id, error = %err, "snapshot");
                self.error(socket, "unavailable", "the snapshot could not be read")
                    .await
            }
        }
    }

    /// PEARL's `{"type":"studies_update","data":[...]}`, exact with the events that follow.
    async fn studies_update<S>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        match log::snapshot(&self.state.pool, "studies").await {
            Ok(Some((watermark, rows))) => {
                let message = format!(r#"{{"type":"studies_update","data":{rows},"seq":{watermark}}}"#);
                self.send(socket, text(message)).await?;
                self.watermarks.insert("studies".to_string(), watermark);
                Ok(())
            }
            Ok(None) => self.error(socket, "not_found", "table studies is not tracked").await,
            Err(err) => {
                tracing::error!(connection = %self.id, error = %err, "studies_update");
                self.error(socket, "unavailable", "the studies could not be read").await
            }
        }
    }

    async fn error<S>(&mut self, socket: &mut S, code: &str, message: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        Metrics::inc(&self.state.metrics.client_errors);
        self.send(
            socket,
            text(json!({"type": "error", "code": code, "message": message}).to_string()),
        )
        .await
    }

    /// Sends and flushes, giving up on a client that does not read.
    async fn send<S>(&self, socket: &mut S, message: Message) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.within_write_timeout(socket.send(message)).await
    }

    /// Queues without flushing; the session flushes when the hub has nothing more for it.
    async fn feed<S>(&self, socket: &mut S, message: Message) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.within_write_timeout(socket.feed(message)).await
    }

    async fn flush<S>(&self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.within_write_timeout(socket.flush()).await
    }

    async fn within_write_timeout<F, X>(&self, io: F) -> Result<(), End>
    where
        F: std::future::Future<Output = Result<(), X>>,
    {
        match tokio::time::timeout(self.state.limits.write_timeout, io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(End::Stuck),
        }
    }
}

fn text(message: String) -> Message {
    Message::Text(Utf8Bytes::from(message))
}

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}
