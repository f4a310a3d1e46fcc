//! The user side of sessions: one user's kept events, sorted, and the sessions last emitted for
//! them, re-sessionized incrementally as events arrive.

use std::cmp::Ordering;

use tally_core::{sessionize, SessionSpec};

/// One kept event: its time and its dimension values (index into the user's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ev {
    ts_ms: u64,
    group: u32,
}

/// One session as emitted: first and last event time (ms), events, and the dimension values of
/// its first event (index into the user's table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sess {
    pub(crate) first_ms: u64,
    pub(crate) last_ms: u64,
    pub(crate) events: u64,
    group: u32,
}

/// One user's state. `events` are sorted by (time, dimension values) and partitioned, in
/// order, by `sessions` (= `sessionize` of their times). Sessions are forgotten oldest first
/// (see [`UserSessions::settle`]); `pruned_until` is the last event time of the forgotten ones.
/// The kept sessions are what `sessionize` gives for all the user's events from the first kept
/// one on, and stay so for any event more than `gap` after `pruned_until`: such an event cannot
/// join a forgotten session, and a session's scan (gap and `max_duration` cut) restarts at its
/// first event, so the forgotten ones do not change.
///
/// Memory: 16 bytes per kept event, 32 per kept session, one entry per distinct combination
/// of dimension values among them (a boxed slice of strings: 16 + 24 per dimension + the
/// text), plus the map entries that hold the user (about 150 bytes, also while only
/// `pruned_until` is kept).
#[derive(Clone, Debug, Default)]
pub(crate) struct UserSessions {
    groups: Vec<Box<[String]>>,
    events: Vec<Ev>,
    sessions: Vec<Sess>,
    pruned_until: Option<u64>,
}

/// The order events are kept in: by time, ties by dimension values (lexicographic over the
/// topology's dimensions), so a session's first event does not depend on arrival order.
fn order(groups: &[Box<[String]>], a: &Ev, b: &Ev) -> Ordering {
    a.ts_ms
        .cmp(&b.ts_ms)
        .then_with(|| groups[a.group as usize].cmp(&groups[b.group as usize]))
}

impl UserSessions {
    /// The dimension values of a session's first event.
    pub(crate) fn groups(&self, session: &Sess) -> &[String] {
        &self.groups[session.group as usize]
    }

    /// When [`UserSessions::settle`] has something to do: the first kept session's
    /// `forget_at(first_ms)`, or without sessions `forget_at(pruned_until + gap)` (when the
    /// user can be dropped); `None` when nothing is kept.
    pub(crate) fn due(&self, gap_ms: u64, forget_at: impl Fn(u64) -> u64) -> Option<u64> {
        match (self.sessions.first(), self.pruned_until) {
            (Some(s), _) => Some(forget_at(s.first_ms)),
            (None, Some(p)) => Some(forget_at(p + gap_ms)),
            (None, None) => None,
        }
    }

    /// Whether an event at `ts_ms` can be inserted exactly: it is more than `gap` after every
    /// forgotten session (`pruned_until`).
    pub(crate) fn accepts(&self, ts_ms: u64, gap_ms: u64) -> bool {
        self.pruned_until.is_none_or(|p| ts_ms > p + gap_ms)
    }

    /// Whether nothing is kept (a user seen only through events that were not applied).
    pub(crate) fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.pruned_until.is_none()
    }

    fn intern(&mut self, groups: Vec<String>) -> u32 {
        if let Some(i) = self.groups.iter().position(|g| **g == *groups) {
            return i as u32;
        }
        self.groups.push(groups.into_boxed_slice());
        (self.groups.len() - 1) as u32
    }

    /// Adds events (time in ms, dimension values; each one [`UserSessions::accepts`]) and
    /// re-sessionizes from the last session starting before the earliest of them. Returns the sessions that went away and
    /// the ones that replaced them (sessions that did not change are in neither).
    pub(crate) fn insert(
        &mut self,
        spec: &SessionSpec,
        points: impl IntoIterator<Item = (u64, Vec<String>)>,
    ) -> (Vec<Sess>, Vec<Sess>) {
        let mut new: Vec<Ev> = Vec::new();
        for (ts_ms, groups) in points {
            let group = self.intern(groups);
            new.push(Ev { ts_ms, group });
        }
        let groups = &self.groups;
        new.sort_unstable_by(|a, b| order(groups, a, b));
        let Some(lowest) = new.first().copied() else {
            return (Vec::new(), Vec::new());
        };
        // Events before the restart session's first one keep their places, and the scan state
        // of `sessionize` is reset at a session's first event: sessions before it stay.
        let (mut restart, mut pos, mut at) = (0, 0, 0);
        for (i, s) in self.sessions.iter().enumerate() {
            if order(groups, &self.events[at], &lowest) != Ordering::Less {
                break;
            }
            (restart, pos) = (i, at);
            at += s.events as usize;
        }
        let tail = self.events.split_off(pos);
        self.events.reserve(tail.len() + new.len());
        let (mut a, mut b) = (tail.into_iter().peekable(), new.into_iter().peekable());
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            let next = if order(groups, y, x) == Ordering::Less {
                b.next()
            } else {
                a.next()
            };
            self.events.extend(next);
        }
        self.events.extend(a.chain(b));
        let times: Vec<u64> = self.events[pos..].iter().map(|e| e.ts_ms).collect();
        let fresh: Vec<Sess> = sessionize(spec, &times)
            .into_iter()
            .map(|s| Sess {
                first_ms: s.first_ms,
                last_ms: s.last_ms,
                events: s.events,
                group: self.events[pos + s.first_index].group,
            })
            .collect();
        let old = self.sessions.split_off(restart);
        let same_head = old.iter().zip(&fresh).take_while(|(o, f)| o == f).count();
        let same_tail = old[same_head..]
            .iter()
            .rev()
            .zip(fresh[same_head..].iter().rev())
            .take_while(|(o, f)| o == f)
            .count();
        let removed = old[same_head..old.len() - same_tail].to_vec();
        let added = fresh[same_head..fresh.len() - same_tail].to_vec();
        self.sessions.extend(fresh);
        (removed, added)
    }

    /// Forgets, oldest first, the sessions with `forget_at(first_ms) <= frontier` (the
    /// operator passes the latest close of the session windows a session starting then counts
    /// in: once they are closed no event can be applied to it) and their events, and raises
    /// `pruned_until` to their last event. `forget_at` must be nondecreasing. Returns whether
    /// the user can be dropped: no session is kept and `forget_at(pruned_until + gap) <=
    /// frontier`, so an event that [`UserSessions::accepts`] would refuse starts a session
    /// whose windows are closed, and is refused without `pruned_until`.
    pub(crate) fn settle(
        &mut self,
        frontier: u64,
        gap_ms: u64,
        forget_at: impl Fn(u64) -> u64,
    ) -> bool {
        let done = self
            .sessions
            .iter()
            .take_while(|s| forget_at(s.first_ms) <= frontier)
            .count();
        if done > 0 {
            let events: u64 = self.sessions[..done].iter().map(|s| s.events).sum();
            let last = self.sessions[done - 1].last_ms;
            self.pruned_until = Some(self.pruned_until.map_or(last, |p| p.max(last)));
            self.sessions.drain(..done);
            self.events.drain(..events as usize);
            self.compact();
        }
        self.sessions.is_empty()
            && self
                .pruned_until
                .is_none_or(|p| forget_at(p + gap_ms) <= frontier)
    }

    /// Drops dimension-value combinations no kept event uses.
    fn compact(&mut self) {
        let mut map: Vec<Option<u32>> = vec![None; self.groups.len()];
        let mut kept: Vec<Box<[String]>> = Vec::new();
        let old = std::mem::take(&mut self.groups);
        let mut old: Vec<Option<Box<[String]>>> = old.into_iter().map(Some).collect();
        for e in &mut self.events {
            let g = e.group as usize;
            if map[g].is_none() {
                map[g] = Some(kept.len() as u32);
                kept.extend(old[g].take());
            }
            e.group = map[g].unwrap_or_default();
        }
        for s in &mut self.sessions {
            s.group = map[s.group as usize].unwrap_or_default();
        }
        self.groups = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: SessionSpec = SessionSpec {
        gap_ms: 10,
        max_duration_ms: 100,
    };

    fn ev(ts: u64, value: &str) -> (u64, Vec<String>) {
        (ts, vec![value.to_owned()])
    }

    fn shape(u: &UserSessions, sessions: &[Sess]) -> Vec<(u64, u64, u64, String)> {
        sessions
            .iter()
            .map(|s| (s.first_ms, s.last_ms, s.events, u.groups(s)[0].clone()))
            .collect()
    }

    #[test]
    fn out_of_order_events_replace_only_the_sessions_they_change() {
        let mut u = UserSessions::default();
        let (gone, new) = u.insert(&SPEC, [ev(50, "b"), ev(0, "a"), ev(5, "a")]);
        assert!(gone.is_empty());
        let want = vec![(0, 5, 2, "a".into()), (50, 50, 1, "b".into())];
        assert_eq!(shape(&u, &new), want);
        // Extending the last session changes only it.
        let (gone, new) = u.insert(&SPEC, [ev(55, "c")]);
        assert_eq!(shape(&u, &gone), vec![(50, 50, 1, "b".into())]);
        assert_eq!(shape(&u, &new), vec![(50, 55, 2, "b".into())]);
        // Events bridging the gap merge both.
        let (gone, new) = u.insert(&SPEC, [ev(35, "x"), ev(15, "x"), ev(25, "x"), ev(45, "x")]);
        assert_eq!(gone.len(), 2);
        assert_eq!(shape(&u, &new), vec![(0, 55, 8, "a".into())]);
        // At the first time, the smallest values are the first event's.
        let (_, new) = u.insert(&SPEC, [ev(0, "0")]);
        assert_eq!(shape(&u, &new), vec![(0, 55, 9, "0".into())]);
        assert_eq!(u.groups.len(), 5);
    }

    #[test]
    fn settled_sessions_are_forgotten_with_their_events() {
        // As if every window a session starting at t counts in closed at t + 130.
        let forget = |t: u64| t + 130;
        let mut u = UserSessions::default();
        u.insert(&SPEC, [ev(0, "a"), ev(5, "a"), ev(100, "b"), ev(200, "c")]);
        assert_eq!(u.due(10, forget), Some(130));
        assert!(!u.settle(129, 10, forget));
        assert_eq!(u.events.len(), 4);
        assert!(u.accepts(0, 10), "nothing forgotten");
        // (0, 5) and (100, 100) go; (200, 200) stays.
        assert!(!u.settle(230, 10, forget));
        assert_eq!(
            (u.sessions.len(), u.events.len(), u.groups.len()),
            (1, 1, 1)
        );
        assert_eq!(u.pruned_until, Some(100));
        assert!(!u.accepts(110, 10), "could join (100, 100)");
        assert!(u.accepts(111, 10));
        assert_eq!(u.due(10, forget), Some(330));
        let (gone, new) = u.insert(&SPEC, [ev(205, "c")]);
        assert_eq!(shape(&u, &gone), vec![(200, 200, 1, "c".into())]);
        assert_eq!(shape(&u, &new), vec![(200, 205, 2, "c".into())]);
        assert_eq!(u.groups.len(), 1);
        // The last session goes at 330; the user is kept until 205 + gap can start no session
        // with an open window: 215 + 130.
        assert!(!u.settle(330, 10, forget));
        assert!(u.events.is_empty() && u.sessions.is_empty());
        assert_eq!(u.pruned_until, Some(205));
        assert_eq!(u.due(10, forget), Some(345));
        assert!(!u.settle(344, 10, forget));
        assert!(u.settle(345, 10, forget));
        assert!(!u.is_empty());
        assert!(UserSessions::default().is_empty());
    }
}
