//! What a WebSocket client's messages ask, answered: the verbs of the general
//! protocol and PEARL's, `auth` at any time, and the rate limit's replies.
//! The decisions themselves are `http::verbs`', shared with SSE and REST.

use std::borrow::Cow;

use axum::extract::ws::Message;
use futures_util::{Sink, Stream, StreamExt};

use super::session::{End, Protocol, Session};
use crate::feed::log;
use crate::filter::Filter;
use crate::http::verbs::{self, Refusal, ResumeFrom};
use crate::protocol::{close, Action, Position, ServerMessage, Subscription};

impl Session {
    pub(super) async fn on_message<S>(&mut self, socket: &mut S, message: &str) -> Result<(), End>
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
            (Protocol::General, Action::Subscribe(subscription)) => self.subscribe(socket, subscription).await,
            (Protocol::General, Action::Unsubscribe { types }) => {
                match (&types, self.sub.filter.as_mut()) {
                    (Some(types), Some(filter)) => filter.drop_types(types),
                    _ => self.sub.filter = None,
                }
                self.reply(
                    socket,
                    &ServerMessage::Unsubscribed {
                        types: types.as_ref().map(Cow::Borrowed),
                    },
                )
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
    pub(super) async fn authenticate_first<S, E>(&mut self, socket: &mut S) -> Result<(), End>
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
                self.sub.follow_renames();
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
    pub(super) async fn rate_limited<S>(&mut self, socket: &mut S) -> Result<(), End>
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
            self.reply(socket, &ServerMessage::error("rate_limited", &message))
                .await?;
        }
        Ok(())
    }

    /// `subscribe {tables?, types?, where?, after?}`: the filter, and with
    /// `after` the replay after it, in one step: no live event comes before
    /// the replay, and none twice.
    async fn subscribe<S>(&mut self, socket: &mut S, subscription: Subscription) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let after = subscription.after.clone();
        let filter = Filter::from(subscription);
        let scope = self.sub.scope.as_ref().expect("authenticated before any action");
        if let Err(refusal) = verbs::check_filter(&self.state, scope, &filter) {
            return self.refuse(socket, refusal).await;
        }
        let start = match &after {
            None => None,
            Some(after) => match verbs::resume_from(&self.state, after).await {
                Ok(start) => Some((after.seq, start)),
                Err(refusal) => return self.refuse(socket, refusal).await,
            },
        };
        let (seq, position) = match &start {
            Some((_, ResumeFrom::Replay { after, position, .. })) => (*after, Position::parse(position)),
            _ => (self.sub.last_seq(), Position::parse(self.sub.last_position())),
        };
        let reply = ServerMessage::Subscribed {
            seq,
            position,
            tables: filter.tables.as_ref().map(Cow::Borrowed),
            types: filter.types.as_ref().map(Cow::Borrowed),
            where_: filter.where_.as_ref().map(Cow::Borrowed),
        };
        self.reply(socket, &reply).await?;
        self.sub.filter = Some(filter);
        match start {
            None => {
                self.sub.follow_renames();
                Ok(())
            }
            Some((_, ResumeFrom::Replay { after, position, .. })) => {
                self.sub.resume_after(after, &position);
                Ok(())
            }
            Some((from, ResumeFrom::Refresh { reason, oldest })) => {
                self.sub.follow_renames();
                self.refresh_needed(socket, reason, from, oldest).await
            }
        }
    }

    /// `resume {after}` (or `?after=`): replay after `after`, then live. A
    /// position that cannot be served gets `refresh_needed`, and the stream
    /// goes on live.
    pub(super) async fn resume<S>(&mut self, socket: &mut S, after: Position) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        match verbs::resume_from(&self.state, &after).await {
            Ok(ResumeFrom::Replay { after, head, position }) => {
                self.reply(socket, &ServerMessage::Resumed { after, head }).await?;
                self.sub.resume_after(after, &position);
                Ok(())
            }
            Ok(ResumeFrom::Refresh { reason, oldest }) => self.refresh_needed(socket, reason, after.seq, oldest).await,
            Err(refusal) => self.refuse(socket, refusal).await,
        }
    }

    /// `refresh_needed`: what the client holds after `from` cannot be
    /// continued; the live stream goes on after the subscriber's position.
    pub(super) async fn refresh_needed<S>(
        &mut self,
        socket: &mut S,
        reason: &str,
        from: i64,
        oldest: Option<i64>,
    ) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let position = Position::parse(self.sub.last_position());
        self.reply(socket, &ServerMessage::refresh_needed(reason, from, oldest, position))
            .await
    }

    /// `snapshot {table}`: the rows as of a watermark; events after it follow.
    async fn snapshot<S>(&mut self, socket: &mut S, table: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let scope = self.sub.scope.clone().expect("authenticated before any action");
        match verbs::snapshot(&self.state, &scope, table).await {
            Ok(snapshot) => {
                let watermark = snapshot.watermark;
                let message = ServerMessage::Snapshot {
                    table: table.into(),
                    seq: watermark,
                    position: Position::parse(&snapshot.position),
                    rows: Cow::Owned(verbs::raw_rows(snapshot.rows)),
                };
                self.reply(socket, &message).await?;
                self.sub.set_watermark(table, watermark);
                Ok(())
            }
            Err(refusal) => self.refuse(socket, refusal).await,
        }
    }

    /// PEARL's `{"type":"studies_update","data":[...]}`, exact with the events that follow.
    pub(super) async fn studies_update<S>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        // Outside the scope, PEARL's client still gets its first message: no studies.
        let scope = self.sub.scope.clone().expect("authenticated before any message");
        let studies = if scope.allows_table("studies") {
            verbs::snapshot(&self.state, &scope, "studies")
                .await
                .map(|snapshot| (snapshot.watermark, verbs::raw_rows(snapshot.rows)))
        } else {
            log::head(&self.state.feed.pool)
                .await
                .map(|head| (head, verbs::raw_rows("[]".into())))
                .map_err(|err| {
                    tracing::error!(connection = %self.id, error = %err, "studies_update");
                    Refusal::Unavailable("the studies could not be read")
                })
        };
        match studies {
            Ok((watermark, rows)) => {
                let message = ServerMessage::StudiesUpdate {
                    data: Cow::Borrowed(&rows),
                    seq: watermark,
                };
                self.reply(socket, &message).await?;
                self.sub.set_watermark("studies", watermark);
                Ok(())
            }
            Err(refusal) => self.refuse(socket, refusal).await,
        }
    }

    /// A verb refused: the client is told why, and the connection goes on.
    async fn refuse<S>(&mut self, socket: &mut S, refusal: Refusal) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.error(socket, refusal.code(), refusal.message()).await
    }

    pub(super) async fn error<S>(&mut self, socket: &mut S, code: &str, message: &str) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        self.state.metrics.client_errors.inc();
        self.reply(socket, &ServerMessage::error(code, message)).await
    }

    /// The log could not be read: the client must re-snapshot from where it is.
    pub(super) async fn log_unavailable<S>(&mut self, socket: &mut S) -> Result<(), End>
    where
        S: Sink<Message> + Unpin,
    {
        let message = ServerMessage::refresh_needed(
            "log_unavailable",
            self.sub.last_seq(),
            None,
            Position::parse(self.sub.last_position()),
        );
        self.reply(socket, &message).await
    }
}
