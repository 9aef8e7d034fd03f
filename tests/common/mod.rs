//! Shared test harness: one private Postgres cluster per test binary, one fresh
//! migrated database per test (cloned from a migrated template), servers on
//! port 0 and real WebSocket clients.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

/// PEARL's schema, pgfeed installed, the PEARL preset tracked: what the embedded demo has.
const TEMPLATE: &str = "pgfeed_template";
/// PEARL's schema only, as the PEARL app's own database has it before pgfeed.
const APP_TEMPLATE: &str = "pearl_app_template";

/// Where the binary's cluster listens.
struct Shared {
    admin_url: String,
    template_ready: bool,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// A folder for a test cluster; removes the folders of test runs that have ended.
pub fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix("pgfeed-test-") else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    root.join(format!("pgfeed-test-{}-{tag}", std::process::id()))
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // The cluster belongs to a thread that lives as long as the test binary:
        // Postgres is stopped by a parent-death signal when that thread ends.
        std::thread::spawn(move || {
            let cluster = embedded::Cluster::start(&scratch_dir("shared"), embedded::Durability::Throwaway)
                .expect("starting the test cluster");
            let admin_url = cluster.url("postgres");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                db::create_database(&admin_url, TEMPLATE)
                    .await
                    .expect("creating the template database");
                let pool = db::pool(&cluster.url(TEMPLATE), 1).await.unwrap();
                pgfeed::install::demo(&pool)
                    .await
                    .expect("migrating the template database");
                pool.close().await;
                db::create_database(&admin_url, APP_TEMPLATE)
                    .await
                    .expect("creating the application template database");
                let pool = db::pool(&cluster.url(APP_TEMPLATE), 1).await.unwrap();
                sqlx::raw_sql(db::migrate::DEMO.migrations[0].sql)
                    .execute(&pool)
                    .await
                    .expect("creating PEARL's schema");
                pool.close().await;
            });
            tx.send(admin_url).unwrap();
            loop {
                std::thread::park();
            }
        });
        let admin_url = rx.recv().expect("the test cluster thread failed; see the panic above");
        Shared {
            admin_url,
            template_ready: true,
        }
    })
}

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    /// A database like the embedded demo's: PEARL's tables, pgfeed installed, the preset tracked.
    pub async fn new() -> TestDb {
        TestDb::from_template(TEMPLATE).await
    }

    /// An application's database before pgfeed: PEARL's tables and nothing else.
    pub async fn pearl_app() -> TestDb {
        TestDb::from_template(APP_TEMPLATE).await
    }

    async fn from_template(template: &str) -> TestDb {
        let shared = shared();
        let name = format!("test_{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&shared.admin_url)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = format!("{}/{name}", shared.admin_url.rsplit_once('/').unwrap().0);
        let pool = PgPoolOptions::new().max_connections(20).connect(&url).await.unwrap();
        TestDb { name, url, pool }
    }

    /// Runs SQL as a writer would (a plain connection, simple-query protocol).
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT ({sql})::bigint"))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Gives committed transactions their seqs, as a running server's listener
    /// does (tests without a server tick by hand); returns the head.
    pub async fn tick(&self) -> i64 {
        tick(&self.pool).await
    }

    /// The log as a sequencer makes it: ticks, then the rows after the last
    /// one returned, each with its `seq`, `tx_size` and `tx_index`.
    pub async fn listen(&self) -> Notifications {
        Notifications {
            pool: self.pool.clone(),
            after: self.tick().await,
            ready: Default::default(),
        }
    }

    /// A LISTEN on channel pgfeed, as a raw client would.
    /// A session LISTENing on channel pgfeed as a follower does: sharing
    /// (pgfe, 3), so ticks announce their heads to it.
    pub async fn raw_listener(&self) -> PgListener {
        let mut listener = PgListener::connect(&self.url).await.unwrap();
        listener.listen("pgfeed").await.unwrap();
        sqlx::query("SELECT pg_advisory_lock_shared(1885824613, 3)")
            .execute(&mut listener)
            .await
            .unwrap();
        listener
    }

    pub async fn server(&self) -> Running {
        self.server_with(Settings::default()).await
    }

    pub async fn server_with(&self, settings: Settings) -> Running {
        let running = server::start(&self.url, settings).await.expect("starting the server");
        wait_ready(&running).await;
        running
    }
}

/// Waits until the server's listener is connected and caught up.
pub async fn wait_ready(running: &Running) {
    let url = format!("http://{}/readyz", running.addr);
    for _ in 0..500 {
        if running.state.ready.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server at {url} never became ready");
}

/// One tick on `pool` (see `TestDb::tick`).
pub async fn tick(pool: &PgPool) -> i64 {
    let mut tx = pgfeed::feed::log::ticked_snapshot(pool).await.expect("tick");
    let head: i64 = sqlx::query_scalar("SELECT pgfeed.head()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    head
}

pub struct Notifications {
    pool: PgPool,
    /// The last seq returned.
    after: i64,
    /// Rows read, not yet returned.
    ready: std::collections::VecDeque<Value>,
}

impl Notifications {
    /// The next logged row in seq order; None after `wait` with nothing new.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.ready.is_empty() {
            tick(&self.pool).await;
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT json_build_object('seq', c.seq, 'tx_size', c.size, 'id', e.id, 'table', e.table_name,
                                          'prefix', e.prefix, 'op', e.op, 'new', e.new, 'old', e.old, 'actor', e.actor,
                                          'tx_index', row_number() OVER (PARTITION BY c.seq ORDER BY e.id) - 1)::text
                   FROM pgfeed.commits c JOIN pgfeed.events e USING (tx)
                  WHERE c.seq > $1 ORDER BY c.seq, e.id",
            )
            .bind(self.after)
            .fetch_all(&self.pool)
            .await
            .unwrap();
            for row in rows {
                let row: Value = serde_json::from_str(&row).unwrap();
                self.after = self.after.max(row["seq"].as_i64().unwrap());
                self.ready.push_back(row);
            }
            if self.ready.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.ready.pop_front()
    }

    pub async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("nothing logged within 10 s")
    }

    /// Every row until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut all = Vec::new();
        while let Some(n) = self.next_within(quiet).await {
            all.push(n);
        }
        all
    }
}

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
                Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).expect("server sends JSON")),
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
        let mut message = subscription;
        message["action"] = "subscribe".into();
        self.send(message).await;
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

/// Inserts one row with id 1 into each PEARL table (two users), parents first, in one transaction.
pub async fn seed_pearl(db: &TestDb) {
    db.exec(
        "INSERT INTO users (id, username, role) VALUES (1, 'ana', 'EDITOR'), (2, 'ben', 'EDITOR');
         INSERT INTO studies (id, study_label) VALUES (1, 'ONC-001');
         INSERT INTO database_releases (id, study_id, database_release_label, database_release_date)
              VALUES (1, 1, 'DBL-1', '2026-01-31');
         INSERT INTO reporting_efforts (id, study_id, database_release_id, database_release_label)
              VALUES (1, 1, 1, 'DBL-1');
         INSERT INTO reporting_effort_items (id, reporting_effort_id, item_type, item_subtype, item_code)
              VALUES (1, 1, 'TLF', 'Table', 't_dm');
         INSERT INTO reporting_effort_item_tracker (id, reporting_effort_item_id, production_programmer_id)
              VALUES (1, 1, 1);
         INSERT INTO tracker_comments (id, tracker_id, user_id, comment_text) VALUES (1, 1, 1, 'check N');
         INSERT INTO packages (id, package_name) VALUES (1, 'core');
         INSERT INTO package_items (id, package_id, item_type, item_subtype, item_code)
              VALUES (1, 1, 'TLF', 'Listing', 'l_ae');
         INSERT INTO text_elements (id, type, label) VALUES (1, 'title', 'Demographics');
         SELECT setval(pg_get_serial_sequence(t, 'id'), 100)
           FROM unnest(ARRAY['users', 'studies', 'database_releases', 'reporting_efforts',
                             'reporting_effort_items', 'reporting_effort_item_tracker', 'tracker_comments',
                             'packages', 'package_items', 'text_elements']) t;",
    )
    .await;
}

/// A plain HTTP/1.1 GET against the server: (status, body).
pub async fn http_get(running: &Running, path: &str) -> (u16, String) {
    http(running, "GET", path, None).await
}

/// A plain HTTP/1.1 request with an optional JSON body: (status, body).
pub async fn http(running: &Running, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    http_with(running, method, path, body, &[]).await
}

/// The same with extra headers.
pub async fn http_with(
    running: &Running,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let body = body.unwrap_or("");
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Asserts `events` (non-derived) are exactly the log after seq `after`, up to the
/// last event's seq: every transaction whole, once, in commit order.
pub async fn assert_matches_log(db: &TestDb, events: &[Value], after: i64) {
    assert_commit_order(events);
    let log: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT c.seq, count(*) FROM pgfeed.commits c JOIN pgfeed.events e USING (tx) WHERE c.seq > $1 AND c.seq <= $2 GROUP BY c.seq ORDER BY c.seq",
    )
    .bind(after)
    .bind(events.last().map(|e| e["seq"].as_i64().unwrap()).unwrap_or(after))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut received: Vec<(i64, i64)> = Vec::new();
    for event in events.iter().filter(|e| e.get("derived").is_none()) {
        let seq = event["seq"].as_i64().unwrap();
        match received.last_mut() {
            Some((last, count)) if *last == seq => *count += 1,
            _ => received.push((seq, 1)),
        }
    }
    if received != log {
        let missing: Vec<_> = log.iter().filter(|t| !received.contains(t)).take(10).collect();
        let extra: Vec<_> = received.iter().filter(|t| !log.contains(t)).take(10).collect();
        panic!(
            "received {} transactions, log has {}; missing {missing:?}; extra {extra:?}",
            received.len(),
            log.len()
        );
    }
}

/// Writers that insert continuously from `tasks` connections until stopped;
/// they retry through database outages, like a real application would.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<usize>>,
}

impl Writers {
    pub fn start(url: &str, tasks: usize, limit: usize) -> Writers {
        Writers::start_padded(url, tasks, limit, 0)
    }

    /// Like `start`, with `pad` extra bytes in every row.
    pub fn start_padded(url: &str, tasks: usize, limit: usize, pad: usize) -> Writers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handles = (0..tasks)
            .map(|w| {
                let stop = stop.clone();
                let url = url.to_string();
                tokio::spawn(async move {
                    let pool = PgPoolOptions::new().max_connections(1).connect_lazy(&url).unwrap();
                    let mut done = 0;
                    while done < limit && !stop.load(Ordering::SeqCst) {
                        let sql = if done % 4 == 3 {
                            format!("BEGIN; INSERT INTO text_elements (type, label) VALUES ('title', 'w{w}-{done}'); UPDATE text_elements SET label = label || repeat('!', {pad}) WHERE label = 'w{w}-{done}'; COMMIT;")
                        } else {
                            format!("INSERT INTO text_elements (type, label) VALUES ('footnote', 'w{w}-{done}' || repeat('.', {pad}))")
                        };
                        match sqlx::raw_sql(&sql).execute(&pool).await {
                            Ok(_) => done += 1,
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                    pool.close().await;
                    done
                })
            })
            .collect();
        Writers { stop, handles }
    }

    /// Stops them and returns how many transactions they committed.
    pub async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await
    }

    /// Waits for them to reach their limit.
    pub async fn finish(self) -> usize {
        let mut total = 0;
        for handle in self.handles {
            total += handle.await.unwrap();
        }
        total
    }
}

/// Writes a marker row and reads `client` until its event arrives; returns every event up to it.
pub async fn read_until_marker(db: &TestDb, client: &mut Client) -> Vec<Value> {
    db.exec("INSERT INTO studies (study_label) VALUES ('marker-' || gen_random_uuid())")
        .await;
    read_until_first_marker(client).await
}

/// Reads `client` up to and including the first marker row's event.
pub async fn read_until_first_marker(client: &mut Client) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = client.events(1).await.remove(0);
        let marker = event["data"]["study_label"]
            .as_str()
            .is_some_and(|l| l.starts_with("marker"));
        events.push(event);
        if marker {
            return events;
        }
    }
}

/// A TCP proxy in front of Postgres that can silently cut the connections it
/// carries (no FIN, no RST: a half-open connection), while new ones go through.
pub struct Proxy {
    pub port: u16,
    generation: std::sync::Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(AtomicUsize::new(0));
        let gen = generation.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let born = gen.load(Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, gen.clone(), born));
                tokio::spawn(pipe(server_read, client_write, gen.clone(), born));
            }
        });
        Proxy { port, generation }
    }

    /// Every connection open now goes silent in both directions.
    pub fn cut_existing(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    generation: std::sync::Arc<AtomicUsize>,
    born: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if generation.load(Ordering::SeqCst) != born {
            // Cut: swallow everything and keep both ends open, like a dead link.
            let _hold = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A `pgfeed serve` process on a free port, as a person would run it.
pub struct Served {
    pub child: tokio::process::Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// The `psql` command it printed (embedded Postgres only).
    pub psql: Option<String>,
}

impl Served {
    /// Runs the binary with `env` (`DATABASE_URL` unset unless given) and waits
    /// until it says where it listens.
    pub async fn spawn(env: &[(&str, &str)]) -> Served {
        use tokio::io::AsyncBufReadExt;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"));
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut psql = None;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("serve did not start within 60 s")
                .unwrap()
                .expect("serve exited");
            if line.contains("psql") {
                psql = Some(line.clone());
            }
            if let Some(rest) = line.strip_prefix("pgfeed listening on http://") {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                return Served { child, addr, psql };
            }
        }
    }
}
