//! A naive model of dedup + window rollup for the product-style topologies of these tests
//! (events, unique users / sessions / event types; all events and per event type, no cap):
//! no timely, no frontiers, no buckets, no operator helpers. It takes the events in the order
//! one worker read them, each with the watermark at read time, and computes every final
//! aggregate by brute force.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tally_core::WindowSpec;
use tally_operators::Observation;

use super::Key;

/// What the operators should produce for a read sequence.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// The final values of every group that received at least one event.
    pub finals: BTreeMap<Key, Vec<u64>>,
    /// Late events per window name, replays not counted (once per event and window kind).
    pub late: BTreeMap<String, u64>,
    /// Events dropped as repeats of an earlier event id.
    pub duplicates: u64,
    /// The copies that count (first seen per event id within its horizon), in read order.
    pub kept: Vec<Observation>,
}

/// The read time (watermark) from which an id first seen with event time `ts_ms` is forgotten:
/// the end of the hour of `ts_ms` (of its longest window, when that is shorter than an hour),
/// plus the longest window, plus the grace period (the model applies it to the read time as
/// well and takes the later).
fn forgotten_at(longest: u64, grace_ms: u64, ts_ms: u64) -> u64 {
    let block = longest.min(3_600_000);
    (ts_ms / block + 1) * block + longest + grace_ms
}

/// Starts of the windows of `size` every `slide` that contain `ts` (brute force).
fn starts(size: u64, slide: u64, ts: u64) -> Vec<u64> {
    let mut s = ts / slide * slide;
    let mut out = Vec::new();
    loop {
        if s + size > ts {
            out.push(s);
        }
        if s < slide || s + size <= ts {
            break;
        }
        s -= slide;
    }
    out
}

/// Computes the expected output for `reads`: `(watermark at read time, event)` in read order.
pub fn expected(windows: &[WindowSpec], grace_ms: u64, reads: &[(u64, Observation)]) -> Expected {
    let mut out = Expected::default();
    let longest = windows.iter().map(|w| w.size_ms).max().unwrap_or(60_000);
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
        let forgotten = forgotten_at(longest, grace_ms, obs.ts_ms)
            .max(forgotten_at(longest, grace_ms, *read_time));
        first_seen.insert(obs.event_id, forgotten);
        kept.push((*read_time, obs));
        out.kept.push(obs.clone());
    }
    let mut groups: BTreeMap<Key, Vec<&Observation>> = BTreeMap::new();
    for (read_time, obs) in kept {
        for w in windows {
            let mut late = false;
            for start in starts(w.size_ms, w.slide_ms, obs.ts_ms) {
                if start + w.size_ms + grace_ms <= read_time {
                    late = true;
                    continue;
                }
                let all = (w.name.clone(), start, String::new(), String::new());
                let typed = (
                    w.name.clone(),
                    start,
                    "event_type".to_owned(),
                    obs.event_type.clone(),
                );
                groups.entry(all).or_default().push(obs);
                groups.entry(typed).or_default().push(obs);
            }
            if late && !obs.replayed {
                *out.late.entry(w.name.clone()).or_default() += 1;
            }
        }
    }
    for (key, events) in groups {
        let users: BTreeSet<u128> = events.iter().map(|e| e.user).collect();
        let sessions: BTreeSet<u128> = events.iter().filter_map(|e| e.session).collect();
        let types: BTreeSet<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let row = vec![
            events.len() as u64,
            users.len() as u64,
            sessions.len() as u64,
            types.len() as u64,
        ];
        out.finals.insert(key, row);
    }
    out
}

#[test]
fn brute_force_starts() {
    assert_eq!(starts(60, 60, 125), vec![120]);
    assert_eq!(starts(60, 15, 125), vec![120, 105, 90, 75]);
    assert_eq!(starts(60, 15, 20), vec![15, 0]);
}
