//! Accumulators: what one stored column of a window's rollup row keeps while the window is open.
//!
//! One [`Accumulator`] per [`Component`] (events, exact or approximate distinct counts, field
//! sum / count / max). A group's state is the list of accumulators of the topology's window
//! columns ([`Layout`], built at run time from `Topology::columns(RowTable::Windows)`), so a
//! topology that stores two columns keeps two accumulators per group, and one that stores nine
//! keeps nine.
//!
//! Adding a metric: its components in `tally_core` (`Metric::components`, `Component::column`),
//! an accumulator here and its arm in [`accumulator`].

use std::any::Any;

use cardinality_estimator::CardinalityEstimator;
use tally_core::{Component, DistinctMode, FieldPath, RowTable, Topology, Value};

use crate::hashing::IdSet;
use crate::point::Point;

/// What one stored column keeps for one group of one window.
///
/// Accumulators are order-independent: adding the same points in any order, or splitting them
/// between two accumulators and merging those, gives the same value, with two rounding
/// caveats: floating-point field sums (sums of numbers exact in binary, such as multiples of
/// 1/4, are exact), and HyperLogLog estimates above 128 ids (the sketch keeps its harmonic sum
/// as a running `f32`, so two sketches with equal registers filled in different orders can
/// differ by about one in 10^5).
pub trait Accumulator: Any {
    /// Adds one event.
    fn add(&mut self, point: &Point);
    /// Adds everything `other` has seen. `other` is an accumulator of the same component (made
    /// by [`accumulator`] with the same arguments); any other kind is ignored.
    fn merge(&mut self, other: &dyn Accumulator);
    /// The stored value (the column's type: `U64` or `F64`).
    fn value(&self) -> Value;
    /// Bytes of memory it holds, its own size included (for state bounds and benchmarks).
    fn state_bytes(&self) -> usize;
}

/// The accumulator of `component`. `distinct` chooses exact sets or HyperLogLog for distinct
/// counts; `fields` are the topology's numeric fields (`Topology::fields`, the order of
/// `Point::fields`). Session components and fields missing from `fields` get an accumulator
/// that stays 0 (they are not window columns of a valid topology).
pub fn accumulator(
    component: &Component,
    distinct: DistinctMode,
    fields: &[FieldPath],
) -> Box<dyn Accumulator> {
    let field = |p: &FieldPath| fields.iter().position(|f| f == p);
    let distinct_of = |key: DistinctKey| -> Box<dyn Accumulator> {
        match distinct {
            DistinctMode::Exact => Box::new(ExactDistinct {
                key,
                ids: IdSet::default(),
            }),
            DistinctMode::Approx => Box::new(ApproxDistinct {
                key,
                sketch: CardinalityEstimator::new(),
            }),
        }
    };
    match component {
        Component::Events => Box::new(Events(0)),
        Component::UniqueUsers => distinct_of(DistinctKey::User),
        Component::UniqueSessions => distinct_of(DistinctKey::Session),
        Component::UniqueEventTypes => distinct_of(DistinctKey::EventType),
        Component::FieldSum(p) => match field(p) {
            Some(field) => Box::new(FieldSum { field, sum: 0.0 }),
            None => Box::new(Zero),
        },
        Component::FieldCount(p) => match field(p) {
            Some(field) => Box::new(FieldCount { field, n: 0 }),
            None => Box::new(Zero),
        },
        Component::FieldMax(p) => match field(p) {
            Some(field) => Box::new(FieldMax { field, max: None }),
            None => Box::new(Zero),
        },
        Component::Sessions
        | Component::BouncedSessions
        | Component::SessionDurationMs
        | Component::SessionEvents => Box::new(Zero),
    }
}

/// The accumulators one group of a topology's window rows needs: one per column of
/// `Topology::columns(RowTable::Windows)`, in that order.
#[derive(Clone, Debug)]
pub struct Layout {
    components: Vec<Component>,
    distinct: DistinctMode,
    fields: Vec<FieldPath>,
}

impl Layout {
    /// The layout of `topology`'s window table.
    pub fn windows(topology: &Topology) -> Layout {
        Layout {
            components: topology
                .columns(RowTable::Windows)
                .into_iter()
                .map(|c| c.component)
                .collect(),
            distinct: topology.distinct,
            fields: topology.fields(),
        }
    }

    /// Fresh accumulators for one group.
    pub fn fresh(&self) -> Vec<Box<dyn Accumulator>> {
        self.components
            .iter()
            .map(|c| accumulator(c, self.distinct, &self.fields))
            .collect()
    }

    /// How many columns.
    pub fn len(&self) -> usize {
        self.components.len()
    }

    /// Whether there is no column.
    pub fn is_empty(&self) -> bool {
        self.components.is_empty()
    }
}

/// Events.
struct Events(u64);

impl Accumulator for Events {
    fn add(&mut self, _point: &Point) {
        self.0 += 1;
    }
    fn merge(&mut self, other: &dyn Accumulator) {
        if let Some(o) = downcast::<Self>(other) {
            self.0 += o.0;
        }
    }
    fn value(&self) -> Value {
        Value::U64(self.0)
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// Which id a distinct count counts.
#[derive(Clone, Copy, Debug)]
enum DistinctKey {
    User,
    Session,
    EventType,
}

impl DistinctKey {
    fn of(self, point: &Point) -> Option<u128> {
        match self {
            DistinctKey::User => Some(point.user),
            DistinctKey::Session => point.session,
            DistinctKey::EventType => Some(u128::from(point.event_type)),
        }
    }
}

/// Exact distinct count: a set of the ids' hashes.
struct ExactDistinct {
    key: DistinctKey,
    ids: IdSet<u128>,
}

impl Accumulator for ExactDistinct {
    fn add(&mut self, point: &Point) {
        if let Some(id) = self.key.of(point) {
            self.ids.insert(id);
        }
    }
    fn merge(&mut self, other: &dyn Accumulator) {
        if let Some(o) = downcast::<Self>(other) {
            self.ids.extend(o.ids.iter().copied());
        }
    }
    fn value(&self) -> Value {
        Value::U64(self.ids.len() as u64)
    }
    fn state_bytes(&self) -> usize {
        // hashbrown: a power-of-two number of buckets, at most 7/8 full, each one u128 and one
        // control byte, plus one group (16) of control bytes.
        let capacity = self.ids.capacity();
        let table = match capacity {
            0 => 0,
            1..=7 => (capacity + 1).next_power_of_two() * 17 + 16,
            _ => (capacity * 8 / 7).next_power_of_two() * 17 + 16,
        };
        std::mem::size_of::<Self>() + table
    }
}

/// Approximate distinct count: HyperLogLog with 2^12 six-bit registers (exact up to 128 ids).
struct ApproxDistinct {
    key: DistinctKey,
    sketch: CardinalityEstimator<u64>,
}

impl Accumulator for ApproxDistinct {
    fn add(&mut self, point: &Point) {
        if let Some(id) = self.key.of(point) {
            // Ids are already xxh3 hashes: fold the halves into the 64 bits the sketch takes.
            self.sketch.insert_hash((id as u64) ^ ((id >> 64) as u64));
        }
    }
    fn merge(&mut self, other: &dyn Accumulator) {
        if let Some(o) = downcast::<Self>(other) {
            self.sketch.merge(&o.sketch);
        }
    }
    fn value(&self) -> Value {
        Value::U64(self.sketch.estimate() as u64)
    }
    fn state_bytes(&self) -> usize {
        // `size_of` counts the sketch's inline word and its heap part.
        std::mem::size_of::<DistinctKey>() + self.sketch.size_of()
    }
}

/// Sum of a field over the events carrying a number there.
struct FieldSum {
    field: usize,
    sum: f64,
}

impl Accumulator for FieldSum {
    fn add(&mut self, point: &Point) {
        if let Some(Some(v)) = point.fields.get(self.field) {
            self.sum += v;
        }
    }
    fn merge(&mut self, other: &dyn Accumulator) {
        if let Some(o) = downcast::<Self>(other) {
            self.sum += o.sum;
        }
    }
    fn value(&self) -> Value {
        Value::F64(self.sum)
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// Events carrying a number at a field.
struct FieldCount {
    field: usize,
    n: u64,
}

impl Accumulator for FieldCount {
    fn add(&mut self, point: &Point) {
        if let Some(Some(_)) = point.fields.get(self.field) {
            self.n += 1;
        }
    }
    fn merge(&mut self, other: &dyn Accumulator) {
        if let Some(o) = downcast::<Self>(other) {
            self.n += o.n;
        }
    }
    fn value(&self) -> Value {
        Value::U64(self.n)
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// Largest number at a field (0 when no event carries one).
struct FieldMax {
    field: usize,
    max: Option<f64>,
}

impl Accumulator for FieldMax {
    fn add(&mut self, point: &Point) {
        if let Some(Some(v)) = point.fields.get(self.field) {
            self.max = Some(self.max.map_or(*v, |m| m.max(*v)));
        }
    }
    fn merge(&mut self, other: &dyn Accumulator) {
        if let Some(Self { max: Some(v), .. }) = downcast::<Self>(other) {
            self.max = Some(self.max.map_or(*v, |m| m.max(*v)));
        }
    }
    fn value(&self) -> Value {
        Value::F64(self.max.unwrap_or(0.0))
    }
    fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
    }
}

/// A column no window accumulator feeds: always 0.
struct Zero;

impl Accumulator for Zero {
    fn add(&mut self, _point: &Point) {}
    fn merge(&mut self, _other: &dyn Accumulator) {}
    fn value(&self) -> Value {
        Value::U64(0)
    }
    fn state_bytes(&self) -> usize {
        0
    }
}

fn downcast<T: Accumulator>(other: &dyn Accumulator) -> Option<&T> {
    let any: &dyn Any = other;
    any.downcast_ref::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::hash128;

    fn point(user: u128, fields: Vec<Option<f64>>) -> Point {
        Point {
            ts_ms: 0,
            user,
            session: None,
            event_type: 7,
            groups: Vec::new(),
            fields,
            replayed: false,
        }
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let p = FieldPath::parse("metadata.x").expect("path");
        let components = [
            Component::Events,
            Component::UniqueUsers,
            Component::FieldSum(p.clone()),
            Component::FieldCount(p.clone()),
            Component::FieldMax(p.clone()),
        ];
        let points: Vec<Point> = (0..10)
            .map(|i| point(i % 4, vec![(i % 3 != 0).then_some(i as f64 * 0.25)]))
            .collect();
        for c in &components {
            let fields = std::slice::from_ref(&p);
            let mut whole = accumulator(c, DistinctMode::Exact, fields);
            let (mut a, mut b) = (
                accumulator(c, DistinctMode::Exact, fields),
                accumulator(c, DistinctMode::Exact, fields),
            );
            for (i, pt) in points.iter().enumerate() {
                whole.add(pt);
                if i % 2 == 0 {
                    a.add(pt)
                } else {
                    b.add(pt)
                }
            }
            a.merge(b.as_ref());
            assert_eq!(a.value(), whole.value(), "{c:?}");
        }
        // Hand-computed: users 0..4, x = i/4 for i in {1,2,4,5,7,8}: sum 27/4, max 2, count 6.
        let fields = std::slice::from_ref(&p);
        let value = |c: &Component| {
            let mut acc = accumulator(c, DistinctMode::Exact, fields);
            points.iter().for_each(|pt| acc.add(pt));
            acc.value()
        };
        assert_eq!(value(&components[1]), Value::U64(4));
        assert_eq!(value(&components[2]), Value::F64(6.75));
        assert_eq!(value(&components[3]), Value::U64(6));
        assert_eq!(value(&components[4]), Value::F64(2.0));
        // No number at the field: max and sum are 0.
        let mut max = accumulator(&components[4], DistinctMode::Exact, fields);
        max.add(&point(1, vec![None]));
        assert_eq!(max.value(), Value::F64(0.0));
    }

    /// Relative error of the approximate count of `n` distinct ids, the ids drawn from `seed`.
    fn approx_error(n: u64, seed: u64) -> f64 {
        let mut acc = accumulator(&Component::UniqueUsers, DistinctMode::Approx, &[]);
        for i in 0..n {
            acc.add(&point(hash128(&format!("{seed}:{i}")), vec![]));
            // Repeats change nothing.
            if i % 3 == 0 {
                acc.add(&point(hash128(&format!("{seed}:{i}")), vec![]));
            }
        }
        (acc.value().as_f64() - n as f64) / n as f64
    }

    #[test]
    fn approx_distinct_is_exact_when_small_and_within_the_stated_error_above() {
        let sigma = DistinctMode::Approx.standard_error();
        assert!((sigma - 0.01625).abs() < 1e-9);
        for n in [1, 2, 5, 50, 128] {
            assert_eq!(approx_error(n, 1), 0.0, "{n} ids");
        }
        // 4 sigma per estimate (each run is deterministic: fixed ids).
        for n in [200, 1_000, 5_000, 20_000, 100_000] {
            for seed in 0..3 {
                let e = approx_error(n, seed);
                assert!(e.abs() < 4.0 * sigma, "{n} ids, seed {seed}: error {e}");
            }
        }
        // Root mean square over 30 sketches of 10,000 ids: about sigma (at most 1.5 sigma).
        let runs = 30;
        let rms = ((0..runs)
            .map(|seed| approx_error(10_000, 100 + seed).powi(2))
            .sum::<f64>()
            / runs as f64)
            .sqrt();
        assert!(rms < 1.5 * sigma, "rms {rms}");
        assert!(rms > 0.2 * sigma, "rms {rms}: suspiciously exact");
    }

    #[test]
    fn approx_sketches_merge_like_unions() {
        let mut a = accumulator(&Component::UniqueUsers, DistinctMode::Approx, &[]);
        let mut b = accumulator(&Component::UniqueUsers, DistinctMode::Approx, &[]);
        let mut whole = accumulator(&Component::UniqueUsers, DistinctMode::Approx, &[]);
        for i in 0..3_000u32 {
            let p = point(hash128(&i.to_string()), vec![]);
            whole.add(&p);
            // Overlapping halves: 0..2000 and 1000..3000.
            if i < 2_000 {
                a.add(&p);
            }
            if i >= 1_000 {
                b.add(&p);
            }
        }
        a.merge(b.as_ref());
        assert_eq!(a.value(), whole.value());
        assert!(whole.state_bytes() < 4_096);
    }
}
