//! Sessions: a user's events cut into bursts of activity, by event time.

use serde::{Deserialize, Serialize};

/// How a user's events form sessions (see [`sessionize`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionSpec {
    /// Inactivity that ends a session, ms (default 30 min, the convention of Google Analytics
    /// and Adobe Analytics).
    pub gap_ms: u64,
    /// Longest session, ms, measured from its first event (default 24 h).
    pub max_duration_ms: u64,
}

impl Default for SessionSpec {
    fn default() -> Self {
        SessionSpec {
            gap_ms: 30 * 60_000,
            max_duration_ms: 24 * 3_600_000,
        }
    }
}

impl SessionSpec {
    /// How long after a session's last event its rows can still change because of an event
    /// that is not late (read before `ts + gap + grace`): `2 * gap + grace`. (The session
    /// operator keeps a session longer, until its windows close, to apply late events.)
    pub fn open_after_last_ms(&self, grace_ms: u64) -> u64 {
        2 * self.gap_ms + grace_ms
    }

    /// How long after the end of a window its session rows can still change: a session that
    /// starts in it lasts less than `max_duration`, and can be changed until
    /// [`SessionSpec::open_after_last_ms`] after its last event.
    pub fn window_delay_ms(&self, grace_ms: u64) -> u64 {
        self.max_duration_ms + self.open_after_last_ms(grace_ms)
    }

    /// Whether an event at `ts_ms` read when the watermark was `read_time` is late for
    /// sessions: the sessions it could change may already be settled (`read_time >= ts + gap +
    /// grace`). The session operator applies a late event only where that is exact; its
    /// sessions are corrected from the raw events.
    pub fn is_late(&self, ts_ms: u64, read_time: u64, grace_ms: u64) -> bool {
        ts_ms + self.gap_ms + grace_ms <= read_time
    }

    /// Event times whose sessions may start windows a late event at `ts_ms` changes: the
    /// session containing it starts at most `max_duration` earlier, a session it merges with
    /// starts at most `gap` later. `(from, to)` inclusive, ms.
    pub fn affected_starts(&self, ts_ms: u64) -> (u64, u64) {
        (
            ts_ms.saturating_sub(self.max_duration_ms),
            ts_ms + self.gap_ms,
        )
    }
}

/// One session: what the session metrics need of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionSummary {
    /// First event time, ms (the session is attributed to the windows containing it).
    pub first_ms: u64,
    /// Last event time, ms.
    pub last_ms: u64,
    /// Events in the session.
    pub events: u64,
    /// Index (in the input) of the session's first event, whose dimension values the session
    /// takes.
    pub first_index: usize,
}

impl SessionSummary {
    /// Last minus first event time, ms.
    pub fn duration_ms(&self) -> u64 {
        self.last_ms - self.first_ms
    }

    /// Whether the session has exactly one event (a *bounce*).
    pub fn bounced(&self) -> bool {
        self.events == 1
    }
}

/// Cuts one user's events into sessions. `times` are event times (ms) **sorted ascending**
/// (ties in any order). A new session starts at the first event, at every event more than
/// `gap_ms` after the previous one, and at every event `max_duration_ms` or more after the
/// current session's first event. `first_index` of each session indexes `times`.
///
/// ```
/// use tally_core::{sessionize, SessionSpec};
/// let spec = SessionSpec { gap_ms: 10, max_duration_ms: 100 };
/// let s = sessionize(&spec, &[0, 5, 15, 40, 41]);
/// assert_eq!(s.len(), 2);
/// assert_eq!((s[0].first_ms, s[0].last_ms, s[0].events), (0, 15, 3));
/// assert_eq!((s[1].first_ms, s[1].events), (40, 2));
/// ```
pub fn sessionize(spec: &SessionSpec, times: &[u64]) -> Vec<SessionSummary> {
    let mut out: Vec<SessionSummary> = Vec::new();
    for (i, &t) in times.iter().enumerate() {
        match out.last_mut() {
            Some(s) if t - s.last_ms <= spec.gap_ms && t - s.first_ms < spec.max_duration_ms => {
                s.last_ms = t;
                s.events += 1;
            }
            _ => out.push(SessionSummary {
                first_ms: t,
                last_ms: t,
                events: 1,
                first_index: i,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_and_max_duration_cut_sessions() {
        let spec = SessionSpec {
            gap_ms: 10,
            max_duration_ms: 25,
        };
        // 0..20 spaced by 10 (== gap: same session), then 30 is >= 25 after 0: new session.
        let s = sessionize(&spec, &[0, 10, 20, 30, 41]);
        let shape: Vec<_> = s
            .iter()
            .map(|s| (s.first_ms, s.last_ms, s.events))
            .collect();
        assert_eq!(shape, vec![(0, 20, 3), (30, 30, 1), (41, 41, 1)]);
        assert!(s[1].bounced());
        assert_eq!(s[0].duration_ms(), 20);
        assert_eq!(s[1].first_index, 3);
        assert!(sessionize(&spec, &[]).is_empty());
        // Equal times stay in one session.
        assert_eq!(sessionize(&spec, &[5, 5, 5])[0].events, 3);
    }

    #[test]
    fn lateness_and_delays() {
        let spec = SessionSpec::default();
        assert_eq!(spec.gap_ms, 1_800_000);
        assert!(!spec.is_late(0, 1_800_000 + 4_999, 5_000));
        assert!(spec.is_late(0, 1_800_000 + 5_000, 5_000));
        assert_eq!(spec.window_delay_ms(0), 86_400_000 + 3_600_000);
        assert_eq!(spec.affected_starts(100_000_000), (13_600_000, 101_800_000));
    }
}
