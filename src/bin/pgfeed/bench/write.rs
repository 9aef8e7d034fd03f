//! Write cost: the same transaction (insert a row, update it) from the same
//! writers on each variant of `variants.sql`, the variants taking turns. A
//! connection LISTENs on every channel throughout, as a server would. While
//! the writers write to the tracked table, a pgfeed server (its own process)
//! sequences and delivers their transactions, as it would in production: its
//! ticks' commits and reads are part of what tracking costs the database.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use sqlx::postgres::PgListener;
use sqlx::PgPool;

use super::peer::Peer;
use super::{Figure, Setup};

/// Every variant, with what it is (variants.sql says more).
pub const VARIANTS: [(&str, &str); 7] = [
    ("plain", "no trigger"),
    ("bare_notify", "per-row pg_notify trigger"),
    ("tracked", "pgfeed.track"),
    (
        "v01",
        "pgfeed 0.1: per-row payload, seq under a lock held through commit",
    ),
    ("lock_1n", "prototype: slim capture, 1 notify/tx, seq under lock"),
    ("seq_1n", "prototype: sequencer writers, log + 1 notify/tx"),
    ("seq_poll", "prototype: sequencer writers, log only"),
];

pub async fn run(setup: &Setup, only: Option<&[String]>) -> Result<Vec<Figure>> {
    let chosen: Vec<&str> = match only {
        None => VARIANTS.iter().map(|(name, _)| *name).collect(),
        Some(names) => {
            for name in names {
                if !VARIANTS.iter().any(|(v, _)| v == name) {
                    bail!(
                        "unknown write variant {name}; the variants are {:?}",
                        VARIANTS.map(|v| v.0)
                    );
                }
            }
            // The references always run: every figure is a ratio to them.
            VARIANTS
                .iter()
                .map(|(name, _)| *name)
                .filter(|v| ["plain", "bare_notify"].contains(v) || names.iter().any(|n| n == v))
                .collect()
        }
    };
    let drain = tokio::spawn(drain_notifications(setup.url.clone()));
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); chosen.len()];
    for _ in 0..setup.rounds {
        for (i, name) in chosen.iter().enumerate() {
            let server = match *name {
                "tracked" => Some(Peer::pgfeed(&setup.url, 0).await?),
                _ => None,
            };
            results[i].push(measure(&setup.pool, name, setup.writers, setup.span).await?);
            drop(server);
        }
    }
    drain.abort();
    // What the last server had not sequenced when it stopped: now, so the next
    // scenario's server does not start with a backlog.
    pgfeed::feed::log::ticked_snapshot(&setup.pool).await?.commit().await?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let runs = |v: &[f64]| v.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ");
    let of = |name: &str| chosen.iter().position(|v| *v == name).expect("references always run");
    let (plain, bare) = (mean(&results[of("plain")]), mean(&results[of("bare_notify")]));
    let mut figures = Vec::new();
    for (i, name) in chosen.iter().enumerate() {
        if ["plain", "bare_notify"].contains(name) {
            continue;
        }
        let value = mean(&results[i]);
        let target = if *name == "tracked" { ">= 0.85" } else { "report" };
        figures.push(Figure::versus(
            "write",
            match *name {
                "tracked" => format!("tracked tx/s, a server ticking, vs bare NOTIFY ({})", runs(&results[i])),
                _ => format!("{name} tx/s vs bare NOTIFY ({})", runs(&results[i])),
            },
            value,
            bare,
            target,
        ));
    }
    figures.push(Figure::versus(
        "write",
        format!(
            "bare NOTIFY tx/s vs plain ({} | {})",
            runs(&results[of("bare_notify")]),
            runs(&results[of("plain")])
        ),
        bare,
        plain,
        "report",
    ));
    if let Some(t) = chosen.iter().position(|v| *v == "tracked") {
        figures.push(Figure::versus(
            "write",
            "tracked tx/s vs plain".into(),
            mean(&results[t]),
            plain,
            "report",
        ));
    }
    Ok(figures)
}

async fn drain_notifications(url: String) -> Result<()> {
    let mut listener = PgListener::connect(&url).await?;
    listener.listen_all(["bench", "pgfeed"]).await?;
    loop {
        listener.recv().await?;
    }
}

/// Transactions per second of `writers` tasks on `bench_<variant>` for `span`.
pub async fn measure(pool: &PgPool, variant: &str, writers: usize, span: Duration) -> Result<f64> {
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
