//! One WebSocket connection: the general protocol (`/ws`) and the PEARL one
//! (`/api/v1/ws/studies`), over any `Stream`/`Sink` of messages.
//!
//! A session delivers whole transactions in seq order. It follows the hub while
//! it keeps up; when it falls behind the hub's ring, resumes, or joins in the
//! middle of a transaction, it reads the log after the last transaction it
//! delivered and then follows the hub again, dropping what it already sent.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::access::{self, Access};
use super::AppState;
use crate::auth::Scope;
use crate::feed::event::{Encoder, Event};
use crate::feed::hub::Filter;
use crate::feed::log::{self, Cursor};
use crate::feed::pearl::{self, Audience};
use crate::metrics::Metrics;
use crate::protocol::{close, Action, Envelope, ServerMessage};

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
    /// `event`: the `{"event", "data", "timestamp"}` envelope both ways.
    envelope: Option<String>,
    /// Shadower's workspace: narrows the token's scope to `workspace_id` in these values.
    workspace_id: Option<String>,
}

/// How a connection was opened.
#[derive(Debug, Clone)]
struct Opening {
    protocol: Protocol,
    envelope: Envelope,
    after: Option<i64>,
    access: Access,
    /// `?workspace_id=` (Shadower): applied to tokens sent later with `auth` too.
    workspace: Option<Vec<serde_json::Value>>,
}

pub async fn general(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<ConnectQuery>,
) -> Response {
    let envelope = match query.envelope.as_deref() {
        None | Some("type") => Envelope::Type,
        Some("event") => Envelope::Event,
        Some(_) => return (StatusCode::BAD_REQUEST, "envelope must be `type` or `event`").into_response(),
    };
    upgrade(
        ws,
        state,
        Opening {
            protocol: Protocol::General,
            envelope,
            after: query.after,
            access,
            workspace: query.workspace_id.as_deref().map(access::workspace_ids),
        },
    )
}

/// `/ws/updates`: the general feed in the `{"event", "data", "timestamp"}` envelope.
pub async fn updates(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<ConnectQuery>,
) -> Response {
    upgrade(
        ws,
        state,
        Opening {
            protocol: Protocol::General,
            envelope: Envelope::Event,
            after: query.after,
            access,
            workspace: query.workspace_id.as_deref().map(access::workspace_ids),
        },
    )
}

pub async fn pearl(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<ConnectQuery>,
) -> Response {
    upgrade(
        ws,
        state,
        Opening {
            protocol: Protocol::Pearl,
            envelope: Envelope::Type,
            after: None,
            access,
            workspace: query.workspace_id.as_deref().map(access::workspace_ids),
        },
    )
}

fn upgrade(ws: WebSocketUpgrade, state: AppState, opening: Opening) -> Response {
    // The permit lives as long as the socket's task: the cap can never be exceeded.
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        Metrics::inc(&state.metrics.connections_refused);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let max = state.limits.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket: WebSocket| {
            let sockets = state.sockets.clone();
            sockets.track_future(async move {
                let _permit = permit;
                let session = Session::new(state, &opening);
                session.run(socket, opening).await;
            })
        })
}

/// Why a session ended early.
#[derive(Debug)]
enum End {
    /// The socket is gone or closed.
    Gone,
    /// The client left a message unread past the write timeout.
    Stuck,
    /// Closed with this code and reason (a token refused or expired, a flood).
    Closed(u16, &'static str),
}

/// A token bucket: `rate` messages per second, bursts of twice that. Refused
/// messages pile up as violations that drain at the same rate, so a client a
/// little over its rate is only throttled, and a flood is recognised quickly.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    violations: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            tokens: rate * 2.0,
            violations: 0.0,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.at = now;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.violations = (self.violations - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.violations += 1.0;
            false
        }
    }

    /// The first refusal of an episode (the client is told once, not per message).
    fn first_refusal(&self) -> bool {
        self.violations <= 1.0
    }

    /// Five seconds' worth of messages over the rate: the client is not slowing down.
    fn flooding(&self) -> bool {
        self.violations > self.rate * 5.0
    }
}

pub struct Session {
    state: AppState,
    /// What the token allows; `None` until a connection without one authenticates.
    scope: Option<Scope>,
    /// When the token expires (the socket closes with 4401 unless a fresh `auth` arrives).
    expires: Option<tokio::time::Instant>,
    /// The client's message rate.
    bucket: Bucket,
    /// `?workspace_id=`: narrows every token this connection presents.
    workspace: Option<Vec<serde_json::Value>>,
    protocol: Protocol,
    /// How this client's messages are wrapped, both ways.
    envelope: Envelope,
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
    fn new(state: AppState, opening: &Opening) -> Session {
        let (protocol, envelope, access) = (opening.protocol, opening.envelope, &opening.access);
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
        let expires = match access {
            Access::Granted(grant) => expiry(grant),
            _ => None,
        };
        let bucket = Bucket::new(state.limits.max_message_rate);
        Session {
            scope: access.scope(),
            expires,
            bucket,
            workspace: opening.workspace.clone(),
            state,
            protocol,
            envelope,
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
    async fn run<S, E>(mut self, mut socket: S, opening: Opening)
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: std::fmt::Display,
    {
        let metrics = self.state.metrics.clone();
        metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&metrics.ws_connections_total);
        tracing::debug!(connection = %self.id, protocol = ?self.protocol, "connected");
        let end = self.serve(&mut socket, opening).await;
        let closing = match end {
            Err(End::Stuck) => {
                Metrics::inc(&metrics.clients_closed_slow);
                tracing::info!(connection = %self.id, "closing a client that stopped reading");
                Some((close::POLICY, "not reading"))
            }
            Err(End::Closed(code, reason)) => Some((code, reason)),
            _ => None,
        };
        if let Some((code, reason)) = closing {
            let sent = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                socket.send(close_frame(code, reason)),
            )
            .await;
            if matches!(sent, Ok(Ok(()))) {
                // The closing handshake: read what the client still sends until its
                // Close. Dropping a socket with unread input would reset it, and
                // the client could lose our close frame (and its code) with it.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    while let Some(Ok(message)) = socket.next().await {
                        if matches!(message, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
        metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(connection = %self.id, "disconnected");
    }

    async fn serve<S, E>(&mut self, socket: &mut S, opening: Opening) -> Result<(), End>
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: std::fmt::Display,
    {
        if self.scope.is_none() {
            self.authenticate_first(socket).await?;
        }
        match self.protocol {
            Protocol::General => {
                let hello = ServerMessage::Connected {
                    connection_id: self.id,
                    seq: self.last_seq,
                };
                self.reply(socket, &hello).await?;
                if let Some(after) = opening.after {
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
            let expires = self.expires;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = self.send(socket, close_frame(close::SHUTDOWN, "server shutdown")).await;
                    return Ok(());
                }
                _ = until(expires) => {
                    Metrics::inc(&self.state.metrics.auth_refusals);
                    self.error(socket, "token_expired", "the token has expired; send a fresh one with auth before exp").await?;
                    return Err(End::Closed(close::UNAUTHORIZED, "token expired"));
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
                        Some(Ok(Message::Text(_) | Message::Binary(_))) if !self.bucket.take() => self.rate_limited(socket).await?,
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
        let action = match Action::parse(message) {
            Ok(action) => action,
            Err(err) => return self.error(socket, "bad_request", &err).await,
        };
        match (self.protocol, action) {
            (_, Action::Ping) => self.reply(socket, &ServerMessage::Pong).await,
            (_, Action::Auth { token }) => self.reauthenticate(socket, &token).await,
            (Protocol::Pearl, Action::Refresh) => self.studies_update(socket).await,
            (Protocol::Pearl, _) => {
                self.error(
                    socket,
                    "bad_request",
                    "this endpoint takes the actions ping and refresh",
                )
                .await
            }
            (Protocol::General, Action::Subscribe(subscription)) => {
                let size = subscription.tables.as_ref().map_or(0, |t| t.len())
                    + subscription.types.as_ref().map_or(0, |t| t.len())
                    + subscription
                        .where_
                        .as_ref()
                        .map_or(0, |w| w.values().map(|v| v.as_array().map_or(1, |a| a.len())).sum());
                if size > self.state.limits.max_subscriptions {
                    let message = format!(
                        "this subscription names {size} tables, types and values; the most is {}",
                        self.state.limits.max_subscriptions
                    );
                    return self.error(socket, "bad_request", &message).await;
                }
                let scope = self.scope.as_ref().expect("authenticated before any action");
                if let Some(table) = subscription.tables.iter().flatten().find(|t| !scope.allows_table(t)) {
                    Metrics::inc(&self.state.metrics.forbidden);
                    let message = format!(
                        "table `{}` is outside this token's scope",
                        table.chars().take(64).collect::<String>()
                    );
                    return self.error(socket, "forbidden", &message).await;
                }
                let filter = Filter::from(subscription);
                let reply = ServerMessage::Subscribed {
                    seq: self.last_seq,
                    tables: filter.tables.as_ref(),
                    types: filter.types.as_ref(),
                    where_: filter.where_.as_ref(),
                };
                self.reply(socket, &reply).await?;
                self.filter = Some(filter);
                Ok(())
            }
            (Protocol::General, Action::Unsubscribe { types }) => {
                match (&types, self.filter.as_mut()) {
                    (Some(types), Some(filter)) => filter.drop_types(types),
                    _ => self.filter = None,
                }
                self.reply(socket, &ServerMessage::Unsubscribed { types: types.as_ref() })
                    .await
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
        }
    }

    /// A connection that came without a token: nothing but `auth` is served
    /// until a valid token arrives, within the auth deadline.
    async fn authenticate_first<S, E>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
    {
        let deadline = tokio::time::Instant::now() + self.state.limits.auth_timeout;
        loop {
            let incoming = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    Metrics::inc(&self.state.metrics.auth_refusals);
                    self.error(socket, "unauthorized", "no token arrived in time: send {\"action\":\"auth\",\"token\":…} first").await?;
                    return Err(End::Closed(close::UNAUTHORIZED, "authentication timed out"));
                }
                _ = self.state.shutdown.cancelled() => return Err(End::Closed(close::SHUTDOWN, "server shutdown")),
                incoming = socket.next() => incoming,
            };
            let text = match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Err(End::Gone),
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
            };
            if !self.bucket.take() {
                self.rate_limited(socket).await?;
                continue;
            }
            match Action::parse(&text) {
                Ok(Action::Auth { token }) => return self.reauthenticate(socket, &token).await,
                Ok(_) => {
                    self.error(
                        socket,
                        "unauthorized",
                        "authenticate first: send {\"action\":\"auth\",\"token\":…}",
                    )
                    .await?
                }
                Err(err) => self.error(socket, "bad_request", &err).await?,
            }
        }
    }

    /// `auth {token}`: a valid token replaces the scope and the expiry (a fresh
    /// token before `exp` keeps the socket open); a bad one closes it with 4401.
    async fn reauthenticate<S>(&mut self, socket: &mut S, token: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let Some(verifier) = self.state.auth.clone() else {
            return self
                .error(socket, "not_enabled", "authentication is not enabled on this server")
                .await;
        };
        match verifier.verify(token) {
            Ok(mut grant) => {
                if let Some(ids) = self.workspace.clone() {
                    grant.scope.narrow("workspace_id", ids);
                }
                self.expires = expiry(&grant);
                self.scope = Some(grant.scope);
                self.reply(
                    socket,
                    &ServerMessage::AuthOk {
                        expires_at: grant.expires_at,
                    },
                )
                .await
            }
            Err(refusal) => {
                Metrics::inc(&self.state.metrics.auth_refusals);
                self.error(socket, "unauthorized", &refusal.0).await?;
                Err(End::Closed(close::UNAUTHORIZED, "token refused"))
            }
        }
    }

    /// Over the message rate: refused with an error; a sustained flood closes the socket.
    async fn rate_limited<S>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        Metrics::inc(&self.state.metrics.rate_limited);
        if self.bucket.flooding() {
            tracing::info!(connection = %self.id, "closing a client that floods messages");
            return Err(End::Closed(close::POLICY, "message rate exceeded"));
        }
        if self.bucket.first_refusal() {
            let message = format!(
                "more than {} messages per second; messages are dropped until the rate falls",
                self.state.limits.max_message_rate
            );
            self.reply(
                socket,
                &ServerMessage::Error {
                    code: "rate_limited",
                    message: &message,
                },
            )
            .await?;
        }
        Ok(())
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
            self.feed_event(socket, event).await?;
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
            && self.scope.as_ref().is_some_and(|scope| event.in_scope(scope))
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
            return self.log_unavailable(socket).await;
        }
        let mut cursor = Cursor::after(self.last_seq);
        loop {
            let (changes, next) = match log::read(&self.state.pool, cursor, LOG_PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::error!(connection = %self.id, error = %err, "reading the log for a client");
                    return self.log_unavailable(socket).await;
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
                        self.feed_event(socket, &event).await?;
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
            let message = ServerMessage::RefreshNeeded {
                reason: "retention",
                seq: after,
                oldest_seq: Some(oldest),
            };
            return self.reply(socket, &message).await;
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
        self.reply(socket, &ServerMessage::Resumed { after, head }).await?;
        self.catch_up(socket).await
    }

    async fn snapshot<S>(&mut self, socket: &mut S, table: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let scope = self.scope.clone().expect("authenticated before any action");
        if !scope.allows_table(table) {
            Metrics::inc(&self.state.metrics.forbidden);
            let message = format!(
                "table `{}` is outside this token's scope",
                table.chars().take(64).collect::<String>()
            );
            return self.error(socket, "forbidden", &message).await;
        }
        match log::snapshot(&self.state.pool, table, &scope).await {
            Ok(Some((watermark, rows))) => {
                let rows = RawValue::from_string(rows).expect("the log returns JSON");
                let message = ServerMessage::Snapshot {
                    table,
                    seq: watermark,
                    rows: &rows,
                };
                self.reply(socket, &message).await?;
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
        // Outside the scope, PEARL's client still gets its first message: no studies.
        let scope = self.scope.clone().expect("authenticated before any message");
        let studies = if scope.allows_table("studies") {
            log::snapshot(&self.state.pool, "studies", &scope).await
        } else {
            log::head(&self.state.pool)
                .await
                .map(|head| Some((head, "[]".to_string())))
        };
        match studies {
            Ok(Some((watermark, rows))) => {
                let rows = RawValue::from_string(rows).expect("the log returns JSON");
                let message = ServerMessage::StudiesUpdate {
                    data: &rows,
                    seq: watermark,
                };
                self.reply(socket, &message).await?;
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
        self.reply(socket, &ServerMessage::Error { code, message }).await
    }

    /// The log could not be read: the client must re-snapshot from where it is.
    async fn log_unavailable<S>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let message = ServerMessage::RefreshNeeded {
            reason: "log_unavailable",
            seq: self.last_seq,
            oldest_seq: None,
        };
        self.reply(socket, &message).await
    }

    /// Sends one of the server's own messages in this client's envelope.
    async fn reply<S>(&self, socket: &mut S, message: &ServerMessage<'_>) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.send(socket, Message::Text(message.encode(self.envelope).into()))
            .await
    }

    /// Queues an event's frame, in this client's envelope.
    async fn feed_event<S>(&self, socket: &mut S, event: &Event) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let frame = match self.envelope {
            Envelope::Type => event.frame.clone(),
            Envelope::Event => event.enveloped(),
        };
        self.feed(socket, Message::Text(frame)).await
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

fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

/// When a grant's token expires, as a timer deadline (`None`: never).
fn expiry(grant: &crate::auth::Grant) -> Option<tokio::time::Instant> {
    (grant.expires_at != u64::MAX).then(|| tokio::time::Instant::now() + grant.remaining())
}

/// Resolves at `at`, or never.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
