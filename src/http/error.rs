//! The one error type at the HTTP edge. Database details are logged, never shown.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// What a client sees when a request fails. Database details are logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("writes are disabled on this server (start it with --enable-writes)")]
    WritesDisabled,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::WritesDisabled => (StatusCode::METHOD_NOT_ALLOWED, "writes_disabled"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Database(err) => {
                tracing::error!(error = %err, "database error serving a request");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        // `detail` is PEARL's (FastAPI's) field; `type`/`code`/`message` the native one.
        let message = self.to_string();
        (
            status,
            Json(serde_json::json!({ "detail": message, "type": "error", "code": code, "message": message })),
        )
            .into_response()
    }
}
