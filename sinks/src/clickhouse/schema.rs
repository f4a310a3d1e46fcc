//! ClickHouse schema: versioned migrations recorded in `tally_migrations`, and retention.
//!
//! `events` is a ReplacingMergeTree keyed by `(event_type, timestamp, event_id)`: report queries
//! filter by time range, and a replayed event (same id, same time) collapses into one row. The
//! pipeline stores only the first copy of an event id (within its dedup horizon); readers still
//! group by `event_id`, since rows stored earlier may hold several copies (see
//! `api::queries::summary`). `rollups` keeps every version of an aggregate; readers take
//! `argMax(value, version)` per window.

use clickhouse::Client;
use serde::Deserialize;

use super::client::{connect, Features};
use super::config::ClickHouseConfig;
use crate::SinkError;

/// What `migrate` found and did.
#[derive(Clone, Debug)]
pub struct MigrationReport {
    /// What the server supports.
    pub features: Features,
    /// Migrations applied by this call, by name.
    pub applied: Vec<&'static str>,
}

struct Migration {
    id: u32,
    name: &'static str,
    sql: fn(&ClickHouseConfig, &Features) -> String,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        id: 1,
        name: "create events",
        sql: events_ddl,
    },
    Migration {
        id: 2,
        name: "create rollups",
        sql: rollups_ddl,
    },
    Migration {
        id: 3,
        name: "create user_activity",
        sql: super::users::user_activity_ddl,
    },
    Migration {
        id: 4,
        name: "create user_activity_mv",
        sql: super::users::user_activity_view_ddl,
    },
    Migration {
        id: 5,
        name: "backfill user_activity",
        sql: super::users::user_activity_backfill_sql,
    },
];

fn events_ddl(config: &ClickHouseConfig, features: &Features) -> String {
    let ttl = if features.ttl {
        format!("TTL timestamp + INTERVAL {} DAY", config.retention_days)
    } else {
        String::new()
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.events (
            event_id String,
            event_type String,
            user_id String,
            session_id String,
            timestamp DateTime,
            timestamp_ms Int64,
            metadata String,
            ingested_at DateTime,
            kafka_partition Int32,
            kafka_offset Int64
        ) ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(timestamp)
        ORDER BY (event_type, timestamp, event_id)
        {ttl}",
        db = config.database
    )
}

fn rollups_ddl(config: &ClickHouseConfig, _features: &Features) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.rollups (
            granularity String,
            window_start DateTime,
            event_type String,
            events UInt64,
            unique_users UInt64,
            unique_sessions UInt64,
            unique_event_types UInt64,
            is_final UInt8,
            version UInt64
        ) ENGINE = ReplacingMergeTree(version)
        PARTITION BY toYYYYMM(window_start)
        ORDER BY (granularity, event_type, window_start)",
        db = config.database
    )
}

/// The statements that set the database up before any migration: the database itself and the
/// ledger of applied migrations.
pub fn bootstrap_sql(config: &ClickHouseConfig) -> [String; 2] {
    let db = &config.database;
    [
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.tally_migrations (
                id UInt32, name String, applied_at DateTime
            ) ENGINE = MergeTree ORDER BY id"
        ),
    ]
}

/// Every migration's statement for a server with `features`, in order: `(id, name, sql)`.
pub fn migrations_sql(
    config: &ClickHouseConfig,
    features: &Features,
) -> Vec<(u32, &'static str, String)> {
    MIGRATIONS
        .iter()
        .map(|m| (m.id, m.name, (m.sql)(config, features)))
        .collect()
}

/// Creates the database and applies every migration not yet recorded. Idempotent.
pub async fn migrate(config: &ClickHouseConfig) -> Result<MigrationReport, SinkError> {
    let client = connect(config, false);
    let db = &config.database;
    for sql in bootstrap_sql(config) {
        exec(&client, &sql, "creating the database and tally_migrations").await?;
    }
    let features = Features::detect(&client, db).await?;
    let done: Vec<u32> = client
        .query(&format!("SELECT id FROM {db}.tally_migrations"))
        .fetch_all()
        .await
        .map_err(|e| SinkError::clickhouse("reading applied migrations", e))?;
    let mut applied = Vec::new();
    for (id, name, sql) in migrations_sql(config, &features)
        .into_iter()
        .filter(|(id, ..)| !done.contains(id))
    {
        exec(&client, &sql, name).await?;
        let record = format!(
            "INSERT INTO {db}.tally_migrations (id, name, applied_at) VALUES ({id}, '{name}', now())"
        );
        exec(&client, &record, "recording a migration").await?;
        applied.push(name);
    }
    Ok(MigrationReport { features, applied })
}

async fn exec(client: &Client, sql: &str, context: &str) -> Result<(), SinkError> {
    client
        .query(sql)
        .execute()
        .await
        .map_err(|e| SinkError::clickhouse(context, e))
}

#[derive(clickhouse::Row, Deserialize)]
struct PartitionRow {
    partition: String,
}

/// The monthly partitions of `events` (bind the database name).
pub const LIST_PARTITIONS_SQL: &str =
    "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = 'events' AND active";

/// The monthly partitions of a table (bind the database name, then the table's).
pub const LIST_TABLE_PARTITIONS_SQL: &str =
    "SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active";

/// The tables whose monthly partitions retention drops where the server has no TTL: raw
/// `events` and the `user_activity` aggregate (partitioned by the same UTC month, so both keep
/// the same months).
pub const RETAINED_TABLES: [&str; 2] = ["events", "user_activity"];

/// Retention where the server has no TTL: drops every monthly partition of `events` whose
/// newest possible row is older than `retention_days` before `now_secs`. Returns the dropped
/// partitions (`YYYYMM`).
pub async fn drop_expired_partitions(
    client: &Client,
    config: &ClickHouseConfig,
    now_secs: i64,
) -> Result<Vec<u32>, SinkError> {
    drop_expired_partitions_of(client, config, "events", now_secs).await
}

/// [`drop_expired_partitions`] for `table`, one of [`RETAINED_TABLES`] (anything else is
/// refused: the name is written into the statement).
pub async fn drop_expired_partitions_of(
    client: &Client,
    config: &ClickHouseConfig,
    table: &str,
    now_secs: i64,
) -> Result<Vec<u32>, SinkError> {
    let Some(table) = RETAINED_TABLES.iter().find(|t| **t == table) else {
        return Err(SinkError::Config {
            field: "retention",
            reason: format!("`{table}` is not a table retention manages"),
        });
    };
    let db = &config.database;
    let parts: Vec<PartitionRow> = client
        .query(LIST_TABLE_PARTITIONS_SQL)
        .bind(db.as_str())
        .bind(*table)
        .fetch_all()
        .await
        .map_err(|e| SinkError::clickhouse("listing partitions", e))?;
    let cutoff = now_secs - i64::from(config.retention_days) * 86_400;
    let mut dropped = Vec::new();
    for p in parts {
        let Some(yyyymm) = p.partition.trim_matches('\'').parse::<u32>().ok() else {
            continue;
        };
        if month_end_secs(yyyymm).is_some_and(|end| end <= cutoff) {
            let sql = format!("ALTER TABLE {db}.{table} DROP PARTITION {yyyymm}");
            exec(client, &sql, "dropping an expired partition").await?;
            dropped.push(yyyymm);
        }
    }
    Ok(dropped)
}

/// First second after the month `yyyymm` (UTC), or `None` for a malformed value.
fn month_end_secs(yyyymm: u32) -> Option<i64> {
    let (year, month) = (i32::try_from(yyyymm / 100).ok()?, yyyymm % 100);
    let (y, m) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let first = chrono::NaiveDate::from_ymd_opt(y, m, 1)?;
    Some(first.and_hms_opt(0, 0, 0)?.and_utc().timestamp())
}

/// The migrations this build knows that the server has not applied (all of them when the
/// database or `tally_migrations` does not exist). Empty means the schema is current. Used by
/// `tally run`'s startup check, which says "run `tally migrate`" instead of failing on the
/// first insert.
pub async fn pending_migrations(config: &ClickHouseConfig) -> Result<Vec<&'static str>, SinkError> {
    let client = connect(config, false);
    let sql = format!("SELECT id FROM {}.tally_migrations", config.database);
    let done: Vec<u32> = match client.query(&sql).fetch_all().await {
        Ok(done) => done,
        Err(e) => {
            let e = SinkError::clickhouse("reading applied migrations", e);
            if e.is_missing_schema() {
                Vec::new()
            } else {
                return Err(e);
            }
        }
    };
    Ok(MIGRATIONS
        .iter()
        .filter(|m| !done.contains(&m.id))
        .map(|m| m.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_end() {
        // 2024-03 ends at 2024-04-01T00:00:00Z.
        assert_eq!(month_end_secs(202403), Some(1_711_929_600));
        // December rolls the year: 2023-12 ends at 2024-01-01T00:00:00Z.
        assert_eq!(month_end_secs(202312), Some(1_704_067_200));
        assert_eq!(month_end_secs(202313), None);
    }

    /// Column names of a `CREATE TABLE (...)` statement, in order.
    fn columns(ddl: &str) -> Vec<String> {
        let body = &ddl[ddl.find('(').unwrap_or(0) + 1..ddl.find(") ENGINE").unwrap_or(ddl.len())];
        body.split(',')
            .filter_map(|c| c.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    #[test]
    fn row_types_match_the_tables_column_for_column() {
        use clickhouse::Row;
        // Inserts are RowBinary without validation: field order is the contract.
        let config = ClickHouseConfig::default();
        let f = Features {
            version: "x".into(),
            ttl: false,
        };
        let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            columns(&events_ddl(&config, &f)),
            want(super::super::EventRow::COLUMN_NAMES)
        );
        assert_eq!(
            columns(&rollups_ddl(&config, &f)),
            want(&[
                "granularity",
                "window_start",
                "event_type",
                "events",
                "unique_users",
                "unique_sessions",
                "unique_event_types",
                "is_final",
                "version"
            ])
        );
        assert_eq!(columns(&events_ddl(&config, &f)).len(), 10);
    }

    #[test]
    fn ttl_only_when_supported() {
        let config = ClickHouseConfig::default();
        let mut f = Features {
            version: "x".into(),
            ttl: false,
        };
        assert!(!events_ddl(&config, &f).contains("TTL"));
        f.ttl = true;
        assert!(events_ddl(&config, &f).contains("TTL timestamp + INTERVAL 365 DAY"));
    }
}
