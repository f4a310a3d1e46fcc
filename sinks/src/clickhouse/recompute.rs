//! Corrections and rebuilds, the ClickHouse side: reading the raw events a recompute needs,
//! the groups a window already has stored, and the newest stored version.
//!
//! The values themselves are computed in Rust by the same accumulators and sessionizer the
//! dataflow uses (`tally_operators::aggregate::window_rows`, `tally_operators::session_rows`),
//! so a corrected row and a live row can only differ by the events they saw. ClickHouse's part
//! is selecting the events: the raw events whose time falls in a set of *blocks* (fixed-length
//! time slices, `intDiv(toUInt32(timestamp), block_s) IN (…)`, a set test, fast on 18.16 where
//! a long `OR` of ranges is not), each event id once: the copy with the smallest (Kafka
//! partition, offset), which is the copy the pipeline kept (as `api::queries::summary` counts).
//! Runs on ClickHouse 18.16 and current releases.

use clickhouse::Client;
use serde::Deserialize;

use crate::SinkError;

/// Blocks listed per statement (about 11 bytes each in the query; ClickHouse's default
/// `max_query_size` is 256 KiB, 18.16 included).
pub const BLOCKS_PER_STATEMENT: usize = 5_000;

/// One raw event as a recompute reads it (the first copy of its id).
#[derive(Clone, Debug, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct RawEvent {
    /// Event type.
    pub event_type: String,
    /// User id.
    pub user_id: String,
    /// Client session id, empty when none.
    pub session_id: String,
    /// Event time, ms since the epoch.
    pub timestamp_ms: i64,
    /// Metadata as JSON text (`{}` when not asked for).
    pub metadata: String,
}

/// The `SELECT` reading the first copy of every event whose time is in one of `blocks`
/// (block index = seconds / `block_s`), within `[from_s, to_s)`. `with_metadata` = false reads
/// `'{}'` instead of the metadata (cheaper when the topology does not look at it).
pub fn events_sql(block_s: u64, blocks: &[u64], with_metadata: bool) -> String {
    let list: Vec<String> = blocks.iter().map(u64::to_string).collect();
    let (from_s, to_s) = (
        blocks.first().map_or(0, |b| b * block_s),
        blocks.last().map_or(0, |b| (b + 1) * block_s),
    );
    let metadata = if with_metadata {
        "argMin(metadata, (kafka_partition, kafka_offset))"
    } else {
        "'{}'"
    };
    format!(
        "SELECT argMin(event_type, (kafka_partition, kafka_offset)) AS event_type,
                argMin(user_id, (kafka_partition, kafka_offset)) AS user_id,
                argMin(session_id, (kafka_partition, kafka_offset)) AS session_id,
                argMin(timestamp_ms, (kafka_partition, kafka_offset)) AS timestamp_ms,
                {metadata} AS metadata
         FROM events
         WHERE timestamp >= toDateTime({from_s}) AND timestamp < toDateTime({to_s})
           AND intDiv(toUInt32(timestamp), {block_s}) IN ({})
         GROUP BY event_id",
        list.join(",")
    )
}

/// Reads the first copy of every event in `blocks` (sorted block indexes of `block_s`
/// seconds), [`BLOCKS_PER_STATEMENT`] blocks per statement.
///
/// Errors: [`SinkError::ClickHouse`].
pub async fn fetch_events(
    client: &Client,
    block_s: u64,
    blocks: &[u64],
    with_metadata: bool,
) -> Result<Vec<RawEvent>, SinkError> {
    let mut out = Vec::new();
    for chunk in blocks.chunks(BLOCKS_PER_STATEMENT) {
        let rows: Vec<RawEvent> = client
            .query(&events_sql(block_s.max(1), chunk, with_metadata))
            .fetch_all()
            .await
            .map_err(|e| SinkError::clickhouse("reading raw events for a recompute", e))?;
        out.extend(rows);
    }
    Ok(out)
}

#[derive(clickhouse::Row, Deserialize)]
struct GroupRow {
    ws: u32,
    dimension: String,
    value: String,
}

/// The groups `(window start ms, dimension, value)` stored in `table` for windows named
/// `window` starting at one of `starts_ms` (a recompute writes zeros to those it no longer
/// finds, so no stale group survives).
///
/// Errors: [`SinkError::ClickHouse`].
pub async fn stored_groups(
    client: &Client,
    table: &str,
    window: &str,
    starts_ms: &[u64],
) -> Result<Vec<(u64, String, String)>, SinkError> {
    let mut out = Vec::new();
    for chunk in starts_ms.chunks(BLOCKS_PER_STATEMENT) {
        let list: Vec<String> = chunk.iter().map(|s| (s / 1000).to_string()).collect();
        let sql = format!(
            "SELECT DISTINCT toUInt32(window_start) AS ws, dimension, value FROM {table}
             WHERE window_name = ? AND toUInt32(window_start) IN ({})",
            list.join(",")
        );
        let rows: Vec<GroupRow> = client
            .query(&sql)
            .bind(window)
            .fetch_all()
            .await
            .map_err(|e| SinkError::clickhouse("reading stored groups", e))?;
        out.extend(
            rows.into_iter()
                .map(|r| (u64::from(r.ws) * 1000, r.dimension, r.value)),
        );
    }
    Ok(out)
}

/// The newest version stored in `table` for windows named `window` starting in
/// `[from_ms, to_ms)` (0 when none).
///
/// Errors: [`SinkError::ClickHouse`].
pub async fn max_version(
    client: &Client,
    table: &str,
    window: &str,
    from_ms: u64,
    to_ms: u64,
) -> Result<u64, SinkError> {
    client
        .query(&format!(
            "SELECT max(version) FROM {table}
             WHERE window_name = ? AND window_start >= toDateTime(?) AND window_start < toDateTime(?)"
        ))
        .bind(window)
        .bind(from_ms / 1000)
        .bind(to_ms.div_ceil(1000))
        .fetch_one()
        .await
        .map_err(|e| SinkError::clickhouse("reading rollup versions", e))
}

#[cfg(test)]
mod tests {
    use super::events_sql;

    #[test]
    fn blocks_are_a_set_test_within_their_span() {
        let sql = events_sql(60, &[10, 29], false);
        assert!(sql.contains("timestamp >= toDateTime(600) AND timestamp < toDateTime(1800)"));
        assert!(sql.contains("intDiv(toUInt32(timestamp), 60) IN (10,29)"));
        assert!(sql.contains("'{}' AS metadata"));
        assert!(events_sql(3_600, &[1], true).contains("argMin(metadata,"));
    }
}
