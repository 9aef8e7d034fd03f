//! One WebSocket connection: the general protocol (`/ws`, `/ws/updates`) and
//! the PEARL one (`/api/v1/ws/studies`), over any `Stream`/`Sink` of messages.
//!
//! The session is the transport: authentication, the client's messages, rate,
//! heartbeats, write timeouts, closing. What to send, in which order and
//! exactly once is the subscriber's job (`feed::subscriber`), shared with SSE.

use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::access::{self, Access};
use super::{until, AppState};
use crate::feed::event::Event;
use crate::feed::log;
use crate::feed::pearl::{self, Audience};
use crate::feed::subscriber::{Next, Subscriber};
use crate::filter::Filter;
use crate::protocol::{close, Action, Envelope, ServerMessage};

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
    upgrade(ws, state, Opening::new(Protocol::General, envelope, access, &query))
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
        Opening::new(Protocol::General, Envelope::Event, access, &query),
    )
}

pub async fn pearl(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    access: Access,
    Query(query): Query<ConnectQuery>,
) -> Response {
    let mut opening = Opening::new(Protocol::Pearl, Envelope::Type, access, &query);
    opening.after = None;
    upgrade(ws, state, opening)
}

impl Opening {
    fn new(protocol: Protocol, envelope: Envelope, access: Access, query: &ConnectQuery) -> Opening {
        Opening {
            protocol,
            envelope,
            after: query.after,
            access,
            workspace: query.workspace_id.as_deref().map(access::workspace_ids),
        }
    }
}

fn upgrade(ws: WebSocketUpgrade, state: AppState, opening: Opening) -> Response {
    // The permit lives as long as the socket's task: the cap can never be exceeded.
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        state.metrics.connections_refused.inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    let max = state.limits.max_frame;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(crate::config::defaults::WS_READ_BUFFER)
        .write_buffer_size(crate::config::defaults::WS_WRITE_BUFFER)
        .on_upgrade(move |socket: WebSocket| {
            // No async block around `run`: it would hold a second copy of the
            // session and socket in every idle connection's task.
            let session = Session::new(state, &opening);
            session
                .state
                .sockets
                .clone()
                .track_future(session.run(socket, opening, permit))
        })
}

/// Items a session takes from its subscriber per wake-up, at most (it then
/// looks at the client's messages and the shutdown token again).
const BURST: usize = 256;

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
    /// The ordered, exactly-once stream this socket carries (filter and scope live there).
    sub: Subscriber,
    /// Event bytes queued since the last flush, added to `bytes_sent` at the flush.
    unflushed_bytes: u64,
    /// Events queued since the last flush, added to `events_delivered` with the bytes.
    unflushed_events: u64,
}

impl Session {
    fn new(state: AppState, opening: &Opening) -> Session {
        let audience = match opening.protocol {
            Protocol::General => Audience::Native,
            Protocol::Pearl => Audience::Pearl,
        };
        let mut sub = Subscriber::new(state.sources(), audience);
        sub.scope = opening.access.scope();
        if opening.protocol == Protocol::Pearl {
            sub.filter = Some(Filter {
                tables: Some(pearl::TABLES.iter().map(|t| t.to_string()).collect()),
                ..Filter::default()
            });
        }
        let expires = match &opening.access {
            Access::Granted(grant) => grant.deadline(),
            _ => None,
        };
        Session {
            expires,
            bucket: Bucket::new(state.limits.max_message_rate),
            workspace: opening.workspace.clone(),
            protocol: opening.protocol,
            envelope: opening.envelope,
            id: uuid::Uuid::new_v4(),
            sub,
            state,
            unflushed_bytes: 0,
            unflushed_events: 0,
        }
    }

    /// Serves the connection until the client leaves, stops reading, or the server shuts down.
    /// `permit` is the connection's place under the cap, given back when the session ends.
    async fn run<S, E>(mut self, mut socket: S, opening: Opening, permit: tokio::sync::OwnedSemaphorePermit)
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: std::fmt::Display,
    {
        let metrics = self.state.metrics.clone();
        metrics.ws_connections.inc();
        metrics.ws_connections_total.inc();
        let open = metrics.connection_opened(match self.protocol {
            Protocol::General => "ws",
            Protocol::Pearl => "pearl",
        });
        tracing::debug!(connection = %self.id, protocol = ?self.protocol, "connected");
        let end = self.serve(&mut socket, opening).await;
        let closing = match end {
            Err(End::Stuck) => {
                metrics.clients_closed_slow.inc();
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
        self.count_sent();
        metrics.ws_connections.dec();
        drop((open, permit));
        tracing::debug!(connection = %self.id, "disconnected");
    }

    async fn serve<S, E>(&mut self, socket: &mut S, opening: Opening) -> Result<(), End>
    where
        S: Stream<Item = Result<Message, E>> + Sink<Message> + Unpin,
        E: std::fmt::Display,
    {
        if self.sub.scope.is_none() {
            Box::pin(self.authenticate_first(socket)).await?;
        }
        match self.protocol {
            Protocol::General => {
                let hello = ServerMessage::Connected {
                    connection_id: self.id,
                    seq: self.sub.last_seq(),
                };
                self.reply(socket, &hello).await?;
                if let Some(after) = opening.after {
                    Box::pin(self.resume(socket, after)).await?;
                }
            }
            Protocol::Pearl => Box::pin(self.studies_update(socket)).await?,
        }
        let heartbeat = self.state.limits.heartbeat;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut last_heard = Instant::now();
        let shutdown = self.state.shutdown.clone();
        // Made once: a fresh one per pass took a place in the token's waiting
        // list, shared by every connection, and gave it back, twice a wake-up.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let expires = self.expires;
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    let _ = self.send(socket, close_frame(close::SHUTDOWN, "server shutdown")).await;
                    return Ok(());
                }
                _ = until(expires) => {
                    self.state.metrics.auth_refusals.inc();
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
                                self.state.metrics.client_errors.inc();
                                let _ = self.send(socket, close_frame(close::TOO_BIG, "message too big")).await;
                            }
                            return Ok(());
                        }
                        Some(Ok(Message::Text(_) | Message::Binary(_))) if !self.bucket.take() => self.rate_limited(socket).await?,
                        Some(Ok(Message::Text(message))) => Box::pin(self.on_message(socket, &message)).await?,
                        Some(Ok(Message::Binary(_))) => {
                            self.error(socket, "bad_request", "binary frames are not supported; send JSON text").await?
                        }
                        Some(Ok(_)) => {} // ping/pong: answered by the WebSocket layer
                    }
                }
                next = self.sub.next() => {
                    // A burst in one go: the other branches (the shutdown token, the
                    // socket's read side, the timers) are set up again for each
                    // pass of this loop, which cost more than the frames themselves.
                    let mut item = next;
                    let mut handled = 0;
                    loop {
                        match item {
                            // Events are queued; the socket is flushed when nothing more is waiting.
                            // The frame is taken first: the subscriber lends its events only
                            // until its next call.
                            Next::Event(event) => {
                                let frame = frame_of(self.envelope, event);
                                self.feed_frame(socket, frame).await?
                            }
                            Next::Whole(_) => {}
                            Next::Idle => {
                                // Counted per burst: a shared counter per frame costs every core.
                                self.count_sent();
                                self.flush(socket).await?;
                                break;
                            }
                            Next::LogUnavailable => {
                                self.log_unavailable(socket).await?;
                                break;
                            }
                        }
                        handled += 1;
                        if handled == BURST {
                            break;
                        }
                        match self.sub.try_next() {
                            Some(more) => item = more,
                            None => break,
                        }
                    }
                }
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
                let size = Filter::from(subscription.clone()).size();
                if size > self.state.limits.max_subscriptions {
                    let message = format!(
                        "this subscription names {size} tables, types and values; the most is {}",
                        self.state.limits.max_subscriptions
                    );
                    return self.error(socket, "bad_request", &message).await;
                }
                let scope = self.sub.scope.as_ref().expect("authenticated before any action");
                if let Some(table) = subscription.tables.iter().flatten().find(|t| !scope.allows_table(t)) {
                    self.state.metrics.forbidden.inc();
                    let message = format!(
                        "table `{}` is outside this token's scope",
                        table.chars().take(64).collect::<String>()
                    );
                    return self.error(socket, "forbidden", &message).await;
                }
                let filter = Filter::from(subscription);
                let reply = ServerMessage::Subscribed {
                    seq: self.sub.last_seq(),
                    tables: filter.tables.as_ref(),
                    types: filter.types.as_ref(),
                    where_: filter.where_.as_ref(),
                };
                self.reply(socket, &reply).await?;
                self.sub.filter = Some(filter);
                Ok(())
            }
            (Protocol::General, Action::Unsubscribe { types }) => {
                match (&types, self.sub.filter.as_mut()) {
                    (Some(types), Some(filter)) => filter.drop_types(types),
                    _ => self.sub.filter = None,
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
                    self.state.metrics.auth_refusals.inc();
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
                self.expires = grant.deadline();
                self.sub.scope = Some(grant.scope);
                self.reply(
                    socket,
                    &ServerMessage::AuthOk {
                        expires_at: grant.expires_at,
                    },
                )
                .await
            }
            Err(refusal) => {
                self.state.metrics.auth_refusals.inc();
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
        self.state.metrics.rate_limited.inc();
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
        self.reply(socket, &ServerMessage::Resumed { after, head }).await?;
        self.sub.resume_after(after);
        Ok(())
    }

    async fn snapshot<S>(&mut self, socket: &mut S, table: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let scope = self.sub.scope.clone().expect("authenticated before any action");
        if !scope.allows_table(table) {
            self.state.metrics.forbidden.inc();
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
                self.sub.set_watermark(table, watermark);
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
        let scope = self.sub.scope.clone().expect("authenticated before any message");
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
                self.sub.set_watermark("studies", watermark);
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
        self.state.metrics.client_errors.inc();
        self.reply(socket, &ServerMessage::Error { code, message }).await
    }

    /// The log could not be read: the client must re-snapshot from where it is.
    async fn log_unavailable<S>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let message = ServerMessage::RefreshNeeded {
            reason: "log_unavailable",
            seq: self.sub.last_seq(),
            oldest_seq: None,
        };
        self.reply(socket, &message).await
    }

    /// Sends one of the server's own messages in this client's envelope.
    async fn reply<S>(&self, socket: &mut S, message: &ServerMessage<'_>) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let text = message.encode(self.envelope);
        self.state.metrics.bytes_sent.inc_by(text.len() as u64);
        self.send(socket, Message::Text(text.into())).await
    }

    /// Queues an event's frame.
    async fn feed_frame<S>(&mut self, socket: &mut S, frame: Utf8Bytes) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.unflushed_bytes += frame.len() as u64;
        self.unflushed_events += 1;
        self.feed(socket, Message::Text(frame)).await
    }

    /// Adds what was queued since the last count to `bytes_sent` and `events_delivered`.
    fn count_sent(&mut self) {
        let metrics = &self.state.metrics;
        metrics.bytes_sent.inc_by(std::mem::take(&mut self.unflushed_bytes));
        metrics
            .events_delivered
            .inc_by(std::mem::take(&mut self.unflushed_events));
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
        // Room in the write buffer is the common case, and it needs no timer:
        // a timeout per frame (the runtime's handle, a clock read, a timer
        // entry dropped) was a fifth of the server's CPU in a fan-out.
        let mut ready = futures_util::future::poll_fn(|cx| socket.poll_ready_unpin(cx));
        match futures_util::FutureExt::now_or_never(&mut ready) {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(End::Gone),
            None => self.within_write_timeout(ready).await?,
        }
        socket.start_send_unpin(message).map_err(|_| End::Gone)
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

/// An event's frame, in a client's envelope.
fn frame_of(envelope: Envelope, event: &Event) -> Utf8Bytes {
    match envelope {
        Envelope::Type => event.frame.clone(),
        Envelope::Event => event.enveloped(),
    }
}
