//! Shared by the topology property tests: generated events and topologies, the script a
//! Kafka source would produce for them, and the settled rows of a run.

#![allow(dead_code)] // each test file uses a different part

pub mod model;

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::Index;
use tally_core::{Dimension, DistinctMode, FieldPath, Filter, Metric, Topology, Value, WindowSpec};
use tally_topologies::kit::{event_with, settle, RowKey, Script};

pub const MIN: u64 = 60_000;
/// 2024-03-13T10:00:00Z.
pub const BASE: u64 = 1_710_324_000_000;
pub const TYPES: [&str; 4] = ["click", "view", "buy", "search"];
pub const PLATFORMS: [&str; 5] = ["ios", "android", "web", "tv", "car"];

/// One generated event.
#[derive(Clone, Debug)]
pub struct Ev {
    pub id: usize,
    pub ts_ms: u64,
    pub user: u8,
    pub session: Option<u8>,
    pub kind: u8,
    /// `None`: no platform in the metadata.
    pub platform: Option<u8>,
    /// Quarters; `Some(None)`: a non-numeric price (`"n/a"`).
    pub price: Option<Option<u8>>,
}

impl Ev {
    pub fn metadata(&self) -> serde_json::Value {
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

    pub fn event_type(&self) -> &'static str {
        TYPES[usize::from(self.kind)]
    }

    pub fn observation(&self) -> tally_operators::Observation {
        event_with(
            &format!("e{}", self.id),
            self.ts_ms,
            self.event_type(),
            &format!("u{}", self.user),
            self.session.map(|s| format!("s{s}")).as_deref(),
            self.metadata(),
        )
    }

    pub fn price(&self) -> Option<f64> {
        match self.price {
            Some(Some(q)) => Some(f64::from(q) / 4.0),
            _ => None,
        }
    }

    pub fn platform(&self) -> String {
        self.platform.map_or("(not set)".to_owned(), |p| {
            PLATFORMS[usize::from(p)].to_owned()
        })
    }
}

/// A generated topology: which windows, dimensions (with caps), metrics, filter.
pub fn topology_strategy(distinct: DistinctMode) -> impl Strategy<Value = Topology> {
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

pub fn event_strategy() -> impl Strategy<Value = Ev> {
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
pub struct Case {
    pub events: Vec<Ev>,
    pub partitions: u8,
    pub resend: Vec<bool>,
    pub jitter: Vec<u64>,
    pub interleavings: [Vec<Index>; 2],
    pub ticks: Vec<bool>,
}

pub fn case_strategy(max_events: usize) -> impl Strategy<Value = Case> {
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
pub fn script(case: &Case, order: &[Index]) -> Script {
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
pub fn starts(size: u64, slide: u64, ts: u64) -> Vec<u64> {
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

/// The settled rows of a run: the last row per key, all final; groups folded after they were
/// shown settle on all-zero rows, which storage readers skip like absent groups.
pub fn settled(
    rows: &[(u64, tally_core::RollupRow)],
) -> Result<BTreeMap<RowKey, Vec<Value>>, String> {
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
