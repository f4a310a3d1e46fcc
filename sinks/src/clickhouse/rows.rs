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
