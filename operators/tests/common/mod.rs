//! Shared by the operator tests: runs dedup + rollup over scripted reads on one worker and
//! captures what each emits.

#![allow(dead_code)] // each test file uses a different part

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use tally_operators::{
    Dedup, Observation, OperatorCounters, Rollup, RollupRow, RollupSpec, Window, WindowKey,
};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// Rows emitted, with the dataflow time they were emitted at.
pub type Emitted = Vec<(u64, RollupRow)>;

/// What one run produced.
pub struct Output {
    /// Rollup rows with their emission times.
    pub emitted: Emitted,
    /// What the dedup passed on, in the order it passed it.
    pub kept: Vec<Observation>,
    /// The operators' counters.
    pub counters: OperatorCounters,
}

/// Runs dedup + rollup over `reads` (watermark at read time, event) on one worker, sending a tick
/// after every `tick_every` reads.
pub fn run(spec: &RollupSpec, reads: &[(u64, Observation)], tick_every: usize) -> Output {
    let spec = spec.clone();
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
        worker.dataflow::<u64, _, _>(|scope| {
            let ticks = ticks.to_stream(scope);
            input
                .to_stream(scope)
                .dedup_events(spec.dedup_horizon(), c.clone())
                .inspect(move |o: &Observation| passed.borrow_mut().push(o.clone()))
                .rollup(ticks, &spec, c)
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

/// Every window kind, per-type rows on.
pub fn spec(grace_ms: u64) -> RollupSpec {
    RollupSpec {
        windows: Window::ALL.to_vec(),
        grace_ms,
        per_event_type: true,
    }
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
        replayed: false,
    }
}

/// The final row of every aggregate; fails on two final rows for one key.
pub fn finals(emitted: &Emitted) -> BTreeMap<WindowKey, RollupRow> {
    let mut out = BTreeMap::new();
    for (_, row) in emitted.iter().filter(|(_, r)| r.is_final) {
        let previous = out.insert(row.key.clone(), row.clone());
        assert!(previous.is_none(), "two final rows for {:?}", row.key);
    }
    out
}

pub fn key(window: Window, start_ms: u64, event_type: Option<&str>) -> WindowKey {
    WindowKey {
        window,
        start_ms,
        event_type: event_type.map(str::to_owned),
    }
}

/// 2024-03-13T10:00:00Z
pub const T0: u64 = 1_710_324_000_000;
pub const MIN: u64 = 60_000;
pub const HOUR: u64 = 3_600_000;
pub const DAY: u64 = 86_400_000;
