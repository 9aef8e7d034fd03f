//! In a real browser (Debian's chromium + chromium-driver, which .ci/run
//! installs): the live dashboard at `/` and `/client.js`. These tests fail,
//! never skip, when the browser is missing.

mod common;

use std::time::Duration;

use common::TestDb;
use fantoccini::{Client, Locator};
use pgfeed::http::Limits;
use pgfeed::server::{Running, Settings};
use serde_json::{json, Value};

/// A chromedriver of our own on a free port, ended with the test.
struct Driver {
    _process: tokio::process::Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let path = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromedriver is missing: apt-get install chromium chromium-driver (.ci/run does)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = tokio::process::Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Driver {
                    _process: process,
                    port,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start");
    }

    /// A fresh headless browser session with its own profile.
    async fn browser(&self, tag: &str) -> Client {
        let profile = common::scratch_dir(&format!("chrome-{tag}"));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.display())]
            }),
        );
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("starting headless chromium")
    }
}

async fn wait_for(browser: &Client, css: &str) {
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
}

async fn study_rows(browser: &Client, label: &str) -> usize {
    let xpath = format!("//table[@id='studies']//td[contains(@class,'label') and text()='{label}']");
    browser.find_all(Locator::XPath(&xpath)).await.unwrap().len()
}

async fn wait_for_study(browser: &Client, label: &str) {
    let xpath = format!("//table[@id='studies']//td[contains(@class,'label') and text()='{label}']");
    browser
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("study {label} never appeared: {e}"));
}

/// The events the page received: (seq, tx_index, derived).
async fn page_events(browser: &Client) -> Vec<Value> {
    let events = browser
        .execute(
            "return window.__pgfeed.events.map(e => [e.seq, e.tx_index, e.derived, e.type]);",
            vec![],
        )
        .await
        .unwrap();
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut event = json!({"seq": e[0], "tx_index": e[1], "table": "x", "op": "x", "type": e[3]});
            if e[2] == true {
                event["derived"] = json!(true);
            }
            event
        })
        .collect()
}

/// Waits until the dashboard shows a row written now (its studies snapshot is
/// loaded: events after its watermark are the ones it receives), and returns
/// the head from which every event must reach the page.
async fn loaded(db: &TestDb, page: &Client) -> i64 {
    wait_for(page, "#badge[data-state='connected']").await;
    db.exec("INSERT INTO studies (study_label) VALUES ('page-loaded')")
        .await;
    wait_for_study(page, "page-loaded").await;
    db.scalar_i64("SELECT pgfeed.head()").await
}

/// The events the page received after `start`.
async fn page_events_after(browser: &Client, start: i64) -> Vec<Value> {
    let mut events = page_events(browser).await;
    events.retain(|e| e["seq"].as_i64() > Some(start));
    events
}

async fn server_with_writes(db: &TestDb, bind: Option<std::net::SocketAddr>) -> Running {
    db.server_with(Settings {
        bind: bind.unwrap_or(([127, 0, 0, 1], 0).into()),
        limits: Limits {
            enable_writes: true,
            ..Limits::default()
        },
        ..Settings::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_sql_writes_survives_a_restart_and_shares_form_writes() {
    let db = TestDb::new().await;
    common::seed_pearl(&db).await;
    let server = server_with_writes(&db, None).await;
    let addr = server.addr;
    let driver = Driver::start().await;
    let a = driver.browser("a").await;
    a.goto(&format!("http://{addr}/")).await.unwrap();
    wait_for(&a, "#badge[data-state='connected']").await;
    assert_eq!(
        a.find(Locator::Css("#badge")).await.unwrap().text().await.unwrap(),
        "Connected"
    );
    // The trackers panel counts unresolved top-level comments (tracker 1 has one).
    wait_for(&a, "#trackers tbody tr[data-id='1'] .count.open").await;

    // A study inserted with SQL appears.
    db.exec("INSERT INTO studies (study_label) VALUES ('ONC-BROWSER')")
        .await;
    wait_for_study(&a, "ONC-BROWSER").await;
    a.execute("window.__notReloaded = true;", vec![]).await.unwrap();

    // The server stops: the badge says so.
    server.stop().await.unwrap();
    wait_for(&a, "#badge[data-state='reconnecting'], #badge[data-state='offline']").await;
    let badge = a.find(Locator::Css("#badge")).await.unwrap().text().await.unwrap();
    assert!(badge == "Reconnecting" || badge == "Offline", "{badge}");

    // Rows written while it is down appear after it restarts, without a reload, once.
    db.exec("INSERT INTO studies (study_label) VALUES ('DOWN-1')").await;
    db.exec("BEGIN; INSERT INTO studies (study_label) VALUES ('DOWN-2'); UPDATE studies SET study_label = 'ONC-BROWSER-2' WHERE study_label = 'ONC-BROWSER'; COMMIT;")
        .await;
    let server = server_with_writes(&db, Some(addr)).await;
    wait_for(&a, "#badge[data-state='connected']").await;
    for label in ["DOWN-1", "DOWN-2", "ONC-BROWSER-2"] {
        wait_for_study(&a, label).await;
        assert_eq!(study_rows(&a, label).await, 1, "{label} shown once");
    }
    assert_eq!(study_rows(&a, "ONC-BROWSER").await, 0, "the renamed row is gone");
    let not_reloaded = a
        .execute("return window.__notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(not_reloaded, json!(true), "the page was reloaded");
    let events = page_events(&a).await;
    common::assert_commit_order(&events);

    // A study created through the form in one browser appears in another.
    let b = driver.browser("b").await;
    b.goto(&format!("http://{addr}/")).await.unwrap();
    wait_for(&b, "#badge[data-state='connected']").await;
    wait_for_study(&b, "DOWN-2").await;
    wait_for(&a, "#study-form:not([hidden])").await;
    a.find(Locator::Css("#study-label"))
        .await
        .unwrap()
        .send_keys("FROM-FORM")
        .await
        .unwrap();
    a.find(Locator::Css("#study-form button[type='submit']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_study(&b, "FROM-FORM").await;
    wait_for_study(&a, "FROM-FORM").await;
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM studies WHERE study_label = 'FROM-FORM'")
            .await,
        1
    );

    // Resolving the comment clears the count, live.
    db.exec("UPDATE tracker_comments SET is_resolved = true WHERE id = 1")
        .await;
    wait_for(&a, "#trackers tbody tr[data-id='1'] .count:not(.open)").await;
    a.close().await.unwrap();
    b.close().await.unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_resumes_after_a_forced_disconnect_with_every_seq_once() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let driver = Driver::start().await;
    let page = driver.browser("resume").await;
    page.goto(&format!("http://{}/", server.addr)).await.unwrap();
    let start = loaded(&db, &page).await;

    let writers = common::Writers::start(&db.url, 2, 60);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The client drops its socket mid-stream, as a network failure would.
    page.execute("window.__pgfeed.feed.drop();", vec![]).await.unwrap();
    writers.finish().await;
    db.exec("INSERT INTO studies (study_label) VALUES ('marker-browser')")
        .await;
    wait_for_study(&page, "marker-browser").await;
    let events = page_events_after(&page, start).await;
    common::assert_matches_log(&db, &events, start).await;
    assert_eq!(
        events.iter().filter(|e| e.get("derived").is_none()).count(),
        2 * 75 + 1,
        "every event of 120 transactions and the marker, once"
    );
    page.close().await.unwrap();
    server.stop().await.unwrap();
}

/// 150 one-row transactions from a writer at about 50 a second, while `link`
/// is cut three times, 0.7 s apart.
async fn write_steadily_cutting(db: &TestDb, link: &common::SlowLink) {
    let writer = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                sqlx::query("INSERT INTO studies (study_label) VALUES ($1)")
                    .bind(format!("steady-{i}"))
                    .execute(&pool)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        link.reset_existing();
    }
    writer.await.unwrap();
}

/// client.js over a slow, flaky link (150 ms each way, connections reset
/// mid-stream) under a steady writer: it subscribes and resumes in one
/// message, so the application receives every seq once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_js_over_a_slow_flaky_link_gets_every_seq_once_in_order() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let link = common::SlowLink::start(server.addr.port(), Duration::from_millis(150)).await;
    let driver = Driver::start().await;
    let page = driver.browser("slow-link").await;
    page.goto(&format!("http://127.0.0.1:{}/", link.port)).await.unwrap();
    let start = loaded(&db, &page).await;

    write_steadily_cutting(&db, &link).await;
    db.exec("INSERT INTO studies (study_label) VALUES ('marker-slow')")
        .await;
    wait_for_study(&page, "marker-slow").await;
    let events = page_events_after(&page, start).await;
    common::assert_matches_log(&db, &events, start).await;
    assert_eq!(
        events.iter().filter(|e| e.get("derived").is_none()).count(),
        151,
        "every event of 150 transactions and the marker, once"
    );
    page.close().await.unwrap();
    server.stop().await.unwrap();
}

/// The dashboard after its server's database starts another history (pgfeed
/// reinstalled): told `refresh_needed`, client.js re-reads the snapshots and the
/// dashboard shows them, even rows written while nothing was captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reloads_its_tables_when_the_history_changes() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO studies (study_label) VALUES ('BEFORE')").await;
    let server = db.server().await;
    let driver = Driver::start().await;
    let page = driver.browser("reset").await;
    page.goto(&format!("http://{}/", server.addr)).await.unwrap();
    wait_for(&page, "#badge[data-state='connected']").await;
    wait_for_study(&page, "BEFORE").await;

    // Reinstalled; meanwhile a write that no trigger saw: only a reload shows it.
    pgfeed::install::uninstall(&db.pool).await.unwrap();
    db.exec("UPDATE studies SET study_label = 'UNSEEN-BY-ANY-TRIGGER' WHERE study_label = 'BEFORE'")
        .await;
    pgfeed::install::migrate(&db.pool, false).await.unwrap();
    pgfeed::install::track_preset(&db.pool).await.unwrap();
    db.exec("INSERT INTO studies (study_label) VALUES ('AFTER')").await;

    wait_for_study(&page, "UNSEEN-BY-ANY-TRIGGER").await;
    wait_for_study(&page, "AFTER").await;
    assert_eq!(study_rows(&page, "BEFORE").await, 0, "the old row is gone");
    assert_eq!(study_rows(&page, "AFTER").await, 1, "shown once");
    page.close().await.unwrap();
    server.stop().await.unwrap();
}

/// `feed.liveTable` in Chromium over a slow link that drops connections, then
/// across a reinstall: the live table equals the table as SQL has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_table_equals_the_table_after_drops_and_a_reinstall() {
    let db = TestDb::new().await;
    db.exec("INSERT INTO studies (study_label) SELECT 'seed-' || g FROM generate_series(1, 5) g")
        .await;
    let server = db.server().await;
    let link = common::SlowLink::start(server.addr.port(), Duration::from_millis(100)).await;
    let driver = Driver::start().await;
    let page = driver.browser("live-table").await;
    page.goto(&format!("http://127.0.0.1:{}/", link.port)).await.unwrap();
    wait_for(&page, "#badge[data-state='connected']").await;
    page.execute_async(
        "const done = arguments[arguments.length - 1];
         import('/client.js').then(async ({ connect }) => {
           const feed = connect(location.origin.replace(/^http/, 'ws') + '/ws', { tables: ['studies'] });
           window.__live = await feed.liveTable('studies');
           window.__liveFeed = feed;
           done(true);
         });",
        vec![],
    )
    .await
    .unwrap();
    let shown = || async {
        let rows = page
            .execute("return window.__live.rows.map(r => [r.id, r.study_label]);", vec![])
            .await
            .unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    let table = || async {
        sqlx::query_as::<_, (i32, String)>("SELECT id, study_label FROM studies ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, label)| (i64::from(id), label))
            .collect::<Vec<_>>()
    };
    let settle = |label: &'static str| {
        let page = page.clone();
        async move {
            for _ in 0..300 {
                let found = page
                    .execute(
                        &format!("return window.__live.rows.some(r => r.study_label === '{label}');"),
                        vec![],
                    )
                    .await
                    .unwrap();
                if found == json!(true) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{label} never reached the live table");
        }
    };
    // Writes, updates and deletes while the link drops every connection.
    for round in 0..4 {
        for i in 0..10 {
            db.exec(&format!(
                "INSERT INTO studies (study_label) VALUES ('r{round}-{i}');
                 UPDATE studies SET study_label = study_label || '+' WHERE id % 7 = {i};
                 DELETE FROM studies WHERE id = (SELECT min(id) FROM studies) AND {i} = 5;"
            ))
            .await;
        }
        link.reset_existing();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    db.exec("INSERT INTO studies (study_label) VALUES ('live-marker-1')")
        .await;
    settle("live-marker-1").await;
    assert_eq!(shown().await, table().await);

    // Reinstalled; meanwhile a write no trigger saw: only a re-read shows it.
    pgfeed::install::uninstall(&db.pool).await.unwrap();
    db.exec("UPDATE studies SET study_label = 'UNSEEN' WHERE id = (SELECT max(id) FROM studies)")
        .await;
    pgfeed::install::migrate(&db.pool, false).await.unwrap();
    pgfeed::install::track_preset(&db.pool).await.unwrap();
    db.exec("INSERT INTO studies (study_label) VALUES ('live-marker-2')")
        .await;
    settle("live-marker-2").await;
    settle("UNSEEN").await;
    assert_eq!(shown().await, table().await);
    page.close().await.unwrap();
    server.stop().await.unwrap();
}

/// `clients/react`'s hooks in Chromium: a component with `useLiveTable` under
/// a `FeedProvider` shows SQL writes as they happen, and equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_react_component_with_use_live_table_shows_sql_writes() {
    let dir = common::clients::package("react");
    common::clients::npm_ci(&dir);
    let bundle = common::scratch_dir("react").join("app.js");
    let built = std::process::Command::new("npx")
        .args([
            "esbuild",
            "test/app.jsx",
            "--bundle",
            "--format=iife",
            "--log-level=warning",
        ])
        .arg("--define:process.env.NODE_ENV=\"production\"")
        .arg(format!("--outfile={}", bundle.display()))
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(built.success(), "bundling the React test page failed");
    let script = std::fs::read_to_string(&bundle).unwrap();

    let db = TestDb::new().await;
    db.exec("INSERT INTO studies (study_label) VALUES ('react-before')")
        .await;
    let server = db.server().await;
    let driver = Driver::start().await;
    let page = driver.browser("react").await;
    page.goto(&format!("http://{}/", server.addr)).await.unwrap();
    page.execute(
        "const s = document.createElement('script'); s.textContent = arguments[0]; document.head.append(s);",
        vec![json!(script)],
    )
    .await
    .unwrap();
    let item = |label: &str| format!("//ul[@id='react-studies']/li[text()='{label}']");
    let wait_for_item = |label: String| {
        let page = page.clone();
        async move {
            page.wait()
                .at_most(Duration::from_secs(30))
                .for_element(Locator::XPath(&label))
                .await
                .unwrap_or_else(|e| panic!("{label} never rendered: {e}"));
        }
    };
    wait_for_item(item("react-before")).await;
    db.exec(
        "INSERT INTO studies (study_label) VALUES ('react-1'), ('react-2');
         UPDATE studies SET study_label = 'react-before-renamed' WHERE study_label = 'react-before';
         DELETE FROM studies WHERE study_label = 'react-1';",
    )
    .await;
    wait_for_item(item("react-2")).await;
    wait_for_item(item("react-before-renamed")).await;
    let shown: Vec<String> = page
        .execute(
            "return [...document.querySelectorAll('#react-studies li')].map(li => li.textContent);",
            vec![],
        )
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let table: Vec<String> = sqlx::query_scalar("SELECT study_label FROM studies ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(shown, table);
    page.close().await.unwrap();
    server.stop().await.unwrap();
}

/// The browser's own `EventSource` on `/events` over a slow link that is cut
/// three times mid-stream under a steady writer: it reconnects by itself with
/// `Last-Event-ID`, and the page receives every seq once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_source_over_a_slow_flaky_link_gets_every_seq_once_in_order() {
    let db = TestDb::new().await;
    let server = db.server().await;
    let link = common::SlowLink::start(server.addr.port(), Duration::from_millis(150)).await;
    let driver = Driver::start().await;
    let page = driver.browser("event-source").await;
    page.goto(&format!("http://127.0.0.1:{}/readyz", link.port))
        .await
        .unwrap();
    page.execute(
        "window.__sse = []; window.__opened = 0;
         const source = new EventSource('/events?tables=studies');
         source.addEventListener('connected', () => { window.__opened += 1; });
         source.addEventListener('study_created', e => window.__sse.push(JSON.parse(e.data)));",
        vec![],
    )
    .await
    .unwrap();
    let opened = async |at_least: i64| {
        for _ in 0..300 {
            let n = page.execute("return window.__opened;", vec![]).await.unwrap();
            if n.as_i64().unwrap_or(0) >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the EventSource did not open {at_least} times");
    };
    opened(1).await;
    let start = db.scalar_i64("SELECT pgfeed.head()").await;

    write_steadily_cutting(&db, &link).await;
    opened(2).await;
    db.exec("INSERT INTO studies (study_label) VALUES ('marker-sse')").await;
    let mut events = Vec::new();
    for _ in 0..300 {
        let received = page
            .execute(
                "return window.__sse.map(e => [e.seq, e.tx_index, e.data.study_label]);",
                vec![],
            )
            .await
            .unwrap();
        let received = received.as_array().unwrap().clone();
        if received.iter().any(|e| e[2] == "marker-sse") {
            events = received
                .iter()
                .map(|e| json!({"seq": e[0], "tx_index": e[1], "table": "studies", "op": "INSERT"}))
                .filter(|e| e["seq"].as_i64() > Some(start))
                .collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::assert_matches_log(&db, &events, start).await;
    assert_eq!(
        events.len(),
        151,
        "every event of 150 transactions and the marker, once"
    );
    page.close().await.unwrap();
    server.stop().await.unwrap();
}
