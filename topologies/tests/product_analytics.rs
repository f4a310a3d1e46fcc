//! The product-analytics topology keeps exactly the first copy read of every event id, and the
//! raw payloads it passes on are those same copies: the raw rows and the rollups agree.

use std::sync::{Arc, Mutex};

use tally_operators::{hash128, Observation, OperatorCounters, RollupRow, RollupSpec, Window};
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

/// 2024-03-13T23:59:00Z
const T: u64 = 1_710_374_340_000;

/// A copy as read: the raw payload is a label naming the copy.
fn copy(label: &str, id: &str, ts_ms: u64, event_type: &str, user: &str) -> (Observation, String) {
    let o = Observation {
        event_id: hash128(id),
        ts_ms,
        event_type: event_type.to_owned(),
        user: hash128(user),
        session: None,
        replayed: false,
    };
    (o, label.to_owned())
}

/// Runs the topology over `reads` on `workers` workers, each worker reading its share (by
/// user, like a Kafka partition keyed by user id). Returns the kept payloads and the final rows.
fn run(workers: usize, reads: Vec<(u64, (Observation, String))>) -> (Vec<String>, Vec<RollupRow>) {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let finals = Arc::new(Mutex::new(Vec::new()));
    let (k, f) = (Arc::clone(&kept), Arc::clone(&finals));
    let config = timely::Config::process(workers);
    timely::execute(config, move |worker| {
        let spec = RollupSpec {
            windows: Window::ALL.to_vec(),
            grace_ms: 5_000,
            per_event_type: true,
        };
        let counters = OperatorCounters::default();
        let mut input = InputHandle::new();
        let mut ticks = InputHandle::new();
        let probe = ProbeHandle::new();
        let (k, f) = (Arc::clone(&k), Arc::clone(&f));
        worker.dataflow::<u64, _, _>(|scope| {
            let out = tally_topologies::product_analytics(
                input.to_stream(scope),
                ticks.to_stream(scope),
                &spec,
                &counters,
            );
            out.kept.inspect(move |label: &String| {
                k.lock().map(|mut v| v.push(label.clone())).ok();
            });
            out.rollups
                .inspect(move |row: &RollupRow| {
                    if row.is_final {
                        f.lock().map(|mut v| v.push(row.clone())).ok();
                    }
                })
                .probe_with(&probe);
        });
        let (index, peers) = (worker.index(), worker.peers());
        for (read_time, record) in reads.iter().cloned() {
            if record.0.user as usize % peers != index {
                continue;
            }
            if read_time > *input.time() {
                input.advance_to(read_time);
                ticks.advance_to(read_time);
            }
            input.send(record);
        }
        drop(input);
        drop(ticks);
        while !probe.done() {
            worker.step();
        }
    })
    .map(|guards| guards.join())
    .ok();
    let mut kept = kept.lock().map(|v| v.clone()).unwrap_or_default();
    kept.sort();
    let finals = finals.lock().map(|v| v.clone()).unwrap_or_default();
    (kept, finals)
}

fn reads() -> Vec<(u64, (Observation, String))> {
    vec![
        // The issue: one id three times, the third re-stamped 1.5 s later, plus another event.
        (0, copy("a1", "a", T + 10_000, "click", "ua")),
        (0, copy("a2", "a", T + 10_000, "click", "ua")),
        (0, copy("a3", "a", T + 11_500, "click", "ua")),
        (0, copy("b1", "b", T + 12_000, "view", "ub")),
        // Across UTC midnight (2024-03-14T00:00:00Z is T + 60 s).
        (0, copy("m1", "m", T + 59_500, "click", "um")),
        (T + 55_000, copy("m2", "m", T + 61_000, "click", "um")),
        // A retry with another event type.
        (T + 55_000, copy("c1", "c", T + 50_000, "click", "uc")),
        (T + 56_000, copy("c2", "c", T + 51_500, "purchase", "uc")),
    ]
}

fn check(workers: usize) {
    let (kept, finals) = run(workers, reads());
    assert_eq!(kept, ["a1", "b1", "c1", "m1"]);
    let day = |start: u64, event_type: Option<&str>| {
        finals
            .iter()
            .find(|r| {
                r.key.window == Window::Day
                    && r.key.start_ms == start
                    && r.key.event_type.as_deref() == event_type
            })
            .map_or(0, |r| r.events)
    };
    let midnight = T + 60_000;
    assert_eq!(day(midnight - 86_400_000, None), 4);
    assert_eq!(day(midnight, None), 0);
    assert_eq!(day(midnight - 86_400_000, Some("click")), 3);
    assert_eq!(day(midnight - 86_400_000, Some("purchase")), 0);
    let total: u64 = finals
        .iter()
        .filter(|r| r.key.window == Window::Minute && r.key.event_type.is_none())
        .map(|r| r.events)
        .sum();
    assert_eq!(total, 4);
}

#[test]
fn raw_and_rollups_keep_the_first_copy_on_one_worker() {
    check(1);
}

#[test]
fn raw_and_rollups_keep_the_first_copy_across_workers() {
    check(3);
}
