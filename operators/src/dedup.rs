//! Drops repeated events (equal event ids) so that a re-sent event counts once, whatever time or
//! type its copies carry: the first copy read wins.

use std::collections::BTreeMap;
use std::ops::Bound;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::StreamVec;
use timely::ExchangeData;

use tally_core::Topology;

use crate::hashing::IdSet;
use crate::observation::{Observation, OperatorCounters};

/// How long an event id is remembered after its first copy.
///
/// An id first seen with event time `ts`, read when the watermark was `r`, is remembered until
/// the watermark reaches [`DedupHorizon::remembered_until_read`]: the later of
/// [`DedupHorizon::remembered_until`] for `ts` and for `r`, i.e. the end of the hour containing
/// `ts` (or `r`; of a block of `longest_ms`, when that is shorter than an hour), plus
/// `longest_ms`, plus the grace period. With a one-day longest window and 5 s of grace that is
/// between 1 day 5 s and 1 day 1 hour 5 s after `ts` for an event read on time, and as long
/// after its read for a late one: a re-send of an event that was already days old when it first
/// arrived is still dropped if it comes within a day, whatever time it carries. Rounding to the
/// hour keeps few buckets of ids, and makes the horizon outlast every window of any copy stamped
/// less than an hour after the first: such a copy read after the horizon (e.g. re-read after a
/// restart, once the first copy's offset was committed) is late for all its windows, so it
/// cannot count in a rollup.
///
/// One dedup serves every topology of a process: [`DedupHorizon::for_topologies`] takes the
/// longest window of all of them (and the session gap, when longer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupHorizon {
    /// The longest window the rollups keep, ms.
    pub longest_ms: u64,
    /// The rollups' grace period, ms.
    pub grace_ms: u64,
}

/// One hour, ms: the coarsest block the dedup rounds event times to.
const HOUR_MS: u64 = 3_600_000;

impl DedupHorizon {
    /// The horizon for a process running `topologies`: `longest_ms` is the longest window of
    /// any of them, or the longest session gap when that is longer (a copy read after the
    /// horizon is then late for sessions too). 0 without topologies.
    pub fn for_topologies(topologies: &[Topology], grace_ms: u64) -> DedupHorizon {
        let longest_ms = topologies
            .iter()
            .map(|t| {
                let gap = t.sessions.map_or(0, |s| s.gap_ms);
                t.longest_window_ms().max(gap)
            })
            .max()
            .unwrap_or(0);
        DedupHorizon {
            longest_ms,
            grace_ms,
        }
    }

    /// The watermark from which copies of an id first seen with event time `ts_ms` are no longer
    /// recognised (they count as a new event).
    pub const fn remembered_until(self, ts_ms: u64) -> u64 {
        let block = if self.longest_ms == 0 {
            1
        } else if self.longest_ms < HOUR_MS {
            self.longest_ms
        } else {
            HOUR_MS
        };
        ts_ms - ts_ms % block + block + self.longest_ms + self.grace_ms
    }

    /// The watermark from which copies of an id first seen with event time `ts_ms`, read when
    /// the watermark was `read_time`, are no longer recognised: the later of
    /// [`DedupHorizon::remembered_until`] of the two.
    pub const fn remembered_until_read(self, ts_ms: u64, read_time: u64) -> u64 {
        let by_time = self.remembered_until(ts_ms);
        let by_read = self.remembered_until(read_time);
        if by_time > by_read {
            by_time
        } else {
            by_read
        }
    }
}

/// A record the dedup can judge: it has an event id and an event time.
pub trait Identified {
    /// The event id's hash; records with equal ids are copies of one event.
    fn event_id(&self) -> u128;
    /// Event time, milliseconds since the Unix epoch.
    fn event_time_ms(&self) -> u64;
}

impl Identified for Observation {
    fn event_id(&self) -> u128 {
        self.event_id
    }
    fn event_time_ms(&self) -> u64 {
        self.ts_ms
    }
}

/// An observation with a payload that travels with it (e.g. the raw row to store).
impl<R> Identified for (Observation, R) {
    fn event_id(&self) -> u128 {
        self.0.event_id
    }
    fn event_time_ms(&self) -> u64 {
        self.0.ts_ms
    }
}

/// Extension trait: event-id de-duplication with state bounded by event time.
pub trait Dedup<'scope, D> {
    /// Passes the first copy of each event id and drops the later ones, counting them in
    /// `counters`. Copies are judged in the order they arrive, which within one Kafka partition
    /// is offset order (records are exchanged by event id, and one channel keeps its order).
    ///
    /// The id is remembered while the watermark is before `horizon.remembered_until(t)`, `t`
    /// being the first copy's event time: a copy read then is dropped whatever its own time or
    /// type. A copy read later is passed on as a new event. The ids are kept in buckets keyed by
    /// that time and dropped when the frontier reaches it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tally_operators::{hash128, Dedup, DedupHorizon, Observation, OperatorCounters};
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, ToStream};
    ///
    /// let copy = |ts_ms, event_type: &str| Observation {
    ///     event_id: hash128("e1"),
    ///     ts_ms,
    ///     event_type: event_type.to_owned(),
    ///     user: hash128("u1"),
    ///     session: None,
    ///     metadata: Arc::default(),
    ///     replayed: false,
    /// };
    /// let horizon = DedupHorizon { longest_ms: 86_400_000, grace_ms: 5_000 };
    /// let kept = timely::example(move |scope| {
    ///     // A retry re-stamped 1.5 s later and with another type is still the same event.
    ///     vec![copy(1_000, "click"), copy(2_500, "buy")]
    ///         .to_stream(scope)
    ///         .dedup_events(horizon, OperatorCounters::default())
    ///         .map(|o| (o.ts_ms, o.event_type))
    ///         .capture()
    /// });
    /// let kept: Vec<(u64, String)> = kept.extract().into_iter().flat_map(|(_, v)| v).collect();
    /// assert_eq!(kept, vec![(1_000, "click".to_owned())]);
    /// ```
    fn dedup_events(
        self,
        horizon: DedupHorizon,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, D>;
}

impl<'scope, D: ExchangeData + Identified> Dedup<'scope, D> for StreamVec<'scope, u64, D> {
    fn dedup_events(
        self,
        horizon: DedupHorizon,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, D> {
        let route = Exchange::new(|d: &D| d.event_id() as u64);
        self.unary_frontier(route, "DedupEvents", move |_cap, _info| {
            // remembered until -> ids first seen with an event time whose horizon ends then
            let mut seen: BTreeMap<u64, IdSet<u128>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, batch| {
                    let Some(&read_time) = cap.least() else {
                        return;
                    };
                    let mut session = output.session(&cap);
                    for record in batch.drain(..) {
                        let id = record.event_id();
                        // Only horizons still running at this read time: a bucket the frontier
                        // has passed but that is not pruned yet must not decide.
                        let repeat = seen
                            .range((Bound::Excluded(read_time), Bound::Unbounded))
                            .any(|(_, ids)| ids.contains(&id));
                        if repeat {
                            counters.add_duplicates(1);
                            continue;
                        }
                        let until =
                            horizon.remembered_until_read(record.event_time_ms(), read_time);
                        seen.entry(until).or_default().insert(id);
                        session.give(record);
                    }
                });
                while let Some(entry) = seen.first_entry() {
                    if frontier.less_than(entry.key()) {
                        break;
                    }
                    entry.remove();
                }
            }
        })
    }
}
