//! The `rebuild` job: recomputes every rollup row of a time range from the raw events (e.g.
//! after a bug fix), one day at a time, recording progress in `rebuilds` so that a retry after a
//! crash resumes where the last run stopped.

use graphile_worker::{IntoTaskHandlerResult, TaskHandler, WorkerContext};
use serde::{Deserialize, Serialize};
use tally_sinks::clickhouse::recompute::{recompute, WindowSet};
use tally_sinks::postgres::jobs as records;

use crate::correct::now_ns;
use crate::run::tracked;

const DAY_MS: u64 = 86_400_000;

/// Rebuilds the range recorded as `rebuilds.id = rebuild_id` (see [`aligned_range`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Rebuild {
    /// The `rebuilds` row.
    pub rebuild_id: i64,
}

/// `[from_ms, to_ms)` widened to whole UTC days, so every window kind (up to a day) is rebuilt
/// whole. `None` when `to_ms <= from_ms`.
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
            let frontier: Option<i64> = sqlx::query_scalar(
                "SELECT acked_frontier_ms FROM pipeline_frontiers WHERE pipeline = $1",
            )
            .bind(&s.pipeline)
            .fetch_optional(&pool)
            .await
            .map_err(|e| e.to_string())?;
            let frontier = u64::try_from(frontier.unwrap_or(0)).unwrap_or(0);
            let to = u64::try_from(record.to_ms).unwrap_or(0);
            let mut day = u64::try_from(record.done_until_ms).unwrap_or(0);
            let mut rows = record.rows_written;
            let mut skipped_open = 0u64;
            while day < to {
                for &window in &s.windows {
                    // Windows the pipeline has not closed yet are its own to write.
                    let closed_until = frontier.saturating_sub(s.grace_ms);
                    let end = (day + DAY_MS).min(closed_until - closed_until % window.millis());
                    if end <= day {
                        skipped_open += 1;
                        continue;
                    }
                    let range = WindowSet {
                        window: window.label().to_owned(),
                        size_ms: window.millis(),
                        from_ms: day,
                        to_ms: end,
                        starts: Vec::new(),
                    };
                    let stats = recompute(&job.clickhouse.0, &range, now_ns())
                        .await
                        .map_err(|e| e.to_string())?;
                    rows += i64::try_from(stats.rows_written).unwrap_or(i64::MAX);
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
}
