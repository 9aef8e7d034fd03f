//! Who is asking: the one extractor every route that emits or writes a row
//! uses, and the Origin check in front of every route.
//!
//! A token comes from `Authorization: Bearer …` or `?token=`; a WebSocket may
//! instead send `{"action"|"type": "auth", "token": …}` first. A bad token is
//! refused with 401 before any upgrade. `?workspace_id=` narrows the scope.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{ApiError, AppState};
use crate::auth::{Grant, Scope};

/// What a request may see and do.
#[derive(Debug, Clone)]
pub enum Access {
    /// Authentication is off: everything (loopback only, or `--insecure`).
    Open,
    /// A verified token, its scope narrowed by the request's own parameters.
    Granted(Grant),
    /// Authentication is on and no token came with the request: a WebSocket
    /// may still send one as its first message; anything else is refused.
    Pending,
}

impl Access {
    /// The scope in force, or `None` before authentication.
    pub fn scope(&self) -> Option<Scope> {
        match self {
            Access::Open => Some(Scope::unbounded()),
            Access::Granted(grant) => Some(grant.scope.clone()),
            Access::Pending => None,
        }
    }

    /// The scope for a plain HTTP request: 401 when there is none.
    pub fn require(&self, state: &AppState) -> Result<Scope, ApiError> {
        self.scope().ok_or_else(|| {
            state.metrics.auth_refusals.inc();
            ApiError::Unauthorized("a token is required: send Authorization: Bearer <token>".into())
        })
    }
}

/// 401 with the reason (never the token).
pub fn unauthorized(reason: &str) -> Response {
    let body = serde_json::json!({"detail": reason, "type": "error", "code": "unauthorized", "message": reason});
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// 403 for a table or row outside the scope.
pub fn forbidden(reason: &str) -> Response {
    let body = serde_json::json!({"detail": reason, "type": "error", "code": "forbidden", "message": reason});
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// The `workspace_id` values a request narrows its scope to (`?workspace_id=1,2`).
pub fn workspace_ids(text: &str) -> Vec<Value> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(t)))
        .collect()
}

impl FromRequestParts<AppState> for Access {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let query: HashMap<String, String> = Query::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
        let mut access = match &state.auth {
            None => Access::Open,
            Some(verifier) => {
                let bearer = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                    .map(str::trim);
                match bearer.or(query.get("token").map(String::as_str)) {
                    None => Access::Pending,
                    Some(token) => match verifier.verify(token) {
                        Ok(grant) => Access::Granted(grant),
                        Err(refusal) => {
                            state.metrics.auth_refusals.inc();
                            tracing::debug!(reason = %refusal, "token refused");
                            return Err(unauthorized(&refusal.0));
                        }
                    },
                }
            }
        };
        if let Some(ids) = query.get("workspace_id").map(|t| workspace_ids(t)) {
            match &mut access {
                Access::Granted(grant) => grant.scope.narrow("workspace_id", ids),
                Access::Open => {
                    let mut scope = Scope::unbounded();
                    scope.narrow("workspace_id", ids);
                    access = Access::Granted(Grant {
                        scope,
                        expires_at: u64::MAX,
                    });
                }
                Access::Pending => {}
            }
        }
        Ok(access)
    }
}

/// Refuses browsers from origins not in `PGFEED_ALLOWED_ORIGINS` (when it is set),
/// before anything else runs. Requests without an Origin (not from a browser) pass.
pub async fn check_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let allowed = &state.limits.allowed_origins;
    if !allowed.is_empty() {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !allowed.iter().any(|a| a == origin || a == "*") {
                state.metrics.origin_refusals.inc();
                return forbidden("this origin may not connect (see PGFEED_ALLOWED_ORIGINS)");
            }
        }
    }
    next.run(request).await
}
