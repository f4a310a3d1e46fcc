//! Shared application state.

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use tally_pipeline::kafka::KafkaConfig;

use crate::ApiConfig;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// `[api]`.
    pub config: Arc<ApiConfig>,
    /// Topic names and timeouts.
    pub kafka: Arc<KafkaConfig>,
    /// Idempotent, acks=all producer.
    pub producer: FutureProducer,
    /// ClickHouse client with the database selected.
    pub clickhouse: clickhouse::Client,
    /// PostgreSQL (pipeline progress, for `complete_until`).
    pub postgres: sqlx::PgPool,
    /// Whose progress `complete_until` reports.
    pub pipeline_name: String,
    /// The pipeline's grace period, for `complete_until`.
    pub grace_ms: u64,
    /// Retention, days (events older are rejected).
    pub retention_days: u32,
    /// The state of the pipeline running in this process (`tally all`); `None` when the API
    /// runs alone (`tally serve`). `/healthz` shows it, `/readyz` answers 503 unless it is
    /// `running`.
    pub pipeline: Option<tally_pipeline::Health>,
}
