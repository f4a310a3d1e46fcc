//! What every part of Tally must agree on about an event's windows: which closed windows a
//! late event marks for correction ([`late_windows`]) and until when an event may still be
//! needed after a restart ([`settled_after`]).

use tally_core::{RowTable, SessionSpec, Topology};

use crate::dedup::DedupHorizon;

/// The windows of `topology` an event at `ts_ms`, read when the watermark was `read_time`, is
/// *late* for: the operators did not apply it there, so a correction must recompute them from
/// the raw events. Each is `(table, window name, window start in ms)`:
///
/// - [`RowTable::Windows`]: every window (of every kind, several for a hopping kind) containing
///   `ts_ms` that had closed (end + `grace_ms` at or before `read_time`), the rule of
///   [`crate::WindowRollup`].
/// - [`RowTable::Sessions`], when the topology stores session metrics and the event is late
///   for sessions ([`SessionSpec::is_late`]): every window of every kind containing a time in
///   [`SessionSpec::affected_starts`] (the sessions the event can change start there).
///
/// Sorted, without repeats. The sink records them in the late-event ledger.
pub fn late_windows(
    topology: &Topology,
    ts_ms: u64,
    read_time: u64,
    grace_ms: u64,
) -> Vec<(RowTable, String, u64)> {
    let mut out: Vec<(RowTable, String, u64)> = Vec::new();
    LateRule::of(topology).each(topology, ts_ms, read_time, grace_ms, |table, w, start| {
        out.push((table, topology.windows[w].name.clone(), start));
    });
    out.sort();
    out.dedup();
    out
}

/// [`late_windows`] for callers that judge many events (the sink: every kept raw event): what
/// it needs of a topology, computed once, and a walk that allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LateRule {
    /// Whether the topology stores window metrics.
    windows: bool,
    /// Its sessions, when it stores session metrics.
    sessions: Option<SessionSpec>,
}

impl LateRule {
    /// The rule of `topology`.
    pub fn of(topology: &Topology) -> LateRule {
        LateRule {
            windows: topology.has(RowTable::Windows),
            sessions: session_spec(topology),
        }
    }

    /// Calls `f(table, index of the window kind in topology.windows, window start)` for every
    /// window [`late_windows`] lists (possibly with repeats for session windows: a window kind
    /// may be reached by both rules, never by one twice).
    pub fn each(
        &self,
        topology: &Topology,
        ts_ms: u64,
        read_time: u64,
        grace_ms: u64,
        mut f: impl FnMut(RowTable, usize, u64),
    ) {
        if self.windows {
            for (i, w) in topology.windows.iter().enumerate() {
                for s in w.late_starts(ts_ms, read_time, grace_ms) {
                    f(RowTable::Windows, i, s);
                }
            }
        }
        if let Some(spec) = self.sessions {
            if spec.is_late(ts_ms, read_time, grace_ms) {
                let (from, to) = spec.affected_starts(ts_ms);
                for (i, w) in topology.windows.iter().enumerate() {
                    for s in w.starts_overlapping(from, to) {
                        f(RowTable::Sessions, i, s);
                    }
                }
            }
        }
    }
}

/// The session spec of a topology that stores session metrics.
fn session_spec(topology: &Topology) -> Option<SessionSpec> {
    topology
        .sessions
        .filter(|_| topology.has(RowTable::Sessions))
}

/// The watermark after which nothing more is owed for an event at `ts_ms` read at `read_time`
/// by a process running `topologies`: the latest of
///
/// - the close of every window containing it (end + `grace_ms`),
/// - the end of its dedup horizon ([`DedupHorizon::for_topologies`]; from its time and from
///   its read, see [`DedupHorizon::remembered_until_read`]),
/// - for a topology storing session metrics, the time its session rows settle: the close of
///   the latest window containing `ts_ms` plus [`SessionSpec::window_delay_ms`] beyond its end
///   (a session containing the event starts at or before `ts_ms`, so in a window that closes
///   by then; this is later than `ts_ms + window_delay_ms`, after which the event's session
///   cannot change any more);
///
/// or `read_time` when all of those have passed. The source keeps a Kafka offset uncommitted
/// until the sink's acknowledged frontier passes this, so that a replay after a restart re-reads
/// every event the open windows, sessions and the dedup still need.
pub fn settled_after(topologies: &[Topology], ts_ms: u64, read_time: u64, grace_ms: u64) -> u64 {
    let horizon = DedupHorizon::for_topologies(topologies, grace_ms);
    let mut latest = horizon.remembered_until_read(ts_ms, read_time);
    for t in topologies {
        let session_delay = session_spec(t).map(|s| s.window_delay_ms(grace_ms));
        for w in &t.windows {
            let Some(last_start) = w.starts(ts_ms).max() else {
                continue;
            };
            latest = latest.max(w.close_time(last_start, grace_ms));
            if let Some(delay) = session_delay {
                latest = latest.max(w.close_time(last_start, delay));
            }
        }
    }
    latest.max(read_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::{Metric, SessionSpec, WindowSpec};

    const MIN: u64 = 60_000;
    const HOUR: u64 = 3_600_000;
    const DAY: u64 = 86_400_000;

    fn topology(windows: &[WindowSpec], sessions: Option<SessionSpec>) -> Topology {
        let mut b = Topology::builder("t").metric(Metric::Events);
        for w in windows {
            b = b.window(w.clone());
        }
        if let Some(s) = sessions {
            b = b.sessions(s).metric(Metric::Sessions);
        }
        b.build().expect("valid")
    }

    fn standard() -> Vec<WindowSpec> {
        vec![
            WindowSpec::tumbling("1m", MIN),
            WindowSpec::tumbling("1h", HOUR),
            WindowSpec::tumbling("1d", DAY),
        ]
    }

    #[test]
    fn settled_after_covers_the_dedup_horizon() {
        // 2024-03-13T10:17:42.123Z: its hour ends at 11:00, so its id is remembered until
        // 2024-03-14T11:00:00 plus the grace (past its day window's close, 2024-03-14T00:00).
        let ts = 1_710_325_062_123;
        let all = [topology(&standard(), None)];
        let horizon = 1_710_324_000_000 + HOUR + DAY;
        assert_eq!(settled_after(&all, ts, 0, 0), horizon);
        assert_eq!(settled_after(&all, ts, 0, 5_000), horizon + 5_000);
        // Read late (after its day closed): owed until a day after the hour of its read.
        let after_day = 1_710_288_000_000 + DAY;
        assert_eq!(
            settled_after(&all, ts, after_day, 0),
            after_day + HOUR + DAY
        );
        // Read after the horizon of its own time: likewise from its read.
        assert_eq!(
            settled_after(&all, ts, horizon + 7, 0),
            horizon + HOUR + DAY
        );
        // Minute windows only: the minute ends at 10:18:00, plus one minute.
        let minute = [topology(&standard()[..1], None)];
        assert_eq!(
            settled_after(&minute, ts, 0, 0),
            1_710_325_020_000 + 2 * MIN
        );
        // Two topologies: the longest window of either decides the horizon.
        let both = [minute[0].clone(), all[0].clone()];
        assert_eq!(settled_after(&both, ts, 0, 0), horizon);
    }

    #[test]
    fn settled_after_waits_for_hopping_windows_and_sessions() {
        let h = |hh: u64, mm: u64| 10 * DAY + hh * HOUR + mm * MIN;
        let ts = h(10, 17);
        // Minute windows and 1h windows every 15 min: the last one containing 10:17 starts at
        // 10:15 and closes at 11:15 (+ grace); the horizon (1 h block + 1 h) ends at 12:00.
        let hop = [topology(
            &[
                WindowSpec::tumbling("1m", MIN),
                WindowSpec::hopping("1h_15m", HOUR, 15 * MIN),
            ],
            None,
        )];
        assert_eq!(settled_after(&hop, ts, 0, 0), h(12, 0));
        // With 1 h windows every 15 min, 1 h 30 min windows every 30 min and sessions (gap 30
        // min, max 4 h): the window containing 10:17 that ends last is [10:00, 11:30), its
        // sessions settle 4 h + 2 * 30 min + grace after its end: 16:30 + grace.
        let spec = SessionSpec {
            gap_ms: 30 * MIN,
            max_duration_ms: 4 * HOUR,
        };
        let sessions = [topology(
            &[
                WindowSpec::hopping("1h_15m", HOUR, 15 * MIN),
                WindowSpec::hopping("90m_30m", 90 * MIN, 30 * MIN),
            ],
            Some(spec),
        )];
        assert_eq!(settled_after(&sessions, ts, 0, 1_000), h(16, 30) + 1_000);
    }

    #[test]
    fn late_windows_are_the_closed_ones() {
        // 2024-03-13T10:17:42.123Z, read at 10:19:00 with 5 s grace: its minute closed at
        // 10:18:05, its hour and day are still open.
        let ts = 1_710_325_062_123;
        let read = 1_710_325_140_000;
        let t = topology(&standard(), None);
        let late = late_windows(&t, ts, read, 5_000);
        assert_eq!(
            late,
            vec![(RowTable::Windows, "1m".to_owned(), 1_710_325_020_000)]
        );
        // Read two days later: every window closed.
        assert_eq!(late_windows(&t, ts, ts + 2 * DAY, 5_000).len(), 3);
        // Read before its minute closed: on time everywhere.
        assert!(late_windows(&t, ts, ts, 5_000).is_empty());
    }

    #[test]
    fn late_windows_of_hopping_kinds_and_sessions() {
        let h = |hh: u64, mm: u64| 10 * DAY + hh * HOUR + mm * MIN;
        let spec = SessionSpec {
            gap_ms: 30 * MIN,
            max_duration_ms: 2 * HOUR,
        };
        let t = topology(&[WindowSpec::hopping("1h_15m", HOUR, 15 * MIN)], Some(spec));
        let ts = h(10, 17);
        // Read at 10:50 with a minute of grace: the 1 h windows from 9:30 and 9:45 closed, and
        // 10:17 is late for sessions (10:17 + 30 min gap + 1 min grace = 10:48 <= 10:50).
        let late = late_windows(&t, ts, h(10, 50), MIN);
        let windows: Vec<u64> = late
            .iter()
            .filter(|(table, _, _)| *table == RowTable::Windows)
            .map(|(_, _, s)| *s)
            .collect();
        assert_eq!(windows, vec![h(9, 30), h(9, 45)]);
        // Sessions: starts may move within [8:17, 10:47]: every 1 h window containing a time
        // there, from [7:30, 8:30) to [10:45, 11:45).
        let sessions: Vec<u64> = late
            .iter()
            .filter(|(table, _, _)| *table == RowTable::Sessions)
            .map(|(_, _, s)| *s)
            .collect();
        let want: Vec<u64> = (0..14).map(|k| h(7, 30) + k * 15 * MIN).collect();
        assert_eq!(sessions, want);
        assert_eq!(*want.last().expect("some"), h(10, 45));
        // Read at 10:47:59 with a minute of grace: not late for sessions (10:48 is the limit).
        let late = late_windows(&t, ts, h(10, 48) - 1, MIN);
        assert!(late.iter().all(|(table, _, _)| *table == RowTable::Windows));
    }
}
