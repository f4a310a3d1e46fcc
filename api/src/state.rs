//! Shared application state.

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use tally_core::{Health, Topology};

use crate::auth::KeyStore;
use crate::limits::Limiters;
use crate::request_log::RequestLog;
use crate::{ApiConfig, KafkaTarget};

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// `[api]`.
    pub config: Arc<ApiConfig>,
    /// Topic name, produce timeout and record-size limit of `POST /events`.
    pub kafka: Arc<KafkaTarget>,
    /// Idempotent, acks=all producer (the binary builds it with
    /// `tally_pipeline::kafka::producer_config`).
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
    pub pipeline: Option<Health>,
    /// The topologies `/reports` and `/topologies` answer for, in the order `/topologies` lists
    /// them, with their table names as currently stored (the binary resolves versioned tables
    /// before building the state).
    pub topologies: Arc<Vec<Topology>>,
    /// API keys (PostgreSQL `api_keys`, briefly cached).
    pub keys: KeyStore,
    /// The GCRA limiters of the limited routes.
    pub limiters: Arc<Limiters>,
    /// The request-log writer's queue.
    pub request_log: RequestLog,
}
