//! Read queries shared by the API and the jobs: a topology's rollup series (all events, one
//! group, or the top groups of a dimension plus the rest folded into [`OTHER`]) and exact
//! totals over raw events.
//!
//! A topology's tables hold one row per version of a (window name, window start, dimension,
//! value) key (`ReplacingMergeTree(version)`); readers take every column's `argMax(col,
//! version)` per key, so an unmerged table reads the same as a merged one. Values are bound by
//! the client (escaped); identifiers (table and column names) come from a validated topology
//! and are checked again here. Everything runs on ClickHouse 18.16 and on current releases.

use clickhouse::query::Query;
use clickhouse::Client;
use serde::Deserialize;
use tally_core::{Component, OTHER};

use crate::SinkError;

/// The windows a read covers: one window kind of one table, windows starting in
/// `[from_s, to_s)`.
#[derive(Clone, Copy, Debug)]
pub struct WindowRange<'a> {
    /// The table (a topology's windows or sessions table, as currently stored).
    pub table: &'a str,
    /// The window name (`1m`, `1h_15m`).
    pub window: &'a str,
    /// First window start, seconds since the epoch (inclusive).
    pub from_s: u64,
    /// End of the starts, seconds since the epoch (exclusive).
    pub to_s: u64,
}

/// One window of a series: its start and the latest version of each component asked for, in
/// the order asked (as doubles: counts are exact below 2^53).
#[derive(Clone, Debug, PartialEq, clickhouse::Row, Deserialize)]
pub struct SeriesRow {
    /// Window start, seconds since the epoch.
    pub window_start: u32,
    /// One value per component.
    pub values: Vec<f64>,
}

/// A group's total over the range, what [`top_groups`] ranks by.
#[derive(Clone, Debug, PartialEq, clickhouse::Row, Deserialize)]
pub struct GroupTotal {
    /// The dimension's value.
    pub group: String,
    /// The sum over the windows of the ranking component.
    pub total: f64,
}

/// One window of one group of a grouped series (see [`grouped_series`]).
#[derive(Clone, Debug, PartialEq, clickhouse::Row, Deserialize)]
pub struct GroupRow {
    /// Window start, seconds since the epoch.
    pub window_start: u32,
    /// The dimension's value, or [`OTHER`] for every group not asked for.
    pub group: String,
    /// One value per component, merged over the groups folded into [`OTHER`] (sums; the
    /// largest for `FieldMax`, over groups where the field was seen).
    pub values: Vec<f64>,
}

/// Seconds for `toDateTime(?)`, held within `DateTime`'s range: a larger number would wrap to
/// 1970 on the server. (Window starts are whole seconds and `u32::MAX` is not a window start of
/// any window longer than a second, so `window_start < toDateTime(u32::MAX)` still reaches the
/// end of the range.)
pub fn datetime_secs(secs: u64) -> u64 {
    secs.min(u64::from(u32::MAX))
}

/// `name` when it is a plain identifier (ASCII letters, digits, `_`), else a config error:
/// table and column names are written into SQL, never bound.
fn identifier(name: &str) -> Result<&str, SinkError> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(SinkError::Config {
            field: "topology",
            reason: format!("`{name}` is not a plain identifier"),
        })
    }
}

/// The latest version of each component per window start (and per value when `per_value`),
/// as `v0, v1, ...`, of the rows of `range` with this dimension (and this value unless
/// `per_value`). Binds nothing itself: see [`bind_range`] for the order of the `?`s.
fn latest_sql(
    range: &WindowRange<'_>,
    components: &[Component],
    per_value: bool,
) -> Result<String, SinkError> {
    let table = identifier(range.table)?;
    let mut cols = Vec::with_capacity(components.len());
    for (i, c) in components.iter().enumerate() {
        let name = c.column().name;
        cols.push(format!("argMax({}, version) AS v{i}", identifier(&name)?));
    }
    let (value_filter, group) = if per_value {
        ("", "window_start, value")
    } else {
        ("AND value = ?", "window_start")
    };
    Ok(format!(
        "SELECT {group}, {cols}
         FROM {table}
         WHERE window_name = ? AND dimension = ? {value_filter}
           AND window_start >= toDateTime(?) AND window_start < toDateTime(?)
         GROUP BY {group}",
        cols = cols.join(", "),
    ))
}

/// Binds what [`latest_sql`] asks for.
fn bind_range(
    query: Query,
    range: &WindowRange<'_>,
    dimension: &str,
    value: Option<&str>,
) -> Query {
    let query = query.bind(range.window).bind(dimension);
    let query = match value {
        Some(v) => query.bind(v),
        None => query,
    };
    query
        .bind(datetime_secs(range.from_s))
        .bind(datetime_secs(range.to_s))
}

/// `[toFloat64(f(v0)), toFloat64(f(v1)), ...]` with `f` the way a component folds over groups:
/// sums, and for `FieldMax` the largest over groups where the field's count is positive (when
/// that count is read too).
fn merged_values(components: &[Component]) -> String {
    let merged: Vec<String> = components
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Component::FieldMax(path) => {
                let count = Component::FieldCount(path.clone());
                match components.iter().position(|o| *o == count) {
                    Some(j) => format!("toFloat64(maxIf(v{i}, v{j} > 0))"),
                    None => format!("toFloat64(max(v{i}))"),
                }
            }
            _ => format!("toFloat64(sum(v{i}))"),
        })
        .collect();
    format!("[{}]", merged.join(", "))
}

/// One row per window with data in `range` for one group (`dimension` and `value` both empty:
/// the all-events row), ordered by window start; [`SeriesRow::values`] in `components` order.
///
/// Errors: [`SinkError::Config`] when a table or column name is not a plain identifier.
pub fn series(
    client: &Client,
    range: &WindowRange<'_>,
    components: &[Component],
    dimension: &str,
    value: &str,
) -> Result<Query, SinkError> {
    let latest = latest_sql(range, components, false)?;
    let values: Vec<String> = (0..components.len())
        .map(|i| format!("toFloat64(v{i})"))
        .collect();
    let sql = format!(
        "SELECT toUInt32(window_start) AS ws, [{}] AS vs FROM ({latest}) ORDER BY ws",
        values.join(", ")
    );
    Ok(bind_range(
        client.query(&sql),
        range,
        dimension,
        Some(value),
    ))
}

/// The `limit` values of `dimension` with the largest total of `components[rank]` over the
/// windows of `range` (ties: the smaller value first). The stored [`OTHER`] group (values past
/// the dimension's cap) is never a candidate, nor is a group whose components are all 0 in
/// every window (a group folded into [`OTHER`] after it was first written keeps a zero row).
///
/// Errors: [`SinkError::Config`] for a bad identifier or a `rank` outside `components`.
pub fn top_groups(
    client: &Client,
    range: &WindowRange<'_>,
    components: &[Component],
    dimension: &str,
    rank: usize,
    limit: u64,
) -> Result<Query, SinkError> {
    if rank >= components.len() {
        return Err(SinkError::Config {
            field: "topology",
            reason: format!("rank component {rank} of {} components", components.len()),
        });
    }
    let latest = latest_sql(range, components, true)?;
    let nonzero: Vec<String> = (0..components.len())
        .map(|i| format!("v{i} != 0"))
        .collect();
    let sql = format!(
        "SELECT value AS grp, toFloat64(sum(v{rank})) AS total
         FROM ({latest})
         WHERE value != ?
         GROUP BY value
         HAVING max({nonzero}) = 1
         ORDER BY total DESC, grp ASC
         LIMIT ?",
        nonzero = nonzero.join(" OR ")
    );
    Ok(bind_range(client.query(&sql), range, dimension, None)
        .bind(OTHER)
        .bind(limit))
}

/// One row per (window, group) with data in `range`, for the values in `groups` and
/// [`OTHER`]: every other value of `dimension` (the stored `__other__` group included) merged
/// (see [`GroupRow::values`]). Ordered by window start, then group.
///
/// Errors: [`SinkError::Config`] when a table or column name is not a plain identifier.
pub fn grouped_series(
    client: &Client,
    range: &WindowRange<'_>,
    components: &[Component],
    dimension: &str,
    groups: &[String],
) -> Result<Query, SinkError> {
    let latest = latest_sql(range, components, true)?;
    // `has([], value)` does not type-check on every release: no groups, everything is other.
    let group = if groups.is_empty() {
        "?".to_owned()
    } else {
        "if(has(?, value), value, ?)".to_owned()
    };
    let sql = format!(
        "SELECT toUInt32(window_start) AS ws, {group} AS grp, {values} AS vs
         FROM ({latest})
         GROUP BY ws, grp
         ORDER BY ws, grp",
        values = merged_values(components)
    );
    let query = client.query(&sql);
    let query = if groups.is_empty() {
        query.bind(OTHER)
    } else {
        query.bind(groups).bind(OTHER)
    };
    Ok(bind_range(query, range, dimension, None))
}

/// Exact totals over raw events with `from_ms <= timestamp_ms < to_ms`, each event id counted
/// once: among the stored copies of an id in the range, the first one read wins (smallest Kafka
/// partition and offset: within a partition, offsets are the order the pipeline reads in), and
/// its type, user and session are what count; the event-type filter applies to that copy.
/// Columns: events, unique users, unique non-empty sessions, unique event types (`UInt64`).
///
/// The pipeline stores only the first copy of an id within its dedup horizon, and a replayed
/// copy collapses with the stored one (same sorting key), so this matters for rows stored
/// before the dedup covered raw events, copies beyond the horizon and copies in two partitions.
/// Grouping by id makes `FINAL` unnecessary. `argMin` with a tuple works on 18.16 and 26.x.
pub fn summary(client: &Client, from_ms: u64, to_ms: u64, event_type: Option<&str>) -> Query {
    let filter = if event_type.is_some() {
        "WHERE first_type = ?"
    } else {
        ""
    };
    let sql = format!(
        "SELECT count() AS n_events,
                uniqExact(first_user) AS n_users,
                uniqExactIf(first_session, first_session != '') AS n_sessions,
                uniqExact(first_type) AS n_event_types
         FROM (
             SELECT argMin(event_type, (kafka_partition, kafka_offset)) AS first_type,
                    argMin(user_id, (kafka_partition, kafka_offset)) AS first_user,
                    argMin(session_id, (kafka_partition, kafka_offset)) AS first_session
             FROM events
             WHERE timestamp >= toDateTime(?) AND timestamp <= toDateTime(?)
               AND timestamp_ms >= ? AND timestamp_ms < ?
             GROUP BY event_id
         ) {filter}"
    );
    let query = client
        .query(&sql)
        .bind(datetime_secs(from_ms / 1000))
        .bind(datetime_secs(to_ms / 1000))
        .bind(from_ms)
        .bind(to_ms);
    match event_type {
        Some(t) => query.bind(t),
        None => query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::FieldPath;

    fn range(table: &str) -> WindowRange<'_> {
        WindowRange {
            table,
            window: "1h",
            from_s: 3_600,
            to_s: 7_200,
        }
    }

    #[test]
    fn times_at_the_end_of_datetime_do_not_wrap() {
        // 2106-02-07T06:28:16Z is 2^32 s: bound as is, the server's UInt32 wraps it to 1970.
        let end = chrono::DateTime::parse_from_rfc3339("2106-02-07T06:28:16Z")
            .map(|t| t.timestamp() as u64)
            .unwrap_or_default();
        assert_eq!(end, 1 << 32);
        assert_eq!(datetime_secs(end), u64::from(u32::MAX));
        assert_eq!(datetime_secs(end + 86_400 * 365), u64::from(u32::MAX));
        assert_eq!(datetime_secs(1_710_324_000), 1_710_324_000);
    }

    #[test]
    fn identifiers_are_checked_and_values_bound() {
        let client = Client::default();
        let c = [Component::Sessions, Component::BouncedSessions];
        assert!(series(&client, &range("t; DROP TABLE x"), &c, "", "").is_err());
        let sql = series(
            &client,
            &range("rollups_web"),
            &c,
            "metadata.platform",
            "it's",
        )
        .expect("valid")
        .sql_display()
        .to_string();
        assert!(sql.contains("argMax(sessions, version) AS v0"), "{sql}");
        assert!(
            sql.contains("argMax(bounced_sessions, version) AS v1"),
            "{sql}"
        );
        assert!(sql.contains("value = 'it\\'s'"), "{sql}");
        assert!(sql.contains("window_name = '1h'"), "{sql}");
        assert!(
            sql.contains("toDateTime(3600)") && sql.contains("toDateTime(7200)"),
            "{sql}"
        );
        assert!(top_groups(&client, &range("t"), &c, "d", 2, 10).is_err());
    }

    #[test]
    fn other_merges_max_over_groups_that_saw_the_field() {
        let p = FieldPath::parse("metadata.price").expect("path");
        let c = [Component::FieldMax(p.clone()), Component::FieldCount(p)];
        assert_eq!(
            merged_values(&c),
            "[toFloat64(maxIf(v0, v1 > 0)), toFloat64(sum(v1))]"
        );
        let client = Client::default();
        let groups = ["ios".to_owned(), "web".to_owned()];
        let sql = grouped_series(&client, &range("t"), &c, "metadata.platform", &groups)
            .expect("valid")
            .sql_display()
            .to_string();
        assert!(
            sql.contains("if(has(['ios','web'], value), value, '__other__') AS grp"),
            "{sql}"
        );
        let sql = grouped_series(&client, &range("t"), &c, "metadata.platform", &[])
            .expect("valid")
            .sql_display()
            .to_string();
        assert!(sql.contains("'__other__' AS grp"), "{sql}");
    }
}
