//! The API's Prometheus metrics (every name in one place), registered in the default registry
//! that `GET /metrics` serves beside the pipeline's and the jobs' metrics.

use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec, Opts};

/// Events accepted by `POST /events`.
pub const INGEST_ACCEPTED: &str = "tally_ingest_events_accepted_total";
/// Events rejected by `POST /events`, by reason.
pub const INGEST_REJECTED: &str = "tally_ingest_events_rejected_total";
/// HTTP requests, by route and status.
pub const HTTP_REQUESTS: &str = "tally_http_requests_total";
/// Request-log rows written to PostgreSQL.
pub const REQUEST_LOG_WRITTEN: &str = "tally_api_request_log_written_total";
/// Request-log rows dropped, by reason (`queue_full`, `postgres`).
pub const REQUEST_LOG_DROPPED: &str = "tally_api_request_log_dropped_total";

/// Every metric the API exports.
pub struct Metrics {
    /// See [`INGEST_ACCEPTED`].
    pub ingest_accepted: IntCounter,
    /// See [`INGEST_REJECTED`].
    pub ingest_rejected: IntCounterVec,
    /// See [`HTTP_REQUESTS`].
    pub http_requests: IntCounterVec,
    /// See [`REQUEST_LOG_WRITTEN`].
    pub request_log_written: IntCounter,
    /// See [`REQUEST_LOG_DROPPED`].
    pub request_log_dropped: IntCounterVec,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name, which a unit test rules out.
    let _ = prometheus::default_registry().register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// The process-wide metrics, registered on first use.
    pub fn get() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| Metrics {
            ingest_accepted: reg(IntCounter::new(
                INGEST_ACCEPTED,
                "Events accepted by POST /events (acknowledged by Kafka).",
            )
            .unwrap_or_else(|e| panic!("metric {INGEST_ACCEPTED}: {e}"))),
            ingest_rejected: reg(IntCounterVec::new(
                Opts::new(
                    INGEST_REJECTED,
                    "Events rejected by POST /events, by reason.",
                ),
                &["reason"],
            )
            .unwrap_or_else(|e| panic!("metric {INGEST_REJECTED}: {e}"))),
            http_requests: reg(IntCounterVec::new(
                Opts::new(HTTP_REQUESTS, "HTTP requests, by route and status."),
                &["route", "status"],
            )
            .unwrap_or_else(|e| panic!("metric {HTTP_REQUESTS}: {e}"))),
            request_log_written: reg(IntCounter::new(
                REQUEST_LOG_WRITTEN,
                "Request-log rows written to PostgreSQL.",
            )
            .unwrap_or_else(|e| panic!("metric {REQUEST_LOG_WRITTEN}: {e}"))),
            request_log_dropped: reg(IntCounterVec::new(
                Opts::new(
                    REQUEST_LOG_DROPPED,
                    "Request-log rows dropped (queue full, or PostgreSQL failed), by reason.",
                ),
                &["reason"],
            )
            .unwrap_or_else(|e| panic!("metric {REQUEST_LOG_DROPPED}: {e}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_metrics_register() {
        let m = super::Metrics::get();
        m.ingest_accepted.inc();
        m.ingest_rejected.with_label_values(&["test"]).inc();
        m.http_requests.with_label_values(&["/test", "200"]).inc();
        m.request_log_written.inc();
        m.request_log_dropped.with_label_values(&["test"]).inc();
        let names: Vec<String> = prometheus::default_registry()
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        for name in [
            super::INGEST_ACCEPTED,
            super::INGEST_REJECTED,
            super::HTTP_REQUESTS,
            super::REQUEST_LOG_WRITTEN,
            super::REQUEST_LOG_DROPPED,
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not registered");
        }
    }
}
