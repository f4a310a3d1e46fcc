//! Corrections: recomputing rollup rows from the raw `events`, for late events and rebuilds.
//!
//! One recompute covers up to [`WINDOWS_PER_STATEMENT`] dirty windows of one kind (or a whole
//! time span, for rebuilds) with two `INSERT ... SELECT` statements (the per-event-type rows and
//! the all-events row, `event_type = ''`), filtered by the span and a set test on the window
//! index: six months of scattered late events cost a handful of statements, not a query per
//! window. Each event id counts once, as in
//! `api::queries::summary`: the copy with the smallest (Kafka partition, offset), which is the
//! copy the pipeline kept. The rows are written final, with a version above every version
//! already stored for those windows, so readers (`argMax(value, version)`) see them at once and
//! `ReplacingMergeTree(version)` keeps them. Runs on ClickHouse 18.16 and current releases.

use clickhouse::Client;
use serde::Deserialize;

use crate::SinkError;

/// Windows of one kind to recompute: all windows starting in `[from_ms, to_ms)`, or only those
/// starting at `starts` when given (the dirty windows of a correction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSet {
    /// Window name as stored (`1m`, `1h`, `1d`).
    pub window: String,
    /// Window length, ms (a whole number of seconds).
    pub size_ms: u64,
    /// Every window in `[from_ms, to_ms)` (bounds multiples of `size_ms`), when `starts` is
    /// empty.
    pub from_ms: u64,
    /// See `from_ms`.
    pub to_ms: u64,
    /// Window starts (ms, sorted); when not empty, only these windows are recomputed.
    pub starts: Vec<u64>,
}

impl WindowSet {
    /// The dirty windows `starts` (sorted, ms) of one kind.
    pub fn of_starts(window: &str, size_ms: u64, starts: Vec<u64>) -> WindowSet {
        let from_ms = starts.first().copied().unwrap_or(0);
        let to_ms = starts.last().map_or(0, |s| s + size_ms);
        WindowSet {
            window: window.to_owned(),
            size_ms,
            from_ms,
            to_ms,
            starts,
        }
    }
}

/// What one recompute did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecomputeStats {
    /// Rollup rows written.
    pub rows_written: u64,
    /// `INSERT … SELECT` statements run (each reads the raw events of its time span once).
    pub statements: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct Count {
    n: u64,
}

/// Windows per statement when they are listed (about 11 bytes each in the query; ClickHouse's
/// default `max_query_size` is 256 KiB, 18.16 included).
pub const WINDOWS_PER_STATEMENT: usize = 5_000;

/// The `SELECT` of a recompute: one row per window (and event type when `per_type`) of the
/// raw events with a timestamp in `[from_s, to_s)` and, when `windows` is not empty, in one of
/// those windows (window index = start / size), columns in the order of `rollups`. Integers are
/// written into the statement (a set test `IN (…)`, fast on 18.16, where a long `OR` of ranges
/// is not). Bind: window name, version.
pub fn recompute_select_sql(
    size_s: u64,
    per_type: bool,
    from_s: u64,
    to_s: u64,
    windows: &[u64],
) -> String {
    let (type_col, group, types) = if per_type {
        ("t", "ws, t", "1")
    } else {
        ("''", "ws", "uniqExact(t)")
    };
    let only = if windows.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = windows.iter().map(u64::to_string).collect();
        format!(
            " AND intDiv(toUInt32(timestamp), {size_s}) IN ({})",
            list.join(",")
        )
    };
    format!(
        "SELECT ? AS granularity, toDateTime(intDiv(toUInt32(ts), {size_s}) * {size_s}) AS ws,
                {type_col} AS event_type, count() AS events, uniqExact(u) AS unique_users,
                uniqExactIf(s, s != '') AS unique_sessions, {types} AS unique_event_types,
                1 AS is_final, ? AS version
         FROM (
             SELECT argMin(event_type, (kafka_partition, kafka_offset)) AS t,
                    argMin(user_id, (kafka_partition, kafka_offset)) AS u,
                    argMin(session_id, (kafka_partition, kafka_offset)) AS s,
                    argMin(timestamp, (kafka_partition, kafka_offset)) AS ts
             FROM events
             WHERE timestamp >= toDateTime({from_s}) AND timestamp < toDateTime({to_s}){only}
             GROUP BY event_id
         )
         GROUP BY {group}"
    )
}

/// Recomputes the windows of `set` from the raw events and writes the rows (see the module
/// docs), [`WINDOWS_PER_STATEMENT`] listed windows per statement. `now_version` is the caller's
/// clock in ns; the version written is above it and above every stored version of the span.
/// Windows without events get no row (none was written for them either: events are only ever
/// added).
///
/// Errors: [`SinkError::ClickHouse`] (the whole set can be retried: a rewrite writes the same
/// values with a newer version).
pub async fn recompute(
    client: &Client,
    set: &WindowSet,
    now_version: u64,
) -> Result<RecomputeStats, SinkError> {
    let size_s = (set.size_ms / 1000).max(1);
    let mut stats = RecomputeStats::default();
    if set.starts.is_empty() {
        let span = (set.from_ms / 1000, set.to_ms.div_ceil(1000));
        recompute_span(
            client,
            &set.window,
            size_s,
            span,
            &[],
            now_version,
            &mut stats,
        )
        .await?;
    } else {
        for chunk in set.starts.chunks(WINDOWS_PER_STATEMENT) {
            let (Some(&first), Some(&last)) = (chunk.first(), chunk.last()) else {
                continue;
            };
            let span = (first / 1000, (last + set.size_ms).div_ceil(1000));
            let indexes: Vec<u64> = chunk.iter().map(|s| s / set.size_ms).collect();
            recompute_span(
                client,
                &set.window,
                size_s,
                span,
                &indexes,
                now_version,
                &mut stats,
            )
            .await?;
        }
    }
    Ok(stats)
}

async fn recompute_span(
    client: &Client,
    window: &str,
    size_s: u64,
    (from_s, to_s): (u64, u64),
    indexes: &[u64],
    now_version: u64,
    stats: &mut RecomputeStats,
) -> Result<(), SinkError> {
    let ctx = |what: &'static str| move |e| SinkError::clickhouse(what, e);
    let stored: u64 = client
        .query(
            "SELECT max(version) FROM rollups
             WHERE granularity = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)",
        )
        .bind(window)
        .bind(from_s)
        .bind(to_s)
        .fetch_one()
        .await
        .map_err(ctx("reading rollup versions"))?;
    let version = now_version.max(stored + 1);
    for per_type in [true, false] {
        let select = recompute_select_sql(size_s, per_type, from_s, to_s, indexes);
        client
            .query(&format!(
                "INSERT INTO rollups (granularity, window_start, event_type, events, unique_users,
                     unique_sessions, unique_event_types, is_final, version) {select}"
            ))
            .bind(window)
            .bind(version)
            .execute()
            .await
            .map_err(ctx("recomputing rollups"))?;
        stats.statements += 1;
    }
    // What was written: the rows of this version (a scan of rollups, not of events).
    let written: Count = client
        .query(
            "SELECT count() AS n FROM rollups
             WHERE granularity = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
               AND version = ?",
        )
        .bind(window)
        .bind(from_s)
        .bind(to_s)
        .bind(version)
        .fetch_one()
        .await
        .map_err(ctx("counting recomputed rows"))?;
    stats.rows_written += written.n;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::recompute_select_sql;

    #[test]
    fn listed_windows_are_a_set_test_within_their_span() {
        let sql = recompute_select_sql(60, true, 600, 1_800, &[10, 29]);
        assert!(sql.contains("timestamp >= toDateTime(600) AND timestamp < toDateTime(1800)"));
        assert!(sql.contains("AND intDiv(toUInt32(timestamp), 60) IN (10,29)"));
        assert!(sql.contains("GROUP BY ws, t"));
        let all = recompute_select_sql(3_600, false, 0, 86_400, &[]);
        assert!(!all.contains(" IN ("));
        assert!(all.contains("uniqExact(t) AS unique_event_types"));
    }
}
