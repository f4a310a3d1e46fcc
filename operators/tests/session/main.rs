//! Session operator tests: hand-worked cases with explicit watermarks and ticks, and a property
//! test against a naive sort-and-scan model on 1, 2 and 4 workers.

mod harness;
mod model;

use std::collections::BTreeMap;

use harness::{by_key, k, point, rows_map, run, settled, topology, Step, HOUR, MIN, T0};
use proptest::prelude::*;
use tally_core::{Metric, SessionSpec, Topology, Value, WindowSpec, OTHER};
use tally_operators::{hash64, session_rows, Point};

#[test]
fn an_out_of_order_event_merges_two_sessions_and_replaces_their_rows() {
    let t = topology(10 * MIN, HOUR, &[WindowSpec::tumbling("1h", HOUR)], &[]);
    let steps = vec![
        Step::Read(T0, point(1, T0, &[])),
        Step::Read(T0, point(1, T0 + 15 * MIN, &[])),
        Step::Tick,
        Step::Read(T0 + MIN, point(1, T0 + 8 * MIN, &[])),
        Step::Tick,
    ];
    let r = run(&t, 0, &steps, 1);
    let rows = by_key(&t, 0, &r);
    // Two bounces (15 min apart > 10 min gap), then one session of 3 events over 15 min.
    assert_eq!(
        rows[&k("1h", T0, "", "")],
        vec![
            (vec![2, 2, 0, 2], false),
            (vec![1, 0, 15 * MIN, 3], false),
            (vec![1, 0, 15 * MIN, 3], true),
        ]
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(r.late, 0);
}

#[test]
fn max_duration_cuts_and_an_earlier_event_moves_the_cut() {
    let t = topology(10 * MIN, 30 * MIN, &[WindowSpec::tumbling("1h", HOUR)], &[]);
    let mut steps: Vec<Step> = [0, 9, 18, 27, 36]
        .iter()
        .map(|m| Step::Read(T0 - HOUR, point(7, T0 + m * MIN, &[])))
        .collect();
    steps.push(Step::Tick);
    steps.push(Step::Read(T0 - HOUR, point(7, T0 - 6 * MIN, &[])));
    let r = run(&t, 0, &steps, 1);
    let rows = by_key(&t, 0, &r);
    // 0..27 then 36 (36 min after the first event >= 30): 2 sessions, one a bounce.
    assert_eq!(
        rows[&k("1h", T0, "", "")][0],
        (vec![2, 1, 27 * MIN, 5], false)
    );
    // With -6: -6..18 (27 is 33 min after -6), then 27..36.
    let settled = settled(&t, 0, &r);
    let want = BTreeMap::from([
        (k("1h", T0 - HOUR, "", ""), vec![1, 0, 24 * MIN, 4]),
        (k("1h", T0, "", ""), vec![1, 0, 9 * MIN, 2]),
    ]);
    assert_eq!(settled, want);
    let all: Vec<Point> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Read(_, p) => Some(p.clone()),
            Step::Tick => None,
        })
        .collect();
    assert_eq!(rows_map(&session_rows(&t, &all)), want);
}

#[test]
fn hopping_windows_count_a_session_in_every_window_containing_its_first_event() {
    let t = topology(
        5 * MIN,
        HOUR,
        &[
            WindowSpec::tumbling("1h", HOUR),
            WindowSpec::hopping("1h_15m", HOUR, 15 * MIN),
        ],
        &[],
    );
    let points = vec![
        point(1, T0 + 20 * MIN, &[]),
        point(2, T0 + 50 * MIN, &[]),
        point(2, T0 + 52 * MIN, &[]),
    ];
    let steps: Vec<Step> = points.iter().map(|p| Step::Read(T0, p.clone())).collect();
    let a = vec![1, 1, 0, 1]; // user 1: one bounce
    let b = vec![1, 0, 2 * MIN, 2]; // user 2: two events over 2 min
    let ab = vec![2, 1, 2 * MIN, 3];
    let h = |m: i64| (T0 as i64 + m * MIN as i64) as u64;
    let want = BTreeMap::from([
        (k("1h", T0, "", ""), ab.clone()),
        (k("1h_15m", h(-30), "", ""), a.clone()),
        (k("1h_15m", h(-15), "", ""), a.clone()),
        (k("1h_15m", h(0), "", ""), ab.clone()),
        (k("1h_15m", h(15), "", ""), ab),
        (k("1h_15m", h(30), "", ""), b.clone()),
        (k("1h_15m", h(45), "", ""), b),
    ]);
    for workers in [1, 2] {
        assert_eq!(settled(&t, 0, &run(&t, 0, &steps, workers)), want);
    }
    assert_eq!(rows_map(&session_rows(&t, &points)), want);
}

#[test]
fn a_session_takes_the_dimension_values_of_its_first_event() {
    let t = topology(
        10 * MIN,
        HOUR,
        &[WindowSpec::tumbling("1h", HOUR)],
        &[("metadata.platform", 10)],
    );
    let p = "metadata.platform";
    let steps = vec![
        Step::Read(T0, point(1, T0 + 10 * MIN, &["web"])),
        Step::Read(T0, point(1, T0 + 15 * MIN, &["ios"])),
        // User 2, next hour: two events at the same time; "web" is read first.
        Step::Read(T0, point(2, T0 + 90 * MIN, &["web"])),
        Step::Tick,
        Step::Read(T0, point(1, T0 + 5 * MIN, &["android"])),
        Step::Read(T0, point(2, T0 + 90 * MIN, &["ios"])),
        Step::Tick,
    ];
    let r = run(&t, 0, &steps, 1);
    let rows = by_key(&t, 0, &r);
    // Before the out-of-order event user 1's session was "web"; then "android".
    assert_eq!(
        rows[&k("1h", T0, p, "web")][0],
        (vec![1, 0, 5 * MIN, 2], false)
    );
    assert_eq!(
        rows[&k("1h", T0, p, "web")].last(),
        Some(&(vec![0; 4], true))
    );
    assert!(!rows.contains_key(&k("1h", T0, p, "ios")));
    // Ties at the first time: the smallest values ("ios" < "web"), whatever the arrival order.
    let h1 = T0 + HOUR;
    assert_eq!(rows[&k("1h", h1, p, "web")][0], (vec![1, 1, 0, 1], false));
    let want = BTreeMap::from([
        (k("1h", T0, "", ""), vec![1, 0, 10 * MIN, 3]),
        (k("1h", T0, p, "android"), vec![1, 0, 10 * MIN, 3]),
        (k("1h", h1, "", ""), vec![1, 0, 0, 2]),
        (k("1h", h1, p, "ios"), vec![1, 0, 0, 2]),
    ]);
    assert_eq!(settled(&t, 0, &r), want);
}

#[test]
fn the_cap_keeps_the_smallest_hashes_and_zeroes_a_folded_group() {
    let t = topology(
        10 * MIN,
        HOUR,
        &[WindowSpec::tumbling("1h", HOUR)],
        &[("metadata.platform", 2)],
    );
    let p = "metadata.platform";
    let mut values = ["a", "b", "c", "d"];
    values.sort_by_key(|v| hash64(v));
    let [small1, small2, big1, biggest] = values;
    // The value with the largest hash first, alone: it keeps its row; then it is folded.
    let mut steps = vec![
        Step::Read(T0, point(4, T0 + 4 * MIN, &[biggest])),
        Step::Tick,
    ];
    for (i, v) in [small1, small2, big1].iter().enumerate() {
        steps.push(Step::Read(T0, point(i as u128, T0 + i as u64 * MIN, &[v])));
    }
    steps.push(Step::Tick);
    let r = run(&t, 0, &steps, 1);
    let rows = by_key(&t, 0, &r);
    assert_eq!(
        rows[&k("1h", T0, p, biggest)],
        vec![
            (vec![1, 1, 0, 1], false),
            (vec![0; 4], false),
            (vec![0; 4], true)
        ]
    );
    let bounce = vec![1, 1, 0, 1];
    let want = BTreeMap::from([
        (k("1h", T0, "", ""), vec![4, 4, 0, 4]),
        (k("1h", T0, p, small1), bounce.clone()),
        (k("1h", T0, p, small2), bounce),
        (k("1h", T0, p, OTHER), vec![2, 2, 0, 2]),
    ]);
    assert_eq!(settled(&t, 0, &r), want);
}

#[test]
fn late_events_are_counted_and_not_applied() {
    let grace = MIN;
    let t = topology(10 * MIN, HOUR, &[WindowSpec::tumbling("1h", HOUR)], &[]);
    let mut replayed = point(1, T0 + 4 * MIN, &[]);
    replayed.replayed = true;
    let steps = vec![
        Step::Read(T0, point(1, T0, &[])),
        // 5 min + 10 min gap + 1 min grace = 16 min <= the watermark: late.
        Step::Read(T0 + 16 * MIN, point(1, T0 + 5 * MIN, &[])),
        // Late too, but a replay: not counted.
        Step::Read(T0 + 16 * MIN, replayed),
        // On time (6 + 10 + 1 > 16.99).
        Step::Read(T0 + 16 * MIN + 59_999, point(2, T0 + 6 * MIN, &[])),
    ];
    let r = run(&t, grace, &steps, 1);
    assert_eq!(r.late, 1);
    let want = BTreeMap::from([(k("1h", T0, "", ""), vec![2, 2, 0, 2])]);
    assert_eq!(settled(&t, grace, &r), want);
}

#[test]
fn a_session_is_kept_until_no_on_time_event_can_change_it() {
    // gap 10 min + grace 1 min: a session whose last event is at T0 can still grow until the
    // watermark reaches T0 + 2 gap + grace = T0 + 21 min (an event at T0 + 10 min is on time
    // until then).
    let (gap, grace) = (10 * MIN, MIN);
    let t = topology(gap, HOUR, &[WindowSpec::tumbling("1h", HOUR)], &[]);
    let edge = T0 + 2 * gap + grace;
    let steps = vec![
        Step::Read(T0, point(1, T0, &[])),
        // Move the frontier to just before the edge, with another user's event.
        Step::Read(edge - 1, point(2, T0 + 30 * MIN, &[])),
        Step::Tick,
        Step::Read(edge - 1, point(1, T0 + gap, &[])),
        Step::Tick,
        // At the edge the same event would be late.
        Step::Read(edge, point(1, T0 + gap, &[])),
    ];
    let r = run(&t, grace, &steps, 1);
    assert_eq!(r.late, 1);
    let want = BTreeMap::from([(k("1h", T0, "", ""), vec![2, 1, gap, 3])]);
    assert_eq!(settled(&t, grace, &r), want);
}

#[test]
fn rows_carry_only_the_columns_the_metrics_need() {
    let t = Topology::builder("few")
        .window(WindowSpec::tumbling("1h", HOUR))
        .sessions(SessionSpec::default())
        .metric(Metric::Events)
        .metric(Metric::EventsPerSession)
        .build()
        .expect("topology");
    let points = vec![point(1, T0, &[]), point(1, T0 + MIN, &[])];
    let rows = session_rows(&t, &points);
    assert_eq!(rows.len(), 1);
    // sessions, session_events
    assert_eq!(rows[0].values, vec![Value::U64(1), Value::U64(2)]);
    let no_sessions = Topology::builder("none")
        .window(WindowSpec::tumbling("1h", HOUR))
        .metric(Metric::Events)
        .build()
        .expect("topology");
    assert!(session_rows(&no_sessions, &points).is_empty());
    let steps: Vec<Step> = points.into_iter().map(|p| Step::Read(T0, p)).collect();
    assert!(run(&no_sessions, 0, &steps, 1).emitted.is_empty());
}
fn arb_case() -> impl Strategy<Value = (Vec<(u64, Point)>, usize, u64)> {
    let event = (
        0u128..4,
        0u64..180,
        0u64..3,
        0usize..3,
        0usize..2,
        0u64..=20,
    );
    (
        prop::collection::vec(event, 1..60),
        1usize..6,
        prop::sample::select(vec![0, 30_000, MIN]),
    )
        .prop_map(|(events, tick_every, grace)| {
            let platforms = ["web", "ios", "android"];
            let types = ["click", "view"];
            let mut arrivals: Vec<(u64, Point)> = events
                .into_iter()
                .map(|(user, minute, jitter, platform, kind, delay)| {
                    let ts = T0 + minute * MIN + jitter * 20_000;
                    let p = point(user, ts, &[platforms[platform], types[kind]]);
                    (ts + delay * MIN, p)
                })
                .collect();
            arrivals.sort_by_key(|(arrival, _)| *arrival);
            (arrivals, tick_every, grace)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Events out of order by at most 20 min, the watermark as far ahead as it can be with
    /// nothing late (or a little behind that): the settled rows equal the naive model and
    /// `session_rows`, on 1, 2 and 4 workers, whatever the ticks.
    #[test]
    fn settled_rows_equal_sorting_and_scanning(
        (arrivals, tick_every, grace) in arb_case(),
        slack in prop::sample::select(vec![0, MIN, 10 * MIN]),
    ) {
        let t = topology(
            5 * MIN,
            25 * MIN,
            &[WindowSpec::tumbling("30m", 30 * MIN), WindowSpec::hopping("30m_10m", 30 * MIN, 10 * MIN)],
            &[("metadata.platform", 2), ("event_type", 1)],
        );
        // The latest watermark that leaves every later read on time: one ms short of the
        // earliest `ts + gap + grace` still to come, less the slack.
        let spec = t.sessions.expect("sessions");
        let mut watermarks: Vec<u64> = arrivals
            .iter()
            .map(|(_, p)| p.ts_ms + spec.gap_ms + grace - 1 - slack)
            .collect();
        for i in (1..watermarks.len()).rev() {
            watermarks[i - 1] = watermarks[i - 1].min(watermarks[i]);
        }
        let mut steps = Vec::new();
        for (i, ((_, p), watermark)) in arrivals.iter().zip(watermarks).enumerate() {
            steps.push(Step::Read(watermark, p.clone()));
            if (i + 1) % tick_every == 0 {
                steps.push(Step::Tick);
            }
        }
        let points: Vec<Point> = arrivals.into_iter().map(|(_, p)| p).collect();
        let want = model::naive(&t, &points);
        prop_assert_eq!(&rows_map(&session_rows(&t, &points)), &want);
        for workers in [1, 2, 4] {
            let r = run(&t, grace, &steps, workers);
            prop_assert_eq!(r.late, 0);
            prop_assert_eq!(&settled(&t, grace, &r), &want, "{} workers", workers);
        }
    }
}
