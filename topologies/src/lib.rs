//! Topology definitions: how the operators are wired for each kind of analysis.
//!
//! Today there is one, [`product_analytics`]: de-duplicate events by id (the first copy read
//! wins), then roll the kept copies up into tumbling windows (1 minute, 1 hour, 1 day by
//! default), overall and per event type. The kept copies are also what is stored raw, so the
//! raw events and the rollups count the same copy of every event.

pub mod file;

use tally_operators::{Dedup, Observation, OperatorCounters, Rollup, RollupRow, RollupSpec};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

/// What [`product_analytics`] produces.
pub struct ProductAnalytics<'scope, R> {
    /// The payload of every kept copy (the first copy read of each event id): the raw rows.
    pub kept: StreamVec<'scope, u64, R>,
    /// Provisional and final rollup rows.
    pub rollups: StreamVec<'scope, u64, RollupRow>,
}

/// The product-analytics topology: exact events, unique users, unique sessions and unique event
/// types per window. Each event is an observation with a payload `R` (the raw row to store),
/// which passes the dedup with it. `ticks` drive provisional output (one tick: one row for every
/// aggregate that changed since its last row).
pub fn product_analytics<'scope, R: ExchangeData>(
    events: StreamVec<'scope, u64, (Observation, R)>,
    ticks: StreamVec<'scope, u64, ()>,
    spec: &RollupSpec,
    counters: &OperatorCounters,
) -> ProductAnalytics<'scope, R> {
    let (observations, kept) = events
        .dedup_events(spec.dedup_horizon(), counters.clone())
        .flat_map(|(observation, payload)| [Ok(observation), Err(payload)])
        .ok_err::<Vec<Observation>, _, Vec<R>, _, _>(|split| split);
    let rollups = observations.rollup(ticks, spec, counters.clone());
    ProductAnalytics { kept, rollups }
}
