//! Deterministic tests of the window operators: scripted reads with explicit watermarks, outputs
//! checked against hand-computed values and against the naive reference model.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use proptest::prelude::*;
use tally_operators::reference::{expected, late};
use tally_operators::{
    Dedup, Observation, OperatorCounters, Rollup, RollupRow, RollupSpec, Window, WindowKey,
};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle};

/// Rows emitted, with the dataflow time they were emitted at.
type Emitted = Vec<(u64, RollupRow)>;

/// Runs dedup + rollup over `reads` (watermark at read time, event) on one worker, sending a tick
/// after every `tick_every` reads, and returns the emitted rows and the counters.
fn run(
    spec: &RollupSpec,
    reads: &[(u64, Observation)],
    tick_every: usize,
) -> (Emitted, OperatorCounters) {
    let spec = spec.clone();
    let reads = reads.to_vec();
    timely::execute_directly(move |worker| {
        let counters = OperatorCounters::default();
        let emitted = Rc::new(RefCell::new(Vec::new()));
        let mut input = InputHandle::new();
        let mut ticks = InputHandle::new();
        let probe = ProbeHandle::new();
        let sink = Rc::clone(&emitted);
        let c = counters.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let ticks = ticks.to_stream(scope);
            input
                .to_stream(scope)
                .dedup_events(spec.horizon(), spec.grace_ms, c.clone())
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
        let rows = emitted.borrow().clone();
        (rows, counters)
    })
}

fn spec(grace_ms: u64) -> RollupSpec {
    RollupSpec {
        windows: Window::ALL.to_vec(),
        grace_ms,
        per_event_type: true,
    }
}

fn obs(id: &str, ts_ms: u64, event_type: &str, user: &str, session: Option<&str>) -> Observation {
    Observation {
        event_id: tally_operators::hash128(id),
        ts_ms,
        event_type: event_type.to_owned(),
        user: tally_operators::hash128(user),
        session: session.map(tally_operators::hash128),
        replayed: false,
    }
}

fn finals(emitted: &Emitted) -> BTreeMap<WindowKey, RollupRow> {
    let mut out = BTreeMap::new();
    for (_, row) in emitted.iter().filter(|(_, r)| r.is_final) {
        let previous = out.insert(row.key.clone(), row.clone());
        assert!(previous.is_none(), "two final rows for {:?}", row.key);
    }
    out
}

fn key(window: Window, start_ms: u64, event_type: Option<&str>) -> WindowKey {
    WindowKey {
        window,
        start_ms,
        event_type: event_type.map(str::to_owned),
    }
}

// 2024-03-13T10:00:00Z
const T0: u64 = 1_710_324_000_000;
const MIN: u64 = 60_000;

#[test]
fn hand_computed_windows() {
    let reads = vec![
        (0, obs("e1", T0 + 1_000, "click", "u1", Some("s1"))),
        (0, obs("e2", T0 + 2_000, "view", "u1", Some("s1"))),
        (0, obs("e3", T0 + 59_999, "view", "u2", None)),
        (0, obs("e4", T0 + MIN, "click", "u3", Some("s2"))),
        (0, obs("e1", T0 + 1_000, "click", "u1", Some("s1"))), // a re-sent e1
    ];
    let (emitted, counters) = run(&spec(5_000), &reads, 0);
    let finals = finals(&emitted);
    let row = |k: &WindowKey| {
        let r = &finals[k];
        (
            r.events,
            r.unique_users,
            r.unique_sessions,
            r.unique_event_types,
        )
    };
    assert_eq!(row(&key(Window::Minute, T0, None)), (3, 2, 1, 2));
    assert_eq!(row(&key(Window::Minute, T0, Some("view"))), (2, 2, 1, 1));
    assert_eq!(row(&key(Window::Minute, T0, Some("click"))), (1, 1, 1, 1));
    assert_eq!(row(&key(Window::Minute, T0 + MIN, None)), (1, 1, 1, 1));
    assert_eq!(row(&key(Window::Hour, T0, None)), (4, 3, 2, 2));
    assert_eq!(
        row(&key(Window::Day, T0 - 10 * 3_600_000, None)),
        (4, 3, 2, 2)
    );
    // 2 minute windows x (all + 2 types, but minute 2 has one type) + hour (3) + day (3)
    assert_eq!(finals.len(), 3 + 2 + 3 + 3);
    assert_eq!(counters.duplicates(), 1);
    // Final rows are emitted exactly at their window's close time.
    for (time, row) in emitted.iter().filter(|(_, r)| r.is_final) {
        assert_eq!(*time, row.key.close_time(5_000));
    }
}

#[test]
fn late_events_count_in_longer_windows_only() {
    let grace = 1_000;
    let reads = vec![
        (0, obs("a", T0 + 10, "click", "u1", None)),
        // Watermark already past the first minute's close: late for 1m, on time for 1h and 1d.
        (T0 + MIN + grace, obs("b", T0 + 20, "click", "u2", None)),
        (
            T0 + MIN + grace,
            obs("c", T0 + MIN + 5, "click", "u3", None),
        ),
    ];
    let (emitted, counters) = run(&spec(grace), &reads, 0);
    let finals = finals(&emitted);
    assert_eq!(finals[&key(Window::Minute, T0, None)].events, 1);
    assert_eq!(finals[&key(Window::Hour, T0, None)].events, 3);
    assert_eq!(finals[&key(Window::Hour, T0, None)].unique_users, 3);
    assert_eq!(counters.late(Window::Minute), 1);
    assert_eq!(counters.late(Window::Hour), 0);
}

#[test]
fn replayed_late_events_are_dropped_but_not_counted_as_late() {
    let grace = 1_000;
    let mut replay = obs("b", T0 + 20, "click", "u2", None);
    replay.replayed = true;
    let reads = vec![
        (0, obs("a", T0 + 10, "click", "u1", None)),
        (T0 + MIN + grace, replay),
    ];
    let (emitted, counters) = run(&spec(grace), &reads, 0);
    let finals = finals(&emitted);
    assert_eq!(finals[&key(Window::Minute, T0, None)].events, 1);
    assert_eq!(finals[&key(Window::Hour, T0, None)].events, 2);
    assert_eq!(counters.late(Window::Minute), 0);
}

#[test]
fn ticks_emit_provisional_rows_of_changed_windows_only() {
    let reads = vec![
        (0, obs("a", T0, "click", "u1", None)),
        (0, obs("b", T0 + 1, "click", "u2", None)),
        (T0 + 3 * MIN, obs("c", T0 + 3 * MIN, "view", "u2", None)),
    ];
    let spec = RollupSpec {
        windows: vec![Window::Minute],
        grace_ms: 0,
        per_event_type: false,
    };
    let (emitted, _) = run(&spec, &reads, 1);
    let first_minute: Vec<(u64, bool)> = emitted
        .iter()
        .filter(|(_, r)| r.key.start_ms == T0)
        .map(|(_, r)| (r.events, r.is_final))
        .collect();
    // Provisional after each of the first two reads, then the final row; the third tick finds
    // the first minute unchanged and emits nothing more for it.
    assert_eq!(first_minute, vec![(1, false), (2, false), (2, true)]);
}

/// Generates a read sequence: events with disorder, sometimes re-sent, read in arrival order
/// with the watermark (max event time seen - bound) as the dataflow time.
fn reads_strategy() -> impl Strategy<Value = (u64, u64, Vec<(u64, Observation)>)> {
    let event = (
        (0u64..3 * 3_600_000, 0u64..20_000),
        (0u8..12, 0u8..9, 0u8..4),
        (any::<bool>(), prop::bool::weighted(0.2)),
    );
    (
        0u64..30_000,
        0u64..10_000,
        prop::collection::vec(event, 1..150),
    )
        .prop_map(|(bound, grace, raw)| {
            // Start 90 minutes before a day boundary so all three window kinds split.
            let base = T0 + 14 * 3_600_000 - 90 * MIN;
            let mut arrivals: Vec<(u64, Observation)> = Vec::new();
            for (i, ((offset, jitter), (user, session, kind), (resend, replayed))) in
                raw.into_iter().enumerate()
            {
                let id = if resend && i > 0 {
                    format!("e{}", i / 2)
                } else {
                    format!("e{i}")
                };
                let ts = base + offset;
                let o = Observation {
                    event_id: tally_operators::hash128(&id),
                    ts_ms: if resend && i > 0 {
                        base + offset / 2
                    } else {
                        ts
                    },
                    event_type: ["click", "view", "buy", "search"][kind as usize].to_owned(),
                    user: u128::from(user),
                    session: (session < 8).then_some(u128::from(session)),
                    replayed,
                };
                arrivals.push((ts + jitter, o));
            }
            arrivals.sort_by_key(|(arrival, _)| *arrival);
            let mut max_ts = 0u64;
            let mut watermark = 0u64;
            let reads = arrivals
                .into_iter()
                .map(|(_, o)| {
                    let read = (watermark, o.clone());
                    max_ts = max_ts.max(o.ts_ms);
                    watermark = watermark.max(max_ts.saturating_sub(bound));
                    read
                })
                .collect();
            (bound, grace, reads)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn operators_match_reference((_bound, grace, reads) in reads_strategy(), tick_every in 0usize..7) {
        let spec = spec(grace);
        let (emitted, counters) = run(&spec, &reads, tick_every);
        let want = expected(&spec, &reads);
        prop_assert_eq!(&finals(&emitted), &want.finals);
        for w in Window::ALL {
            prop_assert_eq!(counters.late(w), late(&want, w));
        }
        prop_assert_eq!(counters.duplicates(), want.duplicates);
        // Provisional rows never exceed the final value and never go backwards.
        let mut last: BTreeMap<WindowKey, (u64, u64, u64, u64)> = BTreeMap::new();
        for (_, row) in &emitted {
            let v = (row.events, row.unique_users, row.unique_sessions, row.unique_event_types);
            if let Some(prev) = last.insert(row.key.clone(), v) {
                prop_assert!(prev.0 <= v.0 && prev.1 <= v.1 && prev.2 <= v.2 && prev.3 <= v.3);
            }
        }
    }
}
