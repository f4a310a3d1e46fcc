//! Window kinds: tumbling and hopping windows over event time.

use serde::{Deserialize, Serialize};

/// One window kind of a topology: windows of `size_ms` starting every `slide_ms` (aligned to the
/// Unix epoch, UTC). A *tumbling* window has `slide_ms == size_ms` (each event is in exactly one
/// window); a *hopping* window has a smaller slide, and each event is in `size_ms / slide_ms`
/// windows (the terms of Kafka Streams and Flink: "hopping" = "sliding" with a fixed slide).
///
/// ```
/// use tally_core::WindowSpec;
/// let w = WindowSpec::hopping("1h_15m", 3_600_000, 900_000);
/// // 00:20 is in the hours starting at 23:30, 23:45, 00:00 and 00:15.
/// let starts: Vec<u64> = w.starts(86_400_000 + 1_200_000).collect();
/// assert_eq!(starts.len(), 4);
/// assert_eq!(starts[0], 86_400_000 + 900_000);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowSpec {
    /// The name used in storage and in the API (`1m`, `1h`, `1h_15m`).
    pub name: String,
    /// Length, ms (a positive whole number of seconds).
    pub size_ms: u64,
    /// Distance between consecutive window starts, ms; equals `size_ms` for tumbling windows
    /// and divides it for hopping ones.
    pub slide_ms: u64,
}

impl WindowSpec {
    /// A tumbling window of `size_ms`.
    pub fn tumbling(name: impl Into<String>, size_ms: u64) -> WindowSpec {
        WindowSpec {
            name: name.into(),
            size_ms,
            slide_ms: size_ms,
        }
    }

    /// A hopping window of `size_ms` starting every `slide_ms`.
    pub fn hopping(name: impl Into<String>, size_ms: u64, slide_ms: u64) -> WindowSpec {
        WindowSpec {
            name: name.into(),
            size_ms,
            slide_ms,
        }
    }

    /// Whether windows overlap (slide shorter than size).
    pub fn is_hopping(&self) -> bool {
        self.slide_ms < self.size_ms
    }

    /// `"tumbling"` or `"hopping"`.
    pub fn kind(&self) -> &'static str {
        if self.is_hopping() {
            "hopping"
        } else {
            "tumbling"
        }
    }

    /// How many windows contain each instant (`size / slide`).
    pub fn windows_per_event(&self) -> u64 {
        self.size_ms / self.slide_ms.max(1)
    }

    /// Starts (ms) of the windows containing `ts_ms`, latest first: every `s` that is a multiple
    /// of the slide with `s <= ts_ms < s + size`.
    pub fn starts(&self, ts_ms: u64) -> impl Iterator<Item = u64> + '_ {
        let slide = self.slide_ms.max(1);
        let last = ts_ms - ts_ms % slide;
        (0..self.windows_per_event())
            .map(move |k| k * slide)
            .take_while(move |&back| back <= last)
            .map(move |back| last - back)
            .filter(move |&s| s + self.size_ms > ts_ms)
    }

    /// The dataflow time (watermark) at which the window starting at `start_ms` closes: its end
    /// plus `grace_ms`. Data read at or after this time is late for it.
    pub fn close_time(&self, start_ms: u64, grace_ms: u64) -> u64 {
        start_ms + self.size_ms + grace_ms
    }

    /// The windows (starts, ms) containing `ts_ms` that an event read when the watermark was
    /// `read_time` is late for: already closed.
    pub fn late_starts(
        &self,
        ts_ms: u64,
        read_time: u64,
        grace_ms: u64,
    ) -> impl Iterator<Item = u64> + '_ {
        self.starts(ts_ms)
            .filter(move |&s| self.close_time(s, grace_ms) <= read_time)
    }

    /// Starts (ms) of the windows that contain some time in `[from_ms, to_ms]` (inclusive),
    /// ascending: every multiple `s` of the slide with `s <= to_ms` and `s + size > from_ms`.
    /// Empty when `from_ms > to_ms`.
    pub fn starts_overlapping(&self, from_ms: u64, to_ms: u64) -> impl Iterator<Item = u64> {
        let slide = self.slide_ms.max(1);
        let first = match (from_ms + 1).checked_sub(self.size_ms) {
            Some(x) => x.div_ceil(slide) * slide,
            None => 0,
        };
        let last = to_ms - to_ms % slide;
        let count = if from_ms > to_ms || first > last {
            0
        } else {
            (last - first) / slide + 1
        };
        (0..count).map(move |k| first + k * slide)
    }

    /// Parses a duration as written in topology files: a whole number followed by `ms`, `s`,
    /// `m`, `h` or `d` (`90s`, `15m`, `1h`, `1d`). Returns ms.
    pub fn parse_duration(text: &str) -> Option<u64> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let unit_ms = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        n.checked_mul(unit_ms)
    }

    /// Writes `ms` the way [`WindowSpec::parse_duration`] reads it, in the largest exact unit.
    pub fn format_duration(ms: u64) -> String {
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size && ms.is_multiple_of(size) {
                return format!("{}{unit}", ms / size);
            }
        }
        format!("{ms}ms")
    }
}

impl std::fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_has_one_window_per_instant() {
        let w = WindowSpec::tumbling("1h", 3_600_000);
        // 2024-03-13T10:17:42.123Z
        let ts = 1_710_325_062_123;
        assert_eq!(w.starts(ts).collect::<Vec<_>>(), vec![1_710_324_000_000]);
        assert_eq!(w.close_time(1_710_324_000_000, 5), 1_710_327_600_005);
        assert!(!w.is_hopping());
    }

    #[test]
    fn hopping_windows_are_every_slide_containing_the_instant() {
        let w = WindowSpec::hopping("1h_15m", 3_600_000, 900_000);
        let ts = 10 * 3_600_000 + 17 * 60_000; // 10:17
        let starts: Vec<u64> = w.starts(ts).collect();
        let h = |hh: u64, mm: u64| hh * 3_600_000 + mm * 60_000;
        assert_eq!(starts, vec![h(10, 15), h(10, 0), h(9, 45), h(9, 30)]);
        // On a boundary: 10:15 is in [10:15, 11:15) but not in [9:15, 10:15).
        let starts: Vec<u64> = w.starts(h(10, 15)).collect();
        assert_eq!(starts, vec![h(10, 15), h(10, 0), h(9, 45), h(9, 30)]);
        // Near the epoch no window starts before 0.
        assert_eq!(w.starts(60_000).collect::<Vec<_>>(), vec![0]);
        // Late only for the closed ones: [9:30, 10:30) and [9:45, 10:45) at 10:45.
        let late: Vec<u64> = w.late_starts(ts, h(10, 45), 0).collect();
        assert_eq!(late, vec![h(9, 45), h(9, 30)]);
        assert_eq!(w.late_starts(ts, h(10, 44), 0).count(), 1);
    }

    #[test]
    fn starts_overlapping_a_range() {
        let w = WindowSpec::hopping("1h_15m", 3_600_000, 900_000);
        let h = |hh: u64, mm: u64| hh * 3_600_000 + mm * 60_000;
        // [8:17, 10:47]: from [7:30, 8:30) to [10:45, 11:45).
        let starts: Vec<u64> = w.starts_overlapping(h(8, 17), h(10, 47)).collect();
        assert_eq!(starts.len(), 14);
        assert_eq!((starts[0], starts[13]), (h(7, 30), h(10, 45)));
        // One instant: the same windows as `starts`.
        let mut one: Vec<u64> = w.starts(h(10, 17)).collect();
        one.reverse();
        assert_eq!(
            w.starts_overlapping(h(10, 17), h(10, 17))
                .collect::<Vec<_>>(),
            one
        );
        assert_eq!(
            w.starts_overlapping(60_000, 60_000).collect::<Vec<_>>(),
            vec![0]
        );
        assert_eq!(w.starts_overlapping(5, 4).count(), 0);
        let t = WindowSpec::tumbling("1m", 60_000);
        assert_eq!(
            t.starts_overlapping(59_999, 60_000).collect::<Vec<_>>(),
            vec![0, 60_000]
        );
    }

    #[test]
    fn durations_round_trip() {
        assert_eq!(WindowSpec::parse_duration("15m"), Some(900_000));
        assert_eq!(WindowSpec::parse_duration("1d"), Some(86_400_000));
        assert_eq!(WindowSpec::parse_duration("250ms"), Some(250));
        assert_eq!(WindowSpec::parse_duration("1 h"), None);
        assert_eq!(WindowSpec::parse_duration("h"), None);
        assert_eq!(WindowSpec::parse_duration("5w"), None);
        for ms in [1_000, 90_000, 3_600_000, 86_400_000, 250] {
            assert_eq!(
                WindowSpec::parse_duration(&WindowSpec::format_duration(ms)),
                Some(ms)
            );
        }
    }
}
