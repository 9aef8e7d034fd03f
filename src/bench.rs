//! `pgfeed bench`: measures, never asserts. Reports each figure with its
//! reference from the same run (DESIGN §7).
//!
//! `write`: transactions per second of 8 writers (a transaction = one insert +
//! one update) on three copies of one table: untracked, with a bare per-row
//! `pg_notify` trigger (the at-most-once design of pg_eventserv and
//! postgres-websockets), and tracked by pgfeed. A connection LISTENs on both
//! channels throughout, as a server would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::db;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every scenario below, one table.
    All,
    /// Write cost: tracked vs bare per-row NOTIFY vs plain.
    Write,
    /// Delivered/committed for one client at the writers' top rate, and the final lag.
    Keepup,
    /// Events per second streamed from the log to a client resuming from the start.
    Replay,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenario to run.
    #[arg(value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,

    /// Postgres to measure on. Unset: a private cluster with default (durable) settings.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// A short run of every figure (1 s measurements, one round): to see it work, not to compare.
    #[arg(long)]
    pub quick: bool,

    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,

    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,

    /// Measurements per variant (the variants take turns).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
}

const VARIANTS: [(&str, &str); 3] = [
    ("plain", "no trigger"),
    ("bare_notify", "per-row pg_notify trigger"),
    ("tracked", "pgfeed.track"),
];

pub async fn run(args: BenchArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("pgfeed-bench-{}", std::process::id()));
    let database = db::resolve(args.database_url.as_deref(), &scratch).await?;
    let url = database.url.clone();
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await?;
    sqlx::query("DROP DATABASE IF EXISTS pgfeed_bench")
        .execute(&admin)
        .await?;
    sqlx::query("CREATE DATABASE pgfeed_bench").execute(&admin).await?;
    admin.close().await;
    let bench_url = format!(
        "{}/pgfeed_bench",
        url.rsplit_once('/').context("DATABASE_URL has no database")?.0
    );
    let pool = PgPoolOptions::new()
        .max_connections(args.writers as u32 + 2)
        .connect(&bench_url)
        .await?;
    crate::install::migrate(&pool, false).await?;
    setup(&pool).await?;

    let settings: (String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync')",
    )
    .fetch_one(&pool)
    .await?;
    let (seconds, rounds) = if args.quick {
        (1, 1)
    } else {
        (args.seconds, args.rounds)
    };
    let header = format!(
        "pgfeed bench: {} writers, {seconds} s x {rounds} rounds; Postgres {}, synchronous_commit={}, fsync={}; {} cores",
        args.writers,
        settings.0,
        settings.1,
        settings.2,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let span = Duration::from_secs(seconds);
    let mut figures = Vec::new();
    let wants = |s: Scenario| args.scenario == Scenario::All || args.scenario == s;
    if wants(Scenario::Write) {
        figures.extend(write_cost(&pool, &bench_url, args.writers, span, rounds).await?);
    }
    if wants(Scenario::Keepup) || wants(Scenario::Replay) {
        figures.extend(
            delivery(
                &pool,
                &bench_url,
                args.writers,
                span,
                wants(Scenario::Keepup),
                wants(Scenario::Replay),
            )
            .await?,
        );
    }
    if args.json {
        println!("{}", serde_json::json!({"setup": header, "figures": figures}));
    } else {
        println!("{header}");
        println!(
            "  {:<10} {:<46} {:>12} {:>14} {:>8}  target",
            "scenario", "figure", "value", "reference", "ratio"
        );
        for f in &figures {
            println!(
                "  {:<10} {:<46} {:>12.1} {:>14} {:>8}  {}",
                f.scenario,
                f.figure,
                f.value,
                f.reference.map_or("-".into(), |r| format!("{r:.1}")),
                f.ratio.map_or("-".into(), |r| format!("{r:.2}")),
                f.target
            );
        }
    }
    pool.close().await;
    drop(database);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// One line of the table: a figure beside its reference from the same run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    pub figure: String,
    pub value: f64,
    pub reference: Option<f64>,
    pub ratio: Option<f64>,
    pub target: &'static str,
}

/// Write cost: the three tables take turns for `rounds` rounds.
async fn write_cost(pool: &PgPool, url: &str, writers: usize, span: Duration, rounds: usize) -> Result<Vec<Figure>> {
    let drain = tokio::spawn(drain_notifications(url.to_string()));
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for _ in 0..rounds {
        for (i, (name, _)) in VARIANTS.iter().enumerate() {
            results[i].push(measure(pool, name, writers, span).await?);
        }
    }
    drain.abort();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (plain, bare, tracked) = (mean(&results[0]), mean(&results[1]), mean(&results[2]));
    let runs = |v: &[f64]| v.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ");
    Ok(vec![
        Figure {
            scenario: "write",
            figure: format!("tracked tx/s vs bare NOTIFY ({})", runs(&results[2])),
            value: tracked,
            reference: Some(bare),
            ratio: Some(tracked / bare),
            target: ">= 0.85",
        },
        Figure {
            scenario: "write",
            figure: format!("tracked tx/s vs plain ({})", runs(&results[0])),
            value: tracked,
            reference: Some(plain),
            ratio: Some(tracked / plain),
            target: "report",
        },
    ])
}

/// Keeping up and replay, against a server of this process: one client follows
/// the writers at their top rate; afterwards another replays it all from the log.
async fn delivery(
    pool: &PgPool,
    url: &str,
    writers: usize,
    span: Duration,
    keepup: bool,
    replay: bool,
) -> Result<Vec<Figure>> {
    use futures_util::{SinkExt, StreamExt};
    let server = crate::server::start(url, crate::server::Settings::default()).await?;
    let ws = format!("ws://{}/ws", server.addr);
    let start: i64 = sqlx::query_scalar("SELECT pgfeed.head()").fetch_one(pool).await?;
    let (mut follower, _) = tokio_tungstenite::connect_async(&ws).await?;
    let subscribe = r#"{"action":"subscribe","tables":["bench_tracked"]}"#;
    follower
        .send(tokio_tungstenite::tungstenite::Message::Text(subscribe.into()))
        .await?;
    // The client's count of events and the last seq it saw, as they come.
    let received = Arc::new(AtomicU64::new(0));
    let last_seen = Arc::new(std::sync::atomic::AtomicI64::new(start));
    let counting = {
        let (received, last_seen) = (received.clone(), last_seen.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = follower.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
                    if text.contains("\"table\":\"bench_tracked\"") {
                        received.fetch_add(1, Ordering::Relaxed);
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                            last_seen.fetch_max(v["seq"].as_i64().unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    measure(pool, "tracked", writers, span).await?;
    let head: i64 = sqlx::query_scalar("SELECT pgfeed.head()").fetch_one(pool).await?;
    let committed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pgfeed.commits c JOIN pgfeed.events e USING (tx) WHERE c.seq > $1")
            .bind(start)
            .fetch_one(pool)
            .await?;
    // Up to 10 s for the last events to arrive.
    for _ in 0..100 {
        if received.load(Ordering::Relaxed) as i64 >= committed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    counting.abort();
    let mut figures = Vec::new();
    let delivered = received.load(Ordering::Relaxed) as f64;
    if keepup {
        let lag = head - last_seen.load(Ordering::Relaxed);
        figures.push(Figure {
            scenario: "keepup",
            figure: format!("events received / committed (final lag {lag} tx)"),
            value: delivered,
            reference: Some(committed as f64),
            ratio: Some(delivered / committed.max(1) as f64),
            target: ">= 0.99, lag 0",
        });
    }
    if replay {
        let (mut resumer, _) = tokio_tungstenite::connect_async(&ws).await?;
        let subscribe = r#"{"action":"subscribe","tables":["bench_tracked"]}"#;
        resumer
            .send(tokio_tungstenite::tungstenite::Message::Text(subscribe.into()))
            .await?;
        let resume = format!(r#"{{"action":"resume","after":{start}}}"#);
        let started = std::time::Instant::now();
        resumer
            .send(tokio_tungstenite::tungstenite::Message::Text(resume.into()))
            .await?;
        let mut events = 0i64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while events < committed {
            let next = tokio::time::timeout_at(deadline, resumer.next()).await;
            match next {
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text)))) => {
                    if text.contains("\"table\":\"bench_tracked\"") {
                        events += 1;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        let rate = events as f64 / started.elapsed().as_secs_f64();
        figures.push(Figure {
            scenario: "replay",
            figure: format!("events/s from the log ({events} events)"),
            value: rate,
            reference: None,
            ratio: None,
            target: ">= 100000",
        });
    }
    server.stop().await?;
    Ok(figures)
}

async fn setup(pool: &PgPool) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE bench_plain (id bigserial PRIMARY KEY, label text NOT NULL, n integer NOT NULL DEFAULT 0,
                                   updated_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE bench_bare_notify (LIKE bench_plain INCLUDING ALL);
         CREATE TABLE bench_tracked (LIKE bench_plain INCLUDING ALL);
         CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_notify('bench', json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
                                                          'row', row_to_json(COALESCE(NEW, OLD)))::text);
             RETURN NULL;
         END $$;
         CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE OR DELETE ON bench_bare_notify
             FOR EACH ROW EXECUTE FUNCTION bench_notify();
         SELECT pgfeed.track('bench_tracked', 'bench');",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn drain_notifications(url: String) -> Result<()> {
    let mut listener = PgListener::connect(&url).await?;
    listener.listen_all(["bench", "pgfeed"]).await?;
    loop {
        listener.recv().await?;
    }
}

/// Transactions per second of `writers` tasks on `bench_<variant>` for `span`.
async fn measure(pool: &PgPool, variant: &str, writers: usize, span: Duration) -> Result<f64> {
    let insert = format!("INSERT INTO bench_{variant} (label) VALUES ($1) RETURNING id");
    let update = format!("UPDATE bench_{variant} SET n = n + 1, updated_at = now() WHERE id = $1");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (pool, stop, done) = (pool.clone(), stop.clone(), done.clone());
            let (insert, update) = (insert.clone(), update.clone());
            tokio::spawn(async move {
                let mut conn = pool.acquire().await?;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    let id: i64 = sqlx::query_scalar(&insert)
                        .bind(format!("w{w}-{i}"))
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(&update).bind(id).execute(&mut *tx).await?;
                    tx.commit().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    tokio::time::sleep(span).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}
