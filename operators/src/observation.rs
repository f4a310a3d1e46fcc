//! What the window operators see of an event.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::window::Window;

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
/// shares the same counts.
#[derive(Clone, Debug, Default)]
pub struct OperatorCounters(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    late: [AtomicU64; 3],
    duplicates: AtomicU64,
    late_sessions: Mutex<BTreeMap<String, u64>>,
}

impl OperatorCounters {
    /// Adds `n` events that arrived after their `window` had closed (replays excepted).
    pub fn add_late(&self, window: Window, n: u64) {
        self.0.late[window.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Late events so far for `window`.
    pub fn late(&self, window: Window) -> u64 {
        self.0.late[window.index()].load(Ordering::Relaxed)
    }

    /// Adds `n` events dropped because their id was seen before.
    pub fn add_duplicates(&self, n: u64) {
        self.0.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    /// Duplicate events dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.0.duplicates.load(Ordering::Relaxed)
    }

    /// Adds `n` events that were late for `topology`'s sessions
    /// ([`tally_core::SessionSpec::is_late`]; replays excepted): not applied, their session
    /// windows are corrected from the raw events.
    pub fn add_late_sessions(&self, topology: &str, n: u64) {
        let mut counts = self
            .0
            .late_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(topology.to_owned()).or_default() += n;
    }

    /// Events late for `topology`'s sessions so far.
    pub fn late_sessions(&self, topology: &str) -> u64 {
        let counts = self
            .0
            .late_sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.get(topology).copied().unwrap_or(0)
    }
}
