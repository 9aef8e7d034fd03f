//! Event names of a table's own (`pgfeed.name_events`, migrations/capture/0013):
//! `equipment_update` for every change of HyCON's equipment, where the
//! default is `<prefix>_created`, `_updated`, `_deleted`.

use std::collections::HashMap;

use sqlx::PgPool;

/// Per event prefix, the name of each verb that has one of its own.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EventNames(HashMap<String, HashMap<String, String>>);

impl EventNames {
    /// What `pgfeed.tracked_tables` holds; nothing before capture/0013.
    pub async fn load(pool: &PgPool) -> sqlx::Result<EventNames> {
        let rows: Vec<(String, sqlx::types::Json<HashMap<String, String>>)> = crate::db::none_before_migration(
            sqlx::query_as("SELECT prefix, event_names FROM pgfeed.tracked_tables WHERE event_names <> '{}'")
                .fetch_all(pool)
                .await,
        )?;
        Ok(EventNames(
            rows.into_iter().map(|(prefix, names)| (prefix, names.0)).collect(),
        ))
    }

    /// The name of `verb`'s events under `prefix`, when it has one of its own.
    pub fn get(&self, prefix: &str, verb: &str) -> Option<&str> {
        self.0.get(prefix)?.get(verb).map(String::as_str)
    }

    /// `<prefix>_<verb>`, or the name of its own.
    pub fn name(&self, prefix: &str, verb: &str) -> String {
        match self.get(prefix, verb) {
            Some(name) => name.to_string(),
            None => format!("{prefix}_{verb}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventNames;

    #[test]
    fn a_verb_without_a_name_of_its_own_keeps_prefix_and_verb() {
        let mut names = EventNames::default();
        names.0.insert(
            "equipment".into(),
            [("created", "equipment_update"), ("updated", "equipment_update")]
                .into_iter()
                .map(|(v, n)| (v.to_string(), n.to_string()))
                .collect(),
        );
        assert_eq!(names.name("equipment", "created"), "equipment_update");
        assert_eq!(names.name("equipment", "updated"), "equipment_update");
        assert_eq!(names.name("equipment", "deleted"), "equipment_deleted");
        assert_eq!(names.name("study", "created"), "study_created");
    }
}
