//! HTTP requests against a server, through hyper-util.
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
    use axum::body::Body;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", running.addr))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(body.unwrap_or("").to_string())).unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).to_string())
}
