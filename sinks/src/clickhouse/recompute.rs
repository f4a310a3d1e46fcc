//! Corrections: recomputing rollup rows from the raw `events`, for late events and rebuilds.
//!
//! One recompute covers a range of windows of one kind with two `INSERT ... SELECT` statements
//! (the per-event-type rows and the all-events row, `event_type = ''`), so a month of history
//! costs range scans, not a query per window. Each event id counts once, as in
//! `api::queries::summary`: the copy with the smallest (Kafka partition, offset), which is the
//! copy the pipeline kept. The rows are written final, with a version above every version
//! already stored for those windows, so readers (`argMax(value, version)`) see them at once and
//! `ReplacingMergeTree(version)` keeps them. Runs on ClickHouse 18.16 and current releases.

use clickhouse::Client;
use serde::Deserialize;

use crate::SinkError;

/// A range of windows of one kind to recompute: every window starting in `[from_ms, to_ms)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowRange {
    /// Window name as stored (`1m`, `1h`, `1d`).
    pub window: String,
    /// Window length, ms (a whole number of seconds).
    pub size_ms: u64,
    /// First window start, ms since the epoch (a multiple of `size_ms`).
    pub from_ms: u64,
    /// End of the last window, ms (a multiple of `size_ms`).
    pub to_ms: u64,
}

/// What one recompute did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecomputeStats {
    /// Rollup rows written (each statement reads the range's raw events once: two scans).
    pub rows_written: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct Count {
    n: u64,
}

/// The `SELECT` of a recompute: one row per window (and event type when `per_type`), columns
/// in the order of `rollups`. Bind: window name, version, range start (s), range end (s).
pub fn recompute_select_sql(size_s: u64, per_type: bool) -> String {
    let (type_col, group, types) = if per_type {
        ("t", "ws, t", "1")
    } else {
        ("''", "ws", "uniqExact(t)")
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
             WHERE timestamp >= toDateTime(?) AND timestamp < toDateTime(?)
             GROUP BY event_id
         )
         GROUP BY {group}"
    )
}

/// Recomputes every window in `range` from the raw events and writes the rows (see the module
/// docs). `now_version` is the caller's clock in ns; the version written is above it and above
/// every stored version of the range. Windows without events get no row (none was written for
/// them either: events are only ever added).
///
/// Errors: [`SinkError::ClickHouse`] (the whole range can be retried: a rewrite writes the same
/// values with a newer version).
pub async fn recompute(
    client: &Client,
    range: &WindowRange,
    now_version: u64,
) -> Result<RecomputeStats, SinkError> {
    let ctx = |what: &'static str| move |e| SinkError::clickhouse(what, e);
    let (from_s, to_s) = (range.from_ms / 1000, range.to_ms.div_ceil(1000));
    let stored: u64 = client
        .query(
            "SELECT max(version) FROM rollups
             WHERE granularity = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)",
        )
        .bind(&range.window)
        .bind(from_s)
        .bind(to_s)
        .fetch_one()
        .await
        .map_err(ctx("reading rollup versions"))?;
    let version = now_version.max(stored + 1);
    let size_s = (range.size_ms / 1000).max(1);
    for per_type in [true, false] {
        let select = recompute_select_sql(size_s, per_type);
        client
            .query(&format!(
                "INSERT INTO rollups (granularity, window_start, event_type, events, unique_users,
                     unique_sessions, unique_event_types, is_final, version) {select}"
            ))
            .bind(&range.window)
            .bind(version)
            .bind(from_s)
            .bind(to_s)
            .execute()
            .await
            .map_err(ctx("recomputing rollups"))?;
    }
    // What was written: the rows of this version (a scan of the range's rollups, not events).
    let written: Count = client
        .query(
            "SELECT count() AS n FROM rollups
             WHERE granularity = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
               AND version = ?",
        )
        .bind(&range.window)
        .bind(from_s)
        .bind(to_s)
        .bind(version)
        .fetch_one()
        .await
        .map_err(ctx("counting recomputed rows"))?;
    Ok(RecomputeStats {
        rows_written: written.n,
    })
}

/// Merges sorted window starts (ms) of one kind into ranges: consecutive windows whose gap is at
/// most `max_gap_windows` empty windows join one range, and no range spans more than
/// `max_windows` windows. Returns `[from_ms, to_ms)` pairs. Recomputing the windows in a gap is
/// harmless (same values, newer version) and cheaper than another query when the gap is short.
pub fn coalesce(
    starts: &[u64],
    size_ms: u64,
    max_gap_windows: u64,
    max_windows: u64,
) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &s in starts {
        match ranges.last_mut() {
            Some((from, to))
                if s >= *to
                    && (s - *to) / size_ms <= max_gap_windows
                    && (s + size_ms - *from) / size_ms <= max_windows =>
            {
                *to = s + size_ms;
            }
            Some((_, to)) if s < *to => {} // already covered (duplicate start)
            _ => ranges.push((s, s + size_ms)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn coalesce_merges_near_windows_and_caps_ranges() {
        let m = 60_000;
        // Three adjacent minutes, then one 2 windows later (gap 1), then one far away.
        let starts = [0, m, 2 * m, 4 * m, 100 * m];
        assert_eq!(
            coalesce(&starts, m, 1, 1000),
            vec![(0, 5 * m), (100 * m, 101 * m)]
        );
        // No gaps allowed: the gap splits.
        assert_eq!(
            coalesce(&starts, m, 0, 1000),
            vec![(0, 3 * m), (4 * m, 5 * m), (100 * m, 101 * m)]
        );
        // At most two windows per range.
        assert_eq!(
            coalesce(&[0, m, 2 * m], m, 0, 2),
            vec![(0, 2 * m), (2 * m, 3 * m)]
        );
        assert!(coalesce(&[], m, 5, 5).is_empty());
        // Duplicates are covered once.
        assert_eq!(coalesce(&[0, 0, m], m, 0, 10), vec![(0, 2 * m)]);
    }
}
