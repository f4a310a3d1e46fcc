//! A naive model of the window operators, for tests: no timely, no frontiers, no buckets.
//!
//! It takes the events in the order one worker read them, each with the watermark at read time,
//! and computes every final aggregate by brute force.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// The copies that count (first seen per event id within its horizon), in read order.
    pub kept: Vec<Observation>,
}

/// The read time (watermark) from which an id first seen with event time `ts_ms` is forgotten:
/// the end of the hour of `ts_ms` (of its longest window, when that is shorter than an hour),
/// plus the longest window, plus the grace period (the model applies it to the read time as
/// well and takes the later). Written out here with plain arithmetic, apart
/// from the operator's own computation.
fn forgotten_at(spec: &RollupSpec, ts_ms: u64) -> u64 {
    let longest = spec
        .windows
        .iter()
        .map(|w| w.millis())
        .max()
        .unwrap_or(60_000);
    let block = longest.min(3_600_000);
    (ts_ms / block + 1) * block + longest + spec.grace_ms
}

/// Computes the expected output for `reads`: `(watermark at read time, event)` in read order.
pub fn expected(spec: &RollupSpec, reads: &[(u64, Observation)]) -> Expected {
    let mut out = Expected::default();
    // First seen wins: event id -> when the first copy's horizon ends. A later copy read before
    // that is a repeat, whatever its time or type; one read after it is a new event.
    let mut first_seen: HashMap<u128, u64> = HashMap::new();
    let mut kept: Vec<(u64, &Observation)> = Vec::new();
    for (read_time, obs) in reads {
        if first_seen
            .get(&obs.event_id)
            .is_some_and(|&forgotten| *read_time < forgotten)
        {
            out.duplicates += 1;
            continue;
        }
        // Remembered from the later of its time and its read (a late first copy too).
        let forgotten = forgotten_at(spec, obs.ts_ms).max(forgotten_at(spec, *read_time));
        first_seen.insert(obs.event_id, forgotten);
        kept.push((*read_time, obs));
        out.kept.push(obs.clone());
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
