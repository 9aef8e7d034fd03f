//! Installing pgfeed on a database people already have (a PEARL database that
//! its app created and filled), as a DBA would: `pgfeed migrate`, `pgfeed track
//! --preset pearl`, `pgfeed serve` as a least-privilege role, `pgfeed uninstall`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Client, Served, TestDb};
use serde_json::{json, Value};

/// Runs the `pgfeed` binary against `db`: (succeeded, stdout, stderr).
fn pgfeed(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn pgfeed_ok(db: &TestDb, args: &[&str]) -> String {
    let (ok, stdout, stderr) = pgfeed(db, args);
    assert!(ok, "pgfeed {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Everything in the catalog outside schema `pgfeed` that pgfeed could touch:
/// relations, types, functions, columns, constraints, triggers, schemas.
async fn catalog(db: &TestDb) -> BTreeSet<String> {
    let lines: Vec<String> = sqlx::query_scalar(
        r#"WITH ns AS (SELECT oid, nspname FROM pg_namespace
                        WHERE nspname <> 'pgfeed' AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%')
           SELECT format('namespace %s', nspname) FROM ns
           UNION ALL
           SELECT format('class %s.%s kind %s cols %s acl %s', ns.nspname, c.relname, c.relkind, c.relnatts, c.relacl)
             FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
           UNION ALL
           SELECT format('type %s.%s', ns.nspname, t.typname) FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
           UNION ALL
           SELECT format('proc %s.%s(%s) %s', ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc))
             FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
           UNION ALL
           SELECT format('column %s.%s.%s %s notnull=%s default=%s', ns.nspname, c.relname, a.attname,
                         format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE ns.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
           UNION ALL
           SELECT format('constraint %s.%s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace
           UNION ALL
           SELECT format('trigger %s.%s %s', tgrelid::regclass, tgname, tgfoid::regproc)
             FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace"#,
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    lines.into_iter().collect()
}

/// The application's rows, table by table, as text.
async fn rows(db: &TestDb) -> Vec<String> {
    let mut all = Vec::new();
    for table in pgfeed::feed::pearl::TABLES {
        let text: String = sqlx::query_scalar(&format!(
            "SELECT COALESCE(string_agg(t::text, E'\\n' ORDER BY t.id), '') FROM public.{table} t"
        ))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        all.push(format!("{table}:\n{text}"));
    }
    all
}

/// Rows written the PEARL app's way: it fills the timestamps itself (naive UTC).
const APP_ROWS: &str = "
    INSERT INTO users (id, username, email, role, password_hash, created_at, updated_at)
         VALUES (1, 'ana', 'ana@example.org', 'ADMIN', 'argon2id$old-hash', now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc');
    INSERT INTO studies (id, study_label, created_at, updated_at)
         VALUES (1, 'ONC-001', '2026-11-23 13:40:21.18585', '2026-11-23 13:40:21.18585');
    SELECT setval('users_id_seq', 10), setval('studies_id_seq', 10);";

/// A table other than pgfeed's that an application's own sqlx migrations keep.
const OTHER_APPS_MIGRATIONS: &str = "
    CREATE TABLE public._sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL,
        installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL, checksum bytea NOT NULL,
        execution_time bigint NOT NULL);
    INSERT INTO public._sqlx_migrations VALUES (20250101, 'init', '2025-01-01', true, '\\x00', 5);";

#[tokio::test]
async fn migrate_on_a_live_pearl_database_touches_nothing_outside_schema_pgfeed() {
    let db = TestDb::pearl_app().await;
    db.exec(APP_ROWS).await;
    db.exec(OTHER_APPS_MIGRATIONS).await;
    let (before, data) = (catalog(&db).await, rows(&db).await);
    let theirs =
        "SELECT string_agg(format('%s %s %s', version, description, success), ',') FROM public._sqlx_migrations";
    let their_history: String = sqlx::query_scalar(theirs).fetch_one(&db.pool).await.unwrap();

    // The demo schema is refused: the tables exist.
    let (ok, _, stderr) = pgfeed(&db, &["migrate", "--demo-schema"]);
    assert!(!ok);
    assert!(stderr.contains("already has users"), "{stderr}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgfeed'")
            .await,
        0
    );

    let status = pgfeed_ok(&db, &["migrate", "--status"]);
    assert!(status.contains("capture") && status.contains("pending"), "{status}");
    let first = pgfeed_ok(&db, &["migrate"]);
    assert!(first.contains("applied capture"), "{first}");
    assert!(
        first.contains("pgfeed track --preset pearl"),
        "says what to do next: {first}"
    );
    assert_eq!(
        catalog(&db).await,
        before,
        "migrate changed the catalog outside schema pgfeed"
    );
    assert_eq!(rows(&db).await, data);
    let second = pgfeed_ok(&db, &["migrate"]);
    assert!(second.contains("up to date"), "{second}");
    assert!(!pgfeed_ok(&db, &["migrate", "--status"]).contains("pending"));
    let after: String = sqlx::query_scalar(theirs).fetch_one(&db.pool).await.unwrap();
    assert_eq!(
        after, their_history,
        "another application's migration history was touched"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pgfeed.migrations").await,
        pgfeed::db::migrate::CAPTURE.migrations.len() as i64
    );

    // Tracking adds the capture triggers, and nothing else.
    let tracked = pgfeed_ok(&db, &["track", "--preset", "pearl"]);
    assert!(
        tracked.contains("tracked reporting_effort_item_tracker as reporting_effort_tracker_*"),
        "{tracked}"
    );
    assert!(
        tracked.contains(
            "tracked users as user_*, leaving out password_hash, reset_token, reset_token_expires, auth_provider_id"
        ),
        "{tracked}"
    );
    assert!(!tracked.contains("not found"), "{tracked}");
    let now = catalog(&db).await;
    let added: Vec<&String> = now.difference(&before).collect();
    let removed: Vec<&String> = before.difference(&now).collect();
    assert!(removed.is_empty(), "track removed {removed:?}");
    assert_eq!(added.len(), 20, "{added:#?}");
    assert!(
        added
            .iter()
            .all(|line| line.starts_with("trigger ") && line.contains(".pgfeed_capture")),
        "{added:#?}"
    );
    assert_eq!(rows(&db).await, data);
}

#[tokio::test]
async fn migrate_print_runs_nothing_and_its_sql_installs_pgfeed() {
    let db = TestDb::pearl_app().await;
    let sql = pgfeed_ok(&db, &["migrate", "--print"]);
    assert!(sql.contains("CREATE FUNCTION pgfeed.capture()"), "{sql}");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgfeed'")
            .await,
        0
    );
    // A DBA applies it with their own tool; pgfeed then knows it is installed.
    db.exec(&sql).await;
    assert!(pgfeed_ok(&db, &["migrate"]).contains("up to date"));
    assert_eq!(pgfeed_ok(&db, &["migrate", "--print"]), "");
}

/// A PEARL-endpoint client after `track --preset pearl` on the app's database.
async fn served_pearl_app() -> (TestDb, pgfeed::server::Running, Client) {
    let db = TestDb::pearl_app().await;
    db.exec(APP_ROWS).await;
    pgfeed_ok(&db, &["migrate"]);
    pgfeed_ok(&db, &["track", "--preset", "pearl"]);
    let server = db.server().await;
    let mut pearl = Client::connect(&server, "/api/v1/ws/studies").await;
    let hello = pearl.next_of("studies_update").await;
    assert_eq!(hello["data"][0]["study_label"], "ONC-001");
    (db, server, pearl)
}

fn is_timestamp(text: &str) -> bool {
    text.len() >= 19 && text.as_bytes()[10] == b'T' && text.as_bytes()[4] == b'-' && text.as_bytes()[13] == b':'
}

/// Every timestamp among the row's fields is UTC with milliseconds.
fn assert_utc_millis(row: &Value) {
    for (field, value) in row.as_object().unwrap() {
        if let Some(text) = value.as_str().filter(|t| is_timestamp(t)) {
            assert!(
                text.len() == 24 && text.ends_with('Z') && text.as_bytes()[19] == b'.',
                "{field} = {text} is not YYYY-MM-DDTHH:MM:SS.sssZ"
            );
        }
    }
}

#[tokio::test]
async fn every_pearl_entity_written_the_apps_way_arrives_typed() {
    let (db, server, mut pearl) = served_pearl_app().await;
    let app_now = "now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc'";
    let writes = [
        (format!("INSERT INTO users (username, role, department, created_at, updated_at) VALUES ('ben', 'EDITOR', 'programming', {app_now})"), "user_created"),
        (format!("INSERT INTO studies (study_label, created_at, updated_at) VALUES ('ONC-002', {app_now})"), "study_created"),
        (format!("INSERT INTO database_releases (id, study_id, database_release_label, database_release_date, created_at, updated_at) VALUES (1, 1, 'DBL-1', '2026-01-31', {app_now})"), "database_release_created"),
        (format!("INSERT INTO reporting_efforts (id, study_id, database_release_id, database_release_label, created_at, updated_at) VALUES (1, 1, 1, 'DBL-1', {app_now})"), "reporting_effort_created"),
        (format!("INSERT INTO reporting_effort_items (id, reporting_effort_id, source_type, source_item_id, item_type, item_subtype, item_code, is_active, created_at, updated_at) VALUES (1, 1, 'custom', 7, 'TLF', 'Table', 't_dm', true, {app_now})"), "reporting_effort_item_created"),
        (format!("INSERT INTO reporting_effort_item_tracker (id, reporting_effort_item_id, production_programmer_id, production_status, qc_status, priority, in_production_flag, unresolved_comment_count, due_date, created_at, updated_at) VALUES (1, 1, 1, 'not_started', 'not_started', 'high', false, 0, '2026-12-01', {app_now})"), "reporting_effort_tracker_created"),
        ("INSERT INTO tracker_comments (tracker_id, user_id, comment_text) VALUES (1, 1, 'check N')".to_string(), "comment_created"),
        (format!("INSERT INTO packages (id, package_name, created_at, updated_at) VALUES (1, 'core', {app_now})"), "package_created"),
        (format!("INSERT INTO package_items (package_id, item_type, item_subtype, item_code, created_at, updated_at) VALUES (1, 'Dataset', 'ADaM', 'adsl', {app_now})"), "package_item_created"),
        (format!("INSERT INTO text_elements (type, label, content, created_at, updated_at) VALUES ('ich_category', 'E3', 'Efficacy', {app_now})"), "text_element_created"),
        (format!("UPDATE reporting_effort_item_tracker SET production_status = 'in_progress', updated_at = {} WHERE id = 1", "now() AT TIME ZONE 'utc'"), "reporting_effort_tracker_updated"),
        ("DELETE FROM text_elements".to_string(), "text_element_deleted"),
    ];
    for (sql, kind) in &writes {
        db.exec(sql).await;
        let event = pearl.events(1).await.remove(0);
        assert_eq!(event["type"], *kind, "{sql}: {event}");
        let row = &event["data"];
        assert_utc_millis(row);
        assert_utc_millis(&event);
    }
    assert_eq!(
        server.state.metrics.events_untyped.get(),
        0,
        "a row of PEARL's real schema was counted as untyped"
    );

    // Enum labels, columns pgfeed does not know kept, naive timestamps as UTC.
    let mut ws = Client::subscribed(&server, json!({})).await;
    db.exec("UPDATE studies SET study_label = 'ONC-001b' WHERE id = 1")
        .await;
    let study = ws.events(1).await.remove(0);
    assert_eq!(study["data"]["created_at"], "2026-11-23T13:40:21.185Z");
    db.exec("UPDATE reporting_effort_items SET is_active = false WHERE id = 1; UPDATE users SET department = 'management' WHERE username = 'ben'")
        .await;
    let item = ws.events(1).await.remove(0);
    assert_eq!(item["data"]["item_type"], "TLF");
    assert_eq!(item["data"]["source_item_id"], 7);
    let user = ws.events(1).await.remove(0);
    assert_eq!(user["data"]["role"], "EDITOR");
    assert_eq!(user["data"]["auth_provider"], "local");
    db.exec("UPDATE reporting_effort_item_tracker SET unresolved_comment_count = 1 WHERE id = 1")
        .await;
    assert_eq!(ws.events(1).await[0]["data"]["unresolved_comment_count"], 1);

    // A writer in Tokyo: time zone-aware columns go out in UTC too.
    db.exec(
        "SET TIME ZONE 'Asia/Tokyo';
         INSERT INTO tracker_comments (tracker_id, user_id, comment_text, is_resolved, resolved_at, created_at, updated_at)
              VALUES (1, 1, 'from Tokyo', true, '2026-11-24 06:40:21.18585+09', '2026-11-24 06:40:21.18585+09', now());
         RESET TIME ZONE;",
    )
    .await;
    let comment = ws.events(1).await.remove(0);
    assert_eq!(comment["data"]["created_at"], "2026-11-23T21:40:21.185Z");
    assert_eq!(comment["data"]["resolved_at"], "2026-11-23T21:40:21.185Z");
    assert_utc_millis(&comment["data"]);
    // And in snapshots.
    let (status, body) = common::http_get(&server, "/api/v1/tracker_comments").await;
    assert_eq!(status, 200);
    let snapshot: Value = serde_json::from_str(&body).unwrap();
    let tokyo = snapshot["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["comment_text"] == "from Tokyo")
        .unwrap();
    assert_eq!(tokyo["created_at"], "2026-11-23T21:40:21.185Z");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn credentials_never_enter_the_feed_the_log_or_a_snapshot() {
    let (db, server, mut pearl) = served_pearl_app().await;
    let mut ws = Client::subscribed(&server, json!({})).await;
    db.exec(
        "INSERT INTO users (username, password_hash, reset_token, reset_token_expires, auth_provider_id)
              VALUES ('cy', 'argon2id$SECRET-HASH', 'SECRET-RESET', '2026-12-01 00:00', 'SECRET-SSO-ID');
         UPDATE users SET password_hash = 'argon2id$SECRET-NEW', reset_token = 'SECRET-RESET-2' WHERE username = 'cy';
         DELETE FROM users WHERE username = 'cy';",
    )
    .await;
    let mut seen = Vec::new();
    for client in [&mut ws, &mut pearl] {
        let events = client.events(3).await;
        assert_eq!(
            events.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(),
            ["user_created", "user_updated", "user_deleted"]
        );
        assert_eq!(events[0]["data"]["username"], "cy");
        seen.extend(events);
    }
    ws.send(json!({"action": "snapshot", "table": "users"})).await;
    let snapshot = ws.next_of("snapshot").await;
    assert_eq!(snapshot["rows"][0]["username"], "ana");
    seen.push(snapshot);
    let (status, body) = common::http_get(&server, "/api/v1/users").await;
    assert_eq!(status, 200);
    seen.push(serde_json::from_str(&body).unwrap());
    let logged: String = sqlx::query_scalar("SELECT string_agg(concat(new::text, old::text), ' ') FROM pgfeed.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let everything = format!("{} {logged}", serde_json::to_string(&seen).unwrap());
    for secret in ["SECRET", "old-hash", "password_hash", "reset_token", "auth_provider_id"] {
        assert!(!everything.contains(secret), "{secret} left the database: {everything}");
    }
    let exclude: Vec<String> =
        sqlx::query_scalar("SELECT unnest(exclude) FROM pgfeed.tracked WHERE table_name = 'users'")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        exclude,
        [
            "password_hash",
            "reset_token",
            "reset_token_expires",
            "auth_provider_id"
        ]
    );
    server.stop().await.unwrap();
}

/// The least-privilege role's SQL exactly as the README gives it.
fn readme_role_sql() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("### A least-privilege role for `serve`")
        .nth(1)
        .expect("the README has the least-privilege section");
    section
        .split("```sql")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("the section has an sql block")
        .to_string()
}

#[tokio::test]
async fn serve_runs_as_the_least_privilege_role_the_readme_gives() {
    let db = TestDb::pearl_app().await;
    db.exec(APP_ROWS).await;
    pgfeed_ok(&db, &["migrate"]);
    pgfeed_ok(&db, &["track", "--preset", "pearl"]);
    let role = format!("{}_feed", db.name);
    db.exec(&readme_role_sql().replace("pgfeed_app", &role)).await;
    let url = db.url.replacen("postgres@", &format!("{role}:change-me@"), 1);
    assert_ne!(url, db.url, "the test database URL names its user");

    // The role cannot read or write the application's tables itself.
    let as_role = sqlx::PgPool::connect(&url).await.unwrap();
    let denied = sqlx::query("SELECT * FROM public.users").execute(&as_role).await;
    assert!(denied.unwrap_err().to_string().contains("permission denied"));
    let denied = sqlx::query("SELECT * FROM pgfeed.snapshot('users')")
        .execute(&db.pool)
        .await;
    assert!(denied.is_ok(), "the owner may still call it");
    as_role.close().await;

    let served = Served::spawn(&[("DATABASE_URL", url.as_str())]).await;
    let mut pearl = Client::connect_to(&served.addr, "/api/v1/ws/studies").await;
    assert_eq!(
        pearl.next_of("studies_update").await["data"][0]["study_label"],
        "ONC-001"
    );
    let mut ws = Client::connect_to(&served.addr, "/ws").await;
    ws.next_of("connected").await;
    ws.subscribe(json!({"tables": ["users"]})).await;
    db.exec("INSERT INTO studies (study_label) VALUES ('ONC-003')").await;
    assert_eq!(pearl.events(1).await[0]["data"]["study_label"], "ONC-003");
    ws.send(json!({"action": "snapshot", "table": "users"})).await;
    let users = ws.next_of("snapshot").await;
    assert_eq!(users["rows"][0]["username"], "ana");
    assert!(users["rows"][0].get("password_hash").is_none());
    ws.send(json!({"action": "resume", "after": 0})).await;
    ws.next_of("resumed").await;
    drop(served);
}

#[tokio::test]
async fn serve_on_a_database_with_nothing_tracked_starts_and_says_what_to_run() {
    use tokio::io::AsyncBufReadExt;
    let db = TestDb::pearl_app().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfeed"))
        .args(["serve", "--bind", "127.0.0.1:0", "--log-format", "json"])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("no table is tracked") {
                return line;
            }
        }
        panic!("serve ended without saying nothing is tracked");
    })
    .await
    .expect("serve said nothing within 30 s");
    // A JSON log line, as a log pipeline reads it.
    let said: serde_json::Value = serde_json::from_str(&said).unwrap_or_else(|e| panic!("{e}: {said}"));
    assert_eq!(said["level"], "WARN");
    let message = said["fields"]["message"].as_str().unwrap();
    assert!(message.contains("pgfeed track --preset pearl"), "{message}");
    assert!(child.try_wait().unwrap().is_none(), "serve is still running");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pgfeed.migrations").await,
        pgfeed::db::migrate::CAPTURE.migrations.len() as i64
    );
}

#[tokio::test]
async fn uninstall_leaves_every_table_row_and_constraint_as_it_was() {
    let db = TestDb::pearl_app().await;
    db.exec(APP_ROWS).await;
    let before = catalog(&db).await;
    pgfeed_ok(&db, &["migrate"]);
    pgfeed_ok(&db, &["track", "--preset", "pearl"]);
    pgfeed_ok(
        &db,
        &["track", "public.users", "--prefix", "person", "--exclude", "email"],
    );
    db.exec(
        "INSERT INTO studies (study_label) VALUES ('ONC-004');
         UPDATE users SET department = 'programming';",
    )
    .await;
    let data = rows(&db).await;
    let printed = pgfeed_ok(&db, &["uninstall", "--print"]);
    assert_eq!(printed, pgfeed::install::UNINSTALL_SQL);
    let out = pgfeed_ok(&db, &["uninstall"]);
    assert!(out.contains("removed the capture triggers of studies"), "{out}");
    assert!(out.contains("removed schema pgfeed"), "{out}");
    assert_eq!(catalog(&db).await, before, "uninstall left the catalog changed");
    assert_eq!(rows(&db).await, data, "uninstall changed rows");
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgfeed'")
            .await,
        0
    );
    db.exec(
        "INSERT INTO studies (study_label) VALUES ('after'); UPDATE users SET role = 'VIEWER'; DELETE FROM studies WHERE study_label = 'after';",
    )
    .await;
    // And it can be installed again.
    pgfeed_ok(&db, &["migrate"]);
    assert!(pgfeed_ok(&db, &["track", "--preset", "pearl"]).contains("tracked studies"));
}
