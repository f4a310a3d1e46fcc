//! The operator core's cost: events per second through dedup + projection + window rollup on
//! one timely worker with 1, 3 and 6 window kinds, and with 3 window kinds plus sessions; and
//! bytes of state per distinct user per window, exact and approximate.
//!
//! Run: `cargo bench -p tally-operators --bench operator_core -- --warm-up-time 1
//! --measurement-time 3`. Criterion prints time per iteration and throughput (events/s); the
//! state sizes are printed first, measured with a counting global allocator (`stats_alloc`):
//! the bytes allocated and not freed while filling one `unique_users` accumulator.

use std::alloc::System;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tally_core::{
    Component, Dimension, DistinctMode, Metric, RowTable, SessionSpec, Topology, WindowSpec,
};
use tally_operators::{
    accumulator, hash128, Dedup, DedupHorizon, Observation, OperatorCounters, Point, SessionRollup,
    WindowRollup,
};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Events per iteration.
const EVENTS: usize = 100_000;
/// 2024-03-13T10:00:00Z.
const BASE: u64 = 1_710_324_000_000;
const MIN: u64 = 60_000;

/// Product analytics over `windows`: event_type dimension, four exact metrics.
fn topology(windows: &[WindowSpec]) -> Topology {
    let mut b = Topology::builder("bench")
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
    b.build().expect("valid")
}

fn window_sets() -> Vec<(&'static str, Vec<WindowSpec>)> {
    let t = |name: &str, ms| WindowSpec::tumbling(name, ms);
    let six = vec![
        t("1m", MIN),
        t("5m", 5 * MIN),
        t("15m", 15 * MIN),
        t("1h", 60 * MIN),
        t("6h", 360 * MIN),
        t("1d", 1_440 * MIN),
    ];
    vec![
        ("1 window", six[..1].to_vec()),
        (
            "3 windows",
            vec![six[0].clone(), six[3].clone(), six[5].clone()],
        ),
        ("6 windows", six),
    ]
}

/// `EVENTS` events over one hour of event time: 10,000 users, 8 event types, sessions, in time
/// order with a little disorder; 1 % are re-sends.
fn events() -> Vec<Observation> {
    let types = [
        "click", "view", "buy", "search", "scroll", "share", "login", "logout",
    ];
    (0..EVENTS)
        .map(|i| {
            let user = (i * 7_919) % 10_000;
            let id = if i % 100 == 99 { i - 1 } else { i };
            Observation {
                event_id: hash128(&format!("e{id}")),
                ts_ms: BASE + (i as u64 * 36) + (i as u64 * 13) % 500,
                event_type: types[i % types.len()].to_owned(),
                user: hash128(&format!("u{user}")),
                session: Some(hash128(&format!("s{}", user + 10_000 * (i / 50_000)))),
                metadata: Arc::default(),
                replayed: false,
            }
        })
        .collect()
}

/// Runs dedup + window rollup of `topology` over `events` on one worker: the watermark moves
/// every 1,000 events (to 5 s behind the newest), a tick every 10,000. Returns the rows.
fn run(topology: &Topology, events: Vec<Observation>) -> usize {
    let topology = topology.clone();
    timely::execute_directly(move |worker| {
        let mut input = InputHandle::new();
        let mut ticks = InputHandle::new();
        let probe = ProbeHandle::new();
        let counters = OperatorCounters::default();
        let rows = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let seen = std::rc::Rc::clone(&rows);
        let horizon = DedupHorizon::for_topologies(std::slice::from_ref(&topology), 5_000);
        worker.dataflow::<u64, _, _>(|scope| {
            let t = topology.clone();
            let ticks = ticks.to_stream(scope);
            let points = input
                .to_stream(scope)
                .dedup_events(horizon, counters.clone())
                .flat_map(move |o| Point::project(&t, &o));
            let mut rows =
                points
                    .clone()
                    .window_rollup(ticks.clone(), &topology, 5_000, counters.clone());
            if topology.has(RowTable::Sessions) {
                rows = rows.concat(points.session_rollup(ticks, &topology, 5_000, counters));
            }
            rows.map(move |_row| seen.set(seen.get() + 1))
                .probe_with(&probe);
        });
        let mut newest = 0;
        for (i, e) in events.into_iter().enumerate() {
            newest = newest.max(e.ts_ms);
            input.send(e);
            if i % 1_000 == 999 {
                let watermark = newest.saturating_sub(5_000);
                if watermark > *input.time() {
                    input.advance_to(watermark);
                    ticks.advance_to(watermark);
                }
                worker.step_while(|| probe.less_than(input.time()));
            }
            if i % 10_000 == 9_999 {
                ticks.send(());
            }
        }
        drop(input);
        drop(ticks);
        while !probe.done() {
            worker.step();
        }
        rows.get()
    })
}

fn throughput(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group("operator_core");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    for (name, windows) in window_sets() {
        let t = topology(&windows);
        group.bench_with_input(BenchmarkId::new("dedup+window_rollup", name), &t, |b, t| {
            b.iter_batched(|| events.clone(), |e| run(t, e), BatchSize::LargeInput)
        });
    }
    // The 3 windows plus sessions (30 min gap) and the four session metrics: dedup, window
    // rollup and session rollup.
    let windows = &window_sets()[1].1;
    let mut with_sessions = topology(windows);
    with_sessions.sessions = Some(SessionSpec::default());
    with_sessions.metrics.extend([
        Metric::Sessions,
        Metric::BounceRate,
        Metric::AvgSessionDurationS,
        Metric::EventsPerSession,
    ]);
    group.bench_with_input(
        BenchmarkId::new("dedup+window_rollup+session_rollup", "3 windows"),
        &with_sessions,
        |b, t| b.iter_batched(|| events.clone(), |e| run(t, e), BatchSize::LargeInput),
    );
    group.finish();
}

/// Bytes allocated (and still held) by a `unique_users` accumulator after `n` distinct users.
fn state_bytes(mode: DistinctMode, n: usize) -> isize {
    let region = Region::new(GLOBAL);
    let mut acc = accumulator(&Component::UniqueUsers, mode, &[]);
    for u in 0..n {
        acc.add(&Point {
            ts_ms: 0,
            user: hash128(&format!("u{u}")),
            session: None,
            event_type: 0,
            groups: Vec::new(),
            fields: Vec::new(),
            replayed: false,
        });
    }
    let stats = region.change();
    let held = stats.bytes_allocated as isize - stats.bytes_deallocated as isize;
    drop(acc);
    held
}

fn report_state() {
    println!("state of one unique_users accumulator (one window, one group), allocator-measured:");
    println!(
        "{:>10} {:>14} {:>10} {:>14} {:>10}",
        "users", "exact bytes", "B/user", "approx bytes", "B/user"
    );
    for n in [1, 100, 1_000, 10_000, 100_000, 1_000_000] {
        let exact = state_bytes(DistinctMode::Exact, n);
        let approx = state_bytes(DistinctMode::Approx, n);
        println!(
            "{n:>10} {exact:>14} {:>10.1} {approx:>14} {:>10.2}",
            exact as f64 / n as f64,
            approx as f64 / n as f64
        );
    }
}

fn main() {
    report_state();
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c);
    c.final_summary();
}
