//! Deterministic tests of the dedup: one event id counts once whatever its retries carry (a new
//! time, another day, another type), the first copy read wins, and the id is forgotten only
//! after its horizon.

mod common;

use std::collections::BTreeMap;

use common::{key, obs, product, run, standard_windows, Key, Output, DAY, HOUR, MIN, T0};
use tally_core::WindowSpec;
use tally_operators::DedupHorizon;

/// `[events, unique users, unique sessions, unique event types]` of every final row.
fn finals(out: &Output) -> BTreeMap<Key, Vec<u64>> {
    common::finals(&out.emitted)
}

/// The 1m, 1h, 1d product topology.
fn run_standard(
    grace_ms: u64,
    reads: &[(u64, tally_operators::Observation)],
    tick: usize,
) -> Output {
    run(&product(&standard_windows()), grace_ms, reads, tick)
}

/// The final rows expected for `events` (event time, type), each a distinct event of its own
/// user, with no sessions: one all-events row and one per-type row per window.
fn expected_rows(events: &[(u64, &str)]) -> BTreeMap<Key, Vec<u64>> {
    let mut groups: BTreeMap<Key, Vec<&str>> = BTreeMap::new();
    for &(ts, event_type) in events {
        for (w, len) in [("1m", MIN), ("1h", HOUR), ("1d", DAY)] {
            let start = ts / len * len;
            groups
                .entry(key(w, start, None))
                .or_default()
                .push(event_type);
            let per_type = key(w, start, Some(event_type));
            groups.entry(per_type).or_default().push(event_type);
        }
    }
    groups
        .into_iter()
        .map(|(k, types)| {
            let n = types.len() as u64;
            let mut distinct = types.clone();
            distinct.sort_unstable();
            distinct.dedup();
            (k, vec![n, n, 0, distinct.len() as u64])
        })
        .collect()
}

#[test]
fn the_issue_input_counts_two_events_everywhere() {
    // One id three times, twice with one timestamp and once 1.5 s later (a client that
    // re-stamps on retry), plus one other event. The retry crosses a minute boundary.
    let t = T0 + 59_000;
    let reads = vec![
        (0, obs("e1", t, "click", "u1", None)),
        (0, obs("e1", t, "click", "u1", None)),
        (t - 5_000, obs("e1", t + 1_500, "click", "u1", None)),
        (t - 4_000, obs("e2", t + 4_000, "view", "u2", None)),
    ];
    let out = run_standard(5_000, &reads, 3);
    assert_eq!(out.kept, vec![reads[0].1.clone(), reads[3].1.clone()]);
    assert_eq!(out.counters.duplicates(), 2);
    assert_eq!(
        finals(&out),
        expected_rows(&[(t, "click"), (t + 4_000, "view")])
    );
    // Provisional rows never showed the retry either.
    let peak = out
        .emitted
        .iter()
        .filter(|(_, r)| common::key_of(r) == key("1h", T0, None))
        .map(|(_, r)| r.values[0].as_f64() as u64)
        .max();
    assert_eq!(peak, Some(2));
}

#[test]
fn a_retry_across_utc_midnight_counts_once() {
    let midnight = T0 + 14 * HOUR; // 2024-03-14T00:00:00Z
    let grace = 5_000;
    let reads = vec![
        (
            midnight - 6_000,
            obs("m", midnight - 500, "click", "u1", None),
        ),
        // The retry, stamped in the next day, arrives after the first day has closed.
        (
            midnight + grace + 1,
            obs("m", midnight + 1_000, "click", "u1", None),
        ),
        (
            midnight + grace + 1,
            obs("n", midnight + 2_000, "view", "u2", None),
        ),
    ];
    let out = run_standard(grace, &reads, 0);
    assert_eq!(out.counters.duplicates(), 1);
    let want = expected_rows(&[(midnight - 500, "click"), (midnight + 2_000, "view")]);
    assert_eq!(finals(&out), want);
    assert_eq!(finals(&out)[&key("1d", midnight, None)][0], 1);
}

#[test]
fn a_retry_with_another_event_type_counts_once_under_the_first_type() {
    let reads = vec![
        (0, obs("c", T0 + 1_000, "click", "u1", None)),
        (0, obs("c", T0 + 2_500, "purchase", "u1", None)),
        (0, obs("d", T0 + 3_000, "signup", "u2", None)),
    ];
    let out = run_standard(5_000, &reads, 1);
    assert_eq!(out.counters.duplicates(), 1);
    let want = expected_rows(&[(T0 + 1_000, "click"), (T0 + 3_000, "signup")]);
    assert_eq!(finals(&out), want);
    assert!(out.emitted.iter().all(|(_, r)| r.value != "purchase"));
}

#[test]
fn the_first_copy_read_wins_even_when_a_later_one_is_stamped_earlier() {
    let reads = vec![
        (0, obs("x", T0 + 2 * MIN, "click", "u1", None)),
        (0, obs("x", T0 + 10, "view", "u1", None)),
    ];
    let out = run_standard(5_000, &reads, 0);
    assert_eq!(out.kept, vec![reads[0].1.clone()]);
    assert_eq!(finals(&out), expected_rows(&[(T0 + 2 * MIN, "click")]));
}

#[test]
fn a_first_copy_late_everywhere_still_hides_its_retries() {
    // The first copy is read after its day closed (late for every window, counted nowhere, but
    // stored raw); a retry re-stamped into an open window within the horizon must not count.
    let grace = 5_000;
    let read_late = T0 + 15 * HOUR;
    let reads = vec![
        (read_late, obs("l", T0 + 1_000, "click", "u1", None)),
        (read_late, obs("l", read_late + 1_000, "click", "u1", None)),
    ];
    let out = run_standard(grace, &reads, 0);
    assert_eq!(out.kept, vec![reads[0].1.clone()]);
    assert_eq!(out.counters.duplicates(), 1);
    assert_eq!(out.counters.late("product", "1d"), 1);
    assert!(finals(&out).is_empty());
}

#[test]
fn an_id_is_forgotten_when_the_watermark_reaches_its_horizon() {
    // Minute windows only: the horizon of a copy at 10:00:10 is the end of its minute, plus
    // one minute, plus the grace: 10:02:01.
    let grace = 1_000;
    let topology = product(&[WindowSpec::tumbling("1m", MIN)]);
    let until = DedupHorizon::for_topologies(std::slice::from_ref(&topology), grace)
        .remembered_until(T0 + 10_000);
    assert_eq!(until, T0 + 2 * MIN + grace);
    let reads = vec![
        (0, obs("h", T0 + 10_000, "click", "u1", None)),
        // Just before the horizon: still a repeat, though its own minute is open.
        (
            until - 1,
            obs("h", T0 + 2 * MIN + 30_000, "click", "u1", None),
        ),
        // At the horizon: a new event.
        (until, obs("h", T0 + 2 * MIN + 40_000, "click", "u1", None)),
    ];
    let out = run(&topology, grace, &reads, 0);
    assert_eq!(out.kept, vec![reads[0].1.clone(), reads[2].1.clone()]);
    assert_eq!(out.counters.duplicates(), 1);
    let rows = finals(&out);
    assert_eq!(rows[&key("1m", T0, None)][0], 1);
    assert_eq!(rows[&key("1m", T0 + 2 * MIN, None)][0], 1);
}

#[test]
fn the_default_horizon_is_a_day_past_the_end_of_the_hour_plus_grace() {
    let h = DedupHorizon {
        longest_ms: DAY,
        grace_ms: 5_000,
    };
    assert_eq!(h.remembered_until(T0), T0 + HOUR + DAY + 5_000);
    assert_eq!(h.remembered_until(T0 + HOUR - 1), T0 + HOUR + DAY + 5_000);
    // At least the longest window plus grace past the event time, at most one hour more.
    for ts in [T0, T0 + 1, T0 + 59 * MIN, T0 + HOUR - 1] {
        let until = h.remembered_until(ts);
        assert!(until >= ts + DAY + 5_000 && until <= ts + DAY + HOUR + 5_000);
    }
}

#[test]
fn one_horizon_serves_every_topology_and_covers_session_gaps() {
    use tally_core::{Metric, SessionSpec, Topology};
    let minute = product(&[WindowSpec::tumbling("1m", MIN)]);
    let day = product(&standard_windows());
    let h = DedupHorizon::for_topologies(&[minute.clone(), day], 5_000);
    assert_eq!(h.longest_ms, DAY);
    // Minute windows with 30-minute sessions: ids are remembered past the gap.
    let sessions = Topology::builder("s")
        .window(WindowSpec::tumbling("1m", MIN))
        .sessions(SessionSpec {
            gap_ms: 30 * MIN,
            max_duration_ms: HOUR,
        })
        .metric(Metric::Sessions)
        .build()
        .expect("valid");
    let h = DedupHorizon::for_topologies(&[minute, sessions], 0);
    assert_eq!(h.longest_ms, 30 * MIN);
    assert_eq!(h.remembered_until(T0 + 1), T0 + 60 * MIN);
    assert_eq!(DedupHorizon::for_topologies(&[], 0).longest_ms, 0);
}
