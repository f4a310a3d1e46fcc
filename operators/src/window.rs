//! Tumbling event-time windows and the arithmetic every part of Tally shares about them.

use serde::{Deserialize, Serialize};

use crate::dedup::DedupHorizon;

/// A tumbling window length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Window {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC days).
    Day,
}

impl Window {
    /// Every window kind, shortest first.
    pub const ALL: [Window; 3] = [Window::Minute, Window::Hour, Window::Day];

    /// Length in milliseconds.
    pub const fn millis(self) -> u64 {
        match self {
            Window::Minute => 60_000,
            Window::Hour => 3_600_000,
            Window::Day => 86_400_000,
        }
    }

    /// The label used in storage and in the API (`1m`, `1h`, `1d`).
    pub const fn label(self) -> &'static str {
        match self {
            Window::Minute => "1m",
            Window::Hour => "1h",
            Window::Day => "1d",
        }
    }

    /// Parses a label as written by [`Window::label`].
    pub fn from_label(label: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.label() == label)
    }

    /// Position of this window in [`Window::ALL`].
    pub const fn index(self) -> usize {
        match self {
            Window::Minute => 0,
            Window::Hour => 1,
            Window::Day => 2,
        }
    }

    /// Start of the window containing `ts_ms`.
    pub const fn start_of(self, ts_ms: u64) -> u64 {
        ts_ms - ts_ms % self.millis()
    }

    /// The dataflow time at which the window containing `ts_ms` closes: its end plus `grace_ms`.
    /// Data read at or after this time is late for that window.
    pub const fn close_time(self, ts_ms: u64, grace_ms: u64) -> u64 {
        self.start_of(ts_ms) + self.millis() + grace_ms
    }

    /// Whether an event at `ts_ms`, read when the watermark was `read_time`, is late for this
    /// window.
    pub const fn is_late(self, ts_ms: u64, read_time: u64, grace_ms: u64) -> bool {
        self.close_time(ts_ms, grace_ms) <= read_time
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The time after which nothing more is owed for an event at `ts_ms` read at `read_time`: the
/// later of its read time and the end of its dedup horizon (see [`DedupHorizon`]), which is
/// never before the close of the longest window it counts in. The source keeps a Kafka offset
/// uncommitted until the sink's acknowledged frontier passes this, so that a replay after a
/// restart re-reads the first copy of every event id the dedup still remembers, and the dedup,
/// rebuilt from what is re-read, drops the same later copies.
pub fn settled_after(windows: &[Window], ts_ms: u64, read_time: u64, grace_ms: u64) -> u64 {
    let longest = windows.iter().copied().max().unwrap_or(Window::Minute);
    let horizon = DedupHorizon { longest, grace_ms };
    let closes = windows.iter().map(|w| w.close_time(ts_ms, grace_ms));
    closes
        .chain([horizon.remembered_until_read(ts_ms, read_time)])
        .filter(|&t| t > read_time)
        .max()
        .unwrap_or(read_time)
}

/// The windows of `windows` for which an event at `ts_ms`, read when the watermark was
/// `read_time`, is *late*: already closed (end + `grace_ms` at or before `read_time`), so the
/// rollup operator did not aggregate it. Each is `(window kind, window start in ms since the
/// epoch)`. These are the windows a correction must recompute from the raw events; the sink
/// records them in the late-event ledger (see `docs/architecture.md`, "Late events and
/// corrections"), using the same rule as [`crate::Rollup`] so that every event the rollups
/// left out marks its window.
pub fn late_windows(
    windows: &[Window],
    ts_ms: u64,
    read_time: u64,
    grace_ms: u64,
) -> impl Iterator<Item = (Window, u64)> + '_ {
    windows
        .iter()
        .filter(move |w| w.is_late(ts_ms, read_time, grace_ms))
        .map(move |&w| (w, w.start_of(ts_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds() {
        // 2024-03-13T10:17:42.123Z
        let ts = 1_710_325_062_123;
        assert_eq!(Window::Minute.start_of(ts), 1_710_325_020_000);
        assert_eq!(Window::Hour.start_of(ts), 1_710_324_000_000);
        assert_eq!(Window::Day.start_of(ts), 1_710_288_000_000);
        assert_eq!(Window::Minute.close_time(ts, 5_000), 1_710_325_085_000);
        assert!(!Window::Minute.is_late(ts, 1_710_325_084_999, 5_000));
        assert!(Window::Minute.is_late(ts, 1_710_325_085_000, 5_000));
    }

    #[test]
    fn settled_after_covers_the_dedup_horizon() {
        // 2024-03-13T10:17:42.123Z: its hour ends at 11:00, so its id is remembered until
        // 2024-03-14T11:00:00 plus the grace (past its day window's close, 2024-03-14T00:00).
        let ts = 1_710_325_062_123;
        let all = Window::ALL;
        let horizon = 1_710_324_000_000 + 3_600_000 + 86_400_000;
        assert_eq!(settled_after(&all, ts, 0, 0), horizon);
        assert_eq!(settled_after(&all, ts, 0, 5_000), horizon + 5_000);
        assert!(horizon > Window::Day.close_time(ts, 0));
        // Read late (after its day closed): owed until a day after the hour of its read, since
        // the dedup remembers a late first copy that long too.
        let after_day = Window::Day.close_time(ts, 0);
        assert_eq!(
            settled_after(&all, ts, after_day, 0),
            after_day + 3_600_000 + 86_400_000
        );
        // Read after the horizon of its own time: likewise from its read.
        assert_eq!(
            settled_after(&all, ts, horizon + 7, 0),
            horizon + 3_600_000 + 86_400_000
        );
        // Shorter windows: the hour ends at 11:00, plus one hour.
        let hour_horizon = 1_710_324_000_000 + 2 * 3_600_000;
        let short = [Window::Minute, Window::Hour];
        assert_eq!(settled_after(&short, ts, 0, 0), hour_horizon);
        // Minute windows only: the minute ends at 10:18:00, plus one minute.
        assert_eq!(
            settled_after(&[Window::Minute], ts, 0, 0),
            1_710_325_020_000 + 2 * 60_000
        );
    }

    #[test]
    fn late_windows_are_the_closed_ones() {
        // 2024-03-13T10:17:42.123Z, read at 10:19:00 with 5 s grace: its minute closed at
        // 10:18:05, its hour and day are still open.
        let ts = 1_710_325_062_123;
        let read = 1_710_325_140_000;
        let late: Vec<_> = late_windows(&Window::ALL, ts, read, 5_000).collect();
        assert_eq!(late, vec![(Window::Minute, 1_710_325_020_000)]);
        // Read the next day: every window closed.
        let late: Vec<_> = late_windows(&Window::ALL, ts, ts + 86_400_000 * 2, 5_000).collect();
        assert_eq!(late.len(), 3);
        // Read before its minute closed: on time everywhere.
        assert_eq!(late_windows(&Window::ALL, ts, ts, 5_000).count(), 0);
    }

    #[test]
    fn labels_round_trip() {
        for w in Window::ALL {
            assert_eq!(Window::from_label(w.label()), Some(w));
        }
        assert_eq!(Window::from_label("2m"), None);
    }
}
