//! A topology's window rows as pure functions of its points: which windows and groups a point
//! contributes to, and the final rows of a set of points ([`window_rows`]). The window rollup
//! operator ([`crate::WindowRollup`]) and the corrections (which recompute closed windows from
//! the raw events) share this code, so they cannot disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tally_core::{RollupRow, RowTable, Topology, Value, WindowSpec};

use crate::accumulate::Layout;
use crate::groups::{Capped, GroupRow};
use crate::point::Point;

/// One grouping of one window: the window kind (index into `Topology::windows`), its start, and
/// the dimension (0: the all-events row; `i + 1`: `Topology::dimensions[i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct GroupingKey {
    pub(crate) window: u32,
    pub(crate) start_ms: u64,
    pub(crate) dimension: u32,
}

/// One event's contribution to one grouping of one window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Contribution {
    pub(crate) key: GroupingKey,
    /// The event's value of the dimension (empty for the all-events row).
    pub(crate) value: String,
    /// The event (its `groups` emptied: `value` carries the one that matters here).
    pub(crate) point: Point,
}

impl Contribution {
    /// Where the exchange sends it: every contribution of one grouping to one worker.
    pub(crate) fn route(&self) -> u64 {
        let k = &self.key;
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&k.window.to_le_bytes());
        bytes[4..12].copy_from_slice(&k.start_ms.to_le_bytes());
        bytes[12..].copy_from_slice(&k.dimension.to_le_bytes());
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }
}

/// What a topology's window rows need, prepared once: names as shared strings, caps, the
/// accumulator layout.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    topology: Arc<str>,
    windows: Vec<(WindowSpec, Arc<str>)>,
    /// `(name, cap)` per dimension, the all-events grouping first (`""`, no cap).
    groupings: Vec<(Arc<str>, usize)>,
    pub(crate) layout: Layout,
}

impl Shape {
    pub(crate) fn new(topology: &Topology) -> Shape {
        let groupings = std::iter::once((Arc::from(""), usize::MAX))
            .chain(
                topology
                    .dimensions
                    .iter()
                    .map(|d| (Arc::from(d.name.as_str()), d.max_values)),
            )
            .collect();
        Shape {
            topology: Arc::from(topology.name.as_str()),
            windows: topology
                .windows
                .iter()
                .map(|w| (w.clone(), Arc::from(w.name.as_str())))
                .collect(),
            groupings,
            layout: Layout::windows(topology),
        }
    }

    /// The topology's name.
    pub(crate) fn topology(&self) -> &str {
        &self.topology
    }

    /// The window kinds, in declaration order.
    pub(crate) fn windows(&self) -> impl Iterator<Item = &WindowSpec> {
        self.windows.iter().map(|(w, _)| w)
    }

    /// An empty grouping for `key`.
    pub(crate) fn grouping(&self, key: &GroupingKey) -> Capped {
        let cap = self
            .groupings
            .get(key.dimension as usize)
            .map_or(usize::MAX, |(_, cap)| *cap);
        Capped::new(cap)
    }

    /// The dataflow time at which `key`'s window closes.
    pub(crate) fn close_time(&self, key: &GroupingKey, grace_ms: u64) -> u64 {
        self.windows
            .get(key.window as usize)
            .map_or(key.start_ms, |(w, _)| w.close_time(key.start_ms, grace_ms))
    }

    /// The contributions of `point`: for every window kind, every start containing the point
    /// for which `on_time(window index, start)` holds, the all-events grouping and one per
    /// dimension.
    pub(crate) fn contributions(
        &self,
        point: &Point,
        mut on_time: impl FnMut(usize, u64) -> bool,
        out: &mut Vec<Contribution>,
    ) {
        let stripped = Point {
            groups: Vec::new(),
            ..point.clone()
        };
        for (w, (spec, _)) in self.windows.iter().enumerate() {
            for start_ms in spec.starts(point.ts_ms) {
                if !on_time(w, start_ms) {
                    continue;
                }
                for dimension in 0..self.groupings.len() {
                    let value = match dimension {
                        0 => String::new(),
                        d => point.groups.get(d - 1).cloned().unwrap_or_default(),
                    };
                    out.push(Contribution {
                        key: GroupingKey {
                            window: w as u32,
                            start_ms,
                            dimension: dimension as u32,
                        },
                        value,
                        point: stripped.clone(),
                    });
                }
            }
        }
    }

    /// The rollup row of one group.
    pub(crate) fn row(&self, key: &GroupingKey, group: GroupRow, is_final: bool) -> RollupRow {
        let (value, values): (String, Vec<Value>) = group;
        let window = self
            .windows
            .get(key.window as usize)
            .map_or_else(|| Arc::from(""), |(_, name)| Arc::clone(name));
        let dimension = self
            .groupings
            .get(key.dimension as usize)
            .map_or_else(|| Arc::from(""), |(name, _)| Arc::clone(name));
        RollupRow {
            topology: Arc::clone(&self.topology),
            table: RowTable::Windows,
            window,
            start_ms: key.start_ms,
            dimension,
            value,
            values,
            is_final,
        }
    }
}

/// The final window rows of `points` (one topology's projected events): for every window of
/// every kind that contains a point, the all-events row and one row per dimension value (values
/// past a dimension's cap folded into `__other__`, by the same rule as the operator). Values in
/// the order of `topology.columns(RowTable::Windows)`; every row `is_final`. Rows are sorted by
/// window kind (declaration order), start, dimension (declaration order, all-events first) and
/// value. This is what the window rollup operator emits as final rows for windows that received
/// exactly these points on time; corrections recompute closed windows with it: pass every
/// point (first copy of each event id) whose time is in the windows to recompute, and keep the
/// rows of those windows only (rows of other windows the points touch are partial). A group
/// stored before but absent from the recomputed rows (a value now folded into `__other__`)
/// needs an all-zero row, as the operator writes for groups it folds.
///
/// ```
/// use tally_core::{Dimension, Metric, Topology, Value, WindowSpec};
/// use tally_operators::{aggregate::window_rows, Point};
/// let t = Topology::builder("t")
///     .window(WindowSpec::hopping("2m_1m", 120_000, 60_000))
///     .dimension(Dimension::parse("event_type").unwrap())
///     .metric(Metric::Events)
///     .build()
///     .unwrap();
/// let point = |ts_ms, kind: &str| Point {
///     ts_ms, user: 1, session: None, event_type: 0, groups: vec![kind.to_owned()],
///     fields: vec![], replayed: false,
/// };
/// let rows = window_rows(&t, &[point(90_000, "click"), point(150_000, "view")]);
/// // [0, 2m) holds the click, [1m, 3m) both, [2m, 4m) the view.
/// let all: Vec<(u64, Value)> = rows.iter()
///     .filter(|r| r.dimension.is_empty())
///     .map(|r| (r.start_ms, r.values[0]))
///     .collect();
/// assert_eq!(all, [(0, Value::U64(1)), (60_000, Value::U64(2)), (120_000, Value::U64(1))]);
/// assert_eq!(rows.len(), 3 + 4);
/// ```
pub fn window_rows(topology: &Topology, points: &[Point]) -> Vec<RollupRow> {
    let shape = Shape::new(topology);
    let mut groupings: BTreeMap<GroupingKey, Capped> = BTreeMap::new();
    let mut contributions = Vec::new();
    for point in points {
        contributions.clear();
        shape.contributions(point, |_, _| true, &mut contributions);
        for c in contributions.drain(..) {
            groupings
                .entry(c.key)
                .or_insert_with(|| shape.grouping(&c.key))
                .add(&c.value, &c.point, &shape.layout);
        }
    }
    let mut rows = Vec::new();
    for (key, grouping) in groupings {
        let mut finals = grouping.finals(&shape.layout);
        finals.sort_by(|a, b| a.0.cmp(&b.0));
        rows.extend(finals.into_iter().map(|g| shape.row(&key, g, true)));
    }
    rows
}
