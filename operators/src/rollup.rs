//! Exact windowed aggregates: events, unique users, unique sessions and unique event types per
//! tumbling window, overall and per event type.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::dedup::DedupHorizon;
use crate::hashing::{hash64, IdSet};
use crate::observation::{Observation, OperatorCounters};
use crate::window::Window;

/// What a rollup computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RollupSpec {
    /// Window kinds to aggregate over.
    pub windows: Vec<Window>,
    /// How long after a window's end (in watermark time) it still accepts events.
    pub grace_ms: u64,
    /// Whether to also keep one row per event type and window.
    pub per_event_type: bool,
}

impl RollupSpec {
    /// The longest window, which bounds how long any state is kept.
    pub fn horizon(&self) -> Window {
        self.windows.iter().copied().max().unwrap_or(Window::Minute)
    }

    /// How long the dedup remembers an event id for these windows (see [`DedupHorizon`]).
    pub fn dedup_horizon(&self) -> DedupHorizon {
        DedupHorizon {
            longest: self.horizon(),
            grace_ms: self.grace_ms,
        }
    }
}

/// Identifies one aggregate: a window and, for per-type rows, an event type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowKey {
    /// Window kind.
    pub window: Window,
    /// Window start, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// `None` for the all-events row, the event type for a per-type row.
    pub event_type: Option<String>,
}

impl WindowKey {
    fn route(&self) -> u64 {
        let t = self.event_type.as_deref().map_or(0, hash64);
        (self.start_ms / self.window.millis()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ t
            ^ self.window.index() as u64
    }

    /// Dataflow time at which this window closes.
    pub fn close_time(&self, grace_ms: u64) -> u64 {
        self.start_ms + self.window.millis() + grace_ms
    }
}

/// One version of an aggregate. Provisional rows are replaced by later ones; the final row is
/// the last row for its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupRow {
    /// Which aggregate.
    pub key: WindowKey,
    /// Events (distinct event ids).
    pub events: u64,
    /// Distinct users.
    pub unique_users: u64,
    /// Distinct non-empty sessions.
    pub unique_sessions: u64,
    /// Distinct event types (1 on per-type rows).
    pub unique_event_types: u64,
    /// Whether the window has closed and this value will not change again.
    pub is_final: bool,
}

/// One event's contribution to one aggregate.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Contribution {
    key: WindowKey,
    user: u128,
    session: Option<u128>,
    event_type: u64,
    replayed: bool,
}

#[derive(Default)]
struct Acc {
    events: u64,
    users: IdSet<u128>,
    sessions: IdSet<u128>,
    types: IdSet<u64>,
    dirty: bool,
}

impl Acc {
    fn add(&mut self, c: &Contribution) {
        self.events += 1;
        self.users.insert(c.user);
        if let Some(s) = c.session {
            self.sessions.insert(s);
        }
        self.types.insert(c.event_type);
        self.dirty = true;
    }

    fn row(&self, key: WindowKey, is_final: bool) -> RollupRow {
        RollupRow {
            key,
            events: self.events,
            unique_users: self.users.len() as u64,
            unique_sessions: self.sessions.len() as u64,
            unique_event_types: self.types.len() as u64,
            is_final,
        }
    }
}

/// The open aggregates that close at one time, with the capability to emit their rows.
struct Bucket {
    cap: Capability<u64>,
    accs: HashMap<WindowKey, Acc>,
}

/// Extension trait: windowed rollups.
pub trait Rollup<'scope> {
    /// Aggregates observations into tumbling windows.
    ///
    /// Emits a final row per aggregate when the frontier reaches the window's close time (end +
    /// grace), and a provisional row for every aggregate that changed since its last row each
    /// time a record arrives on `ticks`. Contributions read at or after their window's close
    /// time are late: counted in `counters`, not aggregated; their windows are corrected from
    /// the raw events later (the sink marks them, see [`crate::late_windows`]).
    fn rollup(
        self,
        ticks: StreamVec<'scope, u64, ()>,
        spec: &RollupSpec,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, RollupRow>;
}

impl<'scope> Rollup<'scope> for StreamVec<'scope, u64, Observation> {
    fn rollup(
        self,
        ticks: StreamVec<'scope, u64, ()>,
        spec: &RollupSpec,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, RollupRow> {
        let windows = spec.windows.clone();
        let per_type = spec.per_event_type;
        let grace_ms = spec.grace_ms;
        let contributions = self.flat_map(move |obs| fan_out(&windows, per_type, obs));
        let route = Exchange::new(|c: &Contribution| c.key.route());
        contributions.binary_frontier(
            ticks,
            route,
            Pipeline,
            "WindowRollup",
            move |_cap, _info| {
                let mut open: BTreeMap<u64, Bucket> = BTreeMap::new();
                move |(data, frontier), (ticks, _), output| {
                    data.for_each(|cap, batch| {
                        let Some(&read_time) = cap.least() else {
                            return;
                        };
                        for c in batch.drain(..) {
                            let close = c.key.close_time(grace_ms);
                            if close <= read_time {
                                if c.key.event_type.is_none() && !c.replayed {
                                    counters.add_late(c.key.window, 1);
                                }
                                continue;
                            }
                            let bucket = open.entry(close).or_insert_with(|| Bucket {
                                cap: cap.delayed(&close, 0),
                                accs: HashMap::new(),
                            });
                            bucket.accs.entry(c.key.clone()).or_default().add(&c);
                        }
                    });
                    let mut tick = false;
                    ticks.for_each(|_cap, batch| {
                        batch.clear();
                        tick = true;
                    });
                    while let Some(entry) = open.first_entry() {
                        if frontier.less_than(entry.key()) {
                            break;
                        }
                        let bucket = entry.remove();
                        let mut session = output.session(&bucket.cap);
                        for (key, acc) in bucket.accs {
                            session.give(acc.row(key, true));
                        }
                    }
                    if tick {
                        for bucket in open.values_mut() {
                            let mut session = output.session(&bucket.cap);
                            for (key, acc) in bucket.accs.iter_mut().filter(|(_, a)| a.dirty) {
                                acc.dirty = false;
                                session.give(acc.row(key.clone(), false));
                            }
                        }
                    }
                }
            },
        )
    }
}

fn fan_out(windows: &[Window], per_type: bool, obs: Observation) -> Vec<Contribution> {
    let type_hash = hash64(&obs.event_type);
    let mut out = Vec::with_capacity(windows.len() * 2);
    for &window in windows {
        let start_ms = window.start_of(obs.ts_ms);
        let key = |event_type| WindowKey {
            window,
            start_ms,
            event_type,
        };
        let contribution = |key| Contribution {
            key,
            user: obs.user,
            session: obs.session,
            event_type: type_hash,
            replayed: obs.replayed,
        };
        out.push(contribution(key(None)));
        if per_type {
            out.push(contribution(key(Some(obs.event_type.clone()))));
        }
    }
    out
}
