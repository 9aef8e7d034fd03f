//! The PEARL rows as Rust types. A row that does not fit its type (a column a
//! DBA added or dropped) is still delivered, in generic form, and counted.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: Option<String>,
    pub role: String,
    pub department: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Study {
    pub id: i64,
    pub study_label: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseRelease {
    pub id: i64,
    pub study_id: i64,
    pub database_release_label: String,
    pub database_release_date: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportingEffort {
    pub id: i64,
    pub study_id: i64,
    pub database_release_id: i64,
    pub database_release_label: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportingEffortItem {
    pub id: i64,
    pub reporting_effort_id: i64,
    pub source_type: Option<String>,
    pub source_id: Option<i64>,
    pub item_type: String,
    pub item_subtype: String,
    pub item_code: String,
    pub is_active: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportingEffortTracker {
    pub id: i64,
    pub reporting_effort_item_id: i64,
    pub production_programmer_id: Option<i64>,
    pub qc_programmer_id: Option<i64>,
    pub production_status: String,
    pub qc_status: String,
    pub priority: String,
    pub qc_level: Option<String>,
    pub due_date: Option<String>,
    pub qc_completion_date: Option<String>,
    pub in_production_flag: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackerComment {
    pub id: i64,
    pub tracker_id: i64,
    pub user_id: Option<i64>,
    pub parent_comment_id: Option<i64>,
    pub comment_text: String,
    pub comment_type: String,
    pub is_resolved: bool,
    pub resolved_by_user_id: Option<i64>,
    pub resolved_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub id: i64,
    pub package_name: String,
    pub study_indication: Option<String>,
    pub therapeutic_area: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageItem {
    pub id: i64,
    pub package_id: i64,
    pub study_id: Option<i64>,
    pub item_type: String,
    pub item_subtype: String,
    pub item_code: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextElement {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub label: String,
    pub created_at: String,
    pub updated_at: String,
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

/// The PEARL tables, by name in `public`.
pub const TABLES: [&str; 10] = [
    "users",
    "studies",
    "database_releases",
    "reporting_efforts",
    "reporting_effort_items",
    "reporting_effort_trackers",
    "tracker_comments",
    "packages",
    "package_items",
    "text_elements",
];

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
        "reporting_effort_trackers" => typed(row, Row::ReportingEffortTracker),
        "tracker_comments" => typed(row, Row::TrackerComment),
        "packages" => typed(row, Row::Package),
        "package_items" => typed(row, Row::PackageItem),
        "text_elements" => typed(row, Row::TextElement),
        _ => return None,
    })
}
