//! The wire protocol in one place (the README's protocol section, `web/asyncapi.json`): what clients may send (with the
//! seeds' dialects), every message the server sends besides events, the close
//! codes, and the two envelopes. WebSocket sessions, SSE and `tail` all read
//! these definitions; events themselves are encoded once in `feed::event`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::filter::Filter;
use crate::names::Names;

/// Close codes.
pub mod close {
    pub const SHUTDOWN: u16 = 1001;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// A token refused, expired, or missing past the auth deadline.
    pub const UNAUTHORIZED: u16 = 4401;
    /// A scope that does not allow what was asked.
    pub const FORBIDDEN: u16 = 4403;
}

/// How messages are wrapped, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelope {
    /// `{"type": …, …}`; clients name their verb with `action` or `type`.
    #[default]
    Type,
    /// `{"event": …, "data": …, "timestamp": …}` (`/ws/updates`, `/ws?envelope=event`).
    Event,
}

/// A position in the feed as a client holds it: after transaction `seq` of
/// one history. Written `<seq>.<check>` (`"1234.9f86d081"`), where the check
/// names the transaction seq is in the history it came from, so a resume in
/// another history (a reinstall, a restore, a failover that lost commits) is
/// recognised (migrations/capture/0007). `0` is before the first seq. A bare
/// number (`1234`, or `"1234"`) is accepted, unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub seq: i64,
    /// Eight hex digits; `None` for an unchecked position.
    pub check: Option<String>,
}

impl Position {
    /// Reads `1234` or `1234.9f86d081`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Position> {
        let text = text.trim();
        let (seq, check) = match text.split_once('.') {
            Some((seq, check)) => (seq, Some(check)),
            None => (text, None),
        };
        let seq: i64 = seq.parse().ok().filter(|seq| *seq >= 0)?;
        let check = match check {
            None => None,
            Some(c) if c.len() == 8 && c.bytes().all(|b| b.is_ascii_hexdigit()) => Some(c.to_ascii_lowercase()),
            Some(_) => return None,
        };
        Some(Position { seq, check })
    }

    /// A position without a check (what a bare seq says).
    pub fn unchecked(seq: i64) -> Position {
        Position { seq, check: None }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.check {
            Some(check) => write!(f, "{}.{check}", self.seq),
            None => write!(f, "{}", self.seq),
        }
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, to: S) -> Result<S::Ok, S::Error> {
        to.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(from: D) -> Result<Position, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Seq(i64),
            Text(String),
        }
        let invalid =
            || serde::de::Error::custom("invalid position: give a seq (1234) or a position (\"1234.9f86d081\")");
        // A missing or mistyped field says so in serde's words; a wrong text says how a position reads.
        match Given::deserialize(from)? {
            Given::Seq(seq) if seq >= 0 => Ok(Position::unchecked(seq)),
            Given::Seq(_) => Err(invalid()),
            Given::Text(text) => Position::parse(&text).ok_or_else(invalid),
        }
    }
}

/// `subscribe {tables?, types?, where?, after?}`; `event_types` is the seeds' name for `types`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Names>,
    #[serde(default, alias = "event_types", skip_serializing_if = "Option::is_none")]
    pub types: Option<Names>,
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_: Option<Map<String, Value>>,
    /// Start right after this position (replayed from the log), with no live
    /// event before the replay: subscribe and resume in one message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Position>,
}

impl From<Subscription> for Filter {
    fn from(s: Subscription) -> Self {
        Filter {
            tables: s.tables,
            types: s.types,
            where_: s.where_,
            except_types: Names::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TypesArg {
    #[serde(default, alias = "event_types")]
    types: Option<Names>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableArg {
    table: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterArg {
    after: Position,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenArg {
    token: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// What a client asks for. Clients write it as `{"action": …, …}`
/// (`Serialize`); the server reads every dialect of it with [`Action::parse`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Ping,
    Subscribe(Subscription),
    /// Without types: stop everything; with types: stop only those.
    Unsubscribe {
        #[serde(skip_serializing_if = "Option::is_none")]
        types: Option<Names>,
    },
    Snapshot {
        table: String,
    },
    /// Replays after `after`, then live. On a live subscription it starts
    /// that subscription over from `after`: what it holds after `after` comes again.
    Resume {
        after: Position,
    },
    /// PEARL: a fresh `studies_update`.
    Refresh,
    Auth {
        token: String,
    },
}

/// The longest reason an error message gives.
const MAX_REASON: usize = 300;

/// What a JSON value is, for an error message that must not echo it.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Fields the seeds' clients send alongside their verb that mean nothing here.
const IGNORED: [&str; 4] = ["id", "request_id", "client_id", "timestamp"];

impl Action {
    /// The message's JSON text, as a client sends it.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("actions always serialize")
    }

    /// Reads one client message. The verb is `action`, `type` or `event`; its
    /// arguments are the other fields, or the fields of `data` (the envelope).
    /// Unknown verbs and fields are refused with a message saying which.
    pub fn parse(text: &str) -> Result<Action, String> {
        Action::parse_unbounded(text).map_err(|mut reason| {
            // An answer never grows with the input: at most a few hundred characters.
            if reason.len() > MAX_REASON {
                let mut cut = MAX_REASON;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
                reason.push('…');
            }
            reason
        })
    }

    fn parse_unbounded(text: &str) -> Result<Action, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("cannot read that message as JSON: {e}"))?;
        let Value::Object(mut fields) = value else {
            return Err("cannot read that message: send a JSON object like {\"action\":\"ping\"}".into());
        };
        let verb = ["action", "type", "event"]
            .iter()
            .find_map(|name| fields.remove(*name))
            .ok_or("the message names no action: add \"action\" (or \"type\")")?;
        let Value::String(verb) = verb else {
            return Err(format!("the action must be a string, not {}", kind_of(&verb)));
        };
        if let Some(data) = fields.remove("data") {
            match data {
                Value::Object(data) => {
                    for (name, value) in data {
                        fields.entry(name).or_insert(value);
                    }
                }
                Value::Null => {}
                other => return Err(format!("`data` must be an object, not {}", kind_of(&other))),
            }
        }
        for name in IGNORED {
            fields.remove(name);
        }
        let args = Value::Object(fields);
        fn read<T: for<'de> Deserialize<'de>>(verb: &str, args: Value) -> Result<T, String> {
            serde_json::from_value(args).map_err(|e| format!("cannot read `{verb}`: {e}"))
        }
        Ok(match verb.as_str() {
            "ping" => read::<NoArgs>(&verb, args).map(|_| Action::Ping)?,
            "subscribe" => Action::Subscribe(read(&verb, args)?),
            "unsubscribe" => Action::Unsubscribe {
                types: read::<TypesArg>(&verb, args)?.types,
            },
            "snapshot" => Action::Snapshot {
                table: read::<TableArg>(&verb, args)?.table,
            },
            "resume" => Action::Resume {
                after: read::<AfterArg>(&verb, args)?.after,
            },
            "refresh" => read::<NoArgs>(&verb, args).map(|_| Action::Refresh)?,
            "auth" => Action::Auth {
                token: read::<TokenArg>(&verb, args)?.token,
            },
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!(
                    "unknown action `{shown}`: expected ping, subscribe, unsubscribe, snapshot, resume, refresh or auth"
                ));
            }
        })
    }
}

/// Every message the server sends other than events. Both directions: the
/// server encodes it, clients (`tail`, the bench, the tests) read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// A token sent with `auth` was accepted; it is valid until `expires_at` (seconds since 1970).
    AuthOk {
        expires_at: u64,
    },
    /// First message on `/ws` (and on `/events`): live delivery starts after `position`.
    /// In the event envelope, `connection_id` and `workspace_id` are also at
    /// the top level, where Shadower's clients read them.
    Connected {
        connection_id: uuid::Uuid,
        seq: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
        /// `?workspace_id=` of the connection (Shadower), as given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace_id: Option<Value>,
    },
    Pong,
    /// Sent at every heartbeat: the newest transaction this instance has
    /// delivered, so a client can tell a quiet feed (the same seq it holds)
    /// from one it fell behind (a larger one).
    Heartbeat {
        seq: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
    Subscribed {
        seq: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
        tables: Option<Cow<'a, Names>>,
        types: Option<Cow<'a, Names>>,
        #[serde(rename = "where")]
        where_: Option<Cow<'a, Map<String, Value>>>,
    },
    Unsubscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        types: Option<Cow<'a, Names>>,
    },
    /// Replay after `after` follows, then live events.
    Resumed {
        after: i64,
        head: i64,
    },
    /// The client must re-snapshot: its position (`seq`) can no longer be
    /// served. `reason`: `pruned` (older than retention), `ahead` (beyond the
    /// head), `history_changed` (another history: reinstall, restore,
    /// failover), `log_unavailable`. Live delivery goes on after `position`.
    RefreshNeeded {
        reason: Cow<'a, str>,
        seq: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        oldest_seq: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
    /// Rows of `table` as of `seq`; events after `seq` follow.
    Snapshot {
        table: Cow<'a, str>,
        seq: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
        #[serde(deserialize_with = "raw_json")]
        rows: Cow<'a, RawValue>,
    },
    /// PEARL: every study, as of `seq`.
    StudiesUpdate {
        #[serde(deserialize_with = "raw_json")]
        data: Cow<'a, RawValue>,
        seq: i64,
    },
    Error {
        code: Cow<'a, str>,
        message: Cow<'a, str>,
    },
}

/// Rows kept as JSON text. Read through a `Value`: a tagged enum hands its
/// fields over buffered, and `RawValue` reads only from the text itself.
fn raw_json<'de, 'a, D: serde::Deserializer<'de>>(from: D) -> Result<Cow<'a, RawValue>, D::Error> {
    let value = Value::deserialize(from)?;
    serde_json::value::to_raw_value(&value)
        .map(Cow::Owned)
        .map_err(serde::de::Error::custom)
}

impl<'a> ServerMessage<'a> {
    /// An `error` message.
    pub fn error(code: &'a str, message: &'a str) -> ServerMessage<'a> {
        ServerMessage::Error {
            code: code.into(),
            message: message.into(),
        }
    }

    /// A `refresh_needed` message: the client at `seq` must re-snapshot;
    /// live delivery goes on after `position`.
    pub fn refresh_needed(
        reason: &'a str,
        seq: i64,
        oldest_seq: Option<i64>,
        position: Option<Position>,
    ) -> ServerMessage<'a> {
        ServerMessage::RefreshNeeded {
            reason: reason.into(),
            seq,
            oldest_seq,
            position,
        }
    }
}

/// A row event (or a PEARL message) as it goes on the wire, with `type`
/// first (the event envelope relies on it). Encoded once per event by the
/// feed; read by clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame<'a> {
    #[serde(rename = "type")]
    pub kind: Cow<'a, str>,
    pub data: Cow<'a, Value>,
    pub seq: i64,
    pub table: Cow<'a, str>,
    pub op: Cow<'a, str>,
    /// The columns an update changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Cow<'a, [String]>>,
    pub actor: Option<Cow<'a, str>>,
    pub timestamp: Cow<'a, str>,
    /// The event's place in its transaction, and how many events it has.
    pub tx_index: i32,
    pub tx_size: i32,
    /// The checked position of the event's transaction (see [`Position`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved_count: Option<i64>,
    /// Computed by the listener from old and new rows (PEARL's messages).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub derived: bool,
}

/// What a client reads from the feed: one of the server's own messages, or an event.
#[derive(Debug, Clone)]
pub enum Received<'a> {
    Server(ServerMessage<'a>),
    Event(EventFrame<'a>),
}

impl<'a> Received<'a> {
    /// Reads one text frame of `/ws` (in the `type` envelope).
    pub fn parse(text: &'a str) -> Result<Received<'a>, serde_json::Error> {
        match serde_json::from_str::<ServerMessage<'a>>(text) {
            Ok(message) => Ok(Received::Server(message)),
            Err(_) => serde_json::from_str(text).map(Received::Event),
        }
    }
}

impl ServerMessage<'_> {
    /// The message's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::AuthOk { .. } => "auth_ok",
            ServerMessage::Connected { .. } => "connected",
            ServerMessage::Pong => "pong",
            ServerMessage::Heartbeat { .. } => "heartbeat",
            ServerMessage::Subscribed { .. } => "subscribed",
            ServerMessage::Unsubscribed { .. } => "unsubscribed",
            ServerMessage::Resumed { .. } => "resumed",
            ServerMessage::RefreshNeeded { .. } => "refresh_needed",
            ServerMessage::Snapshot { .. } => "snapshot",
            ServerMessage::StudiesUpdate { .. } => "studies_update",
            ServerMessage::Error { .. } => "error",
        }
    }

    /// The message's JSON text in `envelope`.
    pub fn encode(&self, envelope: Envelope) -> String {
        let native = serde_json::to_string(self).expect("server messages always serialize");
        match envelope {
            Envelope::Type => native,
            Envelope::Event => {
                let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(&native) else {
                    unreachable!("a tagged enum serializes to an object")
                };
                let event = fields.remove("type").unwrap_or(Value::Null);
                let hoisted: Vec<(&str, Value)> = match self {
                    ServerMessage::Connected { .. } => ["connection_id", "workspace_id"]
                        .into_iter()
                        .filter_map(|key| Some((key, fields.get(key)?.clone())))
                        .collect(),
                    _ => Vec::new(),
                };
                let data = match (fields.remove("data"), fields.is_empty()) {
                    (Some(data), true) => data,
                    (Some(data), false) => {
                        fields.insert("data".into(), data);
                        Value::Object(fields)
                    }
                    (None, _) => Value::Object(fields),
                };
                let mut message = serde_json::json!({"event": event});
                for (key, value) in hoisted {
                    message[key] = value;
                }
                message["data"] = data;
                message["timestamp"] = now_utc().into();
                message.to_string()
            }
        }
    }
}

/// Now, as every timestamp on the wire: UTC `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub fn now_utc() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    crate::timestamps::from_unix_millis(now.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_by_action_type_or_event_with_the_seeds_aliases() {
        for text in [
            r#"{"action":"subscribe","types":["study_created"]}"#,
            r#"{"type":"subscribe","event_types":["study_created"]}"#,
            r#"{"event":"subscribe","data":{"event_types":["study_created"]},"timestamp":"x"}"#,
        ] {
            let Ok(Action::Subscribe(s)) = Action::parse(text) else {
                panic!("{text}")
            };
            assert_eq!(s.types.unwrap().into_iter().collect::<Vec<_>>(), ["study_created"]);
        }
        assert!(matches!(Action::parse(r#"{"event":"ping"}"#), Ok(Action::Ping)));
        assert!(matches!(
            Action::parse(r#"{"type":"auth","token":"t"}"#),
            Ok(Action::Auth { .. })
        ));
        assert!(matches!(
            Action::parse(r#"{"type":"unsubscribe","event_types":["a"]}"#),
            Ok(Action::Unsubscribe { types: Some(_) })
        ));
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        for (text, says) in [
            ("{not json", "cannot read"),
            ("[]", "cannot read"),
            (r#"{"action":"fly"}"#, "unknown action `fly`"),
            (r#"{"no_action":1}"#, "names no action"),
            (r#"{"action":7}"#, "must be a string"),
            (r#"{"action":"subscribe","tables":"studies"}"#, "invalid type"),
            (r#"{"action":"subscribe","tabels":["studies"]}"#, "unknown field"),
            (r#"{"action":"resume","after":"x"}"#, "invalid position"),
            (r#"{"action":"resume","after":"5.xyz"}"#, "invalid position"),
            (r#"{"action":"resume","after":-1}"#, "invalid position"),
            (r#"{"action":"resume"}"#, "missing field"),
            (r#"{"event":"subscribe","data":3}"#, "must be an object"),
        ] {
            let err = Action::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn envelopes() {
        let pong = ServerMessage::Pong.encode(Envelope::Event);
        let pong: Value = serde_json::from_str(&pong).unwrap();
        assert_eq!(pong["event"], "pong");
        assert!(pong["timestamp"].as_str().unwrap().ends_with('Z'));
        let connected = ServerMessage::Connected {
            connection_id: uuid::Uuid::nil(),
            seq: 4,
            position: None,
            workspace_id: Some(serde_json::json!("ws-1")),
        }
        .encode(Envelope::Event);
        let connected: Value = serde_json::from_str(&connected).unwrap();
        assert_eq!(connected["data"]["seq"], 4);
        // Shadower's shape: the connection and workspace at the top level.
        assert_eq!(connected["connection_id"], uuid::Uuid::nil().to_string());
        assert_eq!(connected["workspace_id"], "ws-1");
        assert_eq!(ServerMessage::Pong.encode(Envelope::Type), r#"{"type":"pong"}"#);
    }

    #[test]
    fn every_message_reads_back_as_it_was_written() {
        let names: Names = ["a".to_string()].into_iter().collect();
        let rows = RawValue::from_string("[{\"id\":1}]".into()).unwrap();
        let messages = [
            ServerMessage::AuthOk { expires_at: 9 },
            ServerMessage::Connected {
                connection_id: uuid::Uuid::nil(),
                seq: 3,
                position: Position::parse("3.0000abcd"),
                workspace_id: None,
            },
            ServerMessage::Pong,
            ServerMessage::Heartbeat {
                seq: 5,
                position: Position::parse("5.0000abcd"),
            },
            ServerMessage::Subscribed {
                seq: 1,
                position: None,
                tables: Some(Cow::Borrowed(&names)),
                types: None,
                where_: None,
            },
            ServerMessage::Unsubscribed { types: None },
            ServerMessage::Resumed { after: 1, head: 2 },
            ServerMessage::refresh_needed("pruned", 4, Some(7), Position::parse("9.00000001")),
            ServerMessage::Snapshot {
                table: "a".into(),
                seq: 2,
                position: Some(Position::unchecked(2)),
                rows: Cow::Borrowed(&rows),
            },
            ServerMessage::StudiesUpdate {
                data: Cow::Borrowed(&rows),
                seq: 2,
            },
            ServerMessage::error("bad_request", "say \"why\""),
        ];
        for message in messages {
            let text = message.encode(Envelope::Type);
            let Received::Server(read) = Received::parse(&text).unwrap() else {
                panic!("{text} is the server's own")
            };
            assert_eq!(read.encode(Envelope::Type), text);
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["type"], message.kind());
        }
        let event = r#"{"type":"study_created","data":{"id":1},"seq":2,"table":"studies","op":"INSERT","actor":null,"timestamp":"2026-01-01T00:00:00.000Z","tx_index":0,"tx_size":1}"#;
        let Received::Event(frame) = Received::parse(event).unwrap() else {
            panic!("an event")
        };
        assert_eq!(
            (frame.kind.as_ref(), frame.seq, frame.data["id"].as_i64()),
            ("study_created", 2, Some(1))
        );
        assert_eq!(serde_json::to_string(&frame).unwrap(), event);
    }

    #[test]
    fn actions_a_client_writes_are_actions_the_server_reads() {
        let actions = [
            Action::Ping,
            Action::Subscribe(Subscription {
                tables: Some(["studies".to_string()].into_iter().collect()),
                types: None,
                where_: Some(serde_json::json!({"id": [1, "2"]}).as_object().unwrap().clone()),
                after: Position::parse("12.0a0b0c0d"),
            }),
            Action::Subscribe(Subscription::default()),
            Action::Unsubscribe { types: None },
            Action::Snapshot { table: "t".into() },
            Action::Resume {
                after: Position::unchecked(5),
            },
            Action::Resume {
                after: Position::parse("5.deadbeef").unwrap(),
            },
            Action::Refresh,
            Action::Auth { token: "x".into() },
        ];
        for action in actions {
            let text = action.encode();
            assert_eq!(Action::parse(&text).unwrap(), action, "{text}");
        }
    }

    #[test]
    fn positions_read_as_numbers_or_checked_text() {
        assert_eq!(Position::parse("12"), Some(Position::unchecked(12)));
        let checked = Position::parse("12.0A0b0c0D").unwrap();
        assert_eq!(checked.to_string(), "12.0a0b0c0d");
        for bad in ["", "x", "-1", "12.", "12.abc", "12.0a0b0c0dd", "1.2.3"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
        let read: Position = serde_json::from_str("7").unwrap();
        assert_eq!(read, Position::unchecked(7));
        let read: Position = serde_json::from_str("\"7.00000001\"").unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), "\"7.00000001\"");
        assert!(serde_json::from_str::<Position>("-3").is_err());
    }
}
