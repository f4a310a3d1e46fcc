//! Property tests of the whole dataflow ([`tally_topologies::build`] through the kit): the
//! settled rows of generated topologies (tumbling and hopping windows, dimensions with small
//! caps so values fold into `__other__`, exact distinct counts, sum / avg / max of a field)
//! equal a naive model over the unique events, whatever the batch boundaries, the interleaving
//! of partitions and the number of workers (1, 2, 4). Approximate distinct counts stay within
//! the stated error.
//!
//! The model (`common::model::model`) is plain arithmetic over the events: no operator helper,
//! no `WindowSpec::starts`; the cap rule's hash is xxh3-64 called directly. Sessions:
//! `sessions.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::model::model;
use common::{case_strategy, script, settled, starts, topology_strategy, Ev, BASE, MIN};
use proptest::prelude::*;
use tally_core::{Dimension, DistinctMode, Metric, RowTable, Topology, Value, WindowSpec};
use tally_topologies::kit::{run, Config, RowKey, Script};

#[test]
fn brute_force_starts() {
    assert_eq!(starts(60, 60, 125), [120]);
    assert_eq!(starts(60, 15, 125), [75, 90, 105, 120]);
    assert_eq!(starts(60, 15, 20), [0, 15]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    /// Settled rows equal the model for two partition interleavings, on 1, 2 and 4 workers,
    /// with batches cut after every `step_every` events (0: only at ticks).
    #[test]
    fn settled_rows_match_the_model_whatever_the_workers_batches_and_interleaving(
        topology in topology_strategy(DistinctMode::Exact),
        case in case_strategy(80),
        step_every in 0usize..4,
    ) {
        let want = model(&topology, &case.events);
        for order in &case.interleavings {
            let script = script(&case, order);
            for workers in [1, 2, 4] {
                let config = Config { step_every, ..Config::workers(workers) };
                let out = run(&script, std::slice::from_ref(&topology), &config);
                let got = settled(&out.rows).map_err(TestCaseError::fail)?;
                prop_assert_eq!(&got, &want, "{} workers", workers);
                let resent = case.resend.iter().filter(|r| **r).count() as u64;
                prop_assert_eq!(out.counters.duplicates(), resent);
                prop_assert_eq!(out.kept.len(), case.events.len());
            }
        }
    }
}

/// Approximate distinct counts (HyperLogLog): exact while a group has at most 128 distinct ids,
/// and within 4 standard errors (4 x 1.6 %) above, on 1, 2 and 4 workers; every other column
/// exact.
#[test]
fn approx_distinct_counts_stay_within_the_stated_error() {
    let topology = Topology::builder("approx")
        .window(WindowSpec::tumbling("1h", 60 * MIN))
        .window(WindowSpec::hopping("10m_5m", 10 * MIN, 5 * MIN))
        .dimension(Dimension {
            max_values: 2,
            ..Dimension::parse("metadata.platform").expect("dimension")
        })
        .metric(Metric::Events)
        .metric(Metric::UniqueUsers)
        .metric(Metric::UniqueSessions)
        .distinct(DistinctMode::Approx)
        .build()
        .expect("valid");
    // 3000 events of 1500 users over an hour: hour groups hold ~1500 users, 10-minute ones
    // ~200-300 per platform, some below 128.
    let events: Vec<Ev> = (0..3_000)
        .map(|i| Ev {
            id: i,
            ts_ms: BASE + (i as u64 * 7_919) % (60 * MIN),
            user: 0,
            session: None,
            kind: 0,
            platform: Some((i % 3) as u8),
            price: None,
        })
        .collect();
    let user = |i: usize| (i * 31) % 1_500;
    let mut s = Script::new();
    for e in &events {
        let mut o = e.observation();
        o.user = tally_operators::hash128(&format!("user{}", user(e.id)));
        o.session = Some(tally_operators::hash128(&format!("sess{}", user(e.id) / 2)));
        s.event((e.id % 3) as u32, o);
    }
    // The exact model for comparison: same events, users and sessions as the script.
    let mut exact: BTreeMap<RowKey, (u64, BTreeSet<usize>, BTreeSet<usize>)> = BTreeMap::new();
    for e in &events {
        for w in &topology.windows {
            for start in starts(w.size_ms, w.slide_ms, e.ts_ms) {
                let mut platform = e.platform();
                let ranked = {
                    let mut r: Vec<&str> = vec!["ios", "android", "web"];
                    r.sort_by_key(|v| xxhash_rust::xxh3::xxh3_64(v.as_bytes()));
                    r
                };
                if !ranked[..2].contains(&platform.as_str()) {
                    platform = "__other__".into();
                }
                for (dimension, value) in [("", String::new()), ("metadata.platform", platform)] {
                    let key = RowKey {
                        topology: "approx".into(),
                        table: RowTable::Windows,
                        window: w.name.clone(),
                        start_ms: start,
                        dimension: dimension.into(),
                        value,
                    };
                    let g = exact.entry(key).or_default();
                    g.0 += 1;
                    g.1.insert(user(e.id));
                    g.2.insert(user(e.id) / 2);
                }
            }
        }
    }
    let sigma = DistinctMode::Approx.standard_error();
    let mut above_128 = 0;
    for workers in [1, 2, 4] {
        let out = run(
            &s,
            std::slice::from_ref(&topology),
            &Config::workers(workers),
        );
        let got = settled(&out.rows).expect("final rows");
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            exact.keys().collect::<Vec<_>>()
        );
        for (key, values) in &got {
            let (events, users, sessions) = &exact[key];
            assert_eq!(values[0], Value::U64(*events), "{key:?}");
            for (got, want) in [(values[1], users.len()), (values[2], sessions.len())] {
                let got = got.as_f64();
                let want = want as f64;
                if want <= 128.0 {
                    assert_eq!(got, want, "{key:?}: exact up to 128");
                } else {
                    above_128 += 1;
                    let error = (got - want).abs() / want;
                    assert!(error <= 4.0 * sigma, "{key:?}: {got} for {want} ({error})");
                }
            }
        }
    }
    assert!(above_128 > 10, "the test must reach the HyperLogLog range");
}
