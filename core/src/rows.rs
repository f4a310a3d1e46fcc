//! Rollup rows: one version of one window's aggregates, as every topology produces them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Which of a topology's two rollup tables a row belongs to.
///
/// Window metrics (events, distinct counts, field aggregates) are final when their window
/// closes; session metrics only once every session starting in the window is settled
/// ([`crate::SessionSpec::window_delay_ms`] later). Separate tables keep each row's
/// `is_final` honest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RowTable {
    /// `Topology::table` (window metrics).
    Windows,
    /// `Topology::sessions_table` (session metrics).
    Sessions,
}

/// One stored value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A `UInt64` column.
    U64(u64),
    /// A `Float64` column.
    F64(f64),
}

impl Value {
    /// As a double (exact for counts below 2^53).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::U64(v) => v as f64,
            Value::F64(v) => v,
        }
    }
}

/// One version of one window's aggregates for one group: the all-events group (`dimension`
/// and `value` empty) or one value of one dimension. Provisional rows are replaced by later
/// ones (ClickHouse `ReplacingMergeTree(version)`, read with `argMax`); the final row is the
/// last one for its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollupRow {
    /// The topology's name.
    pub topology: Arc<str>,
    /// Which of its tables.
    pub table: RowTable,
    /// Window name (`1m`, `1h_15m`).
    pub window: Arc<str>,
    /// Window start, ms since the epoch.
    pub start_ms: u64,
    /// Dimension name (`event_type`, `metadata.platform`), empty for the all-events row.
    pub dimension: Arc<str>,
    /// The dimension's value ([`crate::OTHER`] for values past the dimension's cap), empty for
    /// the all-events row.
    pub value: String,
    /// One value per column of the table, in the order of `Topology::columns(table)`.
    pub values: Vec<Value>,
    /// Whether the window has closed and this row will not change again (except through a
    /// correction).
    pub is_final: bool,
}
