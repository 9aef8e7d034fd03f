//! `pgfeed tail <url>`: a client of the feed in the terminal. It prints events
//! as JSON lines or one readable line each, and survives everything the
//! server does: it reconnects with backoff (1, 2, 4, 8, 16, 30 s plus jitter)
//! and resumes where it was, so nothing is missed and nothing printed twice.
//! Connection state and lag go to stderr; Ctrl-C exits 0.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map};
use tokio_tungstenite::tungstenite::Message;

use crate::backoff::Backoff;
use crate::protocol::{Action, EventFrame, Position, Received, ServerMessage, Subscription};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One readable line per event.
    Line,
    /// Each event's JSON, one per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The server: ws://host:port/ws, wss://…, or http(s)://host:port.
    pub url: String,

    #[arg(long, value_enum, default_value_t = Format::Line)]
    pub format: Format,

    /// Only these tables (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,

    /// Only these event types (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,

    /// Only rows whose column equals the value (col=val; repeat for more columns).
    #[arg(long = "where")]
    pub where_: Vec<String>,

    /// Start after this position (a seq, or a checked position like
    /// 1234.9f86d081), replayed from the log, instead of now.
    #[arg(long, value_parser = parse_position)]
    pub after: Option<Position>,

    /// What to do when the server says the position cannot be continued
    /// (`refresh_needed`: history changed, pruned, ahead): print a marker line
    /// and go on, or exit with status 3.
    #[arg(long, value_enum, default_value_t = OnReset::Continue)]
    pub on_reset: OnReset,

    /// A JWT, when the server requires one.
    #[arg(long, env = "PGFEED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnReset {
    /// Print a marker line and go on from where the server goes on.
    Continue,
    /// Exit with status 3.
    Exit,
}

fn parse_position(text: &str) -> Result<Position, String> {
    Position::parse(text).ok_or_else(|| format!("`{text}` is not a seq or a position like 1234.9f86d081"))
}

/// Where the printed stream stands, so a reconnect continues it exactly.
#[derive(Debug, Default)]
struct Printed {
    /// The checked position after which nothing is missing from what was printed.
    whole: Option<Position>,
    /// The transaction being printed (a reconnect may come in its middle), its
    /// position, and how many of its events were printed.
    open: Option<(i64, String, usize)>,
    /// How many events of the open transaction to drop after a reconnect (printed already).
    to_skip: usize,
}

impl Printed {
    /// An event is about to be printed: true when it was printed already.
    fn seen(&mut self, event: &EventFrame<'_>) -> bool {
        let position = event.position.as_deref().unwrap_or_default().to_string();
        match &mut self.open {
            Some((seq, _, printed)) if *seq == event.seq => {
                if self.to_skip > 0 {
                    self.to_skip -= 1;
                    return true;
                }
                *printed += 1;
            }
            open => {
                // A new transaction: the one before it is done (what of it is
                // missing was filtered out).
                if let Some((_, done, _)) = open.take() {
                    self.whole = Position::parse(&done);
                }
                *open = Some((event.seq, position, 1));
                self.to_skip = 0;
            }
        }
        if event.tx_index + 1 == event.tx_size {
            let (_, done, _) = self.open.take().expect("just set");
            self.whole = Position::parse(&done);
        }
        false
    }
}

/// The subscription the flags describe.
fn subscription(args: &TailArgs) -> Result<Action> {
    let list = |names: &[String]| (!names.is_empty()).then(|| names.iter().cloned().collect());
    let mut where_ = Map::new();
    for condition in &args.where_ {
        let Some((column, value)) = condition.split_once('=') else {
            bail!("--where takes column=value, not `{condition}`");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
        where_.insert(column.trim().to_string(), value);
    }
    Ok(Action::Subscribe(Subscription {
        tables: list(&args.tables),
        types: list(&args.types),
        where_: (!where_.is_empty()).then_some(where_),
        after: None,
    }))
}

/// `ws[s]://host:port/ws` from what the user typed.
fn feed_url(url: &str) -> Result<String> {
    let url = url.trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .context("the URL needs a scheme: ws://host:port/ws")?;
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => bail!("unknown scheme `{other}`: use ws, wss, http or https"),
    };
    let rest = if rest.contains('/') {
        rest.to_string()
    } else {
        format!("{rest}/ws")
    };
    Ok(format!("{scheme}://{rest}"))
}

/// Runs until Ctrl-C.
pub async fn tail(args: TailArgs) -> Result<()> {
    let url = feed_url(&args.url)?;
    let subscribe = subscription(&args)?;
    let mut position = Printed {
        whole: args.after.clone(),
        ..Printed::default()
    };
    // 1, 2, 4, 8, 16, then 30 s, each with up to 20% jitter.
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.2);
    loop {
        let attempt = follow(&url, &args, &subscribe, &mut position, &mut backoff);
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => {
                eprintln!("tail: stopped");
                return Ok(());
            }
            ended = attempt => {
                let reason = match ended {
                    Ok(Ending::Reset) => std::process::exit(3),
                    Err(err) => format!("{err:#}"),
                };
                let wait = backoff.next_wait();
                eprintln!("tail: reconnecting in {:.1} s ({reason})", wait.as_secs_f64());
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {
                        eprintln!("tail: stopped");
                        return Ok(());
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Why a connection ended without an error (it otherwise ends with the error that ended it).
enum Ending {
    /// `refresh_needed` with `--on-reset exit`.
    Reset,
}

/// One connection: subscribe after where the printed stream stands (in one
/// message: no live event comes before the replay), print.
async fn follow(
    url: &str,
    args: &TailArgs,
    subscribe: &Action,
    position: &mut Printed,
    backoff: &mut Backoff,
) -> Result<Ending> {
    let target = match &args.token {
        Some(token) => {
            let token: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
            format!("{url}{}token={token}", if url.contains('?') { '&' } else { '?' })
        }
        None => url.to_string(),
    };
    eprintln!("tail: connecting to {url}");
    let mut socket = connect(&target).await?;
    let hello = next_text(&mut socket).await?;
    let Ok(Received::Server(ServerMessage::Connected { seq: head, .. })) = Received::parse(&hello) else {
        bail!("the server did not say connected: {hello}");
    };
    let Action::Subscribe(subscription) = subscribe else {
        bail!("tail subscribes");
    };
    // From the last whole transaction printed, dropping what of the open one was printed already.
    let subscription = Subscription {
        after: position.whole.clone(),
        ..subscription.clone()
    };
    position.to_skip = position.open.as_ref().map_or(0, |(_, _, printed)| *printed);
    socket
        .send(Message::Text(Action::Subscribe(subscription).encode().into()))
        .await?;
    let ServerMessage::Subscribed {
        seq, position: start, ..
    } = expect(&mut socket, "subscribed").await?
    else {
        bail!("expected subscribed");
    };
    match &position.whole {
        Some(after) => eprintln!(
            "tail: connected; catching up {} transactions",
            (head - after.seq).max(0)
        ),
        None => eprintln!("tail: connected at seq {seq}"),
    }
    if position.whole.is_none() {
        position.whole = start;
    }
    backoff.reset();
    let mut out = std::io::stdout().lock();
    loop {
        let text = next_text(&mut socket).await?;
        match Received::parse(&text) {
            Ok(Received::Server(ServerMessage::Error { message, .. })) => eprintln!("tail: server says {message:?}"),
            Ok(Received::Server(ServerMessage::RefreshNeeded {
                reason,
                seq,
                position: restart,
                ..
            })) => {
                // What was printed after `seq` is of no use (another history,
                // or a gap): a marker line, then what the server goes on with.
                match args.format {
                    Format::Json => writeln!(out, "{text}")?,
                    Format::Line => writeln!(
                        out,
                        "-- refresh needed ({reason}): nothing after #{seq} continues; going on after {}",
                        restart.as_ref().map_or("now".to_string(), Position::to_string)
                    )?,
                }
                out.flush()?;
                if args.on_reset == OnReset::Exit {
                    return Ok(Ending::Reset);
                }
                *position = Printed {
                    whole: restart,
                    ..Printed::default()
                };
            }
            Ok(Received::Event(event)) => {
                if position.seen(&event) {
                    continue;
                }
                match args.format {
                    Format::Json => writeln!(out, "{text}")?,
                    Format::Line => writeln!(out, "{}", line(&event))?,
                }
                out.flush()?;
            }
            _ => {}
        }
    }
}

/// `#12 study_updated studies {"id":3,"study_label":"ONC-001b"} by 42`
fn line(event: &EventFrame<'_>) -> String {
    let mut data = event.data.to_string();
    if data.len() > 160 {
        let mut cut = 157;
        while !data.is_char_boundary(cut) {
            cut -= 1;
        }
        data.truncate(cut);
        data.push_str("...");
    }
    let actor = event.actor.as_ref().map(|a| format!(" by {a}")).unwrap_or_default();
    format!("#{} {} {} {data}{actor}", event.seq, event.kind, event.table)
}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Stream>>;

/// A byte stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(url: &str) -> Result<Socket> {
    let (scheme, rest) = url.split_once("://").expect("feed_url made it");
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let port = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(if scheme == "wss" { 443 } else { 80 });
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host, port)))
        .await
        .context("connecting timed out")?
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let stream: Box<dyn Stream> = if scheme == "wss" {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())?;
        Box::new(
            tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?,
        )
    } else {
        Box::new(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .context("the WebSocket upgrade was refused")?;
    Ok(socket)
}

async fn next_text(socket: &mut Socket) -> Result<String> {
    loop {
        match socket.next().await {
            None => bail!("the connection ended"),
            Some(Err(err)) => return Err(err.into()),
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => {
                bail!(
                    "closed by the server ({})",
                    frame.map(|f| f.code.to_string()).unwrap_or_default()
                )
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Reads until one of the server's messages of type `kind`; an error message fails.
async fn expect(socket: &mut Socket, kind: &str) -> Result<ServerMessage<'static>> {
    loop {
        let text = next_text(socket).await?;
        // Its fields are read as owned text: nothing of it borrows the frame.
        let Ok(message) = serde_json::from_str::<ServerMessage<'static>>(&text) else {
            continue;
        };
        if let ServerMessage::Error { message, .. } = &message {
            bail!("the server refused: {message:?}");
        }
        if message.kind() == kind {
            return Ok(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_subscriptions() {
        assert_eq!(feed_url("http://127.0.0.1:8000").unwrap(), "ws://127.0.0.1:8000/ws");
        assert_eq!(
            feed_url("wss://feed.example/ws/updates").unwrap(),
            "wss://feed.example/ws/updates"
        );
        assert!(feed_url("ftp://x").is_err());
        let args = TailArgs {
            url: "ws://x".into(),
            format: Format::Json,
            tables: vec!["studies".into()],
            types: vec![],
            where_: vec!["study_id=3".into(), "label=ONC".into()],
            after: None,
            on_reset: OnReset::Continue,
            token: None,
        };
        assert_eq!(
            serde_json::to_value(subscription(&args).unwrap()).unwrap(),
            json!({"action": "subscribe", "tables": ["studies"], "where": {"study_id": 3, "label": "ONC"}})
        );
    }
}
