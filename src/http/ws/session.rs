//! One WebSocket connection's transport, over any `Stream`/`Sink` of
//! messages: authentication first when no token came with the request, then
//! the client's messages, its rate, heartbeats, write timeouts and closing.
//! What to send, in which order and exactly once is the subscriber's job
//! (`feed::subscriber`, shared with SSE); what each message asks is answered
//! in `actions`.

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};

use tokio::time::Instant;

use super::rate::Bucket;
use crate::feed::event::Event;
use crate::feed::pearl::{self, Audience};
use crate::feed::subscriber::{Next, Subscriber};
use crate::filter::Filter;
use crate::http::access::Access;
use crate::http::AppState;
use crate::protocol::{close, Envelope, Position, ServerMessage};

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `/ws`: `connected`, explicit `subscribe`, snapshots with watermarks, resume.
    General,
    /// `/api/v1/ws/studies`: `studies_update` on connect, every PEARL event pushed.
    Pearl,
}

/// How a connection was opened.
#[derive(Debug, Clone)]
pub struct Opening {
    pub protocol: Protocol,
    pub envelope: Envelope,
    pub after: Option<Position>,
    pub access: Access,
    /// `?workspace_id=` (Shadower): applied to tokens sent later with `auth` too.
    pub workspace: Option<Vec<serde_json::Value>>,
    /// Everything the token may see until the client subscribes (`--default-subscription`).
    pub subscribe_all: bool,
}

/// Items a session takes from its subscriber per wake-up, at most (it then
/// looks at the client's messages and the shutdown token again).
const BURST: usize = 256;

/// Why a session ended early.
#[derive(Debug)]
pub(super) enum End {
    /// The socket is gone or closed.
    Gone,
    /// The client left a message unread past the write timeout.
    Stuck,
    /// Closed with this code and reason (a token refused or expired, a flood).
    Closed(u16, &'static str),
}

/// One connection. Its fields are its own and its actions'.
pub struct Session {
    pub(super) state: AppState,
    /// When the token expires (the socket closes with 4401 unless a fresh `auth` arrives).
    pub(super) expires: Option<Instant>,
    /// The client's message rate.
    pub(super) bucket: Bucket,
    /// `?workspace_id=`: narrows every token this connection presents.
    pub(super) workspace: Option<Vec<serde_json::Value>>,
    pub(super) protocol: Protocol,
    /// How this client's messages are wrapped, both ways.
    pub(super) envelope: Envelope,
    pub(super) id: uuid::Uuid,
    /// The ordered, exactly-once stream this socket carries (filter and scope live there).
    pub(super) sub: Subscriber,
    /// Event bytes queued since the last flush, added to `bytes_sent` at the flush.
    pub(super) unflushed_bytes: u64,
    /// Events queued since the last flush, added to `events_delivered` with the bytes.
    pub(super) unflushed_events: u64,
}

impl Session {
    pub(super) fn new(state: AppState, opening: &Opening) -> Session {
        let audience = match opening.protocol {
            Protocol::General => Audience::Native,
            Protocol::Pearl => Audience::Pearl,
        };
        let mut sub = state.feed.subscriber(audience);
        sub.scope = opening.access.scope();
        if opening.protocol == Protocol::Pearl {
            sub.filter = Some(Filter {
                tables: Some(pearl::TABLES.iter().map(|t| t.to_string()).collect()),
                ..Filter::default()
            });
        } else if opening.subscribe_all {
            // Replaced by the client's own `subscribe`, if it ever sends one.
            sub.filter = Some(Filter::default());
        }
        if opening.after.is_none() {
            // With `?after=`, the replay resolves them as of its start.
            sub.follow_renames();
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
    pub(super) async fn run<S, E>(mut self, mut socket: S, opening: Opening, permit: tokio::sync::OwnedSemaphorePermit)
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
                    position: Position::parse(self.sub.last_position()),
                    // As the client named it: one workspace, or the list.
                    workspace_id: self.workspace.as_ref().map(|ids| match ids.as_slice() {
                        [one] => one.clone(),
                        many => serde_json::Value::Array(many.to_vec()),
                    }),
                };
                self.reply(socket, &hello).await?;
                if let Some(after) = opening.after.clone() {
                    Box::pin(self.resume(socket, after)).await?;
                }
            }
            Protocol::Pearl => Box::pin(self.studies_update(socket)).await?,
        }
        let heartbeat = self.state.limits.heartbeat;
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        let mut last_heard = Instant::now();
        let shutdown = self.state.shutdown.clone();
        // Made once: a fresh one per pass took a place in the token's waiting
        // list, shared by every connection, and gave it back, twice a wake-up.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        // The token's deadline, one timer for the connection, moved when a
        // fresh token moves it: a timer made per pass was set in the runtime's
        // timer wheel and taken out again on every wake-up of every
        // connection whose token expires.
        let expiry = tokio::time::sleep_until(self.expires.unwrap_or_else(Instant::now));
        tokio::pin!(expiry);
        let mut expiry_at = self.expires;
        loop {
            if self.expires != expiry_at {
                expiry_at = self.expires;
                if let Some(at) = expiry_at {
                    expiry.as_mut().reset(at);
                }
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => {
                    let _ = self.send(socket, close_frame(close::SHUTDOWN, "server shutdown")).await;
                    return Ok(());
                }
                _ = &mut expiry, if expiry_at.is_some() => {
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
                                self.unflushed_bytes += frame.len() as u64;
                                self.unflushed_events += 1;
                                if let Some(waiting) = queue_now(socket, Message::Text(frame))? {
                                    self.feed(socket, waiting).await?
                                }
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
                            Next::HistoryChanged { from } => {
                                self.refresh_needed(socket, "history_changed", from, None).await?;
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
                    if self.protocol == Protocol::General {
                        let (seq, position) = self.state.feed.hub.head_and_position();
                        let heartbeat = ServerMessage::Heartbeat {
                            seq,
                            position: Position::parse(&position),
                        };
                        self.reply(socket, &heartbeat).await?;
                    }
                }
            }
        }
    }

    /// Sends one of the server's own messages in this client's envelope.
    pub(super) async fn reply<S>(&self, socket: &mut S, message: &ServerMessage<'_>) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let text = message.encode(self.envelope);
        self.state.metrics.bytes_sent.inc_by(text.len() as u64);
        self.send(socket, Message::Text(text.into())).await
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
    pub(super) async fn send<S>(&self, socket: &mut S, message: Message) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.within_write_timeout(socket.send(message)).await
    }

    /// Queues without flushing, waiting for room in the write buffer within
    /// the write timeout; the session flushes when the hub has nothing more for it.
    async fn feed<S>(&self, socket: &mut S, message: Message) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        match queue_now(socket, message)? {
            None => Ok(()),
            Some(message) => {
                self.within_write_timeout(futures_util::future::poll_fn(|cx| socket.poll_ready_unpin(cx)))
                    .await?;
                socket.start_send_unpin(message).map_err(|_| End::Gone)
            }
        }
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

/// Queues `message` if the write buffer has room now, and gives it back if
/// not. Room is the common case, and this way it costs neither a timer (a
/// timeout per frame was a fifth of the server's CPU in a fan-out) nor a
/// future: building the future of an `async fn` per frame copied it into the
/// session's state twice, 368 bytes each, on every delivery.
fn queue_now<S>(socket: &mut S, message: Message) -> Result<Option<Message>, End>
where
    S: Sink<Message> + Unpin,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match socket.poll_ready_unpin(&mut cx) {
        std::task::Poll::Ready(Ok(())) => socket.start_send_unpin(message).map(|()| None).map_err(|_| End::Gone),
        std::task::Poll::Ready(Err(_)) => Err(End::Gone),
        std::task::Poll::Pending => Ok(Some(message)),
    }
}

pub(super) fn close_frame(code: u16, reason: &'static str) -> Message {
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
