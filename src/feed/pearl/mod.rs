//! PEARL: its tables as Rust types, and the preset that tracks them.
//!
//! The types follow the PEARL project's own models. A row that does not fit
//! its type (a needed column dropped or retyped) is still delivered, in
//! generic form, and counted.

mod state;

pub use state::{Audience, ItemContext, Message, Outcome, State};

use serde::Deserialize;
use serde_json::Value;

// Each struct names the columns pgfeed reads; every other column a real PEARL
// database has (`unresolved_comment_count`, `source_item_id`, columns added
// later) stays in the event's `data` untouched. A row fails its type only when
// a column pgfeed needs is missing or of another type.

#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    #[serde(default)]
    pub email: Option<String>,
    /// `userrole`: ADMIN, EDITOR or VIEWER.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Study {
    pub id: i64,
    pub study_label: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseRelease {
    pub id: i64,
    pub study_id: i64,
    pub database_release_label: String,
    #[serde(default)]
    pub database_release_date: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportingEffort {
    pub id: i64,
    pub study_id: i64,
    pub database_release_id: i64,
    pub database_release_label: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportingEffortItem {
    pub id: i64,
    pub reporting_effort_id: i64,
    /// `itemtype`: TLF or Dataset.
    pub item_type: String,
    pub item_subtype: String,
    pub item_code: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportingEffortTracker {
    pub id: i64,
    pub reporting_effort_item_id: i64,
    #[serde(default)]
    pub production_programmer_id: Option<i64>,
    #[serde(default)]
    pub qc_programmer_id: Option<i64>,
    #[serde(default)]
    pub production_status: Option<String>,
    #[serde(default)]
    pub qc_status: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrackerComment {
    pub id: i64,
    pub tracker_id: i64,
    pub user_id: i64,
    #[serde(default)]
    pub parent_comment_id: Option<i64>,
    pub comment_text: String,
    pub is_resolved: bool,
    #[serde(default)]
    pub resolved_by_user_id: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Package {
    pub id: i64,
    pub package_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PackageItem {
    pub id: i64,
    pub package_id: i64,
    pub item_type: String,
    pub item_subtype: String,
    pub item_code: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextElement {
    pub id: i64,
    /// `textelementtype`: title, footnote, population_set, acronyms_set, ich_category.
    #[serde(rename = "type")]
    pub kind: String,
    pub label: String,
}

/// A typed PEARL row.
#[derive(Debug, Clone)]
pub enum Row {
    User(User),
    Study(Study),
    DatabaseRelease(DatabaseRelease),
    ReportingEffort(ReportingEffort),
    ReportingEffortItem(ReportingEffortItem),
    ReportingEffortTracker(ReportingEffortTracker),
    TrackerComment(TrackerComment),
    Package(Package),
    PackageItem(PackageItem),
    TextElement(TextElement),
}

/// One table of the PEARL preset: its event prefix and the columns that never leave it.
#[derive(Debug, Clone, Copy)]
pub struct PresetTable {
    pub table: &'static str,
    pub prefix: &'static str,
    pub exclude: &'static [&'static str],
}

/// `pgfeed track --preset pearl`: PEARL's tables (in `public`) with the seed event prefixes.
/// Credentials in `users` are left out at capture.
pub const PRESET: [PresetTable; 10] = [
    PresetTable {
        table: "users",
        prefix: "user",
        exclude: &[
            "password_hash",
            "reset_token",
            "reset_token_expires",
            "auth_provider_id",
        ],
    },
    PresetTable {
        table: "studies",
        prefix: "study",
        exclude: &[],
    },
    PresetTable {
        table: "database_releases",
        prefix: "database_release",
        exclude: &[],
    },
    PresetTable {
        table: "reporting_efforts",
        prefix: "reporting_effort",
        exclude: &[],
    },
    PresetTable {
        table: "reporting_effort_items",
        prefix: "reporting_effort_item",
        exclude: &[],
    },
    PresetTable {
        table: "reporting_effort_item_tracker",
        prefix: "reporting_effort_tracker",
        exclude: &[],
    },
    PresetTable {
        table: "tracker_comments",
        prefix: "comment",
        exclude: &[],
    },
    PresetTable {
        table: "packages",
        prefix: "package",
        exclude: &[],
    },
    PresetTable {
        table: "package_items",
        prefix: "package_item",
        exclude: &[],
    },
    PresetTable {
        table: "text_elements",
        prefix: "text_element",
        exclude: &[],
    },
];

/// The PEARL tables, by name in `public`.
pub const TABLES: [&str; 10] = {
    let mut names = [""; 10];
    let mut i = 0;
    while i < PRESET.len() {
        names[i] = PRESET[i].table;
        i += 1;
    }
    names
};

pub fn is_pearl_table(table: &str) -> bool {
    TABLES.contains(&table)
}

/// Types `row` of `table`. `None` for a table that is not PEARL's;
/// `Some(Err)` for a PEARL row that does not fit (the event goes out generic).
pub fn type_row(table: &str, row: &Value) -> Option<Result<Row, serde_json::Error>> {
    fn typed<'a, T: Deserialize<'a>>(row: &'a Value, wrap: fn(T) -> Row) -> Result<Row, serde_json::Error> {
        T::deserialize(row).map(wrap)
    }
    Some(match table {
        "users" => typed(row, Row::User),
        "studies" => typed(row, Row::Study),
        "database_releases" => typed(row, Row::DatabaseRelease),
        "reporting_efforts" => typed(row, Row::ReportingEffort),
        "reporting_effort_items" => typed(row, Row::ReportingEffortItem),
        "reporting_effort_item_tracker" => typed(row, Row::ReportingEffortTracker),
        "tracker_comments" => typed(row, Row::TrackerComment),
        "packages" => typed(row, Row::Package),
        "package_items" => typed(row, Row::PackageItem),
        "text_elements" => typed(row, Row::TextElement),
        _ => return None,
    })
}
