//! The `rebuild` job: recomputes every rollup row of a time range from the raw events (e.g.
//! after a bug fix), one day at a time, recording progress in `rebuilds` so that a retry after a
//! crash resumes where the last run stopped.

use graphile_worker::{IntoTaskHandlerResult, TaskHandler, WorkerContext};
use serde::{Deserialize, Serialize};
use tally_core::{RowTable, Topology, WindowSpec};
use tally_sinks::postgres::jobs as records;

use crate::correct::now_ns;
use crate::recompute::recompute;
use crate::run::tracked;

const DAY_MS: u64 = 86_400_000;

/// Rebuilds the range recorded as `rebuilds.id = rebuild_id` (see [`aligned_range`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Rebuild {
    /// The `rebuilds` row.
    pub rebuild_id: i64,
}

/// `[from_ms, to_ms)` widened to whole UTC days: every window starting in a rebuilt day is
/// rebuilt whole. `None` when `to_ms <= from_ms`.
pub fn aligned_range(from_ms: u64, to_ms: u64) -> Option<(u64, u64)> {
    (to_ms > from_ms).then(|| (from_ms - from_ms % DAY_MS, to_ms.div_ceil(DAY_MS) * DAY_MS))
}

impl TaskHandler for Rebuild {
    const IDENTIFIER: &'static str = "rebuild";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        let id = self.rebuild_id;
        tracked(Self::IDENTIFIER, ctx, move |job, pool| async move {
            let s = &job.settings;
            let record = records::rebuild_get(&pool, id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("rebuild {id} does not exist"))?;
            let frontier = tally_sinks::postgres::acked_frontier(&pool, &s.pipeline)
                .await
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            let to = u64::try_from(record.to_ms).unwrap_or(0);
            let mut day = u64::try_from(record.done_until_ms).unwrap_or(0);
            let mut rows = record.rows_written;
            let mut skipped_open = 0u64;
            while day < to {
                for topology in &s.topologies {
                    for table in [RowTable::Windows, RowTable::Sessions] {
                        for window in &topology.windows {
                            let starts =
                                closed_starts(topology, table, window, day, frontier, s.grace_ms);
                            let all = window_starts(window, day, day + DAY_MS).count();
                            skipped_open += (all - starts.len()) as u64;
                            let stats = recompute(
                                &job.clickhouse.0,
                                topology,
                                table,
                                window,
                                &starts,
                                now_ns(),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                            rows += i64::try_from(stats.rows_written).unwrap_or(i64::MAX);
                        }
                    }
                }
                day += DAY_MS;
                let done = i64::try_from(day).unwrap_or(i64::MAX);
                records::rebuild_update(&pool, id, "running", done, rows, None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            records::rebuild_update(&pool, id, "done", record.to_ms, rows, None)
                .await
                .map_err(|e| e.to_string())?;
            let note = if skipped_open > 0 {
                " (windows not yet closed were left to the pipeline)"
            } else {
                ""
            };
            Ok(format!("rebuilt {} rows{note}", rows))
        })
        .await
    }
}

/// Starts of the windows of `window` starting in `[from_ms, to_ms)`.
fn window_starts(window: &WindowSpec, from_ms: u64, to_ms: u64) -> impl Iterator<Item = u64> + '_ {
    let first = from_ms.div_ceil(window.slide_ms) * window.slide_ms;
    (first..to_ms).step_by(usize::try_from(window.slide_ms).unwrap_or(usize::MAX))
}

/// The windows of `window` starting in the day `day_ms` that the pipeline has written final
/// (the others are its own to write).
fn closed_starts(
    topology: &Topology,
    table: RowTable,
    window: &WindowSpec,
    day_ms: u64,
    frontier: u64,
    grace_ms: u64,
) -> Vec<u64> {
    let delay = topology.close_delay_ms(table, grace_ms);
    window_starts(window, day_ms, day_ms + DAY_MS)
        .filter(|s| s + window.size_ms + delay < frontier)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_widen_to_days() {
        let d = DAY_MS;
        assert_eq!(aligned_range(d + 5, 2 * d + 1), Some((d, 3 * d)));
        assert_eq!(aligned_range(d, 2 * d), Some((d, 2 * d)));
        assert_eq!(aligned_range(5, 5), None);
    }

    #[test]
    fn a_day_has_every_start_of_the_slide() {
        let hop = WindowSpec::hopping("1h_15m", 3_600_000, 900_000);
        assert_eq!(window_starts(&hop, DAY_MS, 2 * DAY_MS).count(), 96);
        let day = WindowSpec::tumbling("1d", DAY_MS);
        assert_eq!(
            window_starts(&day, DAY_MS, 2 * DAY_MS).collect::<Vec<_>>(),
            vec![DAY_MS]
        );
        let t = Topology::builder("t")
            .window(hop.clone())
            .metric(tally_core::Metric::Events)
            .build()
            .expect("valid");
        // With the frontier at 06:00 + 1 ms and no grace, the windows ending by 06:00 are done:
        // starts 00:00 .. 05:00, i.e. 21 of them.
        let frontier = DAY_MS + 6 * 3_600_000 + 1;
        let done = closed_starts(&t, RowTable::Windows, &hop, DAY_MS, frontier, 0);
        assert_eq!(done.len(), 21);
    }
}
