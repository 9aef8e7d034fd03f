//! Only the right people see the right rows: tokens, scopes on every path,
//! origins, limits (ARCHITECTURE.md §3).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::{http_with, Client, TestDb};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pgfeed::auth::Verifier;
use pgfeed::http::Limits;
use pgfeed::server::{Running, Settings};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-32-bytes-length";
const AUDIENCE: &str = "pgfeed-test";
const ISSUER: &str = "https://issuer.example";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims valid for a minute, with `extra` merged in (a null removes a claim).
fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "u1", "exp": now() + 60, "aud": AUDIENCE, "iss": ISSUER});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn token(extra: Value) -> String {
    sign(Algorithm::HS256, SECRET, &claims(extra))
}

fn sign(algorithm: Algorithm, secret: &str, claims: &Value) -> String {
    encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn settings(limits: Limits) -> Settings {
    let verifier = Verifier::from_config(Some(SECRET), None, Some(AUDIENCE), Some(ISSUER))
        .unwrap()
        .unwrap();
    Settings {
        auth: Some(Arc::new(verifier)),
        limits: Limits {
            auth_timeout: Duration::from_secs(1),
            enable_writes: true,
            ..limits
        },
        ..Settings::default()
    }
}

async fn server(db: &TestDb) -> Running {
    db.server_with(settings(Limits::default())).await
}

/// A server with these limits and authentication off.
async fn without_auth(db: &TestDb, limits: Limits) -> Running {
    db.server_with(Settings {
        limits,
        ..Settings::default()
    })
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_and_never_echoed() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(json!({})))
    );
    let cases = [
        ("alg none", alg_none),
        (
            "wrong key",
            sign(
                Algorithm::HS256,
                "another-secret-of-32-bytes-length",
                &claims(json!({})),
            ),
        ),
        ("another algorithm", sign(Algorithm::HS384, SECRET, &claims(json!({})))),
        ("no exp", token(json!({"exp": null}))),
        ("past exp", token(json!({"exp": now() - 5}))),
        ("future nbf", token(json!({"nbf": now() + 30}))),
        ("wrong aud", token(json!({"aud": "someone-else"}))),
        ("wrong iss", token(json!({"iss": "https://evil.example"}))),
        ("bad scope", token(json!({"pgfeed": {"tables": "studies"}}))),
        ("garbage", "not.a.token".to_string()),
    ];
    for (case, bad) in &cases {
        let refused = Client::try_connect(&server, &format!("/ws?token={bad}"), &[]).await;
        let (status, body) = refused.err().unwrap_or_else(|| panic!("{case}: accepted"));
        assert_eq!(status, 401, "{case}");
        assert!(!body.contains(bad.as_str()), "{case}: the token was echoed: {body}");
        let refused = Client::try_connect(&server, "/api/v1/ws/studies", &[("Authorization", &bearer(bad))]).await;
        assert_eq!(refused.err().map(|e| e.0), Some(401), "{case} by header");
        let (status, body) = http_with(
            &server,
            "GET",
            "/api/v1/studies",
            None,
            &[("Authorization", &bearer(bad))],
        )
        .await;
        assert_eq!(status, 401, "{case}: {body}");
        // By message: the socket closes with 4401.
        let mut client = Client::connect(&server, "/ws").await;
        client.send(json!({"type": "auth", "token": bad})).await;
        let error = client.next().await;
        assert_eq!(error["code"], "unauthorized", "{case}: {error}");
        assert!(!error.to_string().contains(bad.as_str()));
        assert_eq!(client.next().await["close"], 4401, "{case}");
    }
    // No token at all: 401 for HTTP; a socket gets the auth deadline, then 4401.
    let (status, _) = common::http_get(&server, "/api/v1/studies").await;
    assert_eq!(status, 401);
    let mut silent = Client::connect(&server, "/ws").await;
    let started = Instant::now();
    assert_eq!(silent.next().await["code"], "unauthorized");
    assert_eq!(silent.next().await["close"], 4401);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the deadline"
    );
    let refusals = server.state.metrics.auth_refusals.get();
    assert!(refusals >= cases.len() as u64 * 4, "{refusals}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_good_token_works_by_header_query_and_message() {
    let db = TestDb::new().await;
    let server = server(&db).await;
    let good = token(json!({}));
    let mut by_header = Client::try_connect(&server, "/ws", &[("Authorization", &bearer(&good))])
        .await
        .unwrap();
    let mut by_query = Client::try_connect(&server, &format!("/ws?token={good}"), &[])
        .await
        .unwrap();
    let mut by_message = Client::connect(&server, "/ws").await;
    by_message.send(json!({"type": "auth", "token": good})).await;
    let ok = by_message.next().await;
    assert_eq!(ok["type"], "auth_ok", "{ok}");
    assert!(ok["expires_at"].as_u64().unwrap() > now());
    for client in [&mut by_header, &mut by_query, &mut by_message] {
        client.next_of("connected").await;
        client.subscribe(json!({"tables": ["studies"]})).await;
    }
    db.exec("INSERT INTO studies (study_label) VALUES ('seen by all three')")
        .await;
    for client in [&mut by_header, &mut by_query, &mut by_message] {
        assert_eq!(client.events(1).await[0]["data"]["study_label"], "seen by all three");
    }
    let (status, body) = http_with(
        &server,
        "GET",
        "/api/v1/studies",
        None,
        &[("Authorization", &bearer(&good))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_closes_the_socket_at_exp_unless_a_fresh_one_arrives() {
    // End to end through a real socket; the timing itself is the session's
    // unit test on tokio's paused clock (src/http/ws/tests.rs). Nothing here
    // sleeps: the renewal goes out at once, and the expiring socket's close is
    // the event that says the first exp has passed.
    let db = TestDb::new().await;
    let server = server(&db).await;
    let short = token(json!({"exp": now() + 2}));
    let mut expiring = Client::try_connect(&server, &format!("/ws?token={short}"), &[])
        .await
        .unwrap();
    expiring.next_of("connected").await;
    let mut renewed = Client::try_connect(&server, &format!("/ws?token={short}"), &[])
        .await
        .unwrap();
    renewed.next_of("connected").await;
    let started = Instant::now();
    renewed
        .send(json!({"action": "auth", "token": token(json!({"exp": now() + 30}))}))
        .await;
    assert_eq!(renewed.next().await["type"], "auth_ok");

    assert_eq!(expiring.next().await["code"], "token_expired");
    assert_eq!(expiring.next().await["close"], 4401);
    let lived = started.elapsed();
    assert!(
        lived > Duration::from_millis(500) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
    renewed.send(json!({"action": "ping"})).await;
    assert_eq!(
        renewed.next().await["type"],
        "pong",
        "the renewed socket is still open past the first exp"
    );
    server.stop().await.unwrap();
}

/// Rows of database_releases for studies 1 and 2, `per_tenant` each, from two writers.
async fn write_both_tenants(db: &TestDb, per_tenant: usize) {
    let tasks: Vec<_> = [1, 2]
        .into_iter()
        .map(|study| {
            let url = db.url.clone();
            tokio::spawn(async move {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                for i in 0..per_tenant {
                    sqlx::query("INSERT INTO database_releases (study_id, database_release_label) VALUES ($1, $2)")
                        .bind(study)
                        .bind(format!("r{study}-{i}"))
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                pool.close().await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Every row-carrying event belongs to study 1.
fn all_tenant_a(events: &[Value]) -> usize {
    let mut rows = 0;
    for e in events {
        let data = &e["data"];
        if data
            .get("study_label")
            .is_some_and(|l| l.as_str().unwrap().starts_with("marker"))
        {
            continue;
        }
        assert_eq!(data["study_id"], 1, "a row of the other tenant: {e}");
        rows += 1;
    }
    rows
}

#[tokio::test]
async fn two_tenants_never_see_each_others_rows_on_any_path() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO studies (id, study_label) VALUES (1, 'A'), (2, 'B'); SELECT setval('studies_id_seq', 10);")
        .await;
    let server = server(&db).await;
    let tenant_a = token(json!({"pgfeed": {"where": {"study_id": [1]}, "write": true}}));
    let auth = bearer(&tenant_a);
    let headers = [("Authorization", auth.as_str())];
    let mut ws = Client::try_connect(&server, "/ws", &headers).await.unwrap();
    ws.next_of("connected").await;
    ws.subscribe(json!({})).await;
    let mut updates = Client::try_connect(&server, "/ws/updates", &headers).await.unwrap();
    updates.next().await;
    updates.send(json!({"event": "subscribe", "data": {}})).await;
    assert_eq!(updates.next().await["event"], "subscribed");
    let mut pearl = Client::try_connect(&server, "/api/v1/ws/studies", &headers)
        .await
        .unwrap();
    let hello = pearl.next().await;
    assert_eq!(hello["data"], json!([]), "studies have no study_id: none is in scope");
    // A client that asks for everything gets only its own rows, and a table
    // outside a table-scoped token is refused.
    let narrow = token(json!({"pgfeed": {"tables": ["database_releases"], "where": {"study_id": [1]}}}));
    let mut tables_only = Client::try_connect(&server, &format!("/ws?token={narrow}"), &[])
        .await
        .unwrap();
    tables_only.next_of("connected").await;
    tables_only
        .send(json!({"action": "subscribe", "tables": ["studies"]}))
        .await;
    assert_eq!(tables_only.next().await["code"], "forbidden");
    tables_only
        .send(json!({"action": "snapshot", "table": "studies"}))
        .await;
    assert_eq!(tables_only.next().await["code"], "forbidden");

    write_both_tenants(&db, 2500).await;
    let a_rows = db
        .scalar_i64("SELECT count(*) FROM database_releases WHERE study_id = 1")
        .await as usize;
    assert_eq!(a_rows, 2500);
    // The marker is a study, out of scope: read up to the last A row instead.
    for client in [&mut ws, &mut updates, &mut pearl] {
        let events = client.events(a_rows).await;
        assert_eq!(all_tenant_a(&events), a_rows);
        assert!(
            client.next_within(Duration::from_millis(300)).await.is_none(),
            "B's rows leaked"
        );
    }
    // Replay from 0.
    let mut replay = Client::try_connect(&server, "/ws?after=0", &headers).await.unwrap();
    replay.next_of("connected").await;
    replay.next_of("resumed").await;
    assert_eq!(all_tenant_a(&replay.events(a_rows).await), a_rows);
    // Snapshots, over the socket and over HTTP.
    ws.send(json!({"action": "snapshot", "table": "database_releases"}))
        .await;
    let snapshot = ws.next_of("snapshot").await;
    let rows: Vec<Value> = snapshot["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!({"data": r}))
        .collect();
    assert_eq!(all_tenant_a(&rows), a_rows);
    let (status, body) = http_with(&server, "GET", "/api/v1/database_releases", None, &headers).await;
    assert_eq!(status, 200);
    let rows: Value = serde_json::from_str(&body).unwrap();
    let rows: Vec<Value> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!({"data": r}))
        .collect();
    assert_eq!(all_tenant_a(&rows), a_rows);
    // Writes: into the other tenant, or moving a row there, are refused; its rows look absent.
    let b_row = db
        .scalar_i64("SELECT min(id) FROM database_releases WHERE study_id = 2")
        .await;
    let a_row = db
        .scalar_i64("SELECT min(id) FROM database_releases WHERE study_id = 1")
        .await;
    let before = db.scalar_i64("SELECT count(*) FROM pgfeed.events").await;
    for (method, path, body, status) in [
        (
            "POST",
            "/api/v1/database_releases".to_string(),
            r#"{"study_id": 2, "database_release_label": "x"}"#,
            403,
        ),
        (
            "PUT",
            format!("/api/v1/database_releases/{b_row}"),
            r#"{"database_release_label": "mine"}"#,
            404,
        ),
        ("DELETE", format!("/api/v1/database_releases/{b_row}"), "", 404),
        (
            "PATCH",
            format!("/api/v1/database_releases/{a_row}"),
            r#"{"study_id": 2}"#,
            403,
        ),
    ] {
        let (got, reply) = http_with(&server, method, &path, Some(body).filter(|b| !b.is_empty()), &headers).await;
        assert_eq!(got, status, "{method} {path}: {reply}");
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pgfeed.events").await,
        before,
        "nothing was written"
    );
    let (status, reply) = http_with(
        &server,
        "POST",
        "/api/v1/database_releases",
        Some(r#"{"study_id": 1, "database_release_label": "mine"}"#),
        &headers,
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn workspace_id_narrows_and_never_widens() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE notes (id serial PRIMARY KEY, workspace_id integer NOT NULL, body text);
         SELECT pgfeed.track('notes', 'note');",
    )
    .await;
    let server = server(&db).await;
    let two_workspaces = token(json!({"pgfeed": {"where": {"workspace_id": [1, 2]}}}));
    let mut in_two = Client::try_connect(&server, &format!("/ws?token={two_workspaces}&workspace_id=2"), &[])
        .await
        .unwrap();
    let mut outside = Client::try_connect(&server, &format!("/ws?token={two_workspaces}&workspace_id=3"), &[])
        .await
        .unwrap();
    for c in [&mut in_two, &mut outside] {
        c.next_of("connected").await;
        c.subscribe(json!({})).await;
    }
    db.exec("INSERT INTO notes (workspace_id, body) VALUES (1, 'one'), (2, 'two'), (3, 'three')")
        .await;
    let events = in_two.events(1).await;
    assert_eq!(events[0]["data"]["body"], "two");
    assert!(in_two.next_within(Duration::from_millis(300)).await.is_none());
    assert!(
        outside.next_within(Duration::from_millis(300)).await.is_none(),
        "workspace 3 is not in the claim"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_token_without_write_gets_403_on_every_write_route() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO studies (id, study_label) VALUES (1, 'A')").await;
    let server = server(&db).await;
    let reader = bearer(&token(json!({"pgfeed": {"tables": ["studies"]}})));
    let headers = [("Authorization", reader.as_str())];
    for (method, path) in [
        ("POST", "/api/v1/studies"),
        ("POST", "/api/v1/studies/"),
        ("PUT", "/api/v1/studies/1"),
        ("PATCH", "/api/v1/studies/1/"),
        ("DELETE", "/api/v1/studies/1"),
    ] {
        let (status, body) = http_with(&server, method, path, Some(r#"{"study_label": "B"}"#), &headers).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM studies WHERE study_label = 'A'")
            .await,
        1
    );
    assert_eq!(db.scalar_i64("SELECT count(*) FROM studies").await, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_disallowed_origin_gets_403_and_an_unprotected_public_bind_is_refused() {
    let db = TestDb::new().await;
    let server = without_auth(
        &db,
        Limits {
            allowed_origins: vec!["https://app.example.org".into()],
            ..Limits::default()
        },
    )
    .await;
    let refused = Client::try_connect(&server, "/ws", &[("Origin", "https://evil.example")]).await;
    assert_eq!(refused.err().map(|e| e.0), Some(403));
    let (status, _) = http_with(
        &server,
        "GET",
        "/api/v1/studies",
        None,
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403);
    let mut allowed = Client::try_connect(&server, "/ws", &[("Origin", "https://app.example.org")])
        .await
        .unwrap();
    allowed.next_of("connected").await;
    server.stop().await.unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env("DATABASE_URL", &db.url)
        .env_remove("PGFEED_JWT_SECRET")
        .env_remove("PGFEED_JWT_PUBLIC_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PGFEED_JWT_SECRET") && stderr.contains("--insecure"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_flooding_client_is_throttled_then_closed_while_others_get_everything() {
    let db = TestDb::new().await;
    let server = without_auth(
        &db,
        Limits {
            max_message_rate: 20,
            ..Limits::default()
        },
    )
    .await;
    let mut calm = Client::subscribed(&server, json!({"tables": ["text_elements", "studies"]})).await;
    let mut flood = Client::connect(&server, "/ws").await;
    flood.next_of("connected").await;
    let writers = common::Writers::start(&db.url, 2, 200);
    let mut throttled = false;
    let mut closed = None;
    'flood: for _ in 0..2000 {
        flood.send(json!({"action": "ping"})).await;
        while let Some(message) = flood.next_within(Duration::from_millis(1)).await {
            if message["code"] == "rate_limited" {
                throttled = true;
            }
            if message.get("close").is_some() || message.get("closed").is_some() || message.get("error").is_some() {
                closed = Some(message);
                break 'flood;
            }
        }
    }
    if closed.is_none() {
        while let Some(message) = flood.next_within(Duration::from_secs(2)).await {
            if message.get("close").is_some() {
                closed = Some(message);
                break;
            }
        }
    }
    assert!(throttled, "the flood was never told it is rate limited");
    assert_eq!(closed.map(|c| c["close"].clone()), Some(json!(1008)));
    writers.finish().await;
    let events = common::read_until_marker(&db, &mut calm).await;
    common::assert_matches_log(&db, &events, 0).await;
    assert_eq!(events.len(), 2 * 250 + 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn fifty_simultaneous_connects_against_a_cap_of_ten_admit_exactly_ten() {
    let db = TestDb::new().await;
    let server = without_auth(
        &db,
        Limits {
            max_connections: 10,
            ..Limits::default()
        },
    )
    .await;
    let attempts = (0..50).map(|_| Client::try_connect(&server, "/ws", &[]));
    let results = futures_util::future::join_all(attempts).await;
    let admitted: Vec<Client> = results.into_iter().filter_map(Result::ok).collect();
    assert_eq!(admitted.len(), 10);
    let refused = server.state.metrics.connections_refused.get();
    assert_eq!(refused, 40);
    // A place frees up when a socket closes.
    drop(admitted);
    // The permits come back as the sessions see their sockets close.
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.state.connections.available_permits() < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("every permit back within 10 s");
    let mut again = Client::try_connect(&server, "/ws", &[]).await.unwrap();
    again.next_of("connected").await;
    server.stop().await.unwrap();
}

/// Runs openssl (installed by .ci/run) in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed (.ci/run installs it)");
    assert!(status.success(), "openssl {args:?}");
}

#[tokio::test]
async fn public_keys_verify_rs256_and_es256_tokens() {
    let dir = common::scratch_dir("keys");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.pem"],
    );
    openssl(
        &dir,
        &["pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-out", "ec8.pem"],
    );
    openssl(&dir, &["ec", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
    openssl(&dir, &["genrsa", "-out", "rsa.pem", "2048"]);
    openssl(&dir, &["rsa", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
    let db = TestDb::new().await;
    for (public, private, algorithm, other) in [
        ("ec.pub", "ec8.pem", Algorithm::ES256, "rsa.pem"),
        ("rsa.pub", "rsa.pem", Algorithm::RS256, "ec8.pem"),
    ] {
        // The key by path once, and as PEM text once.
        let path = dir.join(public).to_string_lossy().to_string();
        let pem = std::fs::read_to_string(dir.join(public)).unwrap();
        for key in [path, pem] {
            let verifier = Verifier::from_config(None, Some(&key), None, None).unwrap().unwrap();
            let server = db
                .server_with(Settings {
                    auth: Some(Arc::new(verifier)),
                    ..Settings::default()
                })
                .await;
            let private_pem = std::fs::read(dir.join(private)).unwrap();
            let signing = match algorithm {
                Algorithm::ES256 => EncodingKey::from_ec_pem(&private_pem).unwrap(),
                _ => EncodingKey::from_rsa_pem(&private_pem).unwrap(),
            };
            let claims = json!({"exp": now() + 60});
            let good = encode(&Header::new(algorithm), &claims, &signing).unwrap();
            let mut client = Client::try_connect(&server, &format!("/ws?token={good}"), &[])
                .await
                .unwrap();
            client.next_of("connected").await;
            // A token signed with the other kind of key is refused.
            let other_pem = std::fs::read(dir.join(other)).unwrap();
            let (other_algorithm, other_key) = match algorithm {
                Algorithm::ES256 => (Algorithm::RS256, EncodingKey::from_rsa_pem(&other_pem).unwrap()),
                _ => (Algorithm::ES256, EncodingKey::from_ec_pem(&other_pem).unwrap()),
            };
            let bad = encode(&Header::new(other_algorithm), &claims, &other_key).unwrap();
            let refused = Client::try_connect(&server, &format!("/ws?token={bad}"), &[]).await;
            assert_eq!(refused.err().map(|e| e.0), Some(401), "{algorithm:?}");
            server.stop().await.unwrap();
        }
    }
}

#[tokio::test]
async fn wss_works_with_a_certificate_and_key() {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let dir = common::scratch_dir("tls");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pgfeed test CA",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );

    let db = TestDb::new().await;
    let tls = pgfeed::http::tls::config(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let server = db
        .server_with(Settings {
            tls: Some(tls),
            ..Settings::default()
        })
        .await;

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client_config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (socket, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let (mut sink, mut stream) = futures_util::StreamExt::split(socket);
    let first = futures_util::StreamExt::next(&mut stream).await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(hello["type"], "connected");
    futures_util::SinkExt::send(
        &mut sink,
        tokio_tungstenite::tungstenite::Message::Text(r#"{"action":"subscribe"}"#.into()),
    )
    .await
    .unwrap();
    db.exec("INSERT INTO studies (study_label) VALUES ('over wss')").await;
    loop {
        let message = futures_util::StreamExt::next(&mut stream).await.unwrap().unwrap();
        let message: Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if message["type"] == "study_created" {
            assert_eq!(message["data"]["study_label"], "over wss");
            break;
        }
    }
    // Plain text to the TLS port gets nowhere.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr)),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "a plain connection was served on the TLS port"
    );
    server.stop().await.unwrap();
}
