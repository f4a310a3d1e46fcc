//! The groups of one window: the all-events group, or the values of one dimension under its cap.
//!
//! The cap rule is order-independent, so replays, corrections and any number of workers agree:
//! of the values seen in one window for one dimension, the `max_values` with the smallest
//! `hash64(value)` (ties broken by the value) keep their own group; every other value's events
//! are aggregated into the [`OTHER`] group. A value that held its own group and is pushed out by
//! a value with a smaller hash has its accumulators merged into [`OTHER`]; if a row of it was
//! already emitted, an all-zero row replaces it (provisional at the next tick, final at the
//! close), so storage keeps no stale group.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tally_core::{Value, OTHER};

use crate::accumulate::{Accumulator, Layout};
use crate::hashing::hash64;
use crate::point::Point;

/// One group's accumulators.
struct Group {
    accs: Vec<Box<dyn Accumulator>>,
    /// Points added (directly or by merging).
    points: u64,
    /// Changed since its last row.
    dirty: bool,
}

impl Group {
    fn new(layout: &Layout) -> Group {
        Group {
            accs: layout.fresh(),
            points: 0,
            dirty: false,
        }
    }

    fn add(&mut self, point: &Point) {
        for acc in &mut self.accs {
            acc.add(point);
        }
        self.points += 1;
        self.dirty = true;
    }

    fn absorb(&mut self, other: &Group) {
        for (acc, o) in self.accs.iter_mut().zip(&other.accs) {
            acc.merge(o.as_ref());
        }
        self.points += other.points;
        self.dirty = true;
    }

    fn values(&self) -> Vec<Value> {
        self.accs.iter().map(|a| a.value()).collect()
    }
}

/// One row of a grouping: the value (empty for the all-events row) and the column values.
pub(crate) type GroupRow = (String, Vec<Value>);

/// The groups of one window (one kind, one start) and one grouping: all events (`cap` =
/// `usize::MAX`, one group with the empty value) or one dimension capped at `max_values`.
pub(crate) struct Capped {
    cap: usize,
    kept: HashMap<String, Group>,
    /// The kept values ordered by (hash, value): the last one is the next to fold.
    order: BTreeSet<(u64, String)>,
    other: Option<Group>,
    /// Values whose row was emitted (provisional) and that still hold their own group.
    shown: HashSet<String>,
    /// Values folded after a row of theirs was emitted -> whether their zero row was emitted.
    folded_shown: BTreeMap<String, bool>,
}

impl Capped {
    /// An empty grouping with room for `cap` values.
    pub(crate) fn new(cap: usize) -> Capped {
        Capped {
            cap: cap.max(1),
            kept: HashMap::new(),
            order: BTreeSet::new(),
            other: None,
            shown: HashSet::new(),
            folded_shown: BTreeMap::new(),
        }
    }

    /// Adds one event with value `value`. Returns how many points this folded into [`OTHER`]
    /// (the event itself when its value has no group, plus a pushed-out group's points).
    /// An event whose value is [`OTHER`] itself counts in the [`OTHER`] group (not folded).
    pub(crate) fn add(&mut self, value: &str, point: &Point, layout: &Layout) -> u64 {
        if value == OTHER && self.cap != usize::MAX {
            self.other
                .get_or_insert_with(|| Group::new(layout))
                .add(point);
            return 0;
        }
        if let Some(group) = self.kept.get_mut(value) {
            group.add(point);
            return 0;
        }
        let key = (hash64(value), value.to_owned());
        if self.kept.len() < self.cap {
            self.admit(key, point, layout);
            return 0;
        }
        match self.order.last() {
            Some(last) if key < *last => {
                let last = last.clone();
                let folded = self.fold(last, layout);
                self.admit(key, point, layout);
                folded
            }
            _ => {
                self.other
                    .get_or_insert_with(|| Group::new(layout))
                    .add(point);
                1
            }
        }
    }

    fn admit(&mut self, key: (u64, String), point: &Point, layout: &Layout) {
        let mut group = Group::new(layout);
        group.add(point);
        self.kept.insert(key.1.clone(), group);
        self.order.insert(key);
    }

    /// Moves the group of `key` into [`OTHER`]; returns its points.
    fn fold(&mut self, key: (u64, String), layout: &Layout) -> u64 {
        self.order.remove(&key);
        let Some(group) = self.kept.remove(&key.1) else {
            return 0;
        };
        self.other
            .get_or_insert_with(|| Group::new(layout))
            .absorb(&group);
        if self.shown.remove(&key.1) {
            self.folded_shown.insert(key.1, false);
        }
        group.points
    }

    /// Rows of the groups that changed since their last row, and all-zero rows of groups
    /// folded since a row of theirs was emitted. Marks them clean.
    pub(crate) fn provisional(&mut self, layout: &Layout) -> Vec<GroupRow> {
        let mut rows = Vec::new();
        for (value, group) in self.kept.iter_mut().filter(|(_, g)| g.dirty) {
            group.dirty = false;
            self.shown.insert(value.clone());
            rows.push((value.clone(), group.values()));
        }
        if let Some(other) = self.other.as_mut().filter(|g| g.dirty) {
            other.dirty = false;
            rows.push((OTHER.to_owned(), other.values()));
        }
        for (value, zeroed) in self.folded_shown.iter_mut().filter(|(_, z)| !**z) {
            *zeroed = true;
            rows.push((value.clone(), zeros(layout)));
        }
        rows
    }

    /// The final rows: every kept group, [`OTHER`] when anything was folded, and an all-zero
    /// row for every folded value a row of which was emitted.
    pub(crate) fn finals(self, layout: &Layout) -> Vec<GroupRow> {
        let mut rows: Vec<GroupRow> = self
            .kept
            .into_iter()
            .map(|(value, group)| (value, group.values()))
            .collect();
        if let Some(other) = self.other {
            rows.push((OTHER.to_owned(), other.values()));
        }
        rows.extend(
            self.folded_shown
                .into_keys()
                .map(|value| (value, zeros(layout))),
        );
        rows
    }
}

/// An all-zero row (each column's type).
fn zeros(layout: &Layout) -> Vec<Value> {
    layout
        .fresh()
        .iter()
        .map(|a| match a.value() {
            Value::U64(_) => Value::U64(0),
            Value::F64(_) => Value::F64(0.0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::{Metric, Topology, WindowSpec};

    fn layout() -> Layout {
        let t = Topology::builder("t")
            .window(WindowSpec::tumbling("1m", 60_000))
            .metric(Metric::Events)
            .metric(Metric::UniqueUsers)
            .build()
            .expect("valid");
        Layout::windows(&t)
    }

    fn point(user: u128) -> Point {
        Point {
            ts_ms: 0,
            user,
            session: None,
            event_type: 0,
            groups: Vec::new(),
            fields: Vec::new(),
            replayed: false,
        }
    }

    fn sorted(mut rows: Vec<GroupRow>) -> Vec<(String, Vec<u64>)> {
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter()
            .map(|(v, vals)| (v, vals.iter().map(|x| x.as_f64() as u64).collect()))
            .collect()
    }

    #[test]
    fn the_smallest_hashes_keep_their_groups_in_any_order() {
        let layout = layout();
        // Four values, cap 2: the two with the smallest hash64 keep groups.
        let values = ["ios", "android", "web", "tv"];
        let mut by_hash: Vec<&str> = values.to_vec();
        by_hash.sort_by_key(|v| hash64(v));
        let events: Vec<(&str, u128)> = vec![
            ("ios", 1),
            ("android", 2),
            ("web", 3),
            ("tv", 4),
            ("ios", 5),
            ("web", 1),
            ("tv", 1),
        ];
        let count = |v: &str| events.iter().filter(|(x, _)| *x == v).count() as u64;
        let users = |vs: &[&str]| {
            let mut u: Vec<u128> = events
                .iter()
                .filter(|(x, _)| vs.contains(x))
                .map(|(_, u)| *u)
                .collect();
            u.sort_unstable();
            u.dedup();
            u.len() as u64
        };
        let mut want = vec![
            (
                by_hash[0].to_owned(),
                vec![count(by_hash[0]), users(&by_hash[..1])],
            ),
            (
                by_hash[1].to_owned(),
                vec![count(by_hash[1]), users(&by_hash[1..2])],
            ),
            (
                OTHER.to_owned(),
                vec![count(by_hash[2]) + count(by_hash[3]), users(&by_hash[2..])],
            ),
        ];
        want.sort();
        for rotation in 0..events.len() {
            let mut capped = Capped::new(2);
            let mut folded = 0;
            for (v, u) in events.iter().cycle().skip(rotation).take(events.len()) {
                folded += capped.add(v, &point(*u), &layout);
            }
            assert_eq!(folded, count(by_hash[2]) + count(by_hash[3]));
            assert_eq!(sorted(capped.finals(&layout)), want, "rotation {rotation}");
        }
    }

    #[test]
    fn a_folded_group_that_was_shown_gets_a_zero_row() {
        let layout = layout();
        let (small, large) = if hash64("a") < hash64("b") {
            ("a", "b")
        } else {
            ("b", "a")
        };
        let mut capped = Capped::new(1);
        capped.add(large, &point(1), &layout);
        assert_eq!(
            sorted(capped.provisional(&layout)),
            vec![(large.into(), vec![1, 1])]
        );
        capped.add(small, &point(2), &layout);
        let mut want = vec![
            (small.to_owned(), vec![1, 1]),
            (OTHER.to_owned(), vec![1, 1]),
            (large.to_owned(), vec![0, 0]),
        ];
        want.sort();
        assert_eq!(sorted(capped.provisional(&layout)), want);
        // Nothing changed: nothing to say.
        assert!(capped.provisional(&layout).is_empty());
        // The final rows repeat the zero row, so the last row of `large` is final and zero.
        assert_eq!(sorted(capped.finals(&layout)), want);
    }
}
