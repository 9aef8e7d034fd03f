//! `pgfeed simulate`: realistic PEARL activity, so a new user sees a living feed
//! within seconds. Each step is one transaction of plain SQL, made the way
//! PEARL's app makes it (it fills the timestamps, it names its user with
//! `pgfeed.actor`): studies, releases, efforts, items with trackers, status and
//! assignment changes, comment threads with replies and resolutions, deletes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use sqlx::{PgPool, Row};

use crate::config::DatabaseArgs;
use crate::db;

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Transactions per second.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,

    /// How long to run; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
}

/// A small, seedable generator (xorshift64*): no dependency for a demo's dice.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Dice(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const USERS: [&str; 6] = ["ana", "ben", "chloe", "dev", "eli", "fay"];
const STATUSES: [&str; 4] = ["not_started", "in_progress", "ready_for_qc", "completed"];
const SUBTYPES: [&str; 3] = ["Table", "Listing", "Figure"];

/// Runs until `seconds` pass (or forever); returns the transactions committed.
pub async fn run(args: SimulateArgs) -> Result<u64> {
    let database = db::resolve(args.database.database_url.as_deref(), &args.database.data_dir).await?;
    let pool = db::pool(&database.url, 2).await?;
    if database.is_embedded() {
        crate::install::demo(&pool).await?;
    }
    let has_pearl: bool = sqlx::query_scalar("SELECT to_regclass('public.reporting_effort_item_tracker') IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        has_pearl,
        "simulate writes PEARL's tables, and this database has none (try `pgfeed migrate --demo-schema` on an empty one)"
    );
    let mut dice = Dice::new();
    ensure_users(&pool).await?;
    let every = Duration::from_secs_f64(1.0 / args.rate.max(0.01));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = (args.seconds > 0).then(|| Instant::now() + Duration::from_secs(args.seconds));
    let mut committed = 0u64;
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        match step(&pool, &mut dice).await {
            Ok(()) => committed += 1,
            // A race with another writer (a row deleted meanwhile): the next step goes on.
            Err(err) => tracing::debug!(error = %format!("{err:#}"), "a simulated step failed"),
        }
    }
    println!(
        "simulate: {committed} transactions in {:.1} s ({:.1}/s)",
        started.elapsed().as_secs_f64(),
        committed as f64 / started.elapsed().as_secs_f64().max(0.001)
    );
    pool.close().await;
    drop(database);
    Ok(committed)
}

async fn ensure_users(pool: &PgPool) -> Result<()> {
    for name in USERS {
        sqlx::query(
            "INSERT INTO users (username, role, department, created_at, updated_at)
             SELECT $1, 'EDITOR', 'programming', now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc'
              WHERE NOT EXISTS (SELECT 1 FROM users WHERE username = $1)",
        )
        .bind(name)
        .execute(pool)
        .await
        .context("creating the simulated users")?;
    }
    Ok(())
}

/// A random id from `sql` (a query returning ids), if any.
async fn any_id(tx: &mut sqlx::PgConnection, sql: &str, dice: &mut Dice) -> Result<Option<i32>> {
    let ids: Vec<i32> = sqlx::query_scalar(sql).fetch_all(&mut *tx).await?;
    Ok((!ids.is_empty()).then(|| ids[dice.below(ids.len() as u64) as usize]))
}

/// One transaction of PEARL activity.
async fn step(pool: &PgPool, dice: &mut Dice) -> Result<()> {
    let mut tx = pool.begin().await?;
    let user = any_id(&mut tx, "SELECT id FROM users ORDER BY id DESC LIMIT 20", dice)
        .await?
        .unwrap_or(1);
    sqlx::query("SELECT set_config('pgfeed.actor', $1, true)")
        .bind(user.to_string())
        .execute(&mut *tx)
        .await?;
    let now = "now() AT TIME ZONE 'utc'";
    let roll = dice.below(100);
    let tracker = any_id(
        &mut tx,
        "SELECT id FROM reporting_effort_item_tracker ORDER BY id DESC LIMIT 50",
        dice,
    )
    .await?;
    let effort = any_id(
        &mut tx,
        "SELECT id FROM reporting_efforts ORDER BY id DESC LIMIT 20",
        dice,
    )
    .await?;
    match (roll, tracker, effort) {
        // A new study with its first release and effort.
        (0..=7, _, _) | (_, _, None) => {
            let label = format!("SIM-{:08}", dice.below(100_000_000));
            let row = sqlx::query(&format!(
                "WITH s AS (INSERT INTO studies (study_label, created_at, updated_at) VALUES ($1, {now}, {now}) RETURNING id),
                      r AS (INSERT INTO database_releases (study_id, database_release_label, database_release_date, created_at, updated_at)
                            SELECT id, 'DBL-1', to_char(now(), 'YYYY-MM-DD'), {now}, {now} FROM s RETURNING id, study_id)
                 INSERT INTO reporting_efforts (study_id, database_release_id, database_release_label, created_at, updated_at)
                 SELECT study_id, id, 'DBL-1', {now}, {now} FROM r RETURNING id"
            ))
            .bind(&label)
            .fetch_one(&mut *tx)
            .await?;
            let _: i32 = row.try_get(0)?;
        }
        // An item and its tracker.
        (8..=27, _, Some(effort)) => {
            let code = format!("{}_{}", dice.pick(&["t", "l", "f"]), dice.below(100_000));
            sqlx::query(&format!(
                "WITH i AS (INSERT INTO reporting_effort_items (reporting_effort_id, item_type, item_subtype, item_code, created_at, updated_at)
                            VALUES ($1, 'TLF', $2, $3, {now}, {now}) RETURNING id)
                 INSERT INTO reporting_effort_item_tracker (reporting_effort_item_id, production_programmer_id, priority, created_at, updated_at)
                 SELECT id, $4, 'medium', {now}, {now} FROM i"
            ))
            .bind(effort)
            .bind(dice.pick(&SUBTYPES))
            .bind(code)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        }
        // A status change.
        (28..=47, Some(tracker), _) => {
            sqlx::query(&format!(
                "UPDATE reporting_effort_item_tracker SET production_status = $2, updated_at = {now} WHERE id = $1"
            ))
            .bind(tracker)
            .bind(dice.pick(&STATUSES))
            .execute(&mut *tx)
            .await?;
        }
        // A new QC programmer.
        (48..=55, Some(tracker), _) => {
            sqlx::query(&format!(
                "UPDATE reporting_effort_item_tracker SET qc_programmer_id = $2, updated_at = {now} WHERE id = $1"
            ))
            .bind(tracker)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        }
        // A comment, a reply, or a resolution.
        (56..=95, Some(tracker), _) => {
            let open = any_id(
                &mut tx,
                &format!(
                    "SELECT id FROM tracker_comments WHERE tracker_id = {tracker} AND parent_comment_id IS NULL AND NOT is_resolved"
                ),
                dice,
            )
            .await?;
            match (dice.below(3), open) {
                (0, Some(comment)) => {
                    sqlx::query(
                        "INSERT INTO tracker_comments (tracker_id, user_id, parent_comment_id, comment_text) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(tracker)
                    .bind(user)
                    .bind(comment)
                    .bind(dice.pick(&["Fixed.", "Which population?", "Rerun after the data cut.", "Agreed."]))
                    .execute(&mut *tx)
                    .await?;
                }
                (1, Some(comment)) => {
                    sqlx::query(
                        "UPDATE tracker_comments SET is_resolved = true, resolved_by_user_id = $2, resolved_at = now(), updated_at = now() WHERE id = $1",
                    )
                    .bind(comment)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {
                    sqlx::query("INSERT INTO tracker_comments (tracker_id, user_id, comment_text) VALUES ($1, $2, $3)")
                        .bind(tracker)
                        .bind(user)
                        .bind(dice.pick(&[
                            "N differs from the SAP.",
                            "Footnote missing.",
                            "Please check the rounding.",
                            "Title does not match the shell.",
                        ]))
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        // A tracker deleted (with its comments).
        (_, Some(tracker), _) => {
            sqlx::query("DELETE FROM reporting_effort_item_tracker WHERE id = $1")
                .bind(tracker)
                .execute(&mut *tx)
                .await?;
        }
        (_, None, Some(effort)) => {
            sqlx::query(&format!(
                "INSERT INTO reporting_effort_items (reporting_effort_id, item_type, item_subtype, item_code, created_at, updated_at)
                 VALUES ($1, 'Dataset', 'ADaM', $2, {now}, {now})"
            ))
            .bind(effort)
            .bind(format!("ad{}", dice.below(100_000)))
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
