//! Late events and corrections: the rollups the pipeline writes, once every window marked by a
//! late event is recomputed from the raw events (the kept copies), equal a naive model over the
//! unique events, whatever the arrival order, on one worker or two, including events that
//! arrive seconds, hours, days or weeks after their windows closed.
//!
//! The model (`oracle`) is written with plain arithmetic, apart from the operators: no
//! `Window` helpers, no `tally_operators::reference`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use tally_operators::{
    hash128, late_windows, Observation, OperatorCounters, RollupRow, RollupSpec, Window,
};
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

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
        Observation {
            event_id: hash128(&format!("e{}", self.id)),
            ts_ms: self.ts_ms,
            event_type: TYPES[usize::from(self.event_type)].to_owned(),
            user: hash128(&format!("u{}", self.user)),
            session: self.session.map(|s| hash128(&format!("s{s}"))),
            replayed: false,
        }
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

/// Runs `product_analytics` over `reads` on `workers` workers; each worker reads the events of
/// its users (like a Kafka partition keyed by user) and advances its input to each of its
/// records' read time. The inputs close at the end, so every window emits its final row.
fn run(workers: usize, reads: &[(u64, Ev)]) -> Output {
    let reads: Vec<(u64, Ev, Observation)> = reads
        .iter()
        .map(|(t, ev)| (*t, ev.clone(), ev.observation()))
        .collect();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let finals = Arc::new(Mutex::new(Vec::new()));
    let (k, f) = (Arc::clone(&kept), Arc::clone(&finals));
    timely::execute(timely::Config::process(workers), move |worker| {
        let spec = RollupSpec {
            windows: Window::ALL.to_vec(),
            grace_ms: GRACE_MS,
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
            out.kept
                .inspect_core(move |event| {
                    if let Ok((stamp, batch)) = event {
                        assert_eq!(stamp.elements().len(), 1, "one time per batch");
                        let time = stamp.elements()[0];
                        let mut kept = k.lock().expect("kept lock");
                        kept.extend(batch.iter().map(|o: &Observation| (time, o.clone())));
                    }
                })
                .probe_with(&probe);
            out.rollups
                .inspect(move |row: &RollupRow| {
                    if row.is_final {
                        f.lock().expect("finals lock").push(row.clone());
                    }
                })
                .probe_with(&probe);
        });
        let (index, peers) = (worker.index(), worker.peers());
        for (read_time, ev, obs) in &reads {
            if usize::from(ev.user) % peers != index {
                continue;
            }
            if *read_time > *input.time() {
                input.advance_to(*read_time);
                ticks.advance_to(*read_time);
            }
            input.send((obs.clone(), obs.clone()));
        }
        drop(input);
        drop(ticks);
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely runs")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker finishes"));
    let finals = finals.lock().expect("finals lock").clone();
    let kept = kept.lock().expect("kept lock").clone();
    Output { finals, kept }
}

fn key_of(row: &RollupRow) -> Key {
    (
        row.key.window.millis(),
        row.key.start_ms,
        row.key.event_type.clone(),
    )
}

/// The final rows as a map; every aggregate has exactly one final row.
fn final_rows(finals: &[RollupRow]) -> BTreeMap<Key, Agg> {
    let mut rows = BTreeMap::new();
    for row in finals {
        let agg = Agg {
            events: row.events,
            unique_users: row.unique_users,
            unique_sessions: row.unique_sessions,
            unique_event_types: row.unique_event_types,
        };
        let previous = rows.insert(key_of(row), agg);
        assert!(previous.is_none(), "two final rows for {:?}", row.key);
    }
    rows
}

/// The windows the sink marks dirty: every late window of every kept copy, at its read time.
fn marks(kept: &[(u64, Observation)]) -> BTreeSet<(Window, u64)> {
    kept.iter()
        .flat_map(|(time, o)| late_windows(&Window::ALL, o.ts_ms, *time, GRACE_MS))
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
}

/// The settled rollups: the final rows, where every row (all events and every event type) of
/// every marked window is replaced by a brute-force recompute from the kept copies in it.
fn settle(out: &Output, recompute: Recompute) -> BTreeMap<Key, Agg> {
    let mut rows = final_rows(&out.finals);
    for (window, start) in marks(&out.kept) {
        let len = window.millis();
        rows.retain(|(l, s, _), _| (*l, *s) != (len, start));
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
            let wrong = differences(&settle(&out, Recompute::FirstCopyPerId), &expected);
            prop_assert!(wrong.is_empty(), "{} workers, settled vs model: {:?}", workers, wrong);
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
        let want: BTreeSet<_> = [
            (Window::Minute, day3),
            (Window::Hour, day3),
            (Window::Day, day3),
            (Window::Minute, noon),
        ]
        .into();
        assert_eq!(late, want, "{workers} workers");
        assert_ne!(final_rows(&out.finals), expected, "{workers} workers");
        let day_row = final_rows(&out.finals)[&(DAY, day3, None)].clone();
        assert_eq!(day_row.events, 1, "{workers} workers");
        assert_eq!(
            settle(&out, Recompute::FirstCopyPerId),
            expected,
            "{workers} workers"
        );
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
        for recompute in [Recompute::EveryKeptCopy, Recompute::FirstCopyPerId] {
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
        let want: BTreeSet<_> = [(Window::Minute, noon)].into();
        assert_eq!(marks(&out.kept), want, "{workers} workers");
        let finals = final_rows(&out.finals);
        assert_eq!(finals[&(MINUTE, noon, None)].events, 1, "{workers} workers");
        assert_eq!(finals[&(MINUTE, five, None)].events, 2, "{workers} workers");
        assert_eq!(finals[&(HOUR, noon, None)].events, 6, "{workers} workers");
        let wrong = differences(&settle(&out, Recompute::FirstCopyPerId), &expected);
        assert!(wrong.is_empty(), "{workers} workers: {wrong:?}");
    }
}
