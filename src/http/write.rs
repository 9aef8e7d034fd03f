//! PEARL's REST writes, opt-in (`--enable-writes`): `POST /api/v1/<table>`,
//! `PUT`/`PATCH`/`DELETE /api/v1/<table>/<id>` on tracked tables.
//!
//! Each is one plain, parameterized SQL statement. Its events come from the
//! capture triggers like any other write: the handler never publishes. Column
//! names are checked against the catalog (and quoted); values go through
//! `json_populate_record`, so Postgres converts them to the column types
//! exactly as it would for any client.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::access::Access;
use super::{verbs, ApiError, AppState};
use crate::auth::Scope;

/// A tracked table as writes see it, and what the token may write there.
struct Target {
    scope: Scope,
    /// The relation, as its regclass prints: safe to splice into SQL.
    relation: String,
    /// Columns that may be written (excluded columns may not).
    columns: Vec<String>,
    /// Columns never returned.
    exclude: Vec<String>,
}

async fn target(state: &AppState, access: &Access, table: &str) -> Result<Target, ApiError> {
    if !state.limits.enable_writes {
        return Err(ApiError::WritesDisabled);
    }
    let scope = access.require(state)?;
    let table = table.trim_end_matches('/');
    if !scope.write {
        state.metrics.forbidden.inc();
        return Err(ApiError::Forbidden(
            "this token may not write (its pgfeed claim has no \"write\": true)".into(),
        ));
    }
    verbs::check_table(state, &scope, table)?;
    let found: Option<(String, Vec<String>, Vec<String>)> = sqlx::query_as(
        "SELECT t.table_name::regclass::text, t.exclude,
                ARRAY(SELECT a.attname::text FROM pg_attribute a
                       WHERE a.attrelid = t.table_name AND a.attnum > 0 AND NOT a.attisdropped
                         AND a.attgenerated = '' AND NOT a.attname = ANY (t.exclude)
                       ORDER BY a.attnum)
           FROM pgfeed.tracked_tables t WHERE pgfeed.table_label(t.table_name) = $1",
    )
    .bind(table)
    .fetch_optional(&state.pool)
    .await?;
    let Some((relation, exclude, columns)) = found else {
        return Err(ApiError::NotFound(format!("table `{table}` is not tracked")));
    };
    Ok(Target {
        scope,
        relation,
        columns,
        exclude,
    })
}

/// The body as a JSON object whose keys are all writable columns of `target`.
fn fields(target: &Target, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::BadRequest("the body must be a JSON object of columns".into()));
    };
    if let Some(unknown) = fields.keys().find(|k| !target.columns.contains(k)) {
        let shown: String = unknown.chars().take(64).collect();
        return Err(ApiError::BadRequest(format!(
            "unknown column `{shown}` (columns: {})",
            target.columns.join(", ")
        )));
    }
    Ok(fields)
}

/// `"a", "b"`: the names, quoted for SQL.
fn column_list<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names
        .map(|n| format!("\"{}\"", n.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a statement whose result is the written row as JSON text, in a
/// transaction that also checks the row is in the token's scope before the
/// write (for an `id`) and after it: otherwise nothing is written.
async fn run(
    state: &AppState,
    sql: &str,
    fields: Map<String, Value>,
    target: &Target,
    id: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let mut tx = state.pool.begin().await?;
    if let Some(id) = id {
        let current: Option<String> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t)::text FROM {rel} t WHERE {matches} FOR UPDATE",
            rel = target.relation,
            matches = by_id(&target.relation)
        ))
        .bind(Value::Null)
        .bind(&target.exclude)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from_write)?;
        let in_scope = current
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .is_some_and(|row| target.scope.allows_row(&row));
        if !in_scope {
            // Out of scope looks exactly like absent: no existence is revealed.
            return Ok(None);
        }
    }
    let row: Option<String> = sqlx::query_scalar(sql)
        .bind(Value::Object(fields))
        .bind(&target.exclude)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(ApiError::from_write)?;
    let Some(text) = row else {
        return Ok(None);
    };
    let mut row: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if !target.scope.allows_row(&row) {
        tx.rollback().await?;
        state.metrics.forbidden.inc();
        return Err(ApiError::Forbidden(
            "the written row would be outside this token's scope".into(),
        ));
    }
    tx.commit().await?;
    crate::timestamps::normalize_row(&mut row);
    Ok(Some(row))
}

/// The row whose `id` is `$3` (converted to the id column's type by Postgres).
fn by_id(relation: &str) -> String {
    format!("t.id = (json_populate_record(NULL::{relation}, json_build_object('id', $3::text))).id")
}

/// `POST /api/v1/<table>`: 201 and the row as stored.
pub async fn create(
    State(state): State<AppState>,
    access: Access,
    Path(table): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &access, &table).await?;
    let fields = fields(&target, &body)?;
    let columns = column_list(fields.keys());
    let sql = if fields.is_empty() {
        format!(
            "WITH r AS (INSERT INTO {rel} DEFAULT VALUES RETURNING *) SELECT (to_jsonb(r) - $2::text[])::text FROM r",
            rel = target.relation
        )
    } else {
        format!(
            "WITH r AS (INSERT INTO {rel} ({columns}) SELECT {columns} FROM json_populate_record(NULL::{rel}, $1::json) RETURNING *)
             SELECT (to_jsonb(r) - $2::text[])::text FROM r",
            rel = target.relation
        )
    };
    let row = run(&state, &sql, fields, &target, None).await?;
    Ok((StatusCode::CREATED, axum::Json(row.unwrap_or(Value::Null))).into_response())
}

/// `PUT`/`PATCH /api/v1/<table>/<id>`: 200 and the row as stored; the body's columns change.
pub async fn update(
    State(state): State<AppState>,
    access: Access,
    Path((table, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let target = target(&state, &access, &table).await?;
    let id = id.trim_end_matches('/');
    let mut fields = fields(&target, &body)?;
    if fields
        .get("id")
        .is_some_and(|given| given.to_string().trim_matches('"') == id)
    {
        fields.remove("id");
    }
    if fields.is_empty() {
        return Err(ApiError::BadRequest(
            "nothing to update: send the columns to change".into(),
        ));
    }
    let columns = column_list(fields.keys());
    let sql = format!(
        "WITH r AS (UPDATE {rel} t SET ({columns}) = (SELECT {columns} FROM json_populate_record(NULL::{rel}, $1::json))
                     WHERE {matches} RETURNING t.*)
         SELECT (to_jsonb(r) - $2::text[])::text FROM r",
        rel = target.relation,
        matches = by_id(&target.relation)
    );
    match run(&state, &sql, fields, &target, Some(id)).await? {
        Some(row) => Ok(axum::Json(row).into_response()),
        None => Err(ApiError::NotFound(format!(
            "no row with id {id} in `{}`",
            table.trim_end_matches('/')
        ))),
    }
}

/// `DELETE /api/v1/<table>/<id>`: 200 and the row as it was.
pub async fn remove(
    State(state): State<AppState>,
    access: Access,
    Path((table, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let target = target(&state, &access, &table).await?;
    let id = id.trim_end_matches('/');
    let sql = format!(
        "WITH r AS (DELETE FROM {rel} t WHERE {matches} RETURNING t.*)
         SELECT (to_jsonb(r) - $2::text[])::text FROM r",
        rel = target.relation,
        matches = by_id(&target.relation)
    );
    match run(&state, &sql, Map::new(), &target, Some(id)).await? {
        Some(row) => Ok(axum::Json(row).into_response()),
        None => Err(ApiError::NotFound(format!(
            "no row with id {id} in `{}`",
            table.trim_end_matches('/')
        ))),
    }
}

impl ApiError {
    /// A write the database refused because of the request (a constraint, a
    /// value of the wrong type) is the client's error, with Postgres' reason;
    /// anything else is ours.
    fn from_write(err: sqlx::Error) -> ApiError {
        if let sqlx::Error::Database(db) = &err {
            let code = db.code().unwrap_or_default();
            // Class 22 (data exception) and 23 (integrity constraint violation).
            if code.starts_with("22") || code.starts_with("23") {
                return ApiError::BadRequest(db.message().to_string());
            }
        }
        ApiError::Database(err)
    }
}
