//! PEARL rows written the way the app writes them.
#![allow(dead_code, unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

use pgfeed::db::{self, embedded};
use pgfeed::server::{self, Running, Settings};

use super::*;

/// Inserts one row with id 1 into each PEARL table (two users), parents first, in one transaction.
pub async fn seed_pearl(db: &TestDb) {
    db.exec(
        "INSERT INTO users (id, username, role) VALUES (1, 'ana', 'EDITOR'), (2, 'ben', 'EDITOR');
         INSERT INTO studies (id, study_label) VALUES (1, 'ONC-001');
         INSERT INTO database_releases (id, study_id, database_release_label, database_release_date)
              VALUES (1, 1, 'DBL-1', '2026-01-31');
         INSERT INTO reporting_efforts (id, study_id, database_release_id, database_release_label)
              VALUES (1, 1, 1, 'DBL-1');
         INSERT INTO reporting_effort_items (id, reporting_effort_id, item_type, item_subtype, item_code)
              VALUES (1, 1, 'TLF', 'Table', 't_dm');
         INSERT INTO reporting_effort_item_tracker (id, reporting_effort_item_id, production_programmer_id)
              VALUES (1, 1, 1);
         INSERT INTO tracker_comments (id, tracker_id, user_id, comment_text) VALUES (1, 1, 1, 'check N');
         INSERT INTO packages (id, package_name) VALUES (1, 'core');
         INSERT INTO package_items (id, package_id, item_type, item_subtype, item_code)
              VALUES (1, 1, 'TLF', 'Listing', 'l_ae');
         INSERT INTO text_elements (id, type, label) VALUES (1, 'title', 'Demographics');
         SELECT setval(pg_get_serial_sequence(t, 'id'), 100)
           FROM unnest(ARRAY['users', 'studies', 'database_releases', 'reporting_efforts',
                             'reporting_effort_items', 'reporting_effort_item_tracker', 'tracker_comments',
                             'packages', 'package_items', 'text_elements']) t;",
    )
    .await;
}
