//! Per-partition event-time watermarks with bounded out-of-orderness and idleness.
//!
//! A partition's watermark is the largest event time it has delivered minus the bound. An event
//! counts for the watermark with its time capped at its arrival (the Kafka message timestamp,
//! never later than the wall clock at read) plus the clock-skew tolerance: a producer whose
//! clock runs fast cannot drag the watermark ahead of the broker's clock and make everybody
//! else's events late. The event itself keeps its time. Historical events (replays, backfills)
//! are stamped before their arrival, so the cap never holds them back.
//!
//! The source's watermark is the minimum over partitions that are not idle, across every worker.
//! A partition is idle when it has been caught up (the broker said end-of-partition) and
//! delivered nothing for the idle timeout, so a quiet partition cannot hold every window open
//! forever, while one the source is merely behind on (backpressure) still holds it. When every
//! partition is idle the watermark is the largest partition watermark (capped like the others),
//! so the last windows of a finished stream still close.
//!
//! Idleness is a guess made from the past: when a burst follows a quiet spell, the partitions
//! whose data is fetched first would carry the watermark past partitions still flagged idle whose
//! data sits at the broker, unread, and that data would be late. So [`combine`] also names the
//! idle partitions its answer relies on, and the caller checks them against the broker (high
//! watermark versus read position) before advancing; see `run::global_watermark`.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct Partition {
    max_ts: Option<u64>,
    last_message_ms: u64,
    at_end: bool,
}

/// Default of `pipeline.max_clock_skew_ms`.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 1_000;

/// Watermarks of the partitions one worker reads. The clocks (`now_ms`, any monotonic
/// milliseconds; `arrival_ms`, epoch milliseconds) are passed in, so tests are deterministic.
#[derive(Clone, Debug)]
pub struct Watermarks {
    bound_ms: u64,
    idle_ms: u64,
    skew_ms: u64,
    partitions: BTreeMap<i32, Partition>,
}

/// One partition's state as the combined watermark needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The partition's watermark, `None` before its first event.
    pub watermark: Option<u64>,
    /// Caught up and quiet for the idle timeout.
    pub idle: bool,
}

/// The combined watermark and the idle partitions it was allowed to pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Combined {
    /// The watermark, `None` while an active partition has delivered nothing.
    pub watermark: Option<u64>,
    /// Idle partitions whose own watermark is below `watermark` (or unknown): the answer holds
    /// only if they really have nothing unread.
    pub relies_on: Vec<i32>,
}

impl Watermarks {
    /// Tracks `partitions`, starting at `now_ms`.
    pub fn new(partitions: &[i32], bound_ms: u64, idle_ms: u64, now_ms: u64) -> Self {
        let p = Partition {
            max_ts: None,
            last_message_ms: now_ms,
            at_end: false,
        };
        Watermarks {
            bound_ms,
            idle_ms,
            skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
            partitions: partitions.iter().map(|&i| (i, p.clone())).collect(),
        }
    }

    /// Sets how far ahead of its arrival an event may move the watermark
    /// (`pipeline.max_clock_skew_ms`; [`DEFAULT_MAX_CLOCK_SKEW_MS`] unless set).
    pub fn max_clock_skew(mut self, skew_ms: u64) -> Self {
        self.skew_ms = skew_ms;
        self
    }

    /// Records an event at `ts_ms` from `partition` that arrived at `arrival_ms` (see
    /// [`arrival_ms`]). For the watermark its time counts at most up to the arrival plus the
    /// clock-skew tolerance.
    pub fn observe(&mut self, partition: i32, ts_ms: u64, arrival_ms: u64, now_ms: u64) {
        let ts_ms = ts_ms.min(arrival_ms.saturating_add(self.skew_ms));
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.max_ts = Some(p.max_ts.map_or(ts_ms, |m| m.max(ts_ms)));
            p.last_message_ms = now_ms;
            p.at_end = false;
        }
    }

    /// Records a message from `partition` that carried no event time (e.g. dead-lettered).
    pub fn touch(&mut self, partition: i32, now_ms: u64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.last_message_ms = now_ms;
            p.at_end = false;
        }
    }

    /// Records that `partition` is caught up with the broker.
    pub fn end_of_partition(&mut self, partition: i32) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.at_end = true;
        }
    }

    /// The watermark of one partition, if it has delivered any event.
    pub fn partition(&self, partition: i32) -> Option<u64> {
        let p = self.partitions.get(&partition)?;
        p.max_ts.map(|m| m.saturating_sub(self.bound_ms))
    }

    /// Every partition's mark at `now_ms`.
    pub fn marks(&self, now_ms: u64) -> impl Iterator<Item = (i32, Mark)> + '_ {
        self.partitions.iter().map(move |(&id, p)| {
            let idle = p.at_end && now_ms.saturating_sub(p.last_message_ms) >= self.idle_ms;
            (
                id,
                Mark {
                    watermark: self.partition(id),
                    idle,
                },
            )
        })
    }
}

/// When a message arrived, as far as the reader can vouch for it: its Kafka timestamp
/// (`message_ms`: CreateTime or LogAppendTime, whichever the topic keeps), but never later than
/// the wall clock at read (`wall_ms`; a producer may set CreateTime from the same fast clock as
/// the event), and the wall clock when the message carries none.
pub fn arrival_ms(message_ms: Option<i64>, wall_ms: u64) -> u64 {
    message_ms
        .and_then(|t| u64::try_from(t).ok())
        .map_or(wall_ms, |t| t.min(wall_ms))
}

/// The watermark over `marks` (every partition of every worker): the minimum over active
/// partitions; when all are idle, the largest partition watermark (which, like every partition
/// watermark, is capped by the arrival of the event that set it plus the skew tolerance).
pub fn combine(marks: &BTreeMap<i32, Mark>) -> Combined {
    let mut active = marks.values().filter(|m| !m.idle).peekable();
    let watermark = if active.peek().is_some() {
        active.try_fold(u64::MAX, |acc, m| m.watermark.map(|w| acc.min(w)))
    } else {
        marks.values().filter_map(|m| m.watermark).max()
    };
    let relies_on = match watermark {
        Some(w) => marks
            .iter()
            .filter(|(_, m)| m.idle && m.watermark.is_none_or(|own| own < w))
            .map(|(&p, _)| p)
            .collect(),
        None => Vec::new(),
    };
    Combined {
        watermark,
        relies_on,
    }
}

/// How far the watermark may go, given the broker's word on the idle partitions `combined`
/// relies on. `marks` holds each partition's mark and read position; `has_unread(p, position)`
/// asks the broker. Without a need to ask (nothing relied on, or no advance past `current`) it
/// returns `combined.watermark`; when a check is due but `may_check` is false it returns `None`
/// (wait for the next check rather than trust an old answer). A relied-on partition with unread
/// data caps the watermark at its own (none yet: no advance). The flag says whether it asked.
pub fn past_idle(
    combined: &Combined,
    marks: &BTreeMap<i32, (Mark, Option<i64>)>,
    current: u64,
    may_check: bool,
    mut has_unread: impl FnMut(i32, Option<i64>) -> bool,
) -> (Option<u64>, bool) {
    let Some(watermark) = combined.watermark else {
        return (None, false);
    };
    if combined.relies_on.is_empty() || watermark <= current {
        return (Some(watermark), false);
    }
    if !may_check {
        return (None, false);
    }
    let mut limit = Some(watermark);
    for p in &combined.relies_on {
        let Some(&(mark, position)) = marks.get(p) else {
            return (None, true);
        };
        if has_unread(*p, position) {
            limit = limit.zip(mark.watermark).map(|(l, own)| l.min(own));
        }
    }
    (limit, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arrival after every event time of these tests: the skew cap does not apply.
    const LATER: u64 = 10_000_000;

    fn combined(workers: &[&Watermarks], now: u64) -> Combined {
        combine(&workers.iter().flat_map(|w| w.marks(now)).collect())
    }

    #[test]
    fn minimum_over_active_partitions() {
        let mut w = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        assert_eq!(combined(&[&w], 0).watermark, None);
        w.observe(0, 100_000, LATER, 1);
        assert_eq!(
            combined(&[&w], 1).watermark,
            None,
            "partition 1 has delivered nothing and is not idle"
        );
        w.observe(1, 50_000, LATER, 2);
        assert_eq!(combined(&[&w], 2).watermark, Some(45_000));
        w.observe(1, 40_000, LATER, 3); // out of order: does not lower the watermark
        assert_eq!(combined(&[&w], 3).watermark, Some(45_000));
        w.observe(1, 200_000, LATER, 4);
        assert_eq!(
            combined(&[&w], 4),
            Combined {
                watermark: Some(95_000),
                relies_on: vec![]
            }
        );
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark_and_are_named() {
        let mut w = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        w.observe(0, 100_000, LATER, 0);
        w.observe(1, 20_000, LATER, 0);
        w.end_of_partition(1);
        assert_eq!(combined(&[&w], 9_999).watermark, Some(15_000));
        // Partition 0 is still active (not at end): only partition 1 goes idle, and the answer
        // relies on it having nothing unread.
        assert_eq!(
            combined(&[&w], 10_000),
            Combined {
                watermark: Some(95_000),
                relies_on: vec![1]
            }
        );
        // Not at end: a partition that is merely slow never counts as idle.
        let mut slow = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        slow.observe(0, 100_000, LATER, 0);
        slow.observe(1, 20_000, LATER, 0);
        assert_eq!(combined(&[&slow], 1_000_000).watermark, Some(15_000));
    }

    #[test]
    fn a_quiet_worker_does_not_hold_the_others() {
        let mut a = Watermarks::new(&[0], 5_000, 10_000, 0);
        let mut b = Watermarks::new(&[1], 5_000, 10_000, 0);
        a.observe(0, 100_000, LATER, 0);
        b.observe(1, 500_000, LATER, 15_000);
        a.end_of_partition(0);
        assert_eq!(
            combined(&[&a, &b], 15_000),
            Combined {
                watermark: Some(495_000),
                relies_on: vec![0]
            }
        );
        a.observe(0, 200_000, LATER, 16_000);
        assert_eq!(combined(&[&a, &b], 16_000).watermark, Some(195_000));
        // A worker with no partitions is neutral.
        let none = Watermarks::new(&[], 5_000, 10_000, 0);
        assert_eq!(combined(&[&none, &b], 16_000).watermark, Some(495_000));
    }

    #[test]
    fn passing_idle_partitions_needs_the_brokers_word() {
        let mark = |watermark, idle| Mark { watermark, idle };
        let marks: BTreeMap<i32, (Mark, Option<i64>)> = [
            (0, (mark(Some(95_000), false), Some(10))),
            (1, (mark(Some(15_000), true), Some(7))),
            (2, (mark(None, true), None)),
        ]
        .into();
        let c = combine(&marks.iter().map(|(&p, &(m, _))| (p, m)).collect());
        assert_eq!(
            c,
            Combined {
                watermark: Some(95_000),
                relies_on: vec![1, 2]
            }
        );
        // Both idle partitions really are caught up: advance, after asking about each.
        let mut asked = Vec::new();
        let r = past_idle(&c, &marks, 0, true, |p, pos| {
            asked.push((p, pos));
            false
        });
        assert_eq!(r, (Some(95_000), true));
        assert_eq!(asked, vec![(1, Some(7)), (2, None)]);
        // Partition 1 has data waiting at the broker: cap at its own watermark.
        assert_eq!(
            past_idle(&c, &marks, 0, true, |p, _| p == 1),
            (Some(15_000), true)
        );
        // Partition 2 (no event yet) has data waiting: no advance at all.
        assert_eq!(past_idle(&c, &marks, 0, true, |p, _| p == 2), (None, true));
        // A check is due but not allowed yet: wait, do not trust an old answer.
        assert_eq!(past_idle(&c, &marks, 0, false, |_, _| false), (None, false));
        // Nothing to pass (already there): no question asked.
        assert_eq!(
            past_idle(&c, &marks, 95_000, false, |_, _| true),
            (Some(95_000), false)
        );
    }

    #[test]
    fn all_idle_takes_the_largest() {
        let mut w = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        w.observe(0, 100_000, LATER, 0);
        w.end_of_partition(0);
        w.end_of_partition(1);
        // Partition 1 never delivered anything: the largest watermark relies on it being empty.
        assert_eq!(
            combined(&[&w], 10_000),
            Combined {
                watermark: Some(95_000),
                relies_on: vec![1]
            }
        );
        w.observe(1, 30_000, LATER, 20_000);
        assert_eq!(combined(&[&w], 20_000).watermark, Some(25_000));
    }

    /// Broker clock of the skew tests, epoch ms.
    const BROKER: u64 = 1_000_000_000;

    #[test]
    fn a_future_event_moves_the_watermark_no_further_than_its_arrival() {
        let mut w = Watermarks::new(&[0, 1], 5_000, 10_000, 0).max_clock_skew(1_000);
        // Issue 5 item 5: one event 120 s ahead, then on-time events on another partition.
        w.observe(1, BROKER + 120_000, BROKER, 0);
        assert_eq!(w.partition(1), Some(BROKER + 1_000 - 5_000));
        w.observe(0, BROKER + 2_000, BROKER + 2_000, 0);
        assert_eq!(combined(&[&w], 0).watermark, Some(BROKER - 4_000));
        // Every partition idle: the largest partition watermark is capped too.
        w.end_of_partition(0);
        w.end_of_partition(1);
        assert_eq!(
            combined(&[&w], 10_000).watermark,
            Some(BROKER + 2_000 - 5_000)
        );
        // The future event's window closes in due course: as the broker clock (and with it the
        // on-time events) reaches its time.
        w.observe(0, BROKER + 126_000, BROKER + 126_000, 20_000);
        assert_eq!(combined(&[&w], 20_000).watermark, Some(BROKER + 121_000));
        // The tolerance: a client a little fast still moves the watermark to its own time.
        let mut fast = Watermarks::new(&[0], 5_000, 10_000, 0).max_clock_skew(1_000);
        fast.observe(0, BROKER + 800, BROKER, 0);
        assert_eq!(fast.partition(0), Some(BROKER + 800 - 5_000));
        // Without a tolerance the cap is the arrival itself.
        let mut strict = Watermarks::new(&[0], 5_000, 10_000, 0).max_clock_skew(0);
        strict.observe(0, BROKER + 800, BROKER, 0);
        assert_eq!(strict.partition(0), Some(BROKER - 5_000));
    }

    #[test]
    fn historical_events_move_the_watermark_as_before() {
        // A backfill read now: every event was stamped hours before it arrived.
        let mut w = Watermarks::new(&[0], 5_000, 10_000, 0);
        let two_hours_ago = BROKER - 7_200_000;
        for i in 0..1_000 {
            w.observe(0, two_hours_ago + i * 60, BROKER, 0);
        }
        assert_eq!(w.partition(0), Some(two_hours_ago + 999 * 60 - 5_000));
        // A replay after a restart: old messages carry their old broker timestamps, and the wall
        // clock is later still. An on-time event counts in full; a skewed one is capped exactly
        // as when it was first read.
        let then = BROKER - 3_600_000;
        let mut replay = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        replay.observe(0, then - 300, arrival_ms(Some(then as i64), BROKER), 0);
        replay.observe(1, then + 120_000, arrival_ms(Some(then as i64), BROKER), 0);
        assert_eq!(replay.partition(0), Some(then - 300 - 5_000));
        assert_eq!(
            replay.partition(1),
            Some(then + DEFAULT_MAX_CLOCK_SKEW_MS - 5_000)
        );
    }

    #[test]
    fn a_skewed_create_time_is_capped_by_the_wall_clock() {
        // The producer stamped CreateTime from the same clock, 120 s fast.
        let arrival = arrival_ms(Some((BROKER + 120_000) as i64), BROKER);
        assert_eq!(arrival, BROKER);
        let mut w = Watermarks::new(&[0], 5_000, 10_000, 0).max_clock_skew(1_000);
        w.observe(0, BROKER + 120_000, arrival, 0);
        assert_eq!(w.partition(0), Some(BROKER + 1_000 - 5_000));
        // Broker time behind the wall clock (LogAppendTime, or any read after a delay) counts;
        // none, or an invalid one, falls back to the wall clock.
        assert_eq!(
            arrival_ms(Some((BROKER - 3_000) as i64), BROKER),
            BROKER - 3_000
        );
        assert_eq!(arrival_ms(None, BROKER), BROKER);
        assert_eq!(arrival_ms(Some(-1), BROKER), BROKER);
    }
}
