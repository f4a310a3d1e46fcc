//! Deterministic tests of the window operators: scripted reads with explicit watermarks, outputs
//! checked against hand-computed values and against the naive reference model.

mod common;

use std::collections::BTreeMap;

use common::reference::expected;
use common::{finals, key, key_of, obs, product, run, standard_windows, Key, HOUR, MIN, T0};
use proptest::prelude::*;
use tally_core::{Dimension, FieldPath, Metric, Topology, Value, WindowSpec};
use tally_operators::Observation;

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
    } = run(&product(&standard_windows()), 5_000, &reads, 0);
    let finals = finals(&emitted);
    let row = |k: Key| finals[&k].clone();
    assert_eq!(row(key("1m", T0, None)), [3, 2, 1, 2]);
    assert_eq!(row(key("1m", T0, Some("view"))), [2, 2, 1, 1]);
    assert_eq!(row(key("1m", T0, Some("click"))), [1, 1, 1, 1]);
    assert_eq!(row(key("1m", T0 + MIN, None)), [1, 1, 1, 1]);
    assert_eq!(row(key("1h", T0, None)), [4, 3, 2, 2]);
    assert_eq!(row(key("1d", T0 - 10 * HOUR, None)), [4, 3, 2, 2]);
    // 2 minute windows x (all + 2 types, but minute 2 has one type) + hour (3) + day (3)
    assert_eq!(finals.len(), 3 + 2 + 3 + 3);
    assert_eq!(counters.duplicates(), 1);
    // Final rows are emitted exactly at their window's close time.
    let size = |w: &str| match w {
        "1m" => MIN,
        "1h" => HOUR,
        _ => 24 * HOUR,
    };
    for (time, row) in emitted.iter().filter(|(_, r)| r.is_final) {
        assert_eq!(*time, row.start_ms + size(&row.window) + 5_000);
    }
}

#[test]
fn hopping_windows_count_each_event_in_every_window_containing_it() {
    // 30-minute windows every 10 minutes; events at 10:05 and 10:25 (u1, u2) and 10:41 (u1).
    let w = WindowSpec::hopping("30m_10m", 30 * MIN, 10 * MIN);
    let at = |m: u64| T0 + m * MIN;
    let reads = vec![
        (0, obs("a", at(5), "click", "u1", None)),
        (0, obs("b", at(25), "view", "u2", None)),
        (0, obs("c", at(41), "click", "u1", None)),
    ];
    let out = run(&product(&[w]), 0, &reads, 0);
    let finals = finals(&out.emitted);
    let all = |m: u64| {
        finals
            .get(&key("30m_10m", at(0) + m * MIN - 20 * MIN, None))
            .cloned()
    };
    // Windows from 9:40 ... 10:40: [9:40,10:10) a; [9:50,10:20) a; [10:00,10:30) a b;
    // [10:10,10:40) b; [10:20,10:50) b c; [10:30,11:00) c; [10:40,11:10) c.
    let events: Vec<(u64, u64)> = (0..7)
        .map(|k| (k, all(k * 10).map_or(0, |r| r[0])))
        .collect();
    assert_eq!(
        events,
        [(0, 1), (1, 1), (2, 2), (3, 1), (4, 2), (5, 1), (6, 1)]
    );
    assert_eq!(all(20), Some(vec![2, 2, 0, 2]));
    assert_eq!(all(40), Some(vec![2, 2, 0, 2]));
    assert_eq!(finals[&key("30m_10m", at(20), Some("click"))], [1, 1, 0, 1]);
    assert_eq!(finals.len(), 7 + 9);
}

#[test]
fn dimensions_past_their_cap_fold_into_other_in_any_order() {
    // metadata.platform capped at 2 values: of ios, android, web, tv the two with the smallest
    // hash64 keep their rows; the others fold into __other__. Sum and max of price: columns
    // events, sum_metadata_price, count_metadata_price, max_metadata_price.
    let price = FieldPath::parse("metadata.price").expect("path");
    let topology = Topology::builder("shop")
        .window(WindowSpec::tumbling("1h", HOUR))
        .dimension(Dimension {
            max_values: 2,
            ..Dimension::parse("metadata.platform").expect("dimension")
        })
        .metric(Metric::Events)
        .metric(Metric::Sum(price.clone()))
        .metric(Metric::Max(price))
        .build()
        .expect("valid");
    let platforms = ["ios", "android", "web", "tv"];
    let mut by_hash = platforms.to_vec();
    by_hash.sort_by_key(|p| tally_operators::hash64(p));
    let event = |i: usize, platform: &str, price: f64| {
        let mut o = obs(&format!("e{i}"), T0 + i as u64 * 1_000, "buy", "u", None);
        o.metadata = std::sync::Arc::new(
            serde_json::json!({ "platform": platform, "price": price })
                .as_object()
                .cloned()
                .expect("object"),
        );
        o
    };
    // Prices in quarters: sums are exact in any order.
    let script: Vec<(&str, f64)> = vec![
        ("tv", 1.25),
        ("ios", 2.0),
        ("web", 0.5),
        ("android", 4.75),
        ("tv", 3.0),
        ("ios", 0.25),
    ];
    let price_of = |ps: &[&str]| -> (u64, f64, f64) {
        let xs: Vec<f64> = script
            .iter()
            .filter(|(p, _)| ps.contains(p))
            .map(|(_, x)| *x)
            .collect();
        let max = xs.iter().copied().fold(0.0, f64::max);
        (xs.len() as u64, xs.iter().sum(), max)
    };
    let mut want: Vec<(String, (u64, f64, f64))> = vec![
        (String::new(), price_of(&platforms)),
        (by_hash[0].to_owned(), price_of(&by_hash[..1])),
        (by_hash[1].to_owned(), price_of(&by_hash[1..2])),
        ("__other__".to_owned(), price_of(&by_hash[2..])),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let mut zero_rows = 0;
    for rotation in 0..script.len() {
        for tick_every in [0, 1, 2] {
            let reads: Vec<(u64, Observation)> = (0..script.len())
                .map(|k| {
                    let i = (k + rotation) % script.len();
                    (0, event(i, script[i].0, script[i].1))
                })
                .collect();
            let out = run(&topology, 0, &reads, tick_every);
            // The settled value of each key: its last row (final).
            let mut last: std::collections::BTreeMap<Key, (bool, Vec<Value>)> = Default::default();
            for (_, row) in &out.emitted {
                last.insert(key_of(row), (row.is_final, row.values.clone()));
            }
            assert!(last.values().all(|(is_final, _)| *is_final));
            assert!(last.values().all(|(_, v)| v[0].as_f64() == v[2].as_f64()));
            zero_rows += last.values().filter(|(_, v)| v[0] == Value::U64(0)).count();
            let mut got: Vec<(String, (u64, f64, f64))> = last
                .into_iter()
                .filter(|(_, (_, v))| v[0] != Value::U64(0))
                .map(|(k, (_, v))| (k.3, (v[0].as_f64() as u64, v[1].as_f64(), v[3].as_f64())))
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(got, want, "rotation {rotation}, tick every {tick_every}");
            let folded = price_of(&by_hash[2..]).0;
            assert_eq!(out.counters.folded(), folded);
        }
    }
    // Some orders showed a value that a smaller hash later pushed out: its last row is zero.
    assert!(zero_rows > 0);
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
    } = run(&product(&standard_windows()), grace, &reads, 0);
    let finals = finals(&emitted);
    assert_eq!(finals[&key("1m", T0, None)][0], 1);
    assert_eq!(finals[&key("1h", T0, None)][0], 3);
    assert_eq!(finals[&key("1h", T0, None)][1], 3);
    assert_eq!(counters.late("product", "1m"), 1);
    assert_eq!(counters.late("product", "1h"), 0);
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
    } = run(&product(&standard_windows()), grace, &reads, 0);
    let finals = finals(&emitted);
    assert_eq!(finals[&key("1m", T0, None)][0], 1);
    assert_eq!(finals[&key("1h", T0, None)][0], 2);
    assert_eq!(counters.late("product", "1m"), 0);
}

#[test]
fn ticks_emit_provisional_rows_of_changed_windows_only() {
    let reads = vec![
        (0, obs("a", T0, "click", "u1", None)),
        (0, obs("b", T0 + 1, "click", "u2", None)),
        (T0 + 3 * MIN, obs("c", T0 + 3 * MIN, "view", "u2", None)),
    ];
    let topology = Topology::builder("t")
        .window(WindowSpec::tumbling("1m", MIN))
        .metric(Metric::Events)
        .build()
        .expect("valid");
    let emitted = run(&topology, 0, &reads, 1).emitted;
    let first_minute: Vec<(Value, bool)> = emitted
        .iter()
        .filter(|(_, r)| r.start_ms == T0)
        .map(|(_, r)| (r.values[0], r.is_final))
        .collect();
    // Provisional after each of the first two reads, then the final row; the third tick finds
    // the first minute unchanged and emits nothing more for it.
    let n = Value::U64;
    assert_eq!(
        first_minute,
        vec![(n(1), false), (n(2), false), (n(2), true)]
    );
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
fn reads_strategy() -> impl Strategy<Value = (Vec<WindowSpec>, u64, Vec<(u64, Observation)>)> {
    let standard = standard_windows();
    let windows = prop_oneof![
        Just(standard.clone()),
        Just(standard[..2].to_vec()),
        Just(standard[..1].to_vec()),
        Just(vec![
            standard[0].clone(),
            WindowSpec::hopping("1h_15m", HOUR, 15 * MIN),
        ]),
        Just(vec![WindowSpec::hopping("5m_1m", 5 * MIN, MIN)]),
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
                        metadata: Default::default(),
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
            (windows, grace, reads)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn operators_match_reference((windows, grace, reads) in reads_strategy(), tick_every in 0usize..7) {
        let topology = product(&windows);
        let common::Output { emitted, kept, counters } = run(&topology, grace, &reads, tick_every);
        let want = expected(&windows, grace, &reads);
        prop_assert_eq!(&finals(&emitted), &want.finals);
        for w in &windows {
            let late = want.late.get(&w.name).copied().unwrap_or(0);
            prop_assert_eq!(counters.late("product", &w.name), late);
        }
        prop_assert_eq!(counters.duplicates(), want.duplicates);
        prop_assert_eq!(&kept, &want.kept);
        // Provisional rows never exceed the final value and never go backwards.
        let mut last: BTreeMap<Key, Vec<u64>> = BTreeMap::new();
        for (_, row) in &emitted {
            let v: Vec<u64> = row.values.iter().map(|x| x.as_f64() as u64).collect();
            if let Some(prev) = last.insert(key_of(row), v.clone()) {
                prop_assert!(prev.iter().zip(&v).all(|(a, b)| a <= b));
            }
        }
    }
}
