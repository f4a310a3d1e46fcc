//! Deterministic tests of the window operators: scripted reads with explicit watermarks, outputs
//! checked against hand-computed values and against the naive reference model.

mod common;

use std::collections::BTreeMap;

use common::{finals, key, obs, run, spec, HOUR, MIN, T0};
use proptest::prelude::*;
use tally_operators::reference::{expected, late};
use tally_operators::{Observation, RollupSpec, Window, WindowKey};

#[test]
fn hand_computed_windows() {
    let reads = vec![
        (0, obs("e1", T0 + 1_000, "click", "u1", Some("s1"))),
        (0, obs("e2", T0 + 2_000, "view", "u1", Some("s1"))),
        (0, obs("e3", T0 + 59_999, "view", "u2", None)),
        (0, obs("e4", T0 + MIN, "click", "u3", Some("s2"))),
        (0, obs("e1", T0 + 1_000, "click", "u1", Some("s1"))), // a re-sent e1
    ];
    let common::Output {
        emitted, counters, ..
    } = run(&spec(5_000), &reads, 0);
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
    let common::Output {
        emitted, counters, ..
    } = run(&spec(grace), &reads, 0);
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
    let common::Output {
        emitted, counters, ..
    } = run(&spec(grace), &reads, 0);
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
    let emitted = run(&spec, &reads, 1).emitted;
    let first_minute: Vec<(u64, bool)> = emitted
        .iter()
        .filter(|(_, r)| r.key.start_ms == T0)
        .map(|(_, r)| (r.events, r.is_final))
        .collect();
    // Provisional after each of the first two reads, then the final row; the third tick finds
    // the first minute unchanged and emits nothing more for it.
    assert_eq!(first_minute, vec![(1, false), (2, false), (2, true)]);
}

/// One generated event: an original, or a retry of an earlier one.
#[derive(Clone, Debug)]
struct Gen {
    /// Offset from the base time (originals).
    offset: u64,
    /// How far a retry is re-stamped.
    restamp: u64,
    /// Arrival delay after the event time.
    jitter: u64,
    user: u8,
    session: u8,
    kind: u8,
    /// `Some((earlier, restamp earlier instead of later, keep the type))` for a retry.
    retry: Option<(prop::sample::Index, bool, bool)>,
    replayed: bool,
}

fn gen_strategy() -> impl Strategy<Value = Gen> {
    let offset = prop_oneof![
        3 => 0u64..3 * HOUR,
        // Near the midnight 90 minutes in, so retries often cross it.
        1 => 90 * MIN - 3_000..90 * MIN + 3_000,
    ];
    // Re-stamps: none (a plain re-send), the 1.5 s, or anything up to two hours.
    let restamp = prop_oneof![Just(0u64), Just(1_500u64), 0u64..2 * HOUR];
    let retry = prop::option::weighted(
        0.35,
        (
            any::<prop::sample::Index>(),
            prop::bool::weighted(0.2),
            any::<bool>(),
        ),
    );
    (
        (offset, restamp, 0u64..20_000),
        (0u8..12, 0u8..9, 0u8..4),
        (retry, prop::bool::weighted(0.2)),
    )
        .prop_map(
            |((offset, restamp, jitter), (user, session, kind), (retry, replayed))| Gen {
                offset,
                restamp,
                jitter,
                user,
                session,
                kind,
                retry,
                replayed,
            },
        )
}

/// Generates a window spec and a read sequence: events with disorder, some of them retries of
/// earlier ones (same id and user, possibly re-stamped, possibly with another type, sent after
/// the copy they retry), read in arrival order with the watermark (max event time seen - bound)
/// as the dataflow time. Shorter window sets make the dedup horizon pass within the sequence.
fn reads_strategy() -> impl Strategy<Value = (RollupSpec, Vec<(u64, Observation)>)> {
    let windows = prop_oneof![
        Just(Window::ALL.to_vec()),
        Just(vec![Window::Minute, Window::Hour]),
        Just(vec![Window::Minute]),
    ];
    (
        0u64..30_000,
        0u64..10_000,
        windows,
        prop::collection::vec(gen_strategy(), 1..150),
    )
        .prop_map(|(bound, grace, windows, gens)| {
            // Start 90 minutes before a day boundary so all three window kinds split.
            let base = T0 + 14 * HOUR - 90 * MIN;
            let mut arrivals: Vec<(u64, Observation)> = Vec::new();
            for (i, g) in gens.into_iter().enumerate() {
                let event_type = ["click", "view", "buy", "search"][g.kind as usize].to_owned();
                let o = match (g.retry, arrivals.is_empty()) {
                    (Some((earlier, back, keep_type)), false) => {
                        let (after, first) = arrivals[earlier.index(arrivals.len())].clone();
                        let ts_ms = if back {
                            first.ts_ms.saturating_sub(g.restamp)
                        } else {
                            first.ts_ms + g.restamp
                        };
                        let event_type = if keep_type {
                            first.event_type.clone()
                        } else {
                            event_type
                        };
                        let o = Observation {
                            ts_ms,
                            event_type,
                            replayed: g.replayed,
                            ..first
                        };
                        // A retry is sent after the copy it repeats.
                        arrivals.push(((ts_ms + g.jitter).max(after + 1), o));
                        continue;
                    }
                    _ => Observation {
                        event_id: tally_operators::hash128(&format!("e{i}")),
                        ts_ms: base + g.offset,
                        event_type,
                        user: u128::from(g.user),
                        session: (g.session < 8).then_some(u128::from(g.session)),
                        replayed: g.replayed,
                    },
                };
                arrivals.push((o.ts_ms + g.jitter, o));
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
            let spec = RollupSpec {
                windows,
                grace_ms: grace,
                per_event_type: true,
            };
            (spec, reads)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn operators_match_reference((spec, reads) in reads_strategy(), tick_every in 0usize..7) {
        let common::Output { emitted, kept, counters } = run(&spec, &reads, tick_every);
        let want = expected(&spec, &reads);
        prop_assert_eq!(&finals(&emitted), &want.finals);
        for w in Window::ALL {
            prop_assert_eq!(counters.late(w), late(&want, w));
        }
        prop_assert_eq!(counters.duplicates(), want.duplicates);
        prop_assert_eq!(&kept, &want.kept);
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
