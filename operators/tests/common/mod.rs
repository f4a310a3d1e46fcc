//! Shared by the operator tests: runs dedup + projection + window rollup over scripted reads on
//! one worker and captures what each emits; a naive model of the same.

#![allow(dead_code)] // each test file uses a different part

pub mod reference;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use tally_core::{Dimension, Metric, RollupRow, Topology, WindowSpec};
use tally_operators::{Dedup, DedupHorizon, Observation, OperatorCounters, Point, WindowRollup};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// Rows emitted, with the dataflow time they were emitted at.
pub type Emitted = Vec<(u64, RollupRow)>;

/// (window name, start ms, dimension, value): one group of one window.
pub type Key = (String, u64, String, String);

/// What one run produced.
pub struct Output {
    /// Rollup rows with their emission times.
    pub emitted: Emitted,
    /// What the dedup passed on, in the order it passed it.
    pub kept: Vec<Observation>,
    /// The operators' counters.
    pub counters: OperatorCounters,
}

/// Runs dedup + rollup of `topology` over `reads` (watermark at read time, event) on one worker,
/// sending a tick after every `tick_every` reads.
pub fn run(
    topology: &Topology,
    grace_ms: u64,
    reads: &[(u64, Observation)],
    tick_every: usize,
) -> Output {
    let topology = topology.clone();
    let reads = reads.to_vec();
    timely::execute_directly(move |worker| {
        let counters = OperatorCounters::default();
        let emitted = Rc::new(RefCell::new(Vec::new()));
        let kept = Rc::new(RefCell::new(Vec::new()));
        let mut input = InputHandle::new();
        let mut ticks = InputHandle::new();
        let probe = ProbeHandle::new();
        let (sink, passed) = (Rc::clone(&emitted), Rc::clone(&kept));
        let c = counters.clone();
        let horizon = DedupHorizon::for_topologies(std::slice::from_ref(&topology), grace_ms);
        worker.dataflow::<u64, _, _>(|scope| {
            let ticks = ticks.to_stream(scope);
            let t = topology.clone();
            input
                .to_stream(scope)
                .dedup_events(horizon, c.clone())
                .inspect(move |o: &Observation| passed.borrow_mut().push(o.clone()))
                .flat_map(move |o| Point::project(&t, &o))
                .window_rollup(ticks, &topology, grace_ms, c)
                .probe_with(&probe)
                .sink(Pipeline, "Capture", move |(input, _frontier)| {
                    input.for_each(|cap, rows: &mut Vec<RollupRow>| {
                        let time = cap.least().copied().unwrap_or_default();
                        sink.borrow_mut().extend(rows.drain(..).map(|r| (time, r)));
                    });
                });
        });
        for (i, (read_time, obs)) in reads.into_iter().enumerate() {
            if read_time > *input.time() {
                input.advance_to(read_time);
                ticks.advance_to(read_time);
            }
            input.send(obs);
            if tick_every > 0 && (i + 1) % tick_every == 0 {
                // Let the data reach the rollup before the tick does.
                input.flush();
                for _ in 0..8 {
                    worker.step();
                }
                ticks.send(());
                ticks.flush();
                for _ in 0..8 {
                    worker.step();
                }
            }
        }
        drop(input);
        drop(ticks);
        while !probe.done() {
            worker.step();
        }
        let emitted = emitted.borrow().clone();
        let kept = kept.borrow().clone();
        Output {
            emitted,
            kept,
            counters,
        }
    })
}

/// Today's product analytics with the given windows: events, unique users, unique sessions and
/// unique event types per window, overall and per event type (no cap in practice).
pub fn product(windows: &[WindowSpec]) -> Topology {
    let mut b = Topology::builder("product")
        .dimension(Dimension {
            max_values: 100_000,
            ..Dimension::parse("event_type").expect("dimension")
        })
        .metric(Metric::Events)
        .metric(Metric::UniqueUsers)
        .metric(Metric::UniqueSessions)
        .metric(Metric::UniqueEventTypes);
    for w in windows {
        b = b.window(w.clone());
    }
    b.build().expect("valid topology")
}

/// 1m, 1h, 1d tumbling.
pub fn standard_windows() -> Vec<WindowSpec> {
    vec![
        WindowSpec::tumbling("1m", MIN),
        WindowSpec::tumbling("1h", HOUR),
        WindowSpec::tumbling("1d", DAY),
    ]
}

pub fn obs(
    id: &str,
    ts_ms: u64,
    event_type: &str,
    user: &str,
    session: Option<&str>,
) -> Observation {
    Observation {
        event_id: tally_operators::hash128(id),
        ts_ms,
        event_type: event_type.to_owned(),
        user: tally_operators::hash128(user),
        session: session.map(tally_operators::hash128),
        metadata: Arc::default(),
        replayed: false,
    }
}

pub fn key_of(row: &RollupRow) -> Key {
    (
        row.window.to_string(),
        row.start_ms,
        row.dimension.to_string(),
        row.value.clone(),
    )
}

/// The final row of every group as its values (as u64); fails on two final rows for one key.
pub fn finals(emitted: &Emitted) -> BTreeMap<Key, Vec<u64>> {
    let mut out = BTreeMap::new();
    for (_, row) in emitted.iter().filter(|(_, r)| r.is_final) {
        let values = row.values.iter().map(|v| v.as_f64() as u64).collect();
        let previous = out.insert(key_of(row), values);
        assert!(previous.is_none(), "two final rows for {:?}", key_of(row));
    }
    out
}

/// The key of the all-events row (`dimension` empty) or of one event type's row.
pub fn key(window: &str, start_ms: u64, event_type: Option<&str>) -> Key {
    (
        window.to_owned(),
        start_ms,
        if event_type.is_some() {
            "event_type"
        } else {
            ""
        }
        .to_owned(),
        event_type.unwrap_or("").to_owned(),
    )
}

/// 2024-03-13T10:00:00Z
pub const T0: u64 = 1_710_324_000_000;
pub const MIN: u64 = 60_000;
pub const HOUR: u64 = 3_600_000;
pub const DAY: u64 = 86_400_000;
