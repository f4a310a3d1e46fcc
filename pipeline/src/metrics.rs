//! Prometheus metrics of the pipeline: every name in one place. Registered in the default
//! registry, which `GET /metrics` serves. (The API's own metrics, HTTP requests and ingest
//! counts, are in `tally_api::metrics`; the jobs' in `tally_jobs::metrics`.)

use std::sync::OnceLock;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Events read from Kafka (valid and invalid).
pub const EVENTS_READ: &str = "tally_pipeline_events_read_total";
/// Messages dead-lettered, by reason.
pub const DLQ: &str = "tally_dlq_events_total";
/// Events that arrived after their window closed, by window.
pub const LATE: &str = "tally_late_events_total";
/// Events dropped as repeats of an earlier event id.
pub const DUPLICATES: &str = "tally_duplicate_events_total";
/// Contributions (one event, one window, one dimension) merged into a dimension's `__other__`
/// group because the dimension's `max_values` was reached.
pub const FOLDED: &str = "tally_dimension_values_folded_total";
/// Consumer lag per partition (high watermark − next offset to read).
pub const LAG: &str = "tally_consumer_lag";
/// Event-time watermark per partition, ms since the epoch.
pub const WATERMARK: &str = "tally_watermark_ms";
/// Frontier before which every output is in ClickHouse, ms since the epoch.
pub const ACKED_FRONTIER: &str = "tally_acked_frontier_ms";
/// Rows per ClickHouse insert, by table.
pub const SINK_BATCH_ROWS: &str = "tally_sink_batch_rows";
/// Seconds per ClickHouse insert (including retries), by table.
pub const SINK_BATCH_SECONDS: &str = "tally_sink_batch_seconds";
/// Rows buffered or in flight to ClickHouse.
pub const SINK_BACKLOG: &str = "tally_sink_backlog_rows";
/// Messages deleted by Kafka retention before the pipeline read them, skipped at startup
/// (`pipeline.on_retention_gap = "skip"`), by partition.
pub const RETENTION_GAP: &str = "tally_retention_gap_messages_total";
/// Dead-letter writes not yet acknowledged by Kafka (their offsets are not committed).
pub const DLQ_PENDING: &str = "tally_dlq_pending";
/// Progress saves to PostgreSQL that failed (retried at the next interval).
pub const PROGRESS_SAVE_FAILURES: &str = "tally_progress_save_failures_total";
/// Window marks written to the late-event ledger (one per window per sink batch).
pub const LATE_WINDOWS_MARKED: &str = "tally_late_windows_marked_total";

/// Every metric Tally exports.
pub struct Metrics {
    /// See [`EVENTS_READ`].
    pub events_read: IntCounter,
    /// See [`LATE_WINDOWS_MARKED`].
    pub late_windows_marked: IntCounter,
    /// See [`DLQ`].
    pub dlq: IntCounterVec,
    /// See [`LATE`].
    pub late: IntCounterVec,
    /// See [`DUPLICATES`].
    pub duplicates: IntCounter,
    /// See [`FOLDED`].
    pub folded: IntCounter,
    /// See [`LAG`].
    pub lag: IntGaugeVec,
    /// See [`WATERMARK`].
    pub watermark: IntGaugeVec,
    /// See [`ACKED_FRONTIER`].
    pub acked_frontier: IntGauge,
    /// See [`SINK_BATCH_ROWS`].
    pub sink_batch_rows: HistogramVec,
    /// See [`SINK_BATCH_SECONDS`].
    pub sink_batch_seconds: HistogramVec,
    /// See [`SINK_BACKLOG`].
    pub sink_backlog: IntGauge,
    /// See [`RETENTION_GAP`].
    pub retention_gap: IntCounterVec,
    /// See [`DLQ_PENDING`].
    pub dlq_pending: IntGauge,
    /// See [`PROGRESS_SAVE_FAILURES`].
    pub progress_save_failures: IntCounter,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name, which a unit test rules out.
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

fn counter(name: &str, help: &str) -> IntCounter {
    reg(IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    reg(IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

fn histogram_vec(name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    reg(HistogramVec::new(opts, &["table"]).unwrap_or_else(|e| panic!("metric {name}: {e}")))
}

impl Metrics {
    /// The process-wide metrics, registered on first use.
    pub fn get() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| Metrics {
            events_read: counter(EVENTS_READ, "Events read from Kafka, valid or not."),
            late_windows_marked: counter(
                LATE_WINDOWS_MARKED,
                "Closed windows marked for correction in the late-event ledger (per sink batch).",
            ),
            dlq: counter_vec(
                DLQ,
                "Messages sent to the dead-letter topic, by reason.",
                &["reason"],
            ),
            late: counter_vec(
                LATE,
                "Events that arrived after their window closed (corrected from raw events), by \
                 topology and window (`sessions` for the session metrics).",
                &["topology", "window"],
            ),
            duplicates: counter(
                DUPLICATES,
                "Events dropped from rollups as repeats of an earlier event id.",
            ),
            folded: counter(
                FOLDED,
                "Contributions merged into a dimension's __other__ group (its max_values reached).",
            ),
            lag: gauge_vec(
                LAG,
                "Consumer lag in messages, by partition.",
                &["partition"],
            ),
            watermark: gauge_vec(
                WATERMARK,
                "Event-time watermark, ms since the epoch, by partition.",
                &["partition"],
            ),
            acked_frontier: gauge(
                ACKED_FRONTIER,
                "Watermark time before which every output is in ClickHouse, ms.",
            ),
            sink_batch_rows: histogram_vec(
                SINK_BATCH_ROWS,
                "Rows per ClickHouse insert.",
                prometheus::exponential_buckets(1.0, 4.0, 10).unwrap_or_default(),
            ),
            sink_batch_seconds: histogram_vec(
                SINK_BATCH_SECONDS,
                "Seconds per ClickHouse insert, retries included.",
                prometheus::exponential_buckets(0.001, 2.0, 16).unwrap_or_default(),
            ),
            sink_backlog: gauge(SINK_BACKLOG, "Rows buffered or in flight to ClickHouse."),
            retention_gap: counter_vec(
                RETENTION_GAP,
                "Messages deleted by Kafka retention before they were read, skipped, by partition.",
                &["partition"],
            ),
            dlq_pending: gauge(
                DLQ_PENDING,
                "Dead-letter writes waiting for Kafka's acknowledgement.",
            ),
            progress_save_failures: counter(
                PROGRESS_SAVE_FAILURES,
                "Progress saves to PostgreSQL that failed (retried at the next interval).",
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_metrics_register_once() {
        let m = super::Metrics::get();
        m.events_read.inc();
        m.dlq.with_label_values(&["test"]).inc();
        let names: Vec<String> = prometheus::default_registry()
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for name in [super::EVENTS_READ, super::SINK_BACKLOG, super::DLQ] {
            assert!(names.iter().any(|n| n == name), "{name} not registered");
        }
    }
}
