//! The `correct` job: recomputes the windows pending in the late-event ledger.
//!
//! A window can be corrected once the pipeline's acknowledged frontier (saved in PostgreSQL) is
//! past its close time (end + grace): every on-time event of the window and its final rows are
//! then in ClickHouse, and every late event's raw row was stored before its mark (the sink's
//! order). Windows not yet there are left pending and the job queues itself again 1 s later.
//! Pending windows are coalesced per window kind into ranges (see
//! `tally_sinks::clickhouse::recompute::coalesce`), one recompute per range.

use std::collections::BTreeMap;

use graphile_worker::{IntoTaskHandlerResult, TaskHandler, WorkerContext};
use serde::{Deserialize, Serialize};
use tally_core::{RowTable, Topology, WindowSpec};
use tally_sinks::postgres::ledger::{self, PendingWindow};
use tally_sinks::SinkError;

use crate::metrics::Metrics;
use crate::recompute::recompute;
use crate::run::tracked;
use crate::JobSettings;

/// Corrects every pending window (no arguments: the ledger says which).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Correct {}

impl TaskHandler for Correct {
    const IDENTIFIER: &'static str = "correct";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        tracked(Self::IDENTIFIER, ctx, |job, pool| async move {
            let report = correct_pending(&job.settings, &pool, &job.clickhouse.0)
                .await
                .map_err(|e| e.to_string())?;
            if report.waiting > 0 {
                let now_ms = chrono::Utc::now().timestamp_millis();
                let delay = retry_delay_ms(&report, now_ms);
                let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
                ledger::queue_correction(&mut conn, &job.settings.pipeline, Some(delay))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(report.to_string())
        })
        .await
    }
}

/// What one pass of [`correct_pending`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorrectionReport {
    /// Windows recomputed and cleared.
    pub corrected: u64,
    /// Windows recomputed but left pending (a newer late event arrived meanwhile).
    pub remarked: u64,
    /// Windows not yet closed in the acknowledged frontier (retried later).
    pub waiting: u64,
    /// When the oldest of those was first marked, ms since the epoch (`i64::MAX` if none).
    pub oldest_waiting_ms: i64,
    /// How far the acknowledged frontier is from the earliest close of those, ms (`u64::MAX`
    /// if none): session windows wait for their sessions to close, a day or more.
    pub next_close_in_ms: u64,
    /// Raw-event reads run (each covers many windows).
    pub statements: u64,
    /// Rollup rows written.
    pub rows_written: u64,
}

impl std::fmt::Display for CorrectionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "corrected {} windows with {} reads ({} rows); {} marked again, {} waiting for the frontier",
            self.corrected, self.statements, self.rows_written, self.remarked, self.waiting
        )
    }
}

/// Most windows read from the ledger per pass (the job loops until none is ready).
const BATCH: i64 = 50_000;

/// Recomputes every pending window of every topology that the acknowledged frontier allows
/// (per topology, table and window kind; see [`crate::recompute`]), and clears each whose
/// generation did not change meanwhile. Loops until no pending window is ready.
///
/// Errors: [`SinkError`] from PostgreSQL or ClickHouse; the job is then retried, and a
/// recompute that ran before the error is harmless (same values, newer version).
pub async fn correct_pending(
    settings: &JobSettings,
    pool: &sqlx::PgPool,
    clickhouse: &clickhouse::Client,
) -> Result<CorrectionReport, SinkError> {
    let mut report = CorrectionReport {
        oldest_waiting_ms: i64::MAX,
        next_close_in_ms: u64::MAX,
        ..CorrectionReport::default()
    };
    let frontier = tally_sinks::postgres::acked_frontier(pool, &settings.pipeline)
        .await?
        .unwrap_or(0);
    for topology in &settings.topologies {
        correct_topology(settings, pool, clickhouse, topology, frontier, &mut report).await?;
    }
    Ok(report)
}

/// The dataflow time after which a window of `table` starting at `start_ms` is written final.
fn closes_at(topology: &Topology, table: RowTable, w: &WindowSpec, start: u64, grace: u64) -> u64 {
    start + w.size_ms + topology.close_delay_ms(table, grace)
}

/// [`correct_pending`] for one topology.
async fn correct_topology(
    settings: &JobSettings,
    pool: &sqlx::PgPool,
    clickhouse: &clickhouse::Client,
    topology: &Topology,
    frontier: u64,
    report: &mut CorrectionReport,
) -> Result<(), SinkError> {
    loop {
        let pending = ledger::pending(pool, &settings.pipeline, &topology.name, BATCH).await?;
        let mut ready: BTreeMap<(RowTable, String), Vec<PendingWindow>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for p in pending.iter() {
            let Some(window) = topology.window(&p.window) else {
                unknown.push(p.clone());
                continue;
            };
            let start = u64::try_from(p.start_ms).unwrap_or(0);
            // Closed in the acknowledged frontier: its final rows (time = close) are stored.
            let close = closes_at(topology, p.table, window, start, settings.grace_ms);
            if close < frontier {
                ready
                    .entry((p.table, window.name.clone()))
                    .or_default()
                    .push(p.clone());
            } else {
                report.waiting += 1;
                report.oldest_waiting_ms = report.oldest_waiting_ms.min(p.pending_since_ms);
                report.next_close_in_ms = report.next_close_in_ms.min(close + 1 - frontier);
            }
        }
        if !unknown.is_empty() {
            tracing::warn!(
                topology = topology.name,
                windows = unknown.len(),
                "ledger windows of kinds this topology no longer declares; cleared"
            );
            ledger::settle(pool, &settings.pipeline, &topology.name, &unknown).await?;
        }
        if ready.is_empty() {
            return Ok(());
        }
        let m = Metrics::get();
        for ((table, name), windows) in ready {
            let Some(window) = topology.window(&name) else {
                continue;
            };
            let mut starts: Vec<u64> = windows
                .iter()
                .map(|w| u64::try_from(w.start_ms).unwrap_or(0))
                .collect();
            starts.sort_unstable();
            starts.dedup();
            let stats = recompute(clickhouse, topology, table, window, &starts, now_ns()).await?;
            report.statements += stats.statements;
            report.rows_written += stats.rows_written;
            let cleared =
                ledger::settle(pool, &settings.pipeline, &topology.name, &windows).await?;
            report.corrected += cleared;
            report.remarked += windows.len() as u64 - cleared;
            let label = metric_label(table, &name);
            m.corrected
                .with_label_values(&[topology.name.as_str(), label.as_str()])
                .inc_by(windows.len() as u64);
            let now_ms = chrono::Utc::now().timestamp_millis();
            let delay = m
                .correction_delay
                .with_label_values(&[topology.name.as_str(), label.as_str()]);
            for w in &windows {
                delay.observe((now_ms - w.pending_since_ms).max(0) as f64 / 1000.0);
            }
        }
        // A full batch may hide more ready windows; windows marked again meanwhile queued a
        // job of their own.
        if pending.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
            return Ok(());
        }
    }
}

/// When to look again at windows waiting for the frontier: soon (1 s) while the frontier is
/// expected to reach them any moment, every 15 s once they have waited a minute (the pipeline
/// may be stopped); and, when the earliest close is more than a minute of event time away
/// (session windows close a day after their end), at about that close, at most a minute later.
/// A late event marked meanwhile queues the job at once (`ledger::queue_correction`).
fn retry_delay_ms(report: &CorrectionReport, now_ms: i64) -> u64 {
    if report.next_close_in_ms > 60_000 {
        return report.next_close_in_ms.min(60_000);
    }
    if now_ms - report.oldest_waiting_ms < 60_000 {
        1_000
    } else {
        15_000
    }
}

/// The `window` label of the correction metrics: the window name, prefixed `sessions:` for
/// session metrics.
fn metric_label(table: RowTable, window: &str) -> String {
    match table {
        RowTable::Windows => window.to_owned(),
        RowTable::Sessions => format!("sessions:{window}"),
    }
}

/// The wall clock in ns since the epoch (rollup versions).
pub(crate) fn now_ns() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_closes_are_awaited_without_polling() {
        let now = 1_000_000_000;
        let report = |next_close_in_ms, waited_ms| CorrectionReport {
            waiting: 1,
            oldest_waiting_ms: now - waited_ms,
            next_close_in_ms,
            ..CorrectionReport::default()
        };
        assert_eq!(retry_delay_ms(&report(500, 0), now), 1_000);
        assert_eq!(retry_delay_ms(&report(500, 120_000), now), 15_000);
        // A session window a day from closing: look again in a minute, not every 15 s.
        assert_eq!(retry_delay_ms(&report(86_400_000, 0), now), 60_000);
        assert_eq!(retry_delay_ms(&report(61_000, 120_000), now), 60_000);
    }
}
