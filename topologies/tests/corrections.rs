//! Late events and corrections: the rollups the pipeline writes, once every window marked by a
//! late event is recomputed from the raw events (the kept copies), equal a naive model over the
//! unique events, whatever the arrival order, on one worker or two, including events that
//! arrive seconds, hours, days or weeks after their windows closed.
//!
//! The model (`oracle`) is written with plain arithmetic, apart from the operators: no
//! `WindowSpec` helpers, no operator code. The topology is `product_analytics()`, run through
//! the kit (the real dataflow of `tally_topologies::build`).

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use tally_core::{RollupRow, RowTable};
use tally_operators::aggregate::window_rows;
use tally_operators::{late_windows, Observation, Point};
use tally_topologies::kit::{self, Script};
use tally_topologies::product_analytics;

const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;
/// Window lengths, as the model knows them.
const LENGTHS: [u64; 3] = [MINUTE, HOUR, DAY];
/// 2024-03-01T00:00:00Z.
const BASE: u64 = 1_709_251_200_000;
const GRACE_MS: u64 = 5_000;
/// The source's watermark trails the newest event time read by this much.
const OUT_OF_ORDERNESS_MS: u64 = 10_000;
const TYPES: [&str; 4] = ["click", "view", "purchase", "signup"];

/// One generated event (one copy as read).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    id: u32,
    ts_ms: u64,
    event_type: u8,
    user: u8,
    session: Option<u8>,
}

impl Ev {
    fn observation(&self) -> Observation {
        kit::event(
            &format!("e{}", self.id),
            self.ts_ms,
            TYPES[usize::from(self.event_type)],
            &format!("u{}", self.user),
            self.session.map(|s| format!("s{s}")).as_deref(),
        )
    }
}

/// (window length ms, window start ms, event type or `None` for all events).
type Key = (u64, u64, Option<String>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Agg {
    events: u64,
    unique_users: u64,
    unique_sessions: u64,
    unique_event_types: u64,
}

/// The reads: `(watermark at read time, event)` in arrival order. The watermark is the newest
/// event time read so far (this one included) minus the out-of-orderness: monotone, as a Kafka
/// source's.
fn schedule(arrivals: &[Ev]) -> Vec<(u64, Ev)> {
    let mut newest = 0;
    let mut watermark = 0;
    arrivals
        .iter()
        .map(|ev| {
            newest = newest.max(ev.ts_ms);
            watermark = watermark.max(newest.saturating_sub(OUT_OF_ORDERNESS_MS));
            (watermark, ev.clone())
        })
        .collect()
}

/// What one run of the topology produced.
struct Output {
    /// Final rollup rows.
    finals: Vec<RollupRow>,
    /// Every kept copy with the timely time it was read at.
    kept: Vec<(u64, Observation)>,
}

/// Runs `product_analytics` over `reads` on `workers` workers; each user's events are one
/// Kafka partition (worker `user % workers` reads it), read at the watermark of its read. The
/// inputs close at the end, so every window emits its final row.
fn run(workers: usize, reads: &[(u64, Ev)]) -> Output {
    let mut script = Script::new();
    for (read_time, ev) in reads {
        script.watermark(*read_time);
        script.event(u32::from(ev.user), ev.observation());
    }
    let config = kit::Config {
        grace_ms: GRACE_MS,
        ..kit::Config::workers(workers)
    };
    let out = kit::run(&script, &[product_analytics()], &config);
    Output {
        finals: out
            .rows
            .into_iter()
            .map(|(_, row)| row)
            .filter(|row| row.is_final)
            .collect(),
        kept: out
            .kept
            .into_iter()
            .map(|k| (k.read_time, k.observation))
            .collect(),
    }
}

fn key_of(row: &RollupRow) -> Key {
    let len = match &*row.window {
        "1m" => MINUTE,
        "1h" => HOUR,
        "1d" => DAY,
        other => panic!("unexpected window {other}"),
    };
    let event_type = (!row.dimension.is_empty()).then(|| row.value.clone());
    (len, row.start_ms, event_type)
}

/// The final rows as a map; every aggregate has exactly one final row.
fn final_rows(finals: &[RollupRow]) -> BTreeMap<Key, Agg> {
    let mut rows = BTreeMap::new();
    for row in finals {
        let v = |i: usize| row.values[i].as_f64() as u64;
        let agg = Agg {
            events: v(0),
            unique_users: v(1),
            unique_sessions: v(2),
            unique_event_types: v(3),
        };
        let previous = rows.insert(key_of(row), agg);
        assert!(previous.is_none(), "two final rows for {:?}", key_of(row));
    }
    rows
}

/// The windows the sink marks dirty: every late window of every kept copy, at its read time,
/// as (window length ms, start).
fn marks(kept: &[(u64, Observation)]) -> BTreeSet<(u64, u64)> {
    let topology = product_analytics();
    kept.iter()
        .flat_map(|(time, o)| late_windows(&topology, o.ts_ms, *time, GRACE_MS))
        .map(|(table, window, start)| {
            assert_eq!(table, RowTable::Windows);
            let len = match window.as_str() {
                "1m" => MINUTE,
                "1h" => HOUR,
                _ => DAY,
            };
            (len, start)
        })
        .collect()
}

/// Sets for one aggregate, turned into an [`Agg`].
#[derive(Default)]
struct Sets {
    events: u64,
    users: BTreeSet<u128>,
    sessions: BTreeSet<u128>,
    types: BTreeSet<String>,
}

impl Sets {
    fn add(&mut self, o: &Observation) {
        self.events += 1;
        self.users.insert(o.user);
        if let Some(s) = o.session {
            self.sessions.insert(s);
        }
        self.types.insert(o.event_type.clone());
    }

    fn agg(&self) -> Agg {
        Agg {
            events: self.events,
            unique_users: self.users.len() as u64,
            unique_sessions: self.sessions.len() as u64,
            unique_event_types: self.types.len() as u64,
        }
    }
}

/// How a correction counts the raw rows of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recompute {
    /// Every kept copy counts (`count()` over the raw rows).
    EveryKeptCopy,
    /// Each event id counts once, as its first kept copy: what `sinks::clickhouse::recompute`
    /// does (`GROUP BY event_id`, the copy with the smallest Kafka (partition, offset)). Copies
    /// of one id are judged by one dedup worker, in read order, so the first captured is the
    /// first read.
    FirstCopyPerId,
    /// As `FirstCopyPerId`, recomputed with `tally_operators::aggregate::window_rows` (what
    /// the correction job runs) instead of by brute force.
    WindowRows,
}

/// The settled rollups: the final rows, where every row (all events and every event type) of
/// every marked window is replaced by a brute-force recompute from the kept copies in it.
fn settle(out: &Output, recompute: Recompute) -> BTreeMap<Key, Agg> {
    let mut rows = final_rows(&out.finals);
    for (len, start) in marks(&out.kept) {
        rows.retain(|(l, s, _), _| (*l, *s) != (len, start));
        if recompute == Recompute::WindowRows {
            rows.extend(recompute_with_window_rows(&out.kept, len, start));
            continue;
        }
        let mut ids = BTreeSet::new();
        let mut sets: BTreeMap<Option<String>, Sets> = BTreeMap::new();
        for (_, o) in out
            .kept
            .iter()
            .filter(|(_, o)| o.ts_ms / len * len == start)
        {
            if !ids.insert(o.event_id) && recompute == Recompute::FirstCopyPerId {
                continue;
            }
            sets.entry(None).or_default().add(o);
            sets.entry(Some(o.event_type.clone())).or_default().add(o);
        }
        for (event_type, s) in sets {
            rows.insert((len, start, event_type), s.agg());
        }
    }
    rows
}

/// The rows of one window (length `len`, start `start`) recomputed from the first kept copy of
/// each id in it with `window_rows`.
fn recompute_with_window_rows(
    kept: &[(u64, Observation)],
    len: u64,
    start: u64,
) -> Vec<(Key, Agg)> {
    let topology = product_analytics();
    let mut ids = BTreeSet::new();
    let points: Vec<Point> = kept
        .iter()
        .filter(|(_, o)| o.ts_ms / len * len == start && ids.insert(o.event_id))
        .filter_map(|(_, o)| Point::project(&topology, o))
        .collect();
    let window_rows = window_rows(&topology, &points);
    window_rows
        .iter()
        .map(|row| (key_of(row), row))
        .filter(|((l, s, _), _)| (*l, *s) == (len, start))
        .map(|(key, row)| {
            let v = |i: usize| row.values[i].as_f64() as u64;
            let agg = Agg {
                events: v(0),
                unique_users: v(1),
                unique_sessions: v(2),
                unique_event_types: v(3),
            };
            (key, agg)
        })
        .collect()
}

/// The naive model: the unique events (first copy read of each id), every window and event
/// type aggregated over all of them.
fn oracle(reads: &[(u64, Ev)]) -> BTreeMap<Key, Agg> {
    let mut seen = BTreeSet::new();
    let mut sets: BTreeMap<Key, Sets> = BTreeMap::new();
    for (_, ev) in reads {
        if !seen.insert(ev.id) {
            continue;
        }
        let o = ev.observation();
        for len in LENGTHS {
            let start = o.ts_ms / len * len;
            sets.entry((len, start, None)).or_default().add(&o);
            let typed = (len, start, Some(o.event_type.clone()));
            sets.entry(typed).or_default().add(&o);
        }
    }
    sets.into_iter().map(|(k, s)| (k, s.agg())).collect()
}

/// The aggregates on which `got` and `want` differ: `(key, got, want)`.
fn differences(
    got: &BTreeMap<Key, Agg>,
    want: &BTreeMap<Key, Agg>,
) -> Vec<(Key, Option<Agg>, Option<Agg>)> {
    let keys: BTreeSet<&Key> = got.keys().chain(want.keys()).collect();
    keys.into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| ((*k).clone(), got.get(k).cloned(), want.get(k).cloned()))
        .collect()
}

/// Offsets into a minute that put an event, or the watermark it moves, on a window edge: the
/// watermark trails by 10 s and windows close 5 s after their end, so an event 15 s into a
/// minute moves the watermark exactly onto the previous minute's (hour's, day's) close.
const EDGES: [u64; 8] = [0, 1, 4_999, 5_000, 14_999, 15_000, 15_001, 59_999];
/// Upper bounds of arrival delays (after the event's own time): on time, seconds, hours, days,
/// weeks.
const DELAYS: [u64; 6] = [0, 30_000, 2 * HOUR, 3 * DAY, 21 * DAY, 40 * DAY];

/// Arrival orders: unique events over ~40 days (at edges of, or within one millisecond, minute,
/// hour or day of, a few anchors), in a shuffled order; some followed directly by an exact copy
/// (a re-send). The order sorts the events by a random key: in a quarter of the cases a
/// uniform shuffle (almost every event late), otherwise event time plus a random delay of
/// seconds to weeks. Delays shrink towards 0 (time order, nothing late).
fn arrivals() -> impl Strategy<Value = Vec<Ev>> {
    let anchors = vec((0..40 * DAY, any::<bool>()), 1..=6);
    let event = (
        (any::<Index>(), 0usize..5, any::<u64>()),
        (
            any::<u8>(),
            proptest::option::weighted(0.6, 0u8..5),
            any::<u8>(),
        ),
        proptest::bool::weighted(0.1),
        (0..DELAYS.len(), any::<u64>()),
    );
    let case = (
        anchors,
        vec(event, 20..=250),
        1u8..=8,
        1u8..=4,
        proptest::bool::weighted(0.25),
        proptest::bool::weighted(0.25),
    );
    case.prop_map(|(anchors, raw, users, types, uniform, edgy)| {
        let mut events: Vec<(u64, Ev, bool)> = raw
            .into_iter()
            .enumerate()
            .map(
                |(i, ((anchor, scale, offset), (user, session, ty), dup, (class, delay)))| {
                    let (at, aligned) = anchors[anchor.index(anchors.len())];
                    let scale = if edgy { 0 } else { scale };
                    let at = if aligned || scale == 0 {
                        at / MINUTE * MINUTE
                    } else {
                        at
                    };
                    let offset = match scale {
                        0 => {
                            offset % 3 * MINUTE + EDGES[(offset / 3 % EDGES.len() as u64) as usize]
                        }
                        _ => offset % [1, MINUTE, HOUR, DAY][scale - 1],
                    };
                    let ev = Ev {
                        id: i as u32,
                        ts_ms: BASE + at + offset,
                        event_type: ty % types,
                        user: user % users,
                        session,
                    };
                    let order = if uniform {
                        delay
                    } else {
                        ev.ts_ms + delay % (DELAYS[class] + 1)
                    };
                    (order, ev, dup)
                },
            )
            .collect();
        events.sort_by_key(|(order, ev, _)| (*order, ev.id));
        events
            .into_iter()
            .flat_map(|(_, ev, dup)| std::iter::repeat_n(ev, if dup { 2 } else { 1 }))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The issue: a naive model over shuffled arrival orders gives the same settled rollups as
    /// the pipeline's operator + correction logic, including events weeks late.
    #[test]
    fn settled_rollups_match_a_naive_model(arrivals in arrivals()) {
        let reads = schedule(&arrivals);
        let expected = oracle(&reads);
        for workers in [1, 2] {
            let out = run(workers, &reads);
            for recompute in [Recompute::FirstCopyPerId, Recompute::WindowRows] {
                let wrong = differences(&settle(&out, recompute), &expected);
                prop_assert!(wrong.is_empty(), "{} workers, {:?}, settled vs model: {:?}", workers, recompute, wrong);
            }
            if marks(&out.kept).is_empty() {
                let wrong = differences(&final_rows(&out.finals), &expected);
                prop_assert!(wrong.is_empty(), "{} workers, finals vs model: {:?}", workers, wrong);
            }
        }
    }
}

/// Without the correction the final rows miss a week-late event; with it they are right. (The
/// property above would catch a correction rule that did nothing.)
#[test]
fn final_rows_alone_miss_a_week_late_event() {
    let ev = |id, ts_ms, event_type, user| Ev {
        id,
        ts_ms,
        event_type,
        user,
        session: Some(1),
    };
    let noon = BASE + 10 * DAY + 12 * HOUR;
    let arrivals = [
        ev(0, BASE + 3 * DAY + 1_000, 0, 0),
        ev(1, noon + MINUTE + 20_000, 1, 1),
        // A week late: its minute, hour and day closed long ago.
        ev(2, BASE + 3 * DAY + 2_000, 1, 1),
        // Seconds late: its minute closed 5 s before, its hour and day are open.
        ev(3, noon + 30_000, 0, 0),
        ev(4, noon + 2 * MINUTE, 2, 1),
    ];
    let reads = schedule(&arrivals);
    let expected = oracle(&reads);
    for workers in [1, 2] {
        let out = run(workers, &reads);
        let late: BTreeSet<_> = marks(&out.kept);
        let day3 = BASE + 3 * DAY;
        let want: BTreeSet<_> = [(MINUTE, day3), (HOUR, day3), (DAY, day3), (MINUTE, noon)].into();
        assert_eq!(late, want, "{workers} workers");
        assert_ne!(final_rows(&out.finals), expected, "{workers} workers");
        let day_row = final_rows(&out.finals)[&(DAY, day3, None)].clone();
        assert_eq!(day_row.events, 1, "{workers} workers");
        for recompute in [Recompute::FirstCopyPerId, Recompute::WindowRows] {
            assert_eq!(settle(&out, recompute), expected, "{workers} workers");
        }
        assert_eq!(expected[&(DAY, day3, None)].events, 2);
        assert_eq!(expected[&(DAY, day3, None)].unique_event_types, 2);
    }
}

/// The input that once made the property fail when a correction counted every kept copy: an
/// event read more than a day after its time (past the horizon of its own time: end of its
/// hour + 1 day + grace, here 2024-03-02T01:00:05Z, read at 2024-03-11T23:59:50Z), immediately
/// followed by an exact re-send, then by a re-send stamped two days later (a client that
/// re-stamps its retries). The dedup remembers a late first copy from its read as well, so it
/// drops both re-sends: the raw rows hold one copy, and even counting every kept copy gives the
/// model's answer.
#[test]
fn re_sends_of_an_event_read_days_late_count_once() {
    let ev = |id, ts_ms| Ev {
        id,
        ts_ms,
        event_type: 0,
        user: 0,
        session: None,
    };
    let arrivals = [
        ev(0, BASE + 11 * DAY),
        ev(1, BASE + 20 * MINUTE),
        ev(1, BASE + 20 * MINUTE),
        ev(1, BASE + 2 * DAY + 20 * MINUTE),
    ];
    let reads = schedule(&arrivals);
    let expected = oracle(&reads);
    for workers in [1, 2] {
        let out = run(workers, &reads);
        assert_eq!(
            out.kept.len(),
            2,
            "{workers} workers: one copy of each id kept"
        );
        for recompute in [
            Recompute::EveryKeptCopy,
            Recompute::FirstCopyPerId,
            Recompute::WindowRows,
        ] {
            let settled = settle(&out, recompute);
            assert_eq!(settled[&(DAY, BASE, None)].events, 1, "{workers} workers");
            assert!(!settled.contains_key(&(DAY, BASE + 2 * DAY, None)));
            let wrong = differences(&settled, &expected);
            assert!(wrong.is_empty(), "{workers} workers: {wrong:?}");
        }
    }
}

/// The close time itself: a copy read when the watermark is exactly its minute's end + grace is
/// late (left out of the rollups, its minute marked); one read a millisecond earlier is
/// aggregated and marks nothing.
#[test]
fn a_read_at_the_close_time_is_late_and_one_just_before_is_not() {
    let ev = |id, ts_ms| Ev {
        id,
        ts_ms,
        event_type: 0,
        user: 0,
        session: None,
    };
    let noon = BASE + 10 * DAY + 12 * HOUR;
    let five = noon + 5 * MINUTE;
    let arrivals = [
        ev(0, noon + 59_999),
        // The watermark moves to 12:01:05, the 12:00 minute's close.
        ev(1, noon + MINUTE + 15_000),
        ev(2, noon + 30_000),
        ev(3, five + 30_000),
        // The watermark moves to 12:06:04.999, a millisecond before the 12:05 minute's close.
        ev(4, five + MINUTE + 14_999),
        ev(5, five + 40_000),
    ];
    let reads = schedule(&arrivals);
    assert_eq!(reads[2].0, noon + MINUTE + GRACE_MS);
    assert_eq!(reads[5].0, five + MINUTE + GRACE_MS - 1);
    let expected = oracle(&reads);
    for workers in [1, 2] {
        let out = run(workers, &reads);
        let want: BTreeSet<_> = [(MINUTE, noon)].into();
        assert_eq!(marks(&out.kept), want, "{workers} workers");
        let finals = final_rows(&out.finals);
        assert_eq!(finals[&(MINUTE, noon, None)].events, 1, "{workers} workers");
        assert_eq!(finals[&(MINUTE, five, None)].events, 2, "{workers} workers");
        assert_eq!(finals[&(HOUR, noon, None)].events, 6, "{workers} workers");
        let wrong = differences(&settle(&out, Recompute::FirstCopyPerId), &expected);
        assert!(wrong.is_empty(), "{workers} workers: {wrong:?}");
    }
}
