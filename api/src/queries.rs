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
        .bind(datetime_secs(q.window.start_of(ms(q.from)) / 1000))
        .bind(datetime_secs(ms(q.to).div_ceil(1000)))
}

/// Seconds for `toDateTime(?)`, held within `DateTime`'s range: a larger number would wrap to
/// 1970 on the server. (Window starts are whole minutes, and `u32::MAX` is not one, so
/// `window_start < toDateTime(u32::MAX)` still reaches the end of the range.)
fn datetime_secs(secs: u64) -> u64 {
    secs.min(u64::from(u32::MAX))
}

/// Exact totals over raw events with `from_ms <= timestamp_ms < to_ms`, each event id counted
/// once: among the stored copies of an id in the range, the first one read wins (smallest Kafka
/// partition and offset: within a partition, offsets are the order the pipeline reads in), and
/// its type, user and session are what count; the event-type filter applies to that copy.
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
    use super::datetime_secs;

    #[test]
    fn times_at_the_end_of_datetime_do_not_wrap() {
        // 2106-02-07T06:28:16Z is 2^32 s: bound as is, the server's UInt32 wraps it to 1970.
        let end = chrono::DateTime::parse_from_rfc3339("2106-02-07T06:28:16Z")
            .map(|t| t.timestamp() as u64)
            .unwrap_or_default();
        assert_eq!(end, 1 << 32);
        assert_eq!(datetime_secs(end), u64::from(u32::MAX));
        assert_eq!(datetime_secs(end + 86_400 * 365), u64::from(u32::MAX));
        // Times inside the range are unchanged.
        assert_eq!(datetime_secs(1_710_324_000), 1_710_324_000);
        assert_eq!(datetime_secs(u64::from(u32::MAX)), u64::from(u32::MAX));
    }
}
