//! The API's request log (`request_log`, range-partitioned by month on `at`): batch inserts,
//! partition maintenance and a newest-first page reader.
//!
//! Partitions are named `<table>_YYYYMM` (UTC months). The default partition catches rows of a
//! month without a partition; [`maintain`] moves them into the month's partition when it
//! creates it (PostgreSQL refuses to attach a partition that overlaps rows in the default one).

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

use crate::SinkError;

/// The table the API writes.
pub const TABLE: &str = "request_log";
/// Months of partitions created ahead of the current one.
pub const MONTHS_AHEAD: u32 = 2;

fn ctx(what: &'static str) -> impl FnOnce(sqlx::Error) -> SinkError {
    move |e| SinkError::postgres(what, e)
}

/// One answered request.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct RequestRow {
    /// Increasing id, assigned by PostgreSQL (ignored by inserts; 0 before).
    #[sqlx(default)]
    pub id: i64,
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// The route template, e.g. `/resources/{id}`, or `unmatched`.
    pub route: String,
    /// HTTP status answered.
    pub status: i16,
    /// Time until the response head was ready, milliseconds.
    pub latency_ms: f64,
    /// `api_keys.id` of the caller (never the key); `None` without a key.
    pub key_id: Option<i64>,
    /// Request body bytes (Content-Length, or the body's size when known; 0 otherwise).
    pub request_bytes: i64,
    /// Response body bytes (when known; 0 for streamed bodies of unknown size).
    pub response_bytes: i64,
    /// The peer's IP address, when the server knows it.
    pub client_ip: Option<String>,
    /// The `User-Agent` header (truncated by the API).
    pub user_agent: Option<String>,
}

/// Inserts `rows` into `request_log` with one statement. Returns the rows written.
pub async fn insert_batch(pool: &PgPool, rows: &[RequestRow]) -> Result<u64, SinkError> {
    insert_batch_into(pool, TABLE, rows).await
}

/// [`insert_batch`] into another table of the same shape (tests use their own).
pub async fn insert_batch_into(
    pool: &PgPool,
    table: &str,
    rows: &[RequestRow],
) -> Result<u64, SinkError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let table = checked_ident(table)?;
    let sql = format!(
        "INSERT INTO {table} (at, method, route, status, latency_ms, key_id, request_bytes, \
         response_bytes, client_ip, user_agent)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::smallint[], \
         $5::float8[], $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::text[])"
    );
    let col = |f: fn(&RequestRow) -> _| rows.iter().map(f).collect::<Vec<_>>();
    let done = sqlx::query(AssertSqlSafe(sql))
        .bind(rows.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(col(|r| r.method.clone()))
        .bind(col(|r| r.route.clone()))
        .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.latency_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.key_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.request_bytes).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.response_bytes).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.client_ip.clone()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.user_agent.clone())
                .collect::<Vec<_>>(),
        )
        .execute(pool)
        .await
        .map_err(ctx("writing the request log"))?;
    Ok(done.rows_affected())
}

/// Newest first (by id, the order the writer logged them): at most `limit` rows with an id
/// below `before` (all when `None`).
pub async fn page(
    pool: &PgPool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<RequestRow>, SinkError> {
    sqlx::query_as(
        "SELECT id, at, method, route, status, latency_ms, key_id, request_bytes,
                response_bytes, client_ip, user_agent
         FROM request_log WHERE $1::BIGINT IS NULL OR id < $1
         ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(ctx("reading the request log"))
}

/// What one [`maintain`] run changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Partitions created (with the default partition's rows of their month moved in).
    pub created: Vec<String>,
    /// Rows moved out of the default partition.
    pub moved_rows: u64,
    /// Partitions dropped (older than the retention).
    pub dropped: Vec<String>,
}

/// Creates the partitions of `now`'s month and the [`MONTHS_AHEAD`] next ones (idempotent) and
/// drops those that ended before the retention: with `retention_months = 3` in November,
/// August, September and October are kept. Rows of dropped months left in the default
/// partition are deleted too.
pub async fn maintain(
    pool: &PgPool,
    now: DateTime<Utc>,
    retention_months: u32,
) -> Result<Maintenance, SinkError> {
    maintain_table(pool, TABLE, now, retention_months).await
}

/// [`maintain`] for another table partitioned the same way (`<table>_default` its default).
pub async fn maintain_table(
    pool: &PgPool,
    table: &str,
    now: DateTime<Utc>,
    retention_months: u32,
) -> Result<Maintenance, SinkError> {
    let table = checked_ident(table)?;
    let current = month_index(now);
    let mut done = Maintenance::default();
    for month in current..=current + i64::from(MONTHS_AHEAD) {
        if let Some(moved) = create_partition(pool, table, month).await? {
            done.created.push(partition_name(table, month));
            done.moved_rows += moved;
        }
    }
    let keep_from = current - i64::from(retention_months);
    let existing: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(ctx("listing request log partitions"))?;
    for name in existing {
        let Some(month) = parse_partition(table, &name) else {
            continue;
        };
        if month < keep_from {
            sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
                .execute(pool)
                .await
                .map_err(ctx("dropping an expired request log partition"))?;
            done.dropped.push(name);
        }
    }
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {table}_default WHERE at < $1"
    )))
    .bind(month_start(keep_from))
    .execute(pool)
    .await
    .map_err(ctx("deleting expired request log rows"))?;
    Ok(done)
}

/// Creates the partition of `month` (months since year 0) unless it exists, moving the default
/// partition's rows of that month into it, all in one transaction. `Some(moved rows)` when it
/// created it.
async fn create_partition(
    pool: &PgPool,
    table: &str,
    month: i64,
) -> Result<Option<u64>, SinkError> {
    let name = partition_name(table, month);
    let exists = |pool: &PgPool| {
        let name = name.clone();
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(&pool)
                .await
                .map_err(ctx("looking for a request log partition"))
        }
    };
    if exists(pool).await? {
        return Ok(None);
    }
    let (from, to) = (month_start(month), month_start(month + 1));
    let mut tx = pool
        .begin()
        .await
        .map_err(ctx("starting partition maintenance"))?;
    // Two processes maintaining at once take turns; the second finds the partition.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("tally.{table}.partitions"))
        .execute(&mut *tx)
        .await
        .map_err(ctx("locking partition maintenance"))?;
    let found: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&name)
        .fetch_one(&mut *tx)
        .await
        .map_err(ctx("looking for a request log partition"))?;
    if found {
        return Ok(None);
    }
    let bound = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S+00").to_string();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )))
    .execute(&mut *tx)
    .await
    .map_err(ctx("creating a request log partition"))?;
    let moved = sqlx::query(AssertSqlSafe(format!(
        "WITH moved AS (DELETE FROM {table}_default WHERE at >= $1 AND at < $2 RETURNING *)
         INSERT INTO {name} SELECT * FROM moved"
    )))
    .bind(from)
    .bind(to)
    .execute(&mut *tx)
    .await
    .map_err(ctx("moving request log rows out of the default partition"))?
    .rows_affected();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
        bound(from),
        bound(to)
    )))
    .execute(&mut *tx)
    .await
    .map_err(ctx("attaching a request log partition"))?;
    tx.commit()
        .await
        .map_err(ctx("committing partition maintenance"))?;
    Ok(Some(moved))
}

/// Months since year 0 of `t` (UTC).
fn month_index(t: DateTime<Utc>) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}

/// The first instant of month `m` (see [`month_index`]).
fn month_start(m: i64) -> DateTime<Utc> {
    let year = i32::try_from(m.div_euclid(12)).unwrap_or(i32::MAX);
    let month = u32::try_from(m.rem_euclid(12)).unwrap_or(0) + 1;
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// `<table>_YYYYMM`.
pub fn partition_name(table: &str, month: i64) -> String {
    format!(
        "{table}_{:04}{:02}",
        month.div_euclid(12),
        month.rem_euclid(12) + 1
    )
}

/// The month of a partition named `<table>_YYYYMM`.
fn parse_partition(table: &str, name: &str) -> Option<i64> {
    let digits = name.strip_prefix(table)?.strip_prefix('_')?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = digits[..4].parse().ok()?;
    let month: i64 = digits[4..].parse().ok()?;
    (1..=12).contains(&month).then_some(year * 12 + month - 1)
}

/// A table name safe to splice into SQL: lowercase letters, digits and `_`, at most 40.
fn checked_ident(table: &str) -> Result<&str, SinkError> {
    let ok = !table.is_empty()
        && table.len() <= 40
        && table.starts_with(|c: char| c.is_ascii_lowercase())
        && table
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(table)
    } else {
        Err(SinkError::Config {
            field: "request_log table",
            reason: format!("`{table}` is not a plain lowercase table name"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_names() {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
            .single()
            .expect("time");
        let m = month_index(t);
        assert_eq!(partition_name("request_log", m), "request_log_202611");
        assert_eq!(partition_name("request_log", m + 2), "request_log_202701");
        assert_eq!(month_start(m + 2).to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(
            parse_partition("request_log", "request_log_202701"),
            Some(m + 2)
        );
        assert_eq!(parse_partition("request_log", "request_log_default"), None);
        assert_eq!(parse_partition("request_log", "request_log_202613"), None);
        assert!(checked_ident("request_log; DROP").is_err());
    }
}
