//! `GET /asyncapi.json`: the protocol (the static document in `web/`), plus,
//! for a caller who may see them, the events this server sends for each
//! tracked table — by name (its own names, `pgfeed.name_events`, included),
//! with the row's JSON Schema read from the catalog (columns, types,
//! nullability; excluded columns absent). It is made per request, so it
//! follows `track`, `untrack` and schema changes.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::access::Access;
use super::AppState;

/// The protocol's core, the same for every server.
const CORE: &str = include_str!("../../web/asyncapi.json");

/// The general channels, where row events go, and their send operations.
const ROW_CHANNELS: [(&str, &str); 3] = [
    ("feed", "feedSend"),
    ("updates", "updatesSend"),
    ("events", "eventsSend"),
];

/// The verbs of a table's events, with their `op`.
const VERBS: [(&str, &str); 5] = [
    ("created", "INSERT"),
    ("updated", "UPDATE"),
    ("deleted", "DELETE"),
    ("truncated", "TRUNCATE"),
    ("schema_changed", "SCHEMA"),
];

/// One tracked table as the document describes it.
#[derive(Debug, sqlx::FromRow)]
struct Table {
    table_name: String,
    prefix: String,
    event_names: sqlx::types::Json<Map<String, Value>>,
    columns: sqlx::types::Json<Vec<Column>>,
}

#[derive(Debug, serde::Deserialize)]
struct Column {
    name: String,
    /// `format_type`, e.g. `timestamp with time zone`.
    sql_type: String,
    /// `pg_type.typcategory`: N numeric, B boolean, A array, D date/time, S string, U user, E enum, …
    category: String,
    /// `pg_type.typname` of the column's type (its element type for an array).
    base: String,
    /// The category of `base`.
    base_category: String,
    nullable: bool,
}

/// The core, parsed once; each request adds its tables to a copy.
fn core() -> &'static Value {
    static PARSED: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(CORE).expect("web/asyncapi.json is JSON"))
}

pub async fn document(State(state): State<AppState>, access: Access) -> Response {
    let mut doc = core().clone();
    // Without a token (where one is needed) the core only: table names and
    // columns are for those who may see the tables.
    if let Some(scope) = access.scope() {
        match tracked(&state).await {
            Ok(tables) => {
                for table in tables.iter().filter(|t| scope.allows_table(&t.table_name)) {
                    add_table(&mut doc, table);
                }
            }
            Err(err) => tracing::warn!(error = %err, "reading the tracked tables for /asyncapi.json"),
        }
    }
    axum::Json(doc).into_response()
}

async fn tracked(state: &AppState) -> sqlx::Result<Vec<Table>> {
    // `event_names` through to_jsonb: an installation before capture/0013 has none.
    sqlx::query_as(
        "SELECT pgfeed.table_label(t.table_name) AS table_name, t.prefix,
                COALESCE(to_jsonb(t) -> 'event_names', '{}') AS event_names,
                COALESCE((SELECT jsonb_agg(jsonb_build_object(
                              'name', a.attname, 'sql_type', format_type(a.atttypid, a.atttypmod),
                              'category', ty.typcategory,
                              'base', COALESCE(elem.typname, ty.typname),
                              'base_category', COALESCE(elem.typcategory, ty.typcategory),
                              'nullable', NOT a.attnotnull) ORDER BY a.attnum)
                            FROM pg_attribute a
                            JOIN pg_type ty ON ty.oid = a.atttypid
                            LEFT JOIN pg_type elem ON elem.oid = ty.typelem AND ty.typcategory = 'A'
                           WHERE a.attrelid = t.table_name AND a.attnum > 0 AND NOT a.attisdropped
                             AND a.attname <> ALL (t.exclude)), '[]') AS columns
           FROM pgfeed.tracked_tables t
          WHERE pgfeed.table_label(t.table_name) IS NOT NULL
          ORDER BY 1",
    )
    .fetch_all(&state.feed.pool)
    .await
}

/// The JSON Schema of a value of a column's type, as pgfeed sends it.
fn value_schema(category: &str, base: &str) -> Value {
    match (category, base) {
        (_, "int2" | "int4" | "int8" | "oid") => json!({"type": "integer"}),
        ("N", _) => json!({"type": "number"}),
        ("B", _) => json!({"type": "boolean"}),
        (_, "json" | "jsonb") => json!({}),
        (_, "timestamptz" | "timestamp") => json!({"type": "string", "format": "date-time"}),
        (_, "date") => json!({"type": "string", "format": "date"}),
        (_, "uuid") => json!({"type": "string", "format": "uuid"}),
        ("S" | "D" | "E" | "U" | "I" | "V", _) => json!({"type": "string"}),
        // Composite, range, geometric and other types: whatever to_json makes of them.
        _ => json!({}),
    }
}

/// The row's schema: every column (but those left out), with its type and nullability.
fn row_schema(columns: &[Column]) -> Value {
    let mut properties = Map::new();
    for column in columns {
        let mut schema = if column.category == "A" {
            json!({"type": "array", "items": value_schema(&column.base_category, &column.base)})
        } else {
            value_schema(&column.category, &column.base)
        };
        if column.nullable {
            schema = json!({"anyOf": [schema, {"type": "null"}]});
        }
        schema["description"] = Value::String(column.sql_type.clone());
        properties.insert(column.name.clone(), schema);
    }
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    json!({"type": "object", "properties": properties, "required": names})
}

/// A message id: letters, digits and `_` only.
fn message_id(table: &str, verb: &str) -> String {
    let table: String = table
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{table}__{verb}")
}

fn add_table(doc: &mut Value, table: &Table) {
    let core = doc["components"]["messages"]["rowEvent"].clone();
    let row = row_schema(&table.columns);
    for (verb, op) in VERBS {
        let name = table
            .event_names
            .0
            .get(verb)
            .and_then(Value::as_str)
            .map_or_else(|| format!("{}_{verb}", table.prefix), str::to_string);
        let data = match op {
            "INSERT" | "UPDATE" | "DELETE" => row.clone(),
            "TRUNCATE" => json!({"type": "object", "properties": {"table": {"const": table.table_name}}}),
            _ => json!({"type": "object", "properties": {
                "table": {"type": "string"}, "change": {"type": "string"},
                "changes": {"type": "array", "items": {"type": "object"}},
                "columns": {"type": "array", "items": {"type": "object"}}}}),
        };
        let mut message = core.clone();
        message["name"] = Value::String(name.clone());
        message["title"] = Value::String(format!("{} {verb}", table.table_name));
        message["summary"] = Value::String(format!("A {op} on {}: {name}.", table.table_name));
        let properties = &mut message["payload"]["properties"];
        properties["type"] = json!({"const": name});
        properties["table"] = json!({"const": table.table_name});
        properties["op"] = json!({"const": op});
        properties["data"] = data;
        let id = message_id(&table.table_name, verb);
        doc["components"]["messages"][&id] = message;
        for (channel, operation) in ROW_CHANNELS {
            let reference = format!("#/components/messages/{id}");
            doc["channels"][channel]["messages"][&id] = json!({"$ref": reference});
            if let Some(list) = doc["operations"][operation]["messages"].as_array_mut() {
                list.push(json!({"$ref": format!("#/channels/{channel}/messages/{id}")}));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_become_json_schema() {
        let columns = vec![
            Column {
                name: "id".into(),
                sql_type: "integer".into(),
                category: "N".into(),
                base: "int4".into(),
                base_category: "N".into(),
                nullable: false,
            },
            Column {
                name: "tags".into(),
                sql_type: "text[]".into(),
                category: "A".into(),
                base: "text".into(),
                base_category: "S".into(),
                nullable: true,
            },
        ];
        let schema = row_schema(&columns);
        assert_eq!(schema["properties"]["id"]["type"], "integer");
        assert_eq!(schema["properties"]["tags"]["anyOf"][0]["items"]["type"], "string");
        assert_eq!(schema["required"], json!(["id", "tags"]));
        assert_eq!(message_id("lab.equipment", "created"), "lab_equipment__created");
    }
}
