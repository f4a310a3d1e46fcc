//! Per-partition event-time watermarks with bounded out-of-orderness and idleness.
//!
//! A partition's watermark is the largest event time it has delivered minus the bound. The
//! source's watermark is the minimum over partitions that are not idle. A partition is idle when
//! it has been caught up (the broker said end-of-partition) and delivered nothing for the idle
//! timeout, so a quiet partition cannot hold every window open forever, while one the source is
//! merely behind on (backpressure) still holds it. When every partition is idle the watermark is
//! the largest partition watermark, so the last windows of a finished stream still close.

use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct Partition {
    max_ts: Option<u64>,
    last_message_ms: u64,
    at_end: bool,
}

/// Watermarks of the partitions one worker reads. The clock (`now_ms`, any monotonic
/// milliseconds) is passed in, so tests are deterministic.
#[derive(Clone, Debug)]
pub struct Watermarks {
    bound_ms: u64,
    idle_ms: u64,
    partitions: BTreeMap<i32, Partition>,
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
            partitions: partitions.iter().map(|&i| (i, p.clone())).collect(),
        }
    }

    /// Records an event at `ts_ms` from `partition`.
    pub fn observe(&mut self, partition: i32, ts_ms: u64, now_ms: u64) {
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

    /// What this worker's partitions say at `now_ms`, to combine with other workers'.
    pub fn summary(&self, now_ms: u64) -> Summary {
        let idle =
            |p: &Partition| p.at_end && now_ms.saturating_sub(p.last_message_ms) >= self.idle_ms;
        let wm = |p: &Partition| p.max_ts.map(|m| m.saturating_sub(self.bound_ms));
        let mut active = self.partitions.values().filter(|p| !idle(p)).peekable();
        let has_active = active.peek().is_some();
        Summary {
            has_active,
            active_min: active
                .map(wm)
                .try_fold(u64::MAX, |acc, w| w.map(|w| acc.min(w))),
            max: self.partitions.values().filter_map(wm).max(),
        }
    }

    /// The watermark of this worker's partitions alone (see [`combine`]).
    pub fn current(&self, now_ms: u64) -> Option<u64> {
        combine(&[self.summary(now_ms)])
    }
}

/// One worker's view of its partitions' watermarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Whether any partition is active (not idle).
    pub has_active: bool,
    /// Minimum over active partitions; `None` while an active partition has delivered nothing.
    pub active_min: Option<u64>,
    /// Maximum over all partitions that delivered anything.
    pub max: Option<u64>,
}

/// The source watermark over every worker: the minimum over active partitions anywhere; when
/// every partition everywhere is idle, the largest partition watermark. Combining across workers
/// matters: a worker whose partitions all went quiet must not hold back the others.
pub fn combine(workers: &[Summary]) -> Option<u64> {
    if workers.iter().any(|w| w.has_active) {
        workers
            .iter()
            .filter(|w| w.has_active)
            .try_fold(u64::MAX, |acc, w| w.active_min.map(|m| acc.min(m)))
    } else {
        workers.iter().filter_map(|w| w.max).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_partitions() {
        let mut w = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        assert_eq!(w.current(0), None);
        w.observe(0, 100_000, 1);
        assert_eq!(
            w.current(1),
            None,
            "partition 1 has delivered nothing and is not idle"
        );
        w.observe(1, 50_000, 2);
        assert_eq!(w.current(2), Some(45_000));
        w.observe(1, 40_000, 3); // out of order: does not lower the watermark
        assert_eq!(w.current(3), Some(45_000));
        w.observe(1, 200_000, 4);
        assert_eq!(w.current(4), Some(95_000));
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark() {
        let mut w = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        w.observe(0, 100_000, 0);
        w.observe(1, 20_000, 0);
        w.end_of_partition(1);
        assert_eq!(w.current(9_999), Some(15_000));
        // Partition 0 is still active (not at end): only partition 1 goes idle.
        assert_eq!(w.current(10_000), Some(95_000));
        // Not at end: a partition that is merely slow never counts as idle.
        let mut slow = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        slow.observe(0, 100_000, 0);
        slow.observe(1, 20_000, 0);
        assert_eq!(slow.current(1_000_000), Some(15_000));
    }

    #[test]
    fn a_quiet_worker_does_not_hold_the_others() {
        let mut a = Watermarks::new(&[0], 5_000, 10_000, 0);
        let mut b = Watermarks::new(&[1], 5_000, 10_000, 0);
        a.observe(0, 100_000, 0);
        b.observe(1, 500_000, 15_000);
        a.end_of_partition(0);
        // Worker a is all idle; worker b is active: b's partition decides.
        assert_eq!(
            combine(&[a.summary(15_000), b.summary(15_000)]),
            Some(495_000)
        );
        // Both active: the minimum.
        a.observe(0, 200_000, 16_000);
        assert_eq!(
            combine(&[a.summary(16_000), b.summary(16_000)]),
            Some(195_000)
        );
        // A worker with no partitions is neutral.
        let none = Watermarks::new(&[], 5_000, 10_000, 0);
        assert_eq!(
            combine(&[none.summary(16_000), b.summary(16_000)]),
            Some(495_000)
        );
    }

    #[test]
    fn all_idle_takes_the_largest() {
        let mut w = Watermarks::new(&[0, 1], 5_000, 10_000, 0);
        w.observe(0, 100_000, 0);
        w.end_of_partition(0);
        w.end_of_partition(1);
        assert_eq!(w.current(10_000), Some(95_000));
        // New data reactivates a partition.
        w.observe(1, 30_000, 20_000);
        assert_eq!(w.current(20_000), Some(25_000));
    }
}
