//! The job queue's Prometheus metrics (default registry, served by `GET /metrics`).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    register_gauge, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Gauge, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Jobs waiting to run, by kind.
pub const QUEUE_DEPTH: &str = "tally_job_queue_depth";
/// Seconds per job run, by kind and outcome.
pub const DURATION: &str = "tally_job_duration_seconds";
/// Failed job runs (each is retried until its attempts run out), by kind.
pub const FAILURES: &str = "tally_job_failures_total";
/// Windows waiting for a correction.
pub const PENDING_CORRECTIONS: &str = "tally_pending_corrections";
/// Age of the oldest pending correction, s (0 when none).
pub const CORRECTION_LAG: &str = "tally_correction_lag_seconds";
/// Windows corrected, by topology and window.
pub const CORRECTED: &str = "tally_corrected_windows_total";
/// Seconds from a window's first pending late event to its correction, by window.
pub const CORRECTION_DELAY: &str = "tally_correction_delay_seconds";

/// The job metrics.
pub struct Metrics {
    /// See [`QUEUE_DEPTH`].
    pub queue_depth: IntGaugeVec,
    /// See [`DURATION`].
    pub duration: HistogramVec,
    /// See [`FAILURES`].
    pub failures: IntCounterVec,
    /// See [`PENDING_CORRECTIONS`].
    pub pending_corrections: IntGauge,
    /// See [`CORRECTION_LAG`].
    pub correction_lag: Gauge,
    /// See [`CORRECTED`].
    pub corrected: IntCounterVec,
    /// See [`CORRECTION_DELAY`].
    pub correction_delay: HistogramVec,
}

impl Metrics {
    /// The process-wide job metrics, registered on first use.
    #[allow(clippy::unwrap_used)] // fixed names and labels: registration cannot fail twice
    pub fn get() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| Metrics {
            queue_depth: register_int_gauge_vec!(
                QUEUE_DEPTH,
                "Jobs waiting to run, by kind.",
                &["kind"]
            )
            .unwrap(),
            duration: register_histogram_vec!(
                DURATION,
                "Seconds per job run, by kind and outcome.",
                &["kind", "outcome"],
                prometheus::exponential_buckets(0.005, 2.0, 16).unwrap()
            )
            .unwrap(),
            failures: register_int_counter_vec!(
                FAILURES,
                "Failed job runs (retried with back-off), by kind.",
                &["kind"]
            )
            .unwrap(),
            pending_corrections: register_int_gauge!(
                PENDING_CORRECTIONS,
                "Closed windows that received late events and wait for their correction."
            )
            .unwrap(),
            correction_lag: register_gauge!(
                CORRECTION_LAG,
                "Seconds since the oldest pending correction's first late event (0 when none)."
            )
            .unwrap(),
            corrected: register_int_counter_vec!(
                CORRECTED,
                "Windows recomputed from raw events, by topology and window (`sessions:<window>` \
                 for session metrics).",
                &["topology", "window"]
            )
            .unwrap(),
            correction_delay: register_histogram_vec!(
                CORRECTION_DELAY,
                "Seconds from a window's first pending late event to its correction, by topology \
                 and window.",
                &["topology", "window"],
                prometheus::exponential_buckets(0.25, 2.0, 14).unwrap()
            )
            .unwrap(),
        })
    }
}

/// Every 5 s, sets the queue-depth and correction gauges from PostgreSQL.
pub(crate) async fn export_loop(pool: sqlx::PgPool, pipeline: String) {
    let m = Metrics::get();
    loop {
        if let Ok(depth) = tally_sinks::postgres::jobs::depth(&pool, &pipeline).await {
            m.queue_depth.reset();
            for (kind, n) in depth {
                m.queue_depth.with_label_values(&[kind.as_str()]).set(n);
            }
        }
        if let Ok((pending, lag)) = tally_sinks::postgres::ledger::backlog(&pool, &pipeline).await {
            m.pending_corrections.set(pending);
            m.correction_lag.set(lag);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
