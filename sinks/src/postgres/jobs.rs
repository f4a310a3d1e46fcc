//! Records of the job queue that outlive the queue's own rows: every run of a job (`job_runs`,
//! what `tally jobs` lists) and the progress of rebuilds (`rebuilds`).
//!
//! The queue itself is graphile_worker's schema (`graphile_worker.jobs`), which deletes a job
//! when it succeeds; these tables keep the history.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::SinkError;

fn ctx(what: &'static str) -> impl FnOnce(sqlx::Error) -> SinkError {
    move |e| SinkError::postgres(what, e)
}

/// One attempt of a queued job, as a worker starts it.
#[derive(Clone, Copy, Debug)]
pub struct RunStart<'a> {
    /// The pipeline whose job it is.
    pub pipeline: &'a str,
    /// The queue's job id.
    pub job_id: i64,
    /// Job kind.
    pub kind: &'a str,
    /// Its arguments.
    pub payload: &'a serde_json::Value,
    /// Attempt number (1 for the first).
    pub attempt: i16,
    /// Attempts allowed.
    pub max_attempts: i16,
    /// The worker's id.
    pub worker: &'a str,
}

/// Records that a worker started a job attempt; returns the run id.
pub async fn run_started(pool: &PgPool, run: RunStart<'_>) -> Result<i64, SinkError> {
    let RunStart {
        pipeline,
        job_id,
        kind,
        payload,
        attempt,
        max_attempts,
        worker,
    } = run;
    sqlx::query_scalar(
        "INSERT INTO job_runs (job_id, kind, payload, attempt, max_attempts, worker, pipeline)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(job_id)
    .bind(kind)
    .bind(sqlx::types::Json(payload))
    .bind(i32::from(attempt))
    .bind(i32::from(max_attempts))
    .bind(worker)
    .bind(pipeline)
    .fetch_one(pool)
    .await
    .map_err(ctx("recording a job run"))
}

/// Records the end of run `run_id`: `error` is `None` on success. `summary` is a short
/// human-readable result (e.g. "corrected 12 windows in 3 ranges").
pub async fn run_finished(
    pool: &PgPool,
    run_id: i64,
    error: Option<&str>,
    summary: &str,
) -> Result<(), SinkError> {
    sqlx::query(
        "UPDATE job_runs SET state = $2, error = $3, summary = $4, finished_at = now()
         WHERE id = $1",
    )
    .bind(run_id)
    .bind(if error.is_some() {
        "failed"
    } else {
        "succeeded"
    })
    .bind(error)
    .bind(summary)
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(ctx("recording the end of a job run"))
}

/// One run of a job, as `tally jobs` shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JobRun {
    /// Run id.
    pub id: i64,
    /// The queue's job id.
    pub job_id: i64,
    /// `correct`, `rebuild` or `retention`.
    pub kind: String,
    /// `running`, `succeeded`, `failed` or `interrupted` (its worker died; the `retention` job
    /// marks such runs once their job is no longer locked; the job itself is retried or
    /// superseded).
    pub state: String,
    /// Attempt number (1 for the first).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The failure, if any.
    pub error: Option<String>,
    /// What it did.
    pub summary: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End, if it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// `pipeline`'s latest `limit` runs, newest first.
pub async fn recent_runs(
    pool: &PgPool,
    pipeline: &str,
    limit: i64,
) -> Result<Vec<JobRun>, SinkError> {
    sqlx::query_as(
        "SELECT id, job_id, kind, state, attempt, max_attempts, error, summary, started_at, finished_at
         FROM job_runs WHERE pipeline = $2 ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(pipeline)
    .fetch_all(pool)
    .await
    .map_err(ctx("reading job runs"))
}

/// A job in the queue (waiting, scheduled, running or failed for good).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QueuedJob {
    /// The queue's job id.
    pub id: i64,
    /// Job kind.
    pub kind: String,
    /// Attempts started.
    pub attempts: i16,
    /// Attempts allowed.
    pub max_attempts: i16,
    /// When it may run next.
    pub run_at: DateTime<Utc>,
    /// Set while a worker runs it.
    pub locked_at: Option<DateTime<Utc>>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// De-duplication key.
    pub key: Option<String>,
    /// Replaced by a newer job with its key while it ran (graphile_worker then sets its
    /// attempts to the maximum so that it is never retried): not a failure.
    pub superseded: bool,
}

impl QueuedJob {
    /// `running`, `superseded` (a newer job with its key took over; left by a worker that
    /// stopped mid-run), `failed` (attempts exhausted), `retrying` (failed before, waiting),
    /// `scheduled` (future run) or `queued`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.locked_at.is_some() {
            "running"
        } else if self.superseded {
            "superseded"
        } else if self.attempts >= self.max_attempts {
            "failed"
        } else if self.attempts > 0 {
            "retrying"
        } else if self.run_at > now {
            "scheduled"
        } else {
            "queued"
        }
    }
}

/// `pipeline`'s jobs in the queue (flag `pipeline:<name>`), oldest first.
pub async fn queued(pool: &PgPool, pipeline: &str) -> Result<Vec<QueuedJob>, SinkError> {
    sqlx::query_as(
        "SELECT id, task_identifier AS kind, attempts, max_attempts, run_at, locked_at, last_error, key,
                EXISTS (SELECT 1 FROM graphile_worker._private_job_retirements r WHERE r.id = jobs.id)
                    AS superseded
         FROM graphile_worker.jobs WHERE flags ? $1 ORDER BY id",
    )
    .bind(super::ledger::pipeline_flag(pipeline))
    .fetch_all(pool)
    .await
    .map_err(ctx("reading the job queue"))
}

/// `pipeline`'s jobs waiting to run (not locked, attempts left), by kind: the queue-depth
/// metric.
pub async fn depth(pool: &PgPool, pipeline: &str) -> Result<Vec<(String, i64)>, SinkError> {
    sqlx::query_as(
        "SELECT task_identifier, count(*) FROM graphile_worker.jobs
         WHERE locked_at IS NULL AND attempts < max_attempts AND flags ? $1
         GROUP BY task_identifier",
    )
    .bind(super::ledger::pipeline_flag(pipeline))
    .fetch_all(pool)
    .await
    .map_err(ctx("reading the queue depth"))
}

/// Deletes `pipeline`'s job runs and finished rebuilds older than `runs_days`, and its settled
/// ledger rows whose window is older than `retention_days` (their raw events are gone too).
/// Returns the rows deleted.
pub async fn prune(
    pool: &PgPool,
    pipeline: &str,
    runs_days: u32,
    retention_days: u32,
) -> Result<u64, SinkError> {
    let runs = sqlx::query(
        "DELETE FROM job_runs WHERE pipeline = $1 AND started_at < now() - make_interval(days => $2)",
    )
    .bind(pipeline)
    .bind(i32::try_from(runs_days).unwrap_or(i32::MAX))
    .execute(pool)
    .await
    .map_err(ctx("pruning job runs"))?;
    let rebuilds = sqlx::query(
        "DELETE FROM rebuilds WHERE pipeline = $1 AND state IN ('done', 'failed')
           AND updated_at < now() - make_interval(days => $2)",
    )
    .bind(pipeline)
    .bind(i32::try_from(runs_days).unwrap_or(i32::MAX))
    .execute(pool)
    .await
    .map_err(ctx("pruning rebuilds"))?;
    let ledger = sqlx::query(
        "DELETE FROM late_windows WHERE pipeline = $1 AND pending_since IS NULL
           AND window_start_ms < (extract(epoch from now() - make_interval(days => $2)) * 1000)::bigint",
    )
    .bind(pipeline)
    .bind(i32::try_from(retention_days).unwrap_or(i32::MAX))
    .execute(pool)
    .await
    .map_err(ctx("pruning the late-event ledger"))?;
    // Runs whose worker died: their job is no longer locked (recovered or superseded).
    let interrupted = sqlx::query(
        "UPDATE job_runs SET state = 'interrupted', finished_at = now(),
                error = 'the worker stopped during this run; the job was retried or superseded'
         WHERE pipeline = $1 AND state = 'running' AND started_at < now() - interval '1 minute'
           AND NOT EXISTS (SELECT 1 FROM graphile_worker.jobs j
                           WHERE j.id = job_runs.job_id AND j.locked_at IS NOT NULL)",
    )
    .bind(pipeline)
    .execute(pool)
    .await
    .map_err(ctx("marking interrupted job runs"))?;
    // Superseded jobs left behind by a worker that stopped mid-run (their newer job did the work).
    let superseded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM graphile_worker.complete_jobs(ARRAY(
             SELECT j.id FROM graphile_worker.jobs j
             JOIN graphile_worker._private_job_retirements r ON r.id = j.id
             WHERE j.locked_at IS NULL AND j.flags ? $1))",
    )
    .bind(super::ledger::pipeline_flag(pipeline))
    .fetch_one(pool)
    .await
    .map_err(ctx("removing superseded jobs"))?;
    Ok(runs.rows_affected()
        + interrupted.rows_affected()
        + rebuilds.rows_affected()
        + ledger.rows_affected()
        + u64::try_from(superseded).unwrap_or(0))
}

/// A rebuild's progress.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Rebuild {
    /// Id (the `rebuild` job's payload names it).
    pub id: i64,
    /// Range start, ms since the epoch (aligned down to a day).
    pub from_ms: i64,
    /// Range end, exclusive, ms (aligned up to a day).
    pub to_ms: i64,
    /// Everything before this is rebuilt, ms.
    pub done_until_ms: i64,
    /// Rollup rows written so far.
    pub rows_written: i64,
    /// `queued`, `running`, `done` or `failed`.
    pub state: String,
    /// The failure, if any.
    pub error: Option<String>,
}

/// Creates a rebuild record of `pipeline` for `[from_ms, to_ms)` and its `job.started` audit
/// row (target `rebuild:<id>`, by `actor`) in one transaction; returns its id.
pub async fn rebuild_create(
    pool: &PgPool,
    pipeline: &str,
    from_ms: i64,
    to_ms: i64,
    actor: &super::audit::Actor,
) -> Result<i64, SinkError> {
    let mut tx = pool.begin().await.map_err(ctx("creating a rebuild"))?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO rebuilds (pipeline, from_ms, to_ms, done_until_ms) VALUES ($3, $1, $2, $1) RETURNING id",
    )
    .bind(from_ms)
    .bind(to_ms)
    .bind(pipeline)
    .fetch_one(&mut *tx)
    .await
    .map_err(ctx("creating a rebuild"))?;
    let details = serde_json::json!({
        "kind": "rebuild", "pipeline": pipeline, "from_ms": from_ms, "to_ms": to_ms,
    });
    super::audit::record(
        &mut tx,
        actor,
        "job.started",
        &format!("rebuild:{id}"),
        details,
    )
    .await?;
    tx.commit().await.map_err(ctx("committing a rebuild"))?;
    Ok(id)
}

/// Reads rebuild `id`.
pub async fn rebuild_get(pool: &PgPool, id: i64) -> Result<Option<Rebuild>, SinkError> {
    sqlx::query_as(
        "SELECT id, from_ms, to_ms, done_until_ms, rows_written, state, error FROM rebuilds WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(ctx("reading a rebuild"))
}

/// Records progress (or the end) of rebuild `id`.
pub async fn rebuild_update(
    pool: &PgPool,
    id: i64,
    state: &str,
    done_until_ms: i64,
    rows_written: i64,
    error: Option<&str>,
) -> Result<(), SinkError> {
    sqlx::query(
        "UPDATE rebuilds SET state = $2, done_until_ms = $3, rows_written = $4, error = $5,
                updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(done_until_ms)
    .bind(rows_written)
    .bind(error)
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(ctx("recording rebuild progress"))
}
