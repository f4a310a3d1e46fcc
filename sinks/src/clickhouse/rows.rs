//! Row types as written to ClickHouse (RowBinary, column order = field order).

use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// One raw event in `events`.
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct EventRow {
    /// Event id (the producer's, or one derived from the Kafka position).
    pub event_id: String,
    /// Event type.
    pub event_type: String,
    /// User id.
    pub user_id: String,
    /// Session id, empty when none.
    pub session_id: String,
    /// Event time, seconds (ClickHouse `DateTime`).
    pub timestamp: u32,
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The metadata object as JSON text, `{}` when none.
    pub metadata: String,
    /// When the pipeline read the event, seconds.
    pub ingested_at: u32,
    /// Kafka partition the event was read from.
    pub kafka_partition: i32,
    /// Kafka offset the event was read from.
    pub kafka_offset: i64,
}

/// One version of a rollup aggregate in `rollups`.
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct RollupRecord {
    /// `1m`, `1h` or `1d`.
    pub granularity: String,
    /// Window start, seconds.
    pub window_start: u32,
    /// Event type for per-type rows, empty for the all-events row.
    pub event_type: String,
    /// Events.
    pub events: u64,
    /// Distinct users.
    pub unique_users: u64,
    /// Distinct non-empty sessions.
    pub unique_sessions: u64,
    /// Distinct event types.
    pub unique_event_types: u64,
    /// 1 once the window has closed.
    pub is_final: u8,
    /// Larger versions replace smaller ones (ReplacingMergeTree, `argMax`).
    pub version: u64,
}
