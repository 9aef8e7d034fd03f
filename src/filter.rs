//! Which events a client wants, and the one rule by which a row's field
//! matches a wanted value. Subscriptions (`where` of `subscribe`, SSE's
//! `?where=`) and token scopes (`pgfeed.where` of a JWT, `?workspace_id=`)
//! both match rows with [`value_matches`], so a filter and a scope never
//! disagree about the same row.
//!
//! **The rule.** A wanted value is one value or an array of them (any one
//! may match). A field matches a value when the two are equal JSON, or when
//! one is a number and the other a string holding exactly that number's
//! JSON text: `"7"` matches `7` (ids come as strings from query strings, URL
//! paths and many JWT issuers), `"7.0"` and `"07"` do not. A row without the
//! field never matches.

use serde_json::{Map, Value};

use crate::names::Names;

/// Whether a row's `value` is one of `wanted` (a single value, or an array of them).
pub fn value_matches(wanted: &Value, value: &Value) -> bool {
    match wanted {
        Value::Array(options) => options.iter().any(|option| same(option, value)),
        single => same(single, value),
    }
}

/// Whether `row` has every field of `conditions`, each matching its wanted value.
pub fn row_matches(conditions: &Map<String, Value>, row: Option<&Value>) -> bool {
    conditions.iter().all(|(field, wanted)| {
        row.and_then(|row| row.get(field))
            .is_some_and(|value| value_matches(wanted, value))
    })
}

/// Equal JSON, or a number and the string of its JSON text.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => *s == n.to_string(),
        _ => a == b,
    }
}

/// What a client asked to receive: `subscribe {tables?, types?, where?}`.
/// Absent lists mean "all"; `where` follows [`value_matches`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub tables: Option<Names>,
    pub types: Option<Names>,
    pub where_: Option<Map<String, Value>>,
    /// Types unsubscribed from a subscription to all types.
    pub except_types: Names,
}

impl Filter {
    /// How many tables, types and `where` values it names (the subscription limit counts these).
    pub fn size(&self) -> usize {
        self.tables.as_ref().map_or(0, |t| t.len())
            + self.types.as_ref().map_or(0, |t| t.len())
            + self
                .where_
                .as_ref()
                .map_or(0, |w| w.values().map(|v| v.as_array().map_or(1, |a| a.len())).sum())
    }

    /// `unsubscribe {types}`: stops only these types.
    pub fn drop_types(&mut self, types: &Names) {
        match &mut self.types {
            Some(wanted) => wanted.retain(|t| !types.contains(t)),
            None => self.except_types.extend(types.iter().cloned()),
        }
    }

    /// True when an event of `kind` on `table` about `row` is wanted. Looks
    /// into the parsed row; never re-parses.
    pub fn matches(&self, table: &str, kind: &str, row: Option<&Value>) -> bool {
        self.matches_table(table, kind)
            && self
                .where_
                .as_ref()
                .is_none_or(|conditions| row_matches(conditions, row))
    }

    /// True when events of `kind` on `table` are wanted, whatever their rows.
    pub fn matches_table(&self, table: &str, kind: &str) -> bool {
        self.tables.as_ref().is_none_or(|t| t.contains(table))
            && self.types.as_ref().is_none_or(|t| t.contains(kind))
            && !self.except_types.contains(kind)
    }

    /// The table named `from` is now `to`: a subscription to it follows it.
    pub fn follow_rename(&mut self, from: &str, to: &str) {
        if let Some(tables) = &mut self.tables {
            tables.rename(from, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_number_and_its_text_are_the_same_value_and_nothing_else_is() {
        assert!(value_matches(&json!(7), &json!(7)));
        assert!(value_matches(&json!("7"), &json!(7)));
        assert!(value_matches(&json!(7), &json!("7")));
        assert!(value_matches(&json!(["1", 7]), &json!(7)));
        assert!(!value_matches(&json!("07"), &json!(7)));
        assert!(!value_matches(&json!("7.0"), &json!(7)));
        assert!(!value_matches(&json!(true), &json!("true")));
        assert!(!value_matches(&json!([]), &json!(7)));
        assert!(value_matches(&json!("a"), &json!("a")));
    }

    #[test]
    fn a_filter_judges_table_kind_and_row() {
        let filter = Filter {
            tables: Some(["studies".to_string()].into_iter().collect()),
            where_: Some(json!({"id": "3"}).as_object().unwrap().clone()),
            ..Filter::default()
        };
        assert!(filter.matches("studies", "study_created", Some(&json!({"id": 3}))));
        assert!(!filter.matches("studies", "study_created", Some(&json!({"id": 4}))));
        assert!(!filter.matches("studies", "study_created", None), "no row, no match");
        assert!(!filter.matches("trackers", "tracker_created", Some(&json!({"id": 3}))));
        let mut all = Filter::default();
        assert!(all.matches("x", "x_created", None));
        all.drop_types(&["x_created".to_string()].into_iter().collect());
        assert!(!all.matches("x", "x_created", None));
        assert!(all.matches("x", "x_updated", None));
    }
}
