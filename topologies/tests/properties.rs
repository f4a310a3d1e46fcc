//! Property tests of the whole dataflow ([`tally_topologies::build`] through the kit): the
//! settled rows of generated topologies (tumbling and hopping windows, dimensions with small
//! caps so values fold into `__other__`, exact distinct counts, sum / avg / max of a field)
//! equal a naive model over the unique events, whatever the batch boundaries, the interleaving
//! of partitions and the number of workers (1, 2, 4). Approximate distinct counts stay within
//! the stated error.
//!
//! The model (`model`) is plain arithmetic over the events: no operator helper, no
//! `WindowSpec::starts`; the cap rule's hash is xxh3-64 called directly.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::Index;
use tally_core::{
    Component, Dimension, DistinctMode, FieldPath, Filter, Metric, RowTable, Topology, Value,
    WindowSpec,
};
use tally_topologies::kit::{event_with, run, settle, Config, RowKey, Script};

const MIN: u64 = 60_000;
/// 2024-03-13T10:00:00Z.
const BASE: u64 = 1_710_324_000_000;
const TYPES: [&str; 4] = ["click", "view", "buy", "search"];
const PLATFORMS: [&str; 5] = ["ios", "android", "web", "tv", "car"];

/// One generated event.
#[derive(Clone, Debug)]
struct Ev {
    id: usize,
    ts_ms: u64,
    user: u8,
    session: Option<u8>,
    kind: u8,
    /// `None`: no platform in the metadata.
    platform: Option<u8>,
    /// Quarters; `Some(None)`: a non-numeric price (`"n/a"`).
    price: Option<Option<u8>>,
}

impl Ev {
    fn metadata(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(p) = self.platform {
            m.insert("platform".into(), PLATFORMS[usize::from(p)].into());
        }
        match self.price {
            Some(Some(q)) => {
                m.insert("price".into(), (f64::from(q) / 4.0).into());
            }
            Some(None) => {
                m.insert("price".into(), "n/a".into());
            }
            None => {}
        }
        serde_json::Value::Object(m)
    }

    fn event_type(&self) -> &'static str {
        TYPES[usize::from(self.kind)]
    }

    fn observation(&self) -> tally_operators::Observation {
        event_with(
            &format!("e{}", self.id),
            self.ts_ms,
            self.event_type(),
            &format!("u{}", self.user),
            self.session.map(|s| format!("s{s}")).as_deref(),
            self.metadata(),
        )
    }

    fn price(&self) -> Option<f64> {
        match self.price {
            Some(Some(q)) => Some(f64::from(q) / 4.0),
            _ => None,
        }
    }

    fn platform(&self) -> String {
        self.platform.map_or("(not set)".to_owned(), |p| {
            PLATFORMS[usize::from(p)].to_owned()
        })
    }
}

/// A generated topology: which windows, dimensions (with caps), metrics, filter.
fn topology_strategy(distinct: DistinctMode) -> impl Strategy<Value = Topology> {
    let pool = vec![
        WindowSpec::tumbling("1m", MIN),
        WindowSpec::tumbling("5m", 5 * MIN),
        WindowSpec::hopping("10m_5m", 10 * MIN, 5 * MIN),
        WindowSpec::hopping("4m_1m", 4 * MIN, MIN),
        WindowSpec::tumbling("1h", 60 * MIN),
    ];
    (
        proptest::sample::subsequence(pool, 1..=3),
        proptest::option::of(1usize..4),
        proptest::option::of(1usize..5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(windows, type_cap, platform_cap, fields, filtered)| {
            let price = FieldPath::parse("metadata.price").expect("path");
            let mut b = Topology::builder("gen")
                .metric(Metric::Events)
                .metric(Metric::UniqueUsers)
                .metric(Metric::UniqueSessions)
                .metric(Metric::UniqueEventTypes)
                .distinct(distinct);
            for w in windows {
                b = b.window(w);
            }
            if let Some(cap) = type_cap {
                b = b.dimension(Dimension {
                    max_values: cap,
                    ..Dimension::parse("event_type").expect("dimension")
                });
            }
            if let Some(cap) = platform_cap {
                b = b.dimension(Dimension {
                    max_values: cap,
                    ..Dimension::parse("metadata.platform").expect("dimension")
                });
            }
            if fields {
                b = b
                    .metric(Metric::Sum(price.clone()))
                    .metric(Metric::Avg(price.clone()))
                    .metric(Metric::Max(price));
            }
            if filtered {
                b = b.filter(Filter::EventTypeNotIn(vec!["search".into()]));
            }
            b.build().expect("valid topology")
        })
}

fn event_strategy() -> impl Strategy<Value = Ev> {
    (
        0u64..90 * MIN,
        0u8..10,
        proptest::option::weighted(0.7, 0u8..6),
        0u8..4,
        proptest::option::weighted(0.8, 0u8..5),
        proptest::option::weighted(0.7, proptest::option::weighted(0.9, 0u8..40)),
    )
        .prop_map(|(offset, user, session, kind, platform, price)| Ev {
            id: 0,
            ts_ms: BASE + offset,
            user,
            session,
            kind,
            platform,
            price,
        })
}

/// A case: events (ids set), the partition count, which events are re-sent, and seeds for two
/// interleavings of the partitions and the tick positions.
#[derive(Clone, Debug)]
struct Case {
    events: Vec<Ev>,
    partitions: u8,
    resend: Vec<bool>,
    jitter: Vec<u64>,
    interleavings: [Vec<Index>; 2],
    ticks: Vec<bool>,
}

fn case_strategy(max_events: usize) -> impl Strategy<Value = Case> {
    (1..=max_events).prop_flat_map(|n| {
        (
            proptest::collection::vec(event_strategy(), n),
            1u8..=4,
            proptest::collection::vec(proptest::bool::weighted(0.15), n),
            proptest::collection::vec(0u64..3 * MIN, n),
            [
                proptest::collection::vec(any::<Index>(), 2 * n),
                proptest::collection::vec(any::<Index>(), 2 * n),
            ],
            proptest::collection::vec(proptest::bool::weighted(0.1), 2 * n),
        )
            .prop_map(
                |(mut events, partitions, resend, jitter, interleavings, ticks)| {
                    for (i, e) in events.iter_mut().enumerate() {
                        e.id = i;
                    }
                    Case {
                        events,
                        partitions,
                        resend,
                        jitter,
                        interleavings,
                        ticks,
                    }
                },
            )
    })
}

/// The script of a case: each partition (events keyed by user) reads its events by arrival
/// time (event time plus a jitter: out of order), a re-send right after the original; the
/// partitions are interleaved by `order`. Before each event the watermark moves to the
/// smallest event time not yet read (a perfect watermark: nothing is late).
fn script(case: &Case, order: &[Index]) -> Script {
    let mut queues: Vec<Vec<&Ev>> = vec![Vec::new(); usize::from(case.partitions)];
    let mut by_arrival: Vec<usize> = (0..case.events.len()).collect();
    by_arrival.sort_by_key(|&i| (case.events[i].ts_ms + case.jitter[i], i));
    for i in by_arrival {
        let e = &case.events[i];
        let q = &mut queues[usize::from(e.user % case.partitions)];
        q.push(e);
        if case.resend[i] {
            q.push(e);
        }
    }
    for q in &mut queues {
        q.reverse(); // pop from the back
    }
    let mut s = Script::new();
    let mut k = 0;
    loop {
        let open: Vec<usize> = (0..queues.len())
            .filter(|&p| !queues[p].is_empty())
            .collect();
        if open.is_empty() {
            break;
        }
        let p = open[order[k % order.len()].index(open.len())];
        let next_unread = queues
            .iter()
            .flat_map(|q| q.iter().map(|e| e.ts_ms))
            .min()
            .unwrap_or(0);
        s.watermark(next_unread);
        let e = queues[p].pop().expect("non-empty");
        s.event(p as u32, e.observation());
        if case.ticks[k % case.ticks.len()] {
            s.tick();
        }
        k += 1;
    }
    s
}

/// Starts of the windows of `size` every `slide` containing `ts`, by brute force.
fn starts(size: u64, slide: u64, ts: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut s = ts / slide * slide;
    while s + size > ts {
        out.push(s);
        if s < slide {
            break;
        }
        s -= slide;
    }
    out.reverse();
    out
}

#[test]
fn brute_force_starts() {
    assert_eq!(starts(60, 60, 125), [120]);
    assert_eq!(starts(60, 15, 125), [75, 90, 105, 120]);
    assert_eq!(starts(60, 15, 20), [0, 15]);
}

/// The naive model: the rows every window and group of `t` settles on, for the unique events.
fn model(t: &Topology, events: &[Ev]) -> BTreeMap<RowKey, Vec<Value>> {
    let hash = |v: &str| xxhash_rust::xxh3::xxh3_64(v.as_bytes());
    let passes = |e: &Ev| match t.filters.first() {
        Some(Filter::EventTypeNotIn(types)) => !types.iter().any(|x| x == e.event_type()),
        _ => true,
    };
    // (window, start, dimension) -> value -> events
    let mut groups: BTreeMap<(String, u64, String), BTreeMap<String, Vec<&Ev>>> = BTreeMap::new();
    for e in events.iter().filter(|e| passes(e)) {
        for w in &t.windows {
            for start in starts(w.size_ms, w.slide_ms, e.ts_ms) {
                let key = |d: &str| (w.name.clone(), start, d.to_owned());
                groups
                    .entry(key(""))
                    .or_default()
                    .entry(String::new())
                    .or_default()
                    .push(e);
                for d in &t.dimensions {
                    let value = if d.name == "event_type" {
                        e.event_type().to_owned()
                    } else {
                        e.platform()
                    };
                    groups
                        .entry(key(&d.name))
                        .or_default()
                        .entry(value)
                        .or_default()
                        .push(e);
                }
            }
        }
    }
    let columns = t.columns(RowTable::Windows);
    let mut out = BTreeMap::new();
    for ((window, start, dimension), values) in groups {
        let cap = t.dimension(&dimension).map_or(usize::MAX, |d| d.max_values);
        let mut ranked: Vec<(u64, String)> = values.keys().map(|v| (hash(v), v.clone())).collect();
        ranked.sort();
        let mut rows: BTreeMap<String, Vec<&Ev>> = BTreeMap::new();
        for (rank, (_, v)) in ranked.iter().enumerate() {
            let target = if rank < cap {
                v.clone()
            } else {
                "__other__".to_owned()
            };
            rows.entry(target).or_default().extend(&values[v]);
        }
        for (value, evs) in rows {
            let distinct = |f: &dyn Fn(&Ev) -> Option<String>| {
                evs.iter()
                    .filter_map(|e| f(e))
                    .collect::<BTreeSet<_>>()
                    .len() as u64
            };
            let prices: Vec<f64> = evs.iter().filter_map(|e| e.price()).collect();
            let vals = columns
                .iter()
                .map(|c| match &c.component {
                    Component::Events => Value::U64(evs.len() as u64),
                    Component::UniqueUsers => Value::U64(distinct(&|e| Some(e.user.to_string()))),
                    Component::UniqueSessions => {
                        Value::U64(distinct(&|e| e.session.map(|s| s.to_string())))
                    }
                    Component::UniqueEventTypes => {
                        Value::U64(distinct(&|e| Some(e.event_type().to_owned())))
                    }
                    Component::FieldSum(_) => Value::F64(prices.iter().sum()),
                    Component::FieldCount(_) => Value::U64(prices.len() as u64),
                    Component::FieldMax(_) => Value::F64(
                        prices
                            .iter()
                            .copied()
                            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                            .unwrap_or(0.0),
                    ),
                    other => panic!("not a window component: {other:?}"),
                })
                .collect();
            let key = RowKey {
                topology: t.name.clone(),
                table: RowTable::Windows,
                window: window.clone(),
                start_ms: start,
                dimension: dimension.clone(),
                value,
            };
            out.insert(key, vals);
        }
    }
    out
}

/// The settled rows of a run: the last row per key, all final; groups folded after they were
/// shown settle on all-zero rows, which storage readers skip like absent groups.
fn settled(rows: &[(u64, tally_core::RollupRow)]) -> Result<BTreeMap<RowKey, Vec<Value>>, String> {
    let mut out = BTreeMap::new();
    for (key, s) in settle(rows) {
        if !s.is_final {
            return Err(format!("{key:?} settled on a provisional row"));
        }
        if !s.is_zero() {
            out.insert(key, s.values);
        }
    }
    Ok(out)
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

/// Sessions by a plain sort-and-scan per user: a new session at a user's first event, after a
/// gap longer than `gap_ms`, or `max_ms` or more after the session's first event. Each session
/// counts in every window containing its first event, in the all-events row and, per dimension,
/// in the row of its first event's value (cap: of the values with sessions, the smallest
/// xxh3-64 keep their row). Values: sessions, bounced (one event), duration sum (ms), events.
fn session_model(t: &Topology, events: &[Ev]) -> BTreeMap<RowKey, Vec<Value>> {
    let Some(spec) = t.sessions else {
        return BTreeMap::new();
    };
    let passes = |e: &Ev| match t.filters.first() {
        Some(Filter::EventTypeNotIn(types)) => !types.iter().any(|x| x == e.event_type()),
        _ => true,
    };
    let mut by_user: BTreeMap<u8, Vec<&Ev>> = BTreeMap::new();
    for e in events.iter().filter(|e| passes(e)) {
        by_user.entry(e.user).or_default().push(e);
    }
    // (first event, last time, events) per session
    let mut sessions: Vec<(&Ev, u64, u64)> = Vec::new();
    for evs in by_user.values_mut() {
        evs.sort_by_key(|e| e.ts_ms);
        let mut current: Option<(&Ev, u64, u64)> = None;
        for e in evs.iter() {
            current = match current {
                Some((first, last, n))
                    if e.ts_ms - last <= spec.gap_ms
                        && e.ts_ms - first.ts_ms < spec.max_duration_ms =>
                {
                    Some((first, e.ts_ms, n + 1))
                }
                other => {
                    sessions.extend(other);
                    Some((e, e.ts_ms, 1))
                }
            };
        }
        sessions.extend(current);
    }
    let hash = |v: &str| xxhash_rust::xxh3::xxh3_64(v.as_bytes());
    let mut slots: BTreeMap<(String, u64, String), BTreeMap<String, [u64; 4]>> = BTreeMap::new();
    for (first, last, n) in &sessions {
        let add = |c: &mut [u64; 4]| {
            c[0] += 1;
            c[1] += u64::from(*n == 1);
            c[2] += last - first.ts_ms;
            c[3] += n;
        };
        for w in &t.windows {
            for start in starts(w.size_ms, w.slide_ms, first.ts_ms) {
                let slot = |d: &str| (w.name.clone(), start, d.to_owned());
                add(slots
                    .entry(slot(""))
                    .or_default()
                    .entry(String::new())
                    .or_default());
                for d in &t.dimensions {
                    let value = if d.name == "event_type" {
                        first.event_type().to_owned()
                    } else {
                        first.platform()
                    };
                    add(slots
                        .entry(slot(&d.name))
                        .or_default()
                        .entry(value)
                        .or_default());
                }
            }
        }
    }
    let columns = t.columns(RowTable::Sessions);
    let mut out = BTreeMap::new();
    for ((window, start, dimension), values) in slots {
        let cap = t.dimension(&dimension).map_or(usize::MAX, |d| d.max_values);
        let mut ranked: Vec<(u64, &String)> = values.keys().map(|v| (hash(v), v)).collect();
        ranked.sort();
        let mut rows: BTreeMap<String, [u64; 4]> = BTreeMap::new();
        for (rank, (_, v)) in ranked.iter().enumerate() {
            let target = if rank < cap {
                (*v).clone()
            } else {
                "__other__".to_owned()
            };
            let row = rows.entry(target).or_default();
            for (r, x) in row.iter_mut().zip(values[*v]) {
                *r += x;
            }
        }
        for (value, c) in rows {
            let vals = columns
                .iter()
                .map(|col| match col.component {
                    Component::Sessions => Value::U64(c[0]),
                    Component::BouncedSessions => Value::U64(c[1]),
                    Component::SessionDurationMs => Value::U64(c[2]),
                    Component::SessionEvents => Value::U64(c[3]),
                    ref other => panic!("not a session component: {other:?}"),
                })
                .collect();
            let key = RowKey {
                topology: t.name.clone(),
                table: RowTable::Sessions,
                window: window.clone(),
                start_ms: start,
                dimension: dimension.clone(),
                value,
            };
            out.insert(key, vals);
        }
    }
    out
}

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
