//! The dataflow that runs a set of topologies over one read of the events.

use tally_core::{RollupRow, RowTable, Topology};
use tally_operators::{
    Dedup, DedupHorizon, Observation, OperatorCounters, Point, SessionRollup, WindowRollup,
};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

/// What [`build`] produces.
pub struct Outputs<'scope, R> {
    /// The payload of every kept copy (the first copy read of each event id): the raw rows.
    pub kept: StreamVec<'scope, u64, R>,
    /// Provisional and final rollup rows of every topology (both tables).
    pub rollups: StreamVec<'scope, u64, RollupRow>,
}

/// Wires `topologies` over one stream of events: one dedup for all of them (the first copy
/// read of each event id wins; its horizon from the longest window of any topology, see
/// [`DedupHorizon::for_topologies`]), then, per topology, the kept observations projected for
/// it ([`Point::project`]: filters, dimension values, numeric fields) into its window rollup
/// ([`WindowRollup::window_rollup`], table `Windows`) and, when it declares sessions and stores
/// a session metric, its session rollup ([`SessionRollup::session_rollup`], table
/// `Sessions`). The rollup rows of all topologies are concatenated.
///
/// Each event is an observation with a payload `R` (the raw row to store), which passes the
/// dedup with it: the kept payloads and the rollups count the same copy of every event. `ticks`
/// drive provisional output (one tick: one row for every group that changed since its last
/// row). `grace_ms` is how long after its end (in watermark time) a window still accepts events.
pub fn build<'scope, R: ExchangeData>(
    events: StreamVec<'scope, u64, (Observation, R)>,
    ticks: StreamVec<'scope, u64, ()>,
    topologies: &[Topology],
    grace_ms: u64,
    counters: &OperatorCounters,
) -> Outputs<'scope, R> {
    let scope = events.scope();
    let horizon = DedupHorizon::for_topologies(topologies, grace_ms);
    let (observations, kept) = events
        .dedup_events(horizon, counters.clone())
        .flat_map(|(observation, payload)| [Ok(observation), Err(payload)])
        .ok_err::<Vec<Observation>, _, Vec<R>, _, _>(|split| split);
    let mut rollups = Vec::new();
    for topology in topologies {
        let projected = topology.clone();
        let points = observations
            .clone()
            .flat_map(move |o| Point::project(&projected, &o));
        if topology.has(RowTable::Windows) {
            let rows =
                points
                    .clone()
                    .window_rollup(ticks.clone(), topology, grace_ms, counters.clone());
            rollups.push(rows);
        }
        if topology.sessions.is_some() && topology.has(RowTable::Sessions) {
            let rows = points.session_rollup(ticks.clone(), topology, grace_ms, counters.clone());
            rollups.push(rows);
        }
    }
    let rollups = scope.concatenate(rollups);
    Outputs { kept, rollups }
}
