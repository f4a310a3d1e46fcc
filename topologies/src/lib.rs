//! Topology definitions: how the operators are wired for each kind of analysis.
//!
//! Today there is one, [`product_analytics`]: de-duplicate events by id, then roll them up into
//! tumbling windows (1 minute, 1 hour, 1 day by default), overall and per event type.

use tally_operators::{Dedup, Observation, OperatorCounters, Rollup, RollupRow, RollupSpec};
use timely::dataflow::StreamVec;

/// The product-analytics topology: exact events, unique users, unique sessions and unique event
/// types per window. `ticks` drive provisional output (one tick: one row for every aggregate that
/// changed since its last row).
pub fn product_analytics<'scope>(
    events: StreamVec<'scope, u64, Observation>,
    ticks: StreamVec<'scope, u64, ()>,
    spec: &RollupSpec,
    counters: &OperatorCounters,
) -> StreamVec<'scope, u64, RollupRow> {
    events
        .dedup_events(spec.horizon(), spec.grace_ms, counters.clone())
        .rollup(ticks, spec, counters.clone())
}
