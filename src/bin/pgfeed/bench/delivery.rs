//! Keeping up and replay, against a server of this process: one client follows
//! the writers at their top rate; afterwards fresh clients replay it all from the log (twice per round).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{write, Figure, Setup};

pub async fn run(setup: &Setup, keepup: bool, replay: bool) -> Result<Vec<Figure>> {
    let pool = &setup.pool;
    let server = pgfeed::server::start(&setup.url, pgfeed::server::Settings::default()).await?;
    let ws = format!("ws://{}/ws", server.addr);
    let start: i64 = sqlx::query_scalar("SELECT pgfeed.head()").fetch_one(pool).await?;
    let (mut follower, _) = tokio_tungstenite::connect_async(&ws).await?;
    let subscribe = super::subscribe_to_bench_table();
    follower.send(Message::Text(subscribe.as_str().into())).await?;
    // The client's count of events and the last seq it saw, as they come.
    let received = Arc::new(AtomicU64::new(0));
    let last_seen = Arc::new(AtomicI64::new(start));
    let counting = {
        let (received, last_seen) = (received.clone(), last_seen.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = follower.next().await {
                if let Message::Text(text) = message {
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
    write::measure(pool, "tracked", setup.writers, setup.span).await?;
    // A tick of its own: the head then covers every transaction the writers committed.
    let mut ticked = pgfeed::feed::log::ticked_snapshot(pool).await?;
    let head: i64 = sqlx::query_scalar("SELECT pgfeed.head()")
        .fetch_one(&mut *ticked)
        .await?;
    ticked.commit().await?;
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
        figures.push(Figure::versus(
            "keepup",
            format!("events received / committed (final lag {lag} tx)"),
            delivered,
            committed.max(1) as f64,
            ">= 0.99, lag 0",
        ));
    }
    if replay {
        // The log after `start`, replayed `rounds` times, each by a client of
        // its own: one replay of a few tens of thousands of events takes a
        // third of a second, too short to judge alone.
        let mut events = 0i64;
        let mut took = Duration::ZERO;
        for _ in 0..setup.rounds.max(1) * 2 {
            let (replayed, elapsed) = replay_once(&ws, &subscribe, start, committed).await?;
            events += replayed;
            took += elapsed;
        }
        figures.push(Figure::alone(
            "replay",
            format!("events/s from the log ({events} events)"),
            events as f64 / took.as_secs_f64(),
            ">= 100000",
        ));
    }
    server.stop().await?;
    Ok(figures)
}

/// A client that resumes after `start` and reads until it has the `committed`
/// events after it: how many it got and how long it took.
async fn replay_once(ws: &str, subscribe: &str, start: i64, committed: i64) -> Result<(i64, Duration)> {
    let (mut resumer, _) = tokio_tungstenite::connect_async(ws).await?;
    resumer.send(Message::Text(subscribe.into())).await?;
    let resume = pgfeed::protocol::Action::Resume {
        after: pgfeed::protocol::Position::unchecked(start),
    }
    .encode();
    let started = std::time::Instant::now();
    resumer.send(Message::Text(resume.into())).await?;
    let mut events = 0i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while events < committed {
        match tokio::time::timeout_at(deadline, resumer.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if text.contains("\"table\":\"bench_tracked\"") {
                    events += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    Ok((events, started.elapsed()))
}
