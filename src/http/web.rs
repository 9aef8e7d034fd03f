//! What a person opens: the live dashboard at `/`, the browser client at
//! `/client.js` (with `client.d.ts`: the build of `clients/js`). The protocol
//! document is `asyncapi`'s.
//! The files live in `web/` and are compiled into the binary.

use axum::http::header;
use axum::response::{IntoResponse, Response};

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    file("text/html; charset=utf-8", include_str!("../../web/index.html"))
}

pub async fn dashboard_js() -> Response {
    file("text/javascript; charset=utf-8", include_str!("../../web/dashboard.js"))
}

pub async fn client_js() -> Response {
    // The build of clients/js (its source); tests/js.rs checks it is the build of that source.
    file(
        "text/javascript; charset=utf-8",
        include_str!("../../clients/js/dist/index.js"),
    )
}

pub async fn client_types() -> Response {
    file(
        "application/typescript; charset=utf-8",
        include_str!("../../clients/js/dist/index.d.ts"),
    )
}

pub async fn style() -> Response {
    file("text/css; charset=utf-8", include_str!("../../web/style.css"))
}
