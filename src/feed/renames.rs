//! The names tracked tables had. A subscription follows its table through a
//! rename in the stream (the `schema_changed` event that says so); one made
//! afterwards with the old name is resolved here to the table's current name.

use std::collections::HashMap;

use sqlx::PgPool;

/// Each former name, with the name it became and the seq of the renaming transaction.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Renames(HashMap<String, (String, i64)>);

impl Renames {
    /// What `pgfeed.renames` (migrations/capture/0011) holds of sequenced
    /// transactions: renames whose commit was pruned count as at seq 0.
    /// Nothing before that migration.
    pub async fn load(pool: &PgPool) -> sqlx::Result<Renames> {
        let rows: Vec<(String, String, i64)> = crate::db::none_before_migration(
            sqlx::query_as(
                "SELECT r.\"from\", r.\"to\", COALESCE(c.seq, 0)
               FROM pgfeed.renames r LEFT JOIN pgfeed.commits c ON c.tx = r.tx
              WHERE (c.seq IS NOT NULL OR pg_visible_in_snapshot(r.tx, (SELECT seen FROM pgfeed.sequencer)))
              ORDER BY 3",
            )
            .fetch_all(pool)
            .await,
        )?;
        let mut renames = Renames::default();
        for (from, to, seq) in rows {
            renames.record(&from, &to, seq);
        }
        Ok(renames)
    }

    /// The table named `from` was renamed `to` by transaction `seq`.
    pub fn record(&mut self, from: &str, to: &str, seq: i64) {
        self.0.insert(from.to_string(), (to.to_string(), seq));
    }

    /// The name the table called `name` has after transaction `seq`, when it
    /// was renamed at or before it. Each step of a chain of renames is later
    /// than the one before, so a table renamed back and forth ends at its name
    /// as of `seq`.
    pub fn current<'a>(&'a self, name: &'a str, seq: i64) -> Option<&'a str> {
        let mut found = None;
        let (mut at, mut since) = (name, 0);
        while let Some((to, renamed)) = self.0.get(at) {
            if *renamed > seq || *renamed < since {
                break;
            }
            (at, since) = (to.as_str(), *renamed + 1);
            found = Some(at);
        }
        found.filter(|current| *current != name)
    }
}

#[cfg(test)]
mod tests {
    use super::Renames;

    #[test]
    fn a_former_name_resolves_to_the_name_as_of_a_seq() {
        let mut renames = Renames::default();
        renames.record("equipment", "instruments", 10);
        renames.record("instruments", "devices", 20);
        assert_eq!(renames.current("equipment", 5), None, "not renamed yet");
        assert_eq!(renames.current("equipment", 10), Some("instruments"));
        assert_eq!(renames.current("equipment", 25), Some("devices"));
        assert_eq!(renames.current("devices", 25), None, "a current name");
    }

    #[test]
    fn renamed_back_and_forth_ends_where_it_is() {
        let mut renames = Renames::default();
        renames.record("a", "b", 1);
        renames.record("b", "a", 2);
        assert_eq!(renames.current("a", 1), Some("b"));
        assert_eq!(renames.current("a", 3), None, "a is a again");
        assert_eq!(renames.current("b", 3), Some("a"));
        renames.record("a", "b", 4);
        assert_eq!(renames.current("b", 5), None);
        assert_eq!(renames.current("a", 5), Some("b"));
    }
}
