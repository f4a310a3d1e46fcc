//! The naive models the property tests compare with: plain arithmetic over the unique events,
//! no operator helper, no `WindowSpec::starts`; the cap rule's hash is xxh3-64 called directly.

use std::collections::{BTreeMap, BTreeSet};

use tally_core::{Component, Filter, RowTable, Topology, Value};
use tally_topologies::kit::RowKey;

use super::{starts, Ev};

/// The naive model: the rows every window and group of `t` settles on, for the unique events.
pub fn model(t: &Topology, events: &[Ev]) -> BTreeMap<RowKey, Vec<Value>> {
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

/// Sessions by a plain sort-and-scan per user: a new session at a user's first event, after a
/// gap longer than `gap_ms`, or `max_ms` or more after the session's first event. Each session
/// counts in every window containing its first event, in the all-events row and, per dimension,
/// in the row of its first event's value (cap: of the values with sessions, the smallest
/// xxh3-64 keep their row). Values: sessions, bounced (one event), duration sum (ms), events.
pub fn session_model(t: &Topology, events: &[Ev]) -> BTreeMap<RowKey, Vec<Value>> {
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
