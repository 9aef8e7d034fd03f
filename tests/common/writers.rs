//! Writers that keep committing, through outages, and the marker rows that end a read.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

use super::*;

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
                            Err(_) => {
                                // A failed statement leaves its transaction open and aborted:
                                // end it, or every retry fails on this connection.
                                let _ = sqlx::raw_sql("ROLLBACK").execute(&pool).await;
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
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
