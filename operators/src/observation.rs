//! What the window operators see of an event.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One event as the operators see it: ids are pre-hashed, strings kept only where rows need them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Hash of the event id; events with equal ids are one event.
    pub event_id: u128,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The event type, as written in per-type rollup rows.
    pub event_type: String,
    /// Hash of the user id.
    pub user: u128,
    /// Hash of the session id, `None` when the event has no session.
    pub session: Option<u128>,
    /// The event's metadata object (shared, not copied, by every topology that reads it).
    pub metadata: Arc<serde_json::Map<String, serde_json::Value>>,
    /// Read again after a restart (it was read before the stop). Replayed events are aggregated
    /// like any other, but one that is late is expected, not news: it is not counted as late.
    pub replayed: bool,
}

/// Counters the operators add to and the runtime exports as metrics. Cheap to clone: every clone
/// shares the same counts (one set for all workers of a process).
#[derive(Clone, Debug, Default)]
pub struct OperatorCounters(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// (topology, window name) -> late events.
    late: Mutex<BTreeMap<(String, String), u64>>,
    /// topology -> events late for its sessions.
    late_sessions: Mutex<BTreeMap<String, u64>>,
    duplicates: AtomicU64,
    folded: AtomicU64,
}

impl OperatorCounters {
    /// Adds `n` events of `topology` that arrived after a window of kind `window` (its name, e.g.
    /// `1m`, `1h_15m`) containing them had closed (replays excepted). An event late for several
    /// windows of one hopping kind counts once for that kind (events late for sessions:
    /// [`OperatorCounters::add_late_sessions`]).
    pub fn add_late(&self, topology: &str, window: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut late = self.0.late.lock().unwrap_or_else(|e| e.into_inner());
        *late
            .entry((topology.to_owned(), window.to_owned()))
            .or_default() += n;
    }

    /// Late events so far for `topology`'s windows named `window`.
    pub fn late(&self, topology: &str, window: &str) -> u64 {
        let late = self.0.late.lock().unwrap_or_else(|e| e.into_inner());
        late.get(&(topology.to_owned(), window.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Every late count so far: `((topology, window name), events)`, sorted.
    pub fn late_counts(&self) -> Vec<((String, String), u64)> {
        let late = self.0.late.lock().unwrap_or_else(|e| e.into_inner());
        late.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Adds `n` events that were late for `topology`'s sessions
    /// ([`tally_core::SessionSpec::is_late`]; replays excepted) and could not be applied
    /// exactly (see [`crate::SessionRollup`]): their session windows are corrected from the raw
    /// events.
    pub fn add_late_sessions(&self, topology: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut counts = self
            .0
            .late_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *counts.entry(topology.to_owned()).or_default() += n;
    }

    /// Events late for `topology`'s sessions so far.
    pub fn late_sessions(&self, topology: &str) -> u64 {
        let counts = self
            .0
            .late_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.get(topology).copied().unwrap_or(0)
    }

    /// Every session late count so far: `(topology, events)`, sorted.
    pub fn late_session_counts(&self) -> Vec<(String, u64)> {
        let counts = self
            .0
            .late_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Adds `n` events dropped because their id was seen before.
    pub fn add_duplicates(&self, n: u64) {
        self.0.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    /// Duplicate events dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.0.duplicates.load(Ordering::Relaxed)
    }

    /// Adds `n` contributions (one event, one window, one dimension) aggregated into a
    /// dimension's [`tally_core::OTHER`] group because the dimension's cap was reached.
    pub fn add_folded(&self, n: u64) {
        self.0.folded.fetch_add(n, Ordering::Relaxed);
    }

    /// Contributions folded into [`tally_core::OTHER`] so far (per event, window and dimension;
    /// a value whose group is folded after it had its own counts adds all of them).
    pub fn folded(&self) -> u64 {
        self.0.folded.load(Ordering::Relaxed)
    }
}
