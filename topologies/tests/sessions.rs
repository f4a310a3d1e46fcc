//! Property test of a topology with sessions through the whole dataflow: both tables (window
//! metrics and session metrics) settle on naive models (sessions: a plain sort-and-scan per
//! user), on 1, 2 and 4 workers, for two interleavings of the partitions.

mod common;

use common::model::{model, session_model};
use common::{case_strategy, script, settled, MIN};
use proptest::prelude::*;
use tally_core::{Dimension, Filter, Metric, RowTable, Topology, WindowSpec};
use tally_topologies::kit::{run, Config};

/// A web-sessions topology: 1 h tumbling and 30 min every 15 min windows, sessions (gap 10 min,
/// at most 40 min), platform with a small cap, optionally a filter.
fn session_topology_strategy() -> impl Strategy<Value = Topology> {
    (1usize..4, any::<bool>(), any::<bool>()).prop_map(|(cap, filtered, with_type)| {
        let mut b = Topology::builder("web")
            .window(WindowSpec::tumbling("1h", 60 * MIN))
            .window(WindowSpec::hopping("30m_15m", 30 * MIN, 15 * MIN))
            .sessions(tally_core::SessionSpec {
                gap_ms: 10 * MIN,
                max_duration_ms: 40 * MIN,
            })
            .dimension(Dimension {
                max_values: cap,
                ..Dimension::parse("metadata.platform").expect("dimension")
            })
            .metric(Metric::Events)
            .metric(Metric::UniqueUsers)
            .metric(Metric::Sessions)
            .metric(Metric::BounceRate)
            .metric(Metric::AvgSessionDurationS)
            .metric(Metric::EventsPerSession);
        if with_type {
            b = b.dimension(Dimension {
                max_values: 2,
                ..Dimension::parse("event_type").expect("dimension")
            });
        }
        if filtered {
            b = b.filter(Filter::EventTypeNotIn(vec!["search".into()]));
        }
        b.build().expect("valid topology")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// A topology with sessions: both tables settle on the models (windows: `model`; sessions:
    /// sort-and-scan per user), on 1, 2 and 4 workers, for two partition interleavings.
    #[test]
    fn session_and_window_rows_match_the_models(
        topology in session_topology_strategy(),
        case in case_strategy(60),
        step_every in 0usize..3,
    ) {
        // Distinct times per event, so a session's first event is never a tie.
        let mut case = case;
        for e in &mut case.events {
            e.ts_ms = e.ts_ms / 1_000 * 1_000 + e.id as u64;
        }
        let mut want = model(&topology, &case.events);
        want.extend(session_model(&topology, &case.events));
        prop_assert!(want.keys().any(|k| k.table == RowTable::Sessions));
        for order in &case.interleavings {
            let script = script(&case, order);
            for workers in [1, 2, 4] {
                let config = Config { step_every, ..Config::workers(workers) };
                let out = run(&script, std::slice::from_ref(&topology), &config);
                let got = settled(&out.rows).map_err(TestCaseError::fail)?;
                prop_assert_eq!(&got, &want, "{} workers", workers);
            }
        }
    }
}
