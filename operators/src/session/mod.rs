//! Session metrics over event time: [`SessionRollup`] (the operator) and [`session_rows`] (the
//! same result computed from a slice of events, for corrections).
//!
//! The semantics are documented on [`SessionRollup`].

mod user;
mod windows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tally_core::{sessionize, RollupRow, Topology};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::observation::OperatorCounters;
use crate::point::Point;
use user::UserSessions;
use windows::{fold, Counts, Delta, Plan, Slot, SlotSums};

/// Extension trait: session metrics of a topology, over event time.
///
/// # Semantics
/// - A user's events (by `Point::user`), sorted by time, are cut into sessions by
///   [`tally_core::sessionize`] with the topology's [`tally_core::SessionSpec`]: a new session
///   at an event more than `gap` after the previous one, or `max_duration` or more after the
///   session's first event.
/// - A session counts in every window of every window kind (tumbling and hopping) containing
///   its first event: in the all-events row (dimension and value `""`) and, per dimension, in
///   the row of its first event's value. Among events at the session's first time, the first
///   event is the one with the smallest dimension values (compared as the list of the
///   topology's dimension values), so the result does not depend on arrival order.
/// - Components (columns, in the order of `Topology::columns(RowTable::Sessions)`, only those
///   the metrics need): `sessions`, `bounced_sessions` (one event), `session_duration_ms`
///   (sum of last − first) and `session_events`.
/// - Dimension cap, per (window, start, dimension): of the values with sessions, the
///   `max_values` with the smallest `hash64(value)` keep their row, the others are summed into
///   the [`tally_core::OTHER`] row (as is a value that is literally `__other__`). A row emitted
///   before whose group is now folded or empty is emitted again with zeros: a zero row means
///   "no sessions".
/// - Out-of-order events re-sessionize their user: a session they merge, extend or move (the
///   `max_duration` cuts shift) is retracted from its windows and its replacement added, so
///   the settled rows equal sessionizing the sorted events.
/// - An event is late for sessions when `SessionSpec::is_late(ts, read_time, grace)`. It is
///   applied like an on-time one when that is exact: it is more than `gap` after every session
///   of its user already forgotten (so it cannot join one, and the `max_duration` cuts before
///   it stay), and every session window the sessions it changes (old and new) count in is
///   still open at its read time. Otherwise it is counted
///   ([`crate::OperatorCounters::late_sessions`], replays excepted) and not applied. Either
///   way its session windows are marked late by the pipeline and corrected from the raw events
///   with [`session_rows`] once closed (which rewrites the same rows when it was applied and
///   nothing else was refused).
///
/// # Dataflow and state
/// Stage 1 (exchanged by user) keeps each user's events sorted and the sessions last emitted
/// for them; a batch re-sessionizes the user from the last session starting before its
/// earliest event and sends signed deltas (−old, +new) per (window, start, dimension, value),
/// summed per batch (work per batch and user: the user's kept events from that session on,
/// i.e. the last session for events in order; late events are first inserted into a copy of
/// the user's state, and one at a time if not all of them can be applied). A session and its
/// events are forgotten once the frontier reaches the latest close time of the session windows
/// it counts in (for a session starting at `t`: the latest over window kinds of the last window
/// start containing `t` + size + `window_delay_ms(grace)`, about `size + max_duration + 2 gap +
/// grace` after `t`); the user keeps `pruned_until`, the last event of its forgotten sessions.
/// A user with no session left is dropped once the frontier reaches that latest close for a
/// session starting at `pruned_until + gap`: any event it could refuse then starts a session
/// whose windows are closed. Memory per user with kept state: about 150 bytes, plus 16 per
/// kept event, 32 per kept session and one entry per distinct combination of dimension values
/// among the kept events (16 + 24 per dimension + the text). With the default spec a session's
/// events are kept until 25 h + grace after the end of the last window containing its start.
///
/// Stage 2 (exchanged by (window, start, dimension), so the cap sees all values of a slot)
/// sums the deltas per group, emits provisional rows for changed groups on each tick, and the
/// final rows when the frontier reaches window end + `window_delay_ms(grace)`
/// (`max_duration + 2 gap + grace`): every session starting in the window is settled by then.
/// Memory: per open (window, start, dimension) one entry per value seen (about 70 bytes +
/// the text), twice once its row has been emitted.
pub trait SessionRollup<'scope> {
    /// Sessionizes the points per user and aggregates the sessions into the topology's windows
    /// (semantics above). Rows have `table = RowTable::Sessions`; a provisional row for each group that changed is emitted
    /// on every record of `ticks`, and the final rows of a window at dataflow time (window end
    /// plus `SessionSpec::window_delay_ms(grace_ms)`). A topology without sessions (or without a
    /// session metric) gives no rows. Events late for sessions that are not applied are counted in
    /// `counters`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tally_core::{Metric, SessionSpec, Topology, Value, WindowSpec};
    /// use tally_operators::{Point, SessionRollup};
    /// use timely::dataflow::operators::{Inspect, ToStream};
    ///
    /// let topology = Topology::builder("web")
    ///     .window(WindowSpec::tumbling("1h", 3_600_000))
    ///     .sessions(SessionSpec { gap_ms: 60_000, max_duration_ms: 3_600_000 })
    ///     .metric(Metric::EventsPerSession)
    ///     .build()
    ///     .unwrap();
    /// let point = |ts_ms| Point {
    ///     ts_ms, user: 1, session: None, event_type: 0,
    ///     groups: vec![], fields: vec![], replayed: false,
    /// };
    /// let rows = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&rows);
    /// timely::execute_directly(move |worker| {
    ///     worker.dataflow::<u64, _, _>(|scope| {
    ///         let ticks = Vec::<()>::new().to_stream(scope);
    ///         // Two sessions: 0 and 30 s, then 5 min (more than the 1 min gap later).
    ///         vec![point(0), point(300_000), point(30_000)]
    ///             .to_stream(scope)
    ///             .session_rollup(ticks, &topology, 0, Default::default())
    ///             .inspect(move |row| sink.lock().unwrap().push(row.clone()));
    ///     });
    /// });
    /// let rows = rows.lock().unwrap();
    /// assert_eq!(rows.len(), 1);
    /// // sessions, session_events: 3 events in 2 sessions.
    /// assert_eq!(rows[0].values, vec![Value::U64(2), Value::U64(3)]);
    /// assert!(rows[0].is_final);
    /// ```
    fn session_rollup(
        self,
        ticks: StreamVec<'scope, u64, ()>,
        topology: &Topology,
        grace_ms: u64,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, RollupRow>;
}

impl<'scope> SessionRollup<'scope> for StreamVec<'scope, u64, Point> {
    fn session_rollup(
        self,
        ticks: StreamVec<'scope, u64, ()>,
        topology: &Topology,
        grace_ms: u64,
        counters: OperatorCounters,
    ) -> StreamVec<'scope, u64, RollupRow> {
        let Some(plan) = Plan::new(topology, grace_ms) else {
            return self.flat_map(|_| None);
        };
        let plan = Arc::new(plan);
        let deltas = by_user(self, Arc::clone(&plan), counters);
        by_window(deltas, ticks, plan)
    }
}

/// An event to insert in stage 1: time (ms), dimension values.
type Event = (u64, Vec<String>);
/// A late event for stage 1: time (ms), dimension values, replayed.
type Late = (u64, Vec<String>, bool);

/// Stage 1: per user, sorted events → signed session deltas per group.
fn by_user<'scope>(
    points: StreamVec<'scope, u64, Point>,
    plan: Arc<Plan>,
    counters: OperatorCounters,
) -> StreamVec<'scope, u64, Delta> {
    let route = Exchange::new(|p: &Point| (p.user as u64) ^ ((p.user >> 64) as u64));
    let gap_ms = plan.spec.gap_ms;
    points.unary_frontier(route, "SessionUsers", move |_cap, _info| {
        let mut users: HashMap<u128, UserSessions> = HashMap::new();
        // (time the user's first kept session can be forgotten, or the user dropped; user)
        let mut due: BTreeSet<(u64, u128)> = BTreeSet::new();
        move |(input, frontier), output| {
            let forget_at = |t: u64| plan.close_range(t).1;
            input.for_each(|cap, batch| {
                let Some(&read_time) = cap.least() else {
                    return;
                };
                // Per user: on-time events, and late ones.
                let mut by_user: HashMap<u128, (Vec<Event>, Vec<Late>)> = HashMap::new();
                for p in batch.drain(..) {
                    let entry = by_user.entry(p.user).or_default();
                    if plan.spec.is_late(p.ts_ms, read_time, plan.grace_ms) {
                        entry.1.push((p.ts_ms, p.groups, p.replayed));
                    } else {
                        entry.0.push((p.ts_ms, p.groups));
                    }
                }
                let mut sums: HashMap<(Slot, String), Counts> = HashMap::new();
                let mut refused = 0;
                for (user, (on_time, late)) in by_user {
                    let state = users.entry(user).or_default();
                    let before = state.due(gap_ms, forget_at);
                    if !on_time.is_empty() {
                        // An on-time event is more than `gap` after every forgotten session
                        // and changes only sessions whose windows are open (see the trait
                        // docs).
                        debug_assert!(on_time.iter().all(|e| state.accepts(e.0, gap_ms)));
                        let (removed, added) = state.insert(&plan.spec, on_time);
                        debug_assert!(removed
                            .iter()
                            .chain(&added)
                            .all(|s| plan.open_at(s.first_ms, read_time)));
                        emit(&plan, state, removed, added, &mut sums);
                    }
                    if !late.is_empty() {
                        refused += apply_late(&plan, state, late, read_time, &mut sums);
                    }
                    let after = state.due(gap_ms, forget_at);
                    if state.is_empty() {
                        users.remove(&user);
                    }
                    if before != after {
                        if let Some(t) = before {
                            due.remove(&(t, user));
                        }
                        if let Some(t) = after {
                            due.insert((t, user));
                        }
                    }
                }
                counters.add_late_sessions(plan.topology(), refused);
                let Some(out_cap) = cap.retain_least(0) else {
                    return;
                };
                let mut session = output.session(&out_cap);
                for ((slot, value), counts) in sums {
                    if counts != [0; 4] {
                        session.give(Delta {
                            slot,
                            value,
                            counts,
                        });
                    }
                }
            });
            // Forget the sessions whose windows have all closed, and the users nothing can be
            // applied to any more (`settle` does everything due by the frontier, so a user's
            // next due time is later and the loop ends).
            let now = frontier.frontier().first().copied().unwrap_or(u64::MAX);
            while let Some(&(t, user)) = due.first() {
                if t > now {
                    break;
                }
                due.pop_first();
                let Some(state) = users.get_mut(&user) else {
                    continue;
                };
                if state.settle(now, gap_ms, forget_at) {
                    users.remove(&user);
                } else if let Some(next) = state.due(gap_ms, forget_at) {
                    due.insert((next, user));
                }
            }
        }
    })
}

/// Adds the deltas of a user's changed sessions (−removed, +added) to `sums`.
fn emit(
    plan: &Plan,
    state: &UserSessions,
    removed: Vec<user::Sess>,
    added: Vec<user::Sess>,
    sums: &mut HashMap<(Slot, String), Counts>,
) {
    for (sign, sessions) in [(-1, removed), (1, added)] {
        for s in sessions {
            let summary = (s.first_ms, s.last_ms, s.events);
            plan.attribute(summary, state.groups(&s), sign, sums);
        }
    }
}

/// Applies a user's events late for sessions where that is exact: each is more than `gap` after
/// the user's forgotten sessions, and every session window the changed sessions count in is
/// still open at `read_time`. Tries them all at once, else one at a time (each on a copy of
/// the state, kept only if it passes). Returns how many non-replayed events were refused.
fn apply_late(
    plan: &Plan,
    state: &mut UserSessions,
    mut late: Vec<Late>,
    read_time: u64,
    sums: &mut HashMap<(Slot, String), Counts>,
) -> u64 {
    let gap_ms = plan.spec.gap_ms;
    // The session an event ends up in starts at or before it, so its windows close no later
    // than the earliest of the event's own: if that one is closed, the event cannot be applied.
    let possible =
        |ts: u64, state: &UserSessions| state.accepts(ts, gap_ms) && plan.open_at(ts, read_time);
    let mut try_insert = |state: &mut UserSessions, events: Vec<Event>| {
        let mut trial = state.clone();
        let (removed, added) = trial.insert(&plan.spec, events);
        let exact = removed
            .iter()
            .chain(&added)
            .all(|s| plan.open_at(s.first_ms, read_time));
        if exact {
            *state = trial;
            emit(plan, state, removed, added, sums);
        }
        exact
    };
    if late.iter().all(|e| possible(e.0, state)) {
        let events = late.iter().map(|e| (e.0, e.1.clone())).collect();
        if try_insert(state, events) {
            return 0;
        }
    }
    late.sort_unstable_by_key(|e| e.0);
    let mut refused = 0;
    for (ts_ms, groups, replayed) in late {
        let applied = possible(ts_ms, state) && try_insert(state, vec![(ts_ms, groups)]);
        if !applied && !replayed {
            refused += 1;
        }
    }
    refused
}

/// The open slots that close at one time, with the capability to emit their rows.
struct Bucket {
    cap: Capability<u64>,
    slots: HashMap<Slot, SlotSums>,
}

/// Stage 2: per (window, start, dimension), summed deltas → rows.
fn by_window<'scope>(
    deltas: StreamVec<'scope, u64, Delta>,
    ticks: StreamVec<'scope, u64, ()>,
    plan: Arc<Plan>,
) -> StreamVec<'scope, u64, RollupRow> {
    let route = Exchange::new(|d: &Delta| d.slot.route());
    deltas.binary_frontier(ticks, route, Pipeline, "SessionWindows", move |_, _| {
        let mut open: BTreeMap<u64, Bucket> = BTreeMap::new();
        move |(data, frontier), (ticks, _), output| {
            data.for_each(|cap, batch| {
                let Some(&read_time) = cap.least() else {
                    return;
                };
                for d in batch.drain(..) {
                    // A delta is always read before its slot closes (see the trait docs: an
                    // on-time event changes only sessions starting after read time − gap −
                    // grace − max_duration, and a late event is applied only if its slots are
                    // open); the `max` only keeps the capability valid.
                    let close = plan.close_time(&d.slot).max(read_time);
                    let bucket = open.entry(close).or_insert_with(|| Bucket {
                        cap: cap.delayed(&close, 0),
                        slots: HashMap::new(),
                    });
                    bucket
                        .slots
                        .entry(d.slot)
                        .or_default()
                        .add(d.value, &d.counts);
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
                for (slot, sums) in bucket.slots {
                    for (value, counts) in sums.finish(plan.cap(&slot)) {
                        session.give(plan.row(&slot, value, &counts, true));
                    }
                }
            }
            if tick {
                for bucket in open.values_mut() {
                    let mut session = output.session(&bucket.cap);
                    for (slot, sums) in &mut bucket.slots {
                        for (value, counts) in sums.changed(plan.cap(slot)) {
                            session.give(plan.row(slot, value, &counts, false));
                        }
                    }
                }
            }
        }
    })
}

/// The final session rows of every window the sessions of `points` start in: per user, the
/// points sorted by (time, dimension values) and sessionized, each session attributed as the
/// operator does, then the dimension cap. Rows with no sessions are left out. `points` are one
/// topology's events (filters applied), in any order; empty for a topology without sessions.
/// Rows are sorted by (window kind in declaration order, start, dimension, value).
///
/// Sessions see only the events passed. Where a session starts depends on the events before
/// it (a `max_duration` cut is measured from the first event of the session before, and so on
/// back to the last silence longer than `gap`), and a session lasts less than `max_duration`:
/// to recompute the windows starting in `[from, to)`, pass every event of the users concerned
/// from their last silence longer than `gap` before `from` up to `to + max_duration`.
pub fn session_rows(topology: &Topology, points: &[Point]) -> Vec<RollupRow> {
    let Some(plan) = Plan::new(topology, 0) else {
        return Vec::new();
    };
    let mut users: HashMap<u128, Vec<&Point>> = HashMap::new();
    for p in points {
        users.entry(p.user).or_default().push(p);
    }
    let mut sums: HashMap<(Slot, String), Counts> = HashMap::new();
    for mut events in users.into_values() {
        events.sort_by(|a, b| (a.ts_ms, &a.groups).cmp(&(b.ts_ms, &b.groups)));
        let times: Vec<u64> = events.iter().map(|p| p.ts_ms).collect();
        for s in sessionize(&plan.spec, &times) {
            let summary = (s.first_ms, s.last_ms, s.events);
            plan.attribute(summary, &events[s.first_index].groups, 1, &mut sums);
        }
    }
    let mut slots: BTreeMap<Slot, HashMap<String, Counts>> = BTreeMap::new();
    for ((slot, value), counts) in sums {
        slots.entry(slot).or_default().insert(value, counts);
    }
    let mut rows = Vec::new();
    for (slot, groups) in slots {
        for (value, counts) in fold(groups.iter(), plan.cap(&slot)) {
            rows.push(plan.row(&slot, value, &counts, true));
        }
    }
    rows
}
