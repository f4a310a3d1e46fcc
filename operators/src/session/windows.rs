//! The window side of sessions: which rows a session counts in, the dimension cap, and the
//! per-window sums that stage 2 keeps.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tally_core::{Component, RollupRow, RowTable, SessionSpec, Topology, Value, WindowSpec, OTHER};

use crate::hashing::hash64;

/// Signed sums of one group's session components: sessions, bounced sessions, duration (ms),
/// events. Deltas are signed; settled sums are never negative.
pub(crate) type Counts = [i64; 4];

const SESSIONS: usize = 0;
const BOUNCED: usize = 1;
const DURATION: usize = 2;
const EVENTS: usize = 3;

/// One (window kind, window start, dimension) of the sessions table: the unit the dimension
/// cap applies to, and the unit stage 2 is partitioned by. `dimension` 0 is the all-events
/// row, `d + 1` the topology's dimension `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Slot {
    pub(crate) window: u32,
    pub(crate) start_ms: u64,
    pub(crate) dimension: u32,
}

impl Slot {
    /// Exchange key: every value of one slot meets on one worker.
    pub(crate) fn route(&self) -> u64 {
        (self.start_ms.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            ^ (u64::from(self.window) << 48)
            ^ (u64::from(self.dimension) << 32).rotate_left(7)
    }
}

/// A signed change to one group of one slot, sent from the user stage to the window stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Delta {
    pub(crate) slot: Slot,
    pub(crate) value: String,
    pub(crate) counts: Counts,
}

/// What the session operator needs of a topology, resolved once.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) spec: SessionSpec,
    pub(crate) grace_ms: u64,
    topology: Arc<str>,
    windows: Vec<(Arc<str>, WindowSpec)>,
    /// Name and cap of each dimension slot; slot 0 is the all-events row (no cap).
    dimensions: Vec<(Arc<str>, Option<usize>)>,
    /// For each stored column, the index into [`Counts`].
    columns: Vec<usize>,
}

impl Plan {
    /// `None` when the topology declares no sessions or stores no session component.
    pub(crate) fn new(topology: &Topology, grace_ms: u64) -> Option<Plan> {
        let spec = topology.sessions?;
        let columns: Vec<usize> = topology
            .columns(RowTable::Sessions)
            .iter()
            .filter_map(|c| match c.component {
                Component::Sessions => Some(SESSIONS),
                Component::BouncedSessions => Some(BOUNCED),
                Component::SessionDurationMs => Some(DURATION),
                Component::SessionEvents => Some(EVENTS),
                _ => None,
            })
            .collect();
        if columns.is_empty() {
            return None;
        }
        let all: (Arc<str>, Option<usize>) = (Arc::from(""), None);
        let dims = topology
            .dimensions
            .iter()
            .map(|d| (Arc::from(d.name.as_str()), Some(d.max_values)));
        Some(Plan {
            spec,
            grace_ms,
            topology: Arc::from(topology.name.as_str()),
            windows: topology
                .windows
                .iter()
                .map(|w| (Arc::from(w.name.as_str()), w.clone()))
                .collect(),
            dimensions: std::iter::once(all).chain(dims).collect(),
            columns,
        })
    }

    /// The topology's name.
    pub(crate) fn topology(&self) -> &str {
        &self.topology
    }

    /// Adds `sign` times a session (first and last event time, events, its first event's
    /// dimension values) to `out`: in every window of every kind containing its first event,
    /// the all-events group and one group per dimension.
    pub(crate) fn attribute(
        &self,
        session: (u64, u64, u64),
        groups: &[String],
        sign: i64,
        out: &mut HashMap<(Slot, String), Counts>,
    ) {
        let (first_ms, last_ms, events) = session;
        let counts: Counts = [
            sign,
            sign * i64::from(events == 1),
            sign * (last_ms - first_ms) as i64,
            sign * events as i64,
        ];
        for (w, (_, spec)) in self.windows.iter().enumerate() {
            for start_ms in spec.starts(first_ms) {
                for d in 0..self.dimensions.len() {
                    let value = match d {
                        0 => String::new(),
                        d => groups.get(d - 1).cloned().unwrap_or_default(),
                    };
                    let slot = Slot {
                        window: w as u32,
                        start_ms,
                        dimension: d as u32,
                    };
                    let sum = out.entry((slot, value)).or_insert([0; 4]);
                    for (s, c) in sum.iter_mut().zip(counts) {
                        *s += c;
                    }
                }
            }
        }
    }

    /// The dataflow time at which a slot's rows are final: window end +
    /// [`SessionSpec::window_delay_ms`].
    pub(crate) fn close_time(&self, slot: &Slot) -> u64 {
        let size = self.windows[slot.window as usize].1.size_ms;
        slot.start_ms + size + self.spec.window_delay_ms(self.grace_ms)
    }

    /// The earliest and the latest [`Plan::close_time`] of the slots a session whose first
    /// event is at `first_ms` counts in (over every window kind and every window containing
    /// it). Both are nondecreasing in `first_ms`.
    pub(crate) fn close_range(&self, first_ms: u64) -> (u64, u64) {
        let delay = self.spec.window_delay_ms(self.grace_ms);
        let (mut earliest, mut latest) = (u64::MAX, 0);
        for (_, spec) in &self.windows {
            for start_ms in spec.starts(first_ms) {
                let close = start_ms + spec.size_ms + delay;
                earliest = earliest.min(close);
                latest = latest.max(close);
            }
        }
        (earliest, latest)
    }

    /// Whether every slot a session whose first event is at `first_ms` counts in is still open
    /// for data read at `read_time` (`close_time > read_time`).
    pub(crate) fn open_at(&self, first_ms: u64, read_time: u64) -> bool {
        self.close_range(first_ms).0 > read_time
    }

    /// The cap of a slot's dimension (`None` for the all-events row).
    pub(crate) fn cap(&self, slot: &Slot) -> Option<usize> {
        self.dimensions[slot.dimension as usize].1
    }

    /// One stored row.
    pub(crate) fn row(
        &self,
        slot: &Slot,
        value: String,
        counts: &Counts,
        final_: bool,
    ) -> RollupRow {
        RollupRow {
            topology: Arc::clone(&self.topology),
            table: RowTable::Sessions,
            window: Arc::clone(&self.windows[slot.window as usize].0),
            start_ms: slot.start_ms,
            dimension: Arc::clone(&self.dimensions[slot.dimension as usize].0),
            value,
            values: self
                .columns
                .iter()
                .map(|&i| Value::U64(u64::try_from(counts[i]).unwrap_or(0)))
                .collect(),
            is_final: final_,
        }
    }
}

/// Applies the dimension cap to one slot's groups: of the values with a nonzero session count,
/// the `cap` with the smallest `hash64` (ties by value) keep their own group; the others, and a
/// value that is literally [`OTHER`], are summed into the [`OTHER`] group. `None` keeps all.
/// Returns the nonzero groups by value.
pub(crate) fn fold<'a>(
    groups: impl Iterator<Item = (&'a String, &'a Counts)>,
    cap: Option<usize>,
) -> BTreeMap<String, Counts> {
    let mut live: Vec<(u64, &String, &Counts)> = groups
        .filter(|(_, c)| c[SESSIONS] != 0)
        .map(|(v, c)| (hash64(v), v, c))
        .collect();
    let cap = cap.unwrap_or(usize::MAX);
    let mut out = BTreeMap::new();
    if live.len() <= cap && !live.iter().any(|(_, v, _)| v.as_str() == OTHER) {
        out.extend(live.into_iter().map(|(_, v, c)| (v.clone(), *c)));
        return out;
    }
    live.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut other: Counts = [0; 4];
    let mut kept = 0;
    for (_, v, c) in live {
        if kept < cap && v.as_str() != OTHER {
            kept += 1;
            out.insert(v.clone(), *c);
        } else {
            for (o, x) in other.iter_mut().zip(c) {
                *o += x;
            }
        }
    }
    if other[SESSIONS] != 0 {
        out.insert(OTHER.to_owned(), other);
    }
    out
}

/// Stage 2 state of one slot: the summed groups, and the rows last emitted for it.
#[derive(Debug, Default)]
pub(crate) struct SlotSums {
    groups: HashMap<String, Counts>,
    /// Last emitted row of each group that has had a row (zeros once folded or emptied).
    emitted: HashMap<String, Counts>,
    dirty: bool,
}

impl SlotSums {
    /// Adds a delta to a group.
    pub(crate) fn add(&mut self, value: String, counts: &Counts) {
        match self.groups.entry(value) {
            Entry::Occupied(mut sum) => {
                for (s, c) in sum.get_mut().iter_mut().zip(counts) {
                    *s += c;
                }
                if *sum.get() == [0; 4] {
                    sum.remove();
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(*counts);
            }
        }
        self.dirty = true;
    }

    /// The groups whose row changed since the last call (a group now folded or emptied gets a
    /// zero row); empty when nothing was added since.
    pub(crate) fn changed(&mut self, cap: Option<usize>) -> Vec<(String, Counts)> {
        if !std::mem::take(&mut self.dirty) {
            return Vec::new();
        }
        let current = fold(self.groups.iter(), cap);
        let mut out: Vec<(String, Counts)> = Vec::new();
        for (value, last) in &mut self.emitted {
            if *last != [0; 4] && !current.contains_key(value) {
                *last = [0; 4];
                out.push((value.clone(), [0; 4]));
            }
        }
        for (value, counts) in current {
            if self.emitted.get(&value) != Some(&counts) {
                self.emitted.insert(value.clone(), counts);
                out.push((value, counts));
            }
        }
        out
    }

    /// Every row of the slot, final: the current groups, and a zero row for each group that
    /// had a row before and is now folded or empty (so every key's last row is final).
    pub(crate) fn finish(self, cap: Option<usize>) -> Vec<(String, Counts)> {
        let current = fold(self.groups.iter(), cap);
        let gone = self
            .emitted
            .into_keys()
            .filter(|v| !current.contains_key(v))
            .map(|v| (v, [0; 4]))
            .collect::<Vec<_>>();
        gone.into_iter().chain(current).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(values: &[(&str, i64)]) -> HashMap<String, Counts> {
        values
            .iter()
            .map(|(v, n)| (v.to_string(), [*n, 0, 0, *n]))
            .collect()
    }

    #[test]
    fn the_cap_keeps_the_smallest_hashes() {
        let g = groups(&[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("gone", 0)]);
        let all = fold(g.iter(), None);
        assert_eq!(all.len(), 4, "no group without sessions");
        let mut by_hash = ["a", "b", "c", "d"];
        by_hash.sort_by_key(|v| hash64(v));
        let capped = fold(g.iter(), Some(2));
        let kept: Vec<&str> = capped
            .keys()
            .map(String::as_str)
            .filter(|v| *v != OTHER)
            .collect();
        let mut want = by_hash[..2].to_vec();
        want.sort();
        assert_eq!(kept, want);
        let other: i64 = by_hash[2..].iter().map(|v| g[*v][0]).sum();
        assert_eq!(capped[OTHER], [other, 0, 0, other]);
        // A value spelled like the fold group is folded.
        let g = groups(&[("a", 1), (OTHER, 2)]);
        assert_eq!(fold(g.iter(), Some(5))[OTHER], [2, 0, 0, 2]);
        assert_eq!(fold(g.iter(), Some(5)).len(), 2);
    }

    #[test]
    fn close_range_spans_every_window_kind() {
        let (min, hour) = (60_000, 3_600_000);
        let spec = SessionSpec {
            gap_ms: 10 * min,
            max_duration_ms: hour,
        };
        let t = Topology::builder("web")
            .window(WindowSpec::tumbling("1h", hour))
            .window(WindowSpec::hopping("30m_15m", 30 * min, 15 * min))
            .sessions(spec)
            .metric(tally_core::Metric::Sessions)
            .build()
            .expect("topology");
        let plan = Plan::new(&t, min).expect("plan");
        // Session delay: 1 h + 2 × 10 min + 1 min = 81 min.
        let delay = 81 * min;
        let t0 = 10 * hour;
        // 10:20 is in 1h@10:00 (closes 11:00 + delay) and in 30m_15m@10:00 and @10:15 (close
        // 10:30 and 10:45 + delay).
        assert_eq!(
            plan.close_range(t0 + 20 * min),
            (t0 + 30 * min + delay, t0 + hour + delay)
        );
        assert!(plan.open_at(t0 + 20 * min, t0 + 30 * min + delay - 1));
        assert!(!plan.open_at(t0 + 20 * min, t0 + 30 * min + delay));
    }

    #[test]
    fn a_group_that_had_a_row_ends_with_a_final_zero_row() {
        let mut s = SlotSums::default();
        s.add("a".into(), &[1, 1, 0, 1]);
        assert_eq!(s.changed(None), vec![("a".to_owned(), [1, 1, 0, 1])]);
        assert!(s.changed(None).is_empty(), "nothing new");
        s.add("a".into(), &[-1, -1, 0, -1]);
        s.add("b".into(), &[1, 0, 5, 2]);
        let mut rows = s.changed(None);
        rows.sort();
        assert_eq!(
            rows,
            vec![("a".to_owned(), [0; 4]), ("b".to_owned(), [1, 0, 5, 2])]
        );
        let mut rows = s.finish(None);
        rows.sort();
        assert_eq!(
            rows,
            vec![("a".to_owned(), [0; 4]), ("b".to_owned(), [1, 0, 5, 2])]
        );
    }
}
