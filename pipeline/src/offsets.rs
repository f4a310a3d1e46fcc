//! Which Kafka offsets may be committed.
//!
//! Every event read is owed until the sink's acknowledged frontier passes its *settle time*: the
//! end of its dedup horizon (at least the close of the longest window it counts in), or its read
//! time when that is later (see `tally_operators::settled_after`). Owing it until its dedup
//! horizon ends means that a restart re-reads the first copy of any event id whose retries it
//! re-reads or receives while the id would still be remembered, so the dedup, rebuilt from what
//! is re-read, drops them again. A partition's committable offset is the smallest offset still
//! owed, or the next offset to read when nothing is owed.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
struct Owed {
    next: Option<i64>,
    // settle time -> smallest offset settling then
    pending: BTreeMap<u64, i64>,
}

/// Offsets owed per partition.
#[derive(Debug, Default)]
pub struct PendingOffsets {
    partitions: HashMap<i32, Owed>,
}

impl PendingOffsets {
    /// Records that `offset` of `partition` was read; `settle_time` is `None` when nothing is
    /// owed for it (e.g. it was dead-lettered and the DLQ write was acknowledged).
    pub fn read(&mut self, partition: i32, offset: i64, settle_time: Option<u64>) {
        let owed = self.partitions.entry(partition).or_default();
        owed.next = Some(owed.next.map_or(offset + 1, |n| n.max(offset + 1)));
        if let Some(t) = settle_time {
            owed.pending
                .entry(t)
                .and_modify(|o| *o = (*o).min(offset))
                .or_insert(offset);
        }
    }

    /// Drops what the acknowledged `frontier` settled (settle times before it) and returns the
    /// committable offset of every partition read so far.
    pub fn committable(&mut self, frontier: u64) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&partition, owed) in &mut self.partitions {
            owed.pending = owed.pending.split_off(&frontier);
            let first_owed = owed.pending.values().min().copied();
            if let Some(offset) = first_owed.or(owed.next) {
                out.push((partition, offset));
            }
        }
        out.sort_unstable();
        out
    }

    /// Events still owed, over all partitions (for progress output and tests).
    pub fn owed_settle_times(&self) -> usize {
        self.partitions.values().map(|o| o.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_first_unsettled_offset() {
        let mut p = PendingOffsets::default();
        p.read(0, 10, Some(500));
        p.read(0, 11, Some(100));
        p.read(0, 12, None);
        p.read(1, 7, Some(100));
        // Nothing settled yet: both partitions hold at their first owed offset.
        assert_eq!(p.committable(50), vec![(0, 10), (1, 7)]);
        // Frontier past 100: offset 11 and partition 1 settle, 10 is still owed until 500.
        assert_eq!(p.committable(101), vec![(0, 10), (1, 8)]);
        assert_eq!(
            p.committable(500),
            vec![(0, 10), (1, 8)],
            "settle time 500 needs frontier > 500"
        );
        assert_eq!(p.committable(501), vec![(0, 13), (1, 8)]);
        assert_eq!(p.owed_settle_times(), 0);
    }

    #[test]
    fn a_first_copy_stays_owed_until_its_dedup_horizon() {
        use tally_operators::settled_after;
        let (topologies, grace) = ([tally_topologies::product_analytics()], 5_000);
        // 2024-03-13T23:59:59Z, read with the watermark 5 s behind.
        let ts = 1_710_374_399_000;
        let day_close = 1_710_374_400_000 + grace;
        let horizon = settled_after(&topologies, ts, ts - 5_000, grace);
        // 2024-03-14T00:00:00Z (end of its hour) + 1 day + grace.
        assert_eq!(horizon, 1_710_374_400_000 + 86_400_000 + grace);
        let mut p = PendingOffsets::default();
        p.read(0, 10, Some(horizon));
        // A retry stamped after midnight can still arrive once the first day is final: the
        // first copy must still be re-read after a restart then.
        assert_eq!(p.committable(day_close + 1), vec![(0, 10)]);
        assert_eq!(p.committable(horizon + 1), vec![(0, 11)]);
    }
}
