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
fn late_events_are_applied_when_exact() {
    let grace = MIN;
    let t = topology(10 * MIN, HOUR, &[WindowSpec::tumbling("1h", HOUR)], &[]);
    let mut replayed = point(1, T0 + 4 * MIN, &[]);
    replayed.replayed = true;
    let steps = vec![
        Step::Read(T0, point(1, T0, &[])),
        Step::Tick,
        // 5 min + 10 min gap + 1 min grace = 16 min <= the watermark: late. Nothing of user 1 is
        // forgotten and 1h@T0 is open until T0 + 1 h + 81 min: applied, joining T0.
        Step::Read(T0 + 16 * MIN, point(1, T0 + 5 * MIN, &[])),
        // Late too, a replay: applied alike.
        Step::Read(T0 + 16 * MIN, replayed),
        // On time (6 + 10 + 1 > 16.99).
        Step::Read(T0 + 16 * MIN + 59_999, point(2, T0 + 6 * MIN, &[])),
        Step::Tick,
    ];
    for workers in [1, 2] {
        let r = run(&t, grace, &steps, workers);
        assert_eq!(r.late, 0);
        if workers == 1 {
            // On one worker the first tick is seen before the late reads (with two, a worker
            // may step past it first: the settled rows below are what is deterministic).
            let rows = by_key(&t, grace, &r);
            assert_eq!(rows[&k("1h", T0, "", "")][0], (vec![1, 1, 0, 1], false));
        }
        // User 1: T0, T0 + 4, T0 + 5; user 2: a bounce.
        let want = BTreeMap::from([(k("1h", T0, "", ""), vec![2, 1, 5 * MIN, 4])]);
        assert_eq!(settled(&t, grace, &r), want);
    }
}

#[test]
fn a_late_event_near_a_forgotten_session_or_in_closed_windows_is_counted_not_applied() {
    // gap 10 min, grace 1 min: session delay 1 h + 2 gap + grace = 81 min; 1h@T0 closes at
    // T0 + 141 min, 1h@T0+1h at T0 + 201 min.
    let (gap, grace) = (10 * MIN, MIN);
    let t = topology(gap, HOUR, &[WindowSpec::tumbling("1h", HOUR)], &[]);
    let at = |m: u64| T0 + m * MIN;
    let mut replay = point(5, at(59), &[]);
    replay.replayed = true;
    let steps = vec![
        Step::Read(T0, point(1, at(50), &[])),
        Step::Read(T0, point(2, at(30), &[])),
        Step::Tick,
        // Late (90 + 11 <= 141), 1h@T0+1h open: applied.
        Step::Read(at(141), point(3, at(90), &[])),
        // The frontier at T0 + 141 min: user 1's session (windows closed) is forgotten.
        Step::Tick,
        // 10 min after it (it would join it): counted, although 1h@T0+1h is open.
        Step::Read(at(141), point(1, at(60), &[])),
        // 25 min after it: a new session, applied.
        Step::Read(at(141), point(1, at(75), &[])),
        // A new user, but 1h@T0 is closed: counted; a replay alike, not counted.
        Step::Read(at(141), point(4, at(59), &[])),
        Step::Read(at(141), replay),
        Step::Tick,
    ];
    // One worker: workers are not in step, so with more a tick does not ensure that the
    // frontier reached T0 + 141 min at the user's worker before the next read.
    let r = run(&t, grace, &steps, 1);
    assert_eq!(r.late, 2);
    let want = BTreeMap::from([
        (k("1h", T0, "", ""), vec![2, 2, 0, 2]),
        (k("1h", at(60), "", ""), vec![2, 2, 0, 2]),
    ]);
    assert_eq!(settled(&t, grace, &r), want);
}

#[test]
fn a_session_is_kept_until_every_window_it_counts_in_has_closed() {
    // gap 10 min, max 1 h, grace 1 min: session delay 60 + 20 + 1 = 81 min. A session starting
    // at T0 + 35 min counts in 1h@T0 (ends T0 + 60) and 1h_20m@T0-20, @T0, @T0+20 (the last
    // ends T0 + 80): it is forgotten at T0 + 80 + 81 = T0 + 161 min (the hopping kind decides).
    // Its events T0 + 35, 44, …, 89 are one session (89 − 35 < 60); an event at T0 + 97 is
    // within gap of 89 but 62 min after 35: a new session, in windows closing at T0 + 100 + 81
    // at the earliest. While the session is kept it is applied; once forgotten it is refused
    // (it could join a forgotten session, as far as the operator knows).
    let (gap, grace) = (10 * MIN, MIN);
    let t = topology(
        gap,
        HOUR,
        &[
            WindowSpec::tumbling("1h", HOUR),
            WindowSpec::hopping("1h_20m", HOUR, 20 * MIN),
        ],
        &[],
    );
    let at = |m: u64| T0 + m * MIN;
    let edge = at(161);
    let mut steps = Vec::new();
    let mut points = Vec::new();
    for user in [1, 2] {
        for m in [35, 44, 53, 62, 71, 80, 89] {
            points.push(point(user, at(m), &[]));
            steps.push(Step::Read(T0, point(user, at(m), &[])));
        }
    }
    steps.push(Step::Tick);
    // The frontier just before the edge (an on-time event of user 8), then an event late
    // (97 + 11 <= 161) but applied.
    steps.push(Step::Read(edge - 1, point(8, at(165), &[])));
    points.push(point(8, at(165), &[]));
    steps.push(Step::Tick);
    steps.push(Step::Read(edge - 1, point(1, at(97), &[])));
    points.push(point(1, at(97), &[]));
    // The frontier at the edge (an on-time event of user 9), then the same event for user 2.
    steps.push(Step::Read(edge, point(9, at(170), &[])));
    points.push(point(9, at(170), &[]));
    steps.push(Step::Tick);
    steps.push(Step::Read(edge, point(2, at(97), &[])));
    steps.push(Step::Tick);
    // One worker, so the frontier is at the edge after the tick (see above).
    let r = run(&t, grace, &steps, 1);
    assert_eq!(r.late, 1);
    let got = settled(&t, grace, &r);
    let long = vec![2, 0, 2 * 54 * MIN, 14];
    let bounce = vec![1, 1, 0, 1];
    assert_eq!(got[&k("1h", T0, "", "")], long);
    assert_eq!(got[&k("1h_20m", at(20), "", "")], long);
    assert_eq!(got[&k("1h", at(60), "", "")], bounce);
    assert_eq!(got[&k("1h_20m", at(40), "", "")], bounce);
    assert_eq!(got, rows_map(&session_rows(&t, &points)));
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

/// A back-fill: events of 4 users over 4 hours, read up to 3 hours after their time, in
/// arrival order.
fn arb_backfill() -> impl Strategy<Value = (Vec<(u64, Point)>, usize, u64)> {
    let event = (
        0u128..4,
        0u64..240,
        0u64..3,
        0usize..3,
        0usize..2,
        0u64..=180,
    );
    (
        prop::collection::vec(event, 1..80),
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

    /// Events read long after their time, the watermark hours ahead of most of them (late for
    /// sessions) but short of closing any session window (none before T0 + session delay,
    /// with sessions of up to 90 min): every event is applied, and the settled rows equal the
    /// naive model on 1, 2 and 4 workers.
    #[test]
    fn late_events_are_applied_while_their_windows_are_open(
        (arrivals, tick_every, grace) in arb_backfill(),
        lead in prop::sample::select(vec![0, HOUR, 3 * HOUR]),
    ) {
        let t = topology(
            15 * MIN,
            90 * MIN,
            &[WindowSpec::tumbling("30m", 30 * MIN), WindowSpec::hopping("1h_20m", HOUR, 20 * MIN)],
            &[("metadata.platform", 2), ("event_type", 1)],
        );
        let spec = t.sessions.expect("sessions");
        // Every session starts at T0 or later, so every window it counts in closes after
        // T0 + delay (a window ends after its sessions' first event), and no session is
        // forgotten before.
        let cap = T0 + spec.window_delay_ms(grace);
        let mut steps = Vec::new();
        let mut late = 0;
        for (i, (arrival, p)) in arrivals.iter().enumerate() {
            let watermark = (arrival + lead).min(cap);
            late += usize::from(spec.is_late(p.ts_ms, watermark, grace));
            steps.push(Step::Read(watermark, p.clone()));
            if (i + 1) % tick_every == 0 {
                steps.push(Step::Tick);
            }
        }
        let points: Vec<Point> = arrivals.into_iter().map(|(_, p)| p).collect();
        if lead >= HOUR {
            // Read an hour or more after their time (the cap is T0 + 2 h 1 min and more): the
            // events of the first hour are late for sessions (15 min gap).
            let early = points.iter().filter(|p| p.ts_ms <= T0 + HOUR).count();
            prop_assert!(late >= early, "{} late, {} in the first hour", late, early);
        }
        let want = model::naive(&t, &points);
        for workers in [1, 2, 4] {
            let r = run(&t, grace, &steps, workers);
            prop_assert_eq!(r.late, 0);
            prop_assert_eq!(&settled(&t, grace, &r), &want, "{} workers", workers);
        }
    }
}
