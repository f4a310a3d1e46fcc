//! The naive model the operator is checked against, written apart from its code.

use std::collections::BTreeMap;

use tally_core::{Topology, OTHER};
use tally_operators::{hash64, Point};

use crate::harness::Key;

/// The naive model: per user, sort by (time, dimension values) and scan; attribute each
/// session to every window start s (a multiple of the slide) with s <= first < s + size; cap
/// by sorting values by hash. Written apart from the operator's code.
pub fn naive(t: &Topology, points: &[Point]) -> BTreeMap<Key, Vec<u64>> {
    let spec = t.sessions.expect("sessions");
    let mut users: BTreeMap<u128, Vec<(u64, Vec<String>)>> = BTreeMap::new();
    for p in points {
        users
            .entry(p.user)
            .or_default()
            .push((p.ts_ms, p.groups.clone()));
    }
    // (window, start, dimension) -> value -> [sessions, bounced, duration, events]
    let mut sums: BTreeMap<(String, u64, String), BTreeMap<String, [u64; 4]>> = BTreeMap::new();
    for (_, mut events) in users {
        events.sort();
        // (first, last, count, first's values)
        let mut sessions: Vec<(u64, u64, u64, Vec<String>)> = Vec::new();
        for (ts, groups) in events {
            match sessions.last_mut() {
                Some(s) if ts <= s.1 + spec.gap_ms && ts < s.0 + spec.max_duration_ms => {
                    s.1 = ts;
                    s.2 += 1;
                }
                _ => sessions.push((ts, ts, 1, groups)),
            }
        }
        for (first, last, n, groups) in sessions {
            let add = [1, u64::from(n == 1), last - first, n];
            for w in &t.windows {
                let mut start = first / w.slide_ms * w.slide_ms;
                while start + w.size_ms > first {
                    let mut slots = vec![(String::new(), String::new())];
                    for (d, v) in t.dimensions.iter().zip(&groups) {
                        slots.push((d.name.clone(), v.clone()));
                    }
                    for (dim, value) in slots {
                        let sum = sums
                            .entry((w.name.clone(), start, dim))
                            .or_default()
                            .entry(value)
                            .or_default();
                        for i in 0..4 {
                            sum[i] += add[i];
                        }
                    }
                    if start < w.slide_ms {
                        break;
                    }
                    start -= w.slide_ms;
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for ((window, start, dim), values) in sums {
        let cap = t.dimension(&dim).map_or(usize::MAX, |d| d.max_values);
        let mut values: Vec<(String, [u64; 4])> = values.into_iter().collect();
        values.sort_by_key(|(v, _)| (hash64(v), v.clone()));
        let mut other = [0u64; 4];
        for (i, (value, sum)) in values.into_iter().enumerate() {
            if i < cap {
                out.insert((window.clone(), start, dim.clone(), value), sum.to_vec());
            } else {
                for j in 0..4 {
                    other[j] += sum[j];
                }
            }
        }
        if other[0] > 0 {
            out.insert((window, start, dim, OTHER.to_owned()), other.to_vec());
        }
    }
    out
}
