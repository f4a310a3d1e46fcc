//! Drops repeated events (equal event ids) so that a re-sent event counts once.

use std::collections::BTreeMap;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::StreamVec;

use crate::hashing::IdSet;
use crate::observation::{Observation, OperatorCounters};
use crate::window::Window;

/// Extension trait: event-id de-duplication with state bounded by event time.
pub trait Dedup<'scope> {
    /// Passes the first occurrence of each event id and drops later ones, counting them.
    ///
    /// Ids are remembered per `horizon` window (the longest window the rollups keep) until the
    /// frontier passes that window's close time; an event arriving after that is late for every
    /// window, so it is passed on unchanged for the rollup to count as late.
    fn dedup_events(
        self,
        horizon: Window,
        grace_ms: u64,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, Observation>;
}

impl<'scope> Dedup<'scope> for StreamVec<'scope, u64, Observation> {
    fn dedup_events(
        self,
        horizon: Window,
        grace_ms: u64,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, Observation> {
        let route = Exchange::new(|o: &Observation| o.event_id as u64);
        self.unary_frontier(route, "DedupEvents", move |_cap, _info| {
            let mut seen: BTreeMap<u64, IdSet<u128>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, batch| {
                    let Some(&read_time) = cap.least() else {
                        return;
                    };
                    let mut session = output.session(&cap);
                    for obs in batch.drain(..) {
                        let close = horizon.close_time(obs.ts_ms, grace_ms);
                        if close <= read_time || seen.entry(close).or_default().insert(obs.event_id)
                        {
                            session.give(obs);
                        } else {
                            counters.add_duplicates(1);
                        }
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
