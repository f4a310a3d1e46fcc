//! Runs the session operator over scripted reads on n workers and reads back its rows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tally_core::{Dimension, Metric, RollupRow, SessionSpec, Topology, Value, WindowSpec};
use tally_operators::{OperatorCounters, Point, SessionRollup};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

pub const MIN: u64 = 60_000;
pub const HOUR: u64 = 3_600_000;
/// 2024-03-13T10:00:00Z
pub const T0: u64 = 1_710_324_000_000;

/// (window name, start, dimension, value)
pub type Key = (String, u64, String, String);

/// One scripted input step.
#[derive(Clone, Debug)]
pub enum Step {
    /// The watermark at read time, and the point read.
    Read(u64, Point),
    /// A tick on every worker (provisional rows).
    Tick,
}

/// Rows with their emission times, and the late count.
pub struct Run {
    /// Rows with the dataflow time they were emitted at.
    pub emitted: Vec<(u64, RollupRow)>,
    /// Events counted late for sessions.
    pub late: u64,
}

/// Runs `steps` through `session_rollup` on `workers` workers: every worker advances to each
/// read's watermark, worker `i % workers` sends read `i`, every worker ticks on a tick.
pub fn run(topology: &Topology, grace_ms: u64, steps: &[Step], workers: usize) -> Run {
    let emitted = Arc::new(Mutex::new(Vec::new()));
    let counters = OperatorCounters::default();
    let name = topology.name.clone();
    let (topology, steps) = (topology.clone(), steps.to_vec());
    let (sink, c) = (Arc::clone(&emitted), counters.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input = InputHandle::new();
        let mut ticks = InputHandle::new();
        let probe = ProbeHandle::new();
        let sink = Arc::clone(&sink);
        worker.dataflow::<u64, _, _>(|scope| {
            let ticks = ticks.to_stream(scope);
            input
                .to_stream(scope)
                .session_rollup(ticks, &topology, grace_ms, c.clone())
                .probe_with(&probe)
                .sink(Pipeline, "Capture", move |(input, _)| {
                    input.for_each(|cap, rows: &mut Vec<RollupRow>| {
                        let time = cap.least().copied().unwrap_or_default();
                        let mut sink = sink.lock().expect("sink");
                        sink.extend(rows.drain(..).map(|r| (time, r)));
                    });
                });
        });
        for (i, step) in steps.iter().enumerate() {
            match step {
                Step::Read(watermark, point) => {
                    if *watermark > *input.time() {
                        input.advance_to(*watermark);
                        ticks.advance_to(*watermark);
                    }
                    if i % peers == index {
                        input.send(point.clone());
                    }
                }
                Step::Tick => {
                    input.flush();
                    for _ in 0..16 {
                        worker.step();
                    }
                    ticks.send(());
                    ticks.flush();
                    for _ in 0..16 {
                        worker.step();
                    }
                }
            }
        }
        drop((input, ticks));
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker"));
    let emitted = emitted.lock().expect("emitted").clone();
    Run {
        emitted,
        late: counters.late_sessions(&name),
    }
}

pub fn key(r: &RollupRow) -> Key {
    (
        r.window.to_string(),
        r.start_ms,
        r.dimension.to_string(),
        r.value.clone(),
    )
}

pub fn u64s(values: &[Value]) -> Vec<u64> {
    values
        .iter()
        .map(|v| match v {
            Value::U64(n) => *n,
            Value::F64(x) => panic!("float in a session row: {x}"),
        })
        .collect()
}

/// Rows per key in emission order; checks that each key has exactly one final row, that it
/// comes last and at its window's close time.
pub fn by_key(
    topology: &Topology,
    grace_ms: u64,
    run: &Run,
) -> BTreeMap<Key, Vec<(Vec<u64>, bool)>> {
    let spec = topology.sessions.expect("sessions");
    let mut out: BTreeMap<Key, Vec<(Vec<u64>, bool)>> = BTreeMap::new();
    for (time, row) in &run.emitted {
        let size = topology.window(&row.window).expect("window").size_ms;
        if row.is_final {
            assert_eq!(*time, row.start_ms + size + spec.window_delay_ms(grace_ms));
        }
        out.entry(key(row))
            .or_default()
            .push((u64s(&row.values), row.is_final));
    }
    for (k, rows) in &out {
        let finals: Vec<bool> = rows.iter().map(|r| r.1).collect();
        assert_eq!(finals.iter().filter(|f| **f).count(), 1, "{k:?}: {rows:?}");
        assert!(finals.last() == Some(&true), "{k:?}: final row not last");
    }
    out
}

/// The settled rows: the final row of each key, all-zero rows left out.
pub fn settled(topology: &Topology, grace_ms: u64, run: &Run) -> BTreeMap<Key, Vec<u64>> {
    by_key(topology, grace_ms, run)
        .into_iter()
        .filter_map(|(k, rows)| rows.last().cloned().map(|r| (k, r.0)))
        .filter(|(_, v)| v.iter().any(|x| *x != 0))
        .collect()
}

pub fn rows_map(rows: &[RollupRow]) -> BTreeMap<Key, Vec<u64>> {
    rows.iter().map(|r| (key(r), u64s(&r.values))).collect()
}

pub fn point(user: u128, ts_ms: u64, groups: &[&str]) -> Point {
    Point {
        ts_ms,
        user,
        session: None,
        event_type: 0,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        fields: Vec::new(),
        replayed: false,
    }
}

/// A topology with every session metric (columns: sessions, bounced_sessions,
/// session_duration_ms, session_events) and dimensions `(name, max_values)`.
pub fn topology(
    gap_ms: u64,
    max_ms: u64,
    windows: &[WindowSpec],
    dims: &[(&str, usize)],
) -> Topology {
    let mut b = Topology::builder("sess").sessions(SessionSpec {
        gap_ms,
        max_duration_ms: max_ms,
    });
    for w in windows {
        b = b.window(w.clone());
    }
    for (name, max_values) in dims {
        let d = Dimension::parse(name).expect("dimension");
        b = b.dimension(Dimension {
            max_values: *max_values,
            ..d
        });
    }
    for m in [
        Metric::Sessions,
        Metric::BounceRate,
        Metric::AvgSessionDurationS,
        Metric::EventsPerSession,
    ] {
        b = b.metric(m);
    }
    b.build().expect("topology")
}

pub fn k(window: &str, start: u64, dim: &str, value: &str) -> Key {
    (window.into(), start, dim.into(), value.into())
}
