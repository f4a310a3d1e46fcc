//! Tally's job queue worker (the role Celery plays in the original design), on PostgreSQL with
//! [graphile_worker](https://docs.rs/graphile_worker) (`SKIP LOCKED` claiming, `LISTEN/NOTIFY`
//! wake-ups, retries with exponential back-off, job keys for de-duplication, dead-worker
//! recovery). Jobs:
//!
//! - [`Correct`] (`correct`): recomputes every window pending in the late-event ledger from the
//!   raw events (`tally_sinks::postgres::ledger`, `tally_sinks::clickhouse::recompute`). Queued
//!   by the pipeline's sink with job key `correct`, so many late events cause one job.
//! - [`Rebuild`] (`rebuild`): recomputes every rollup row of a time range (`tally rebuild`),
//!   recording its progress in `rebuilds`, resumable after a crash.
//! - [`Retention`] (`retention`): drops monthly partitions of `events` past retention on servers
//!   without TTL, then queues itself again after `pipeline.retention_check_secs`.
//!
//! Every run is recorded in `job_runs` (what `tally jobs` lists) and in the metrics of
//! [`metrics`]. Jobs only read and write through `tally_sinks`; they never touch the dataflow.

mod correct;
pub mod metrics;
mod rebuild;
pub mod recompute;
mod retention;
mod run;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use graphile_worker::{JobKeyMode, JobSpec, WorkerOptions, WorkerUtils};
use tally_core::Topology;
use tally_sinks::clickhouse::ClickHouseConfig;
use tally_sinks::postgres::ledger;
use tally_sinks::SinkError;

pub use correct::{correct_pending, Correct, CorrectionReport};
pub use rebuild::{aligned_range, Rebuild};
pub use retention::Retention;

/// The PostgreSQL schema graphile_worker's tables live in.
pub const QUEUE_SCHEMA: &str = "graphile_worker";

/// What the jobs need.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Where rollups and raw events are.
    pub clickhouse: ClickHouseConfig,
    /// Whose acknowledged frontier decides when a window can be corrected (`pipeline.name`).
    pub pipeline: String,
    /// The topologies whose windows are corrected and rebuilt (tables resolved to their
    /// current versions).
    pub topologies: Vec<Topology>,
    /// The rollups' grace, ms (`pipeline.grace_ms`).
    pub grace_ms: u64,
    /// How often retention runs, s (`pipeline.retention_check_secs`).
    pub retention_check_secs: u64,
    /// Jobs run at once by this worker.
    pub concurrency: usize,
}

/// What a job handler reaches through the worker's extensions.
#[derive(Clone, Debug)]
pub(crate) struct JobContext {
    pub(crate) settings: Arc<JobSettings>,
    pub(crate) clickhouse: ClickHouseClient,
}

/// `clickhouse::Client` with `Debug` (graphile_worker extensions must be `Debug`).
#[derive(Clone)]
pub(crate) struct ClickHouseClient(pub(crate) clickhouse::Client);

impl std::fmt::Debug for ClickHouseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClickHouseClient")
    }
}

/// Errors of the worker itself (a job's own failure is retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// PostgreSQL or ClickHouse failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// graphile_worker could not start or run (e.g. its schema is missing: run `tally migrate`).
    #[error("job queue: {0}")]
    Queue(String),
}

/// Creates or updates graphile_worker's schema (idempotent). Part of `tally migrate`.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), JobsError> {
    WorkerUtils::new(pool.clone(), QUEUE_SCHEMA)
        .migrate()
        .await
        .map_err(|e| JobsError::Queue(format!("installing the job queue schema: {e}")))
}

/// Queues a job of kind `T` with `payload` for `pipeline`'s workers (flag `pipeline:<name>`);
/// `key` de-duplicates within the pipeline (a waiting job with the same key is replaced).
/// Returns the queue's job id.
pub async fn enqueue<T: graphile_worker::TaskHandler>(
    pool: &sqlx::PgPool,
    pipeline: &str,
    payload: T,
    key: Option<&str>,
    run_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<i64, JobsError> {
    let spec = JobSpec {
        job_key: key.map(|k| format!("{k}:{pipeline}")),
        job_key_mode: Some(JobKeyMode::Replace),
        flags: Some(vec![ledger::pipeline_flag(pipeline)]),
        run_at,
        ..JobSpec::default()
    };
    let job = WorkerUtils::new(pool.clone(), QUEUE_SCHEMA)
        .add_job(payload, spec)
        .await
        .map_err(|e| JobsError::Queue(format!("queueing a job: {e}")))?;
    Ok(*job.id())
}

/// Runs a worker until `shutdown` completes, then lets running jobs finish (at most 30 s; a job
/// cut short is retried). Queues retention and one `correct` pass at start (so windows marked
/// while no worker ran are corrected).
///
/// Errors: [`JobsError::Queue`] when the worker cannot start (schema missing: `tally migrate`).
pub async fn run_worker(
    settings: JobSettings,
    pool: sqlx::PgPool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), JobsError> {
    let clickhouse = ClickHouseClient(tally_sinks::clickhouse::connect(&settings.clickhouse, true));
    let concurrency = settings.concurrency.max(1);
    let pipeline = settings.pipeline.clone();
    let context = JobContext {
        settings: Arc::new(settings),
        clickhouse,
    };
    let worker = WorkerOptions::default()
        .pg_pool(pool.clone())
        .schema(QUEUE_SCHEMA)
        .concurrency(concurrency)
        .poll_interval(Duration::from_secs(2))
        .listen_os_shutdown_signals(false)
        .shutdown_signal(shutdown)
        .shutdown_grace_period(Duration::from_secs(30))
        // A worker killed mid-job: its jobs are unlocked and retried once it missed heartbeats
        // for 30 s (graphile_worker's default would wait 4 hours).
        .heartbeat_interval(Duration::from_secs(5))
        .sweep_interval(Duration::from_secs(10))
        .sweep_threshold(Duration::from_secs(30))
        .recovery_delay(Duration::from_secs(1))
        // Only this pipeline's jobs: pipelines may share a PostgreSQL database.
        .add_accepted_flag(&ledger::pipeline_flag(&pipeline))
        .add_extension(context)
        .define_job::<Correct>()
        .define_job::<Rebuild>()
        .define_job::<Retention>()
        .init()
        .await
        .map_err(|e| {
            JobsError::Queue(format!(
                "starting the worker (run `tally migrate` first?): {e}"
            ))
        })?;
    enqueue(&pool, &pipeline, Retention {}, Some("retention"), None).await?;
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| SinkError::postgres("queueing a correction", e))?;
    ledger::queue_correction(&mut conn, &pipeline, None).await?;
    drop(conn);
    let gauges = tokio::spawn(metrics::export_loop(pool, pipeline));
    tracing::info!(concurrency, "job worker running");
    let result = worker
        .run()
        .await
        .map_err(|e| JobsError::Queue(format!("worker stopped: {e}")));
    gauges.abort();
    result
}
