//! A naive model of the window operators, for tests: no timely, no frontiers, no buckets.
//!
//! It takes the events in the order one worker read them, each with the watermark at read time,
//! and computes every final aggregate by brute force.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::observation::Observation;
use crate::rollup::{RollupRow, RollupSpec, WindowKey};
use crate::window::Window;

/// What the operators should produce for a read sequence.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// The final row of every aggregate that received at least one event.
    pub finals: BTreeMap<WindowKey, RollupRow>,
    /// Late events per window kind (indexed by [`Window::index`]), replays not counted.
    pub late: [u64; 3],
    /// Events dropped as repeats of an earlier event id.
    pub duplicates: u64,
}

/// Computes the expected output for `reads`: `(watermark at read time, event)` in read order.
pub fn expected(spec: &RollupSpec, reads: &[(u64, Observation)]) -> Expected {
    let horizon = spec.horizon();
    let mut out = Expected::default();
    let mut seen: HashSet<(u64, u128)> = HashSet::new();
    let mut kept: Vec<(u64, &Observation)> = Vec::new();
    for (read_time, obs) in reads {
        let horizon_start = horizon.start_of(obs.ts_ms);
        let late_everywhere = horizon_start + horizon.millis() + spec.grace_ms <= *read_time;
        if !late_everywhere && !seen.insert((horizon_start, obs.event_id)) {
            out.duplicates += 1;
            continue;
        }
        kept.push((*read_time, obs));
    }
    let mut groups: BTreeMap<WindowKey, Vec<&Observation>> = BTreeMap::new();
    for (read_time, obs) in kept {
        for &window in &spec.windows {
            let start_ms = window.start_of(obs.ts_ms);
            if start_ms + window.millis() + spec.grace_ms <= read_time {
                out.late[window.index()] += u64::from(!obs.replayed);
                continue;
            }
            let mut keys = vec![WindowKey {
                window,
                start_ms,
                event_type: None,
            }];
            if spec.per_event_type {
                keys.push(WindowKey {
                    window,
                    start_ms,
                    event_type: Some(obs.event_type.clone()),
                });
            }
            for key in keys {
                groups.entry(key).or_default().push(obs);
            }
        }
    }
    for (key, events) in groups {
        let users: BTreeSet<u128> = events.iter().map(|e| e.user).collect();
        let sessions: BTreeSet<u128> = events.iter().filter_map(|e| e.session).collect();
        let types: BTreeSet<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let row = RollupRow {
            key: key.clone(),
            events: events.len() as u64,
            unique_users: users.len() as u64,
            unique_sessions: sessions.len() as u64,
            unique_event_types: types.len() as u64,
            is_final: true,
        };
        out.finals.insert(key, row);
    }
    out
}

/// Late events counted for `window` in `expected`.
pub fn late(expected: &Expected, window: Window) -> u64 {
    expected.late[window.index()]
}
