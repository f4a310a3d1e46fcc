//! The ClickHouse queries behind the reports, built with client-side binding (every value is
//! escaped by the client; identifiers come from fixed enums, never from input). They run on
//! ClickHouse 18.16 and on current releases (`tests/tests/current_clickhouse.rs` checks the
//! latter in-process).

use clickhouse::query::Query;
use clickhouse::Client;

use crate::reports::{ms, ReportQuery};

/// One row per window with data: window start (seconds) and the latest version of the metric.
pub fn series(client: &Client, q: &ReportQuery) -> Query {
    let sql = format!(
        "SELECT toUInt32(window_start) AS ws, argMax({col}, version) AS value
         FROM rollups
         WHERE granularity = ? AND event_type = ?
           AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
         GROUP BY window_start ORDER BY window_start",
        col = q.metric.column()
    );
    client
        .query(&sql)
        .bind(q.window.label())
        .bind(q.event_type.as_deref().unwrap_or(""))
        .bind(q.window.start_of(ms(q.from)) / 1000)
        .bind(ms(q.to).div_ceil(1000))
}

/// Exact totals over raw events with `from_ms <= timestamp_ms < to_ms`. `FINAL` collapses
/// events replayed after a restart (same id, same time) into one row.
pub fn summary(client: &Client, from_ms: u64, to_ms: u64, event_type: Option<&str>) -> Query {
    let filter = if event_type.is_some() {
        "AND event_type = ?"
    } else {
        ""
    };
    let sql = format!(
        "SELECT count() AS n_events,
                uniqExact(user_id) AS n_users,
                uniqExactIf(session_id, session_id != '') AS n_sessions,
                uniqExact(event_type) AS n_event_types
         FROM events FINAL
         WHERE timestamp >= toDateTime(?) AND timestamp <= toDateTime(?)
           AND timestamp_ms >= ? AND timestamp_ms < ? {filter}"
    );
    let query = client
        .query(&sql)
        .bind(from_ms / 1000)
        .bind(to_ms / 1000)
        .bind(from_ms)
        .bind(to_ms);
    match event_type {
        Some(t) => query.bind(t),
        None => query,
    }
}
