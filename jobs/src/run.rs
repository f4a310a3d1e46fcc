//! Running a job: its record in `job_runs`, its metrics and its log lines, around the handler.

use std::future::Future;
use std::time::Instant;

use graphile_worker::WorkerContext;

use crate::metrics::Metrics;
use crate::JobContext;

/// Runs `work` as one attempt of the current job: records the run (start, end, error, summary),
/// observes its duration and counts failures. The error text goes back to graphile_worker,
/// which retries the job with exponential back-off until its attempts run out.
pub(crate) async fn tracked<F, Fut>(
    kind: &'static str,
    ctx: WorkerContext,
    work: F,
) -> Result<(), String>
where
    F: FnOnce(JobContext, sqlx::PgPool) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let Some(job_ctx) = ctx.extensions().get::<JobContext>().cloned() else {
        return Err("the worker has no job context (a bug)".into());
    };
    let pool = ctx.pg_pool().clone();
    let job = ctx.job();
    let start = tally_sinks::postgres::jobs::RunStart {
        pipeline: &job_ctx.settings.pipeline,
        job_id: *job.id(),
        kind,
        payload: job.payload(),
        attempt: *job.attempts(),
        max_attempts: *job.max_attempts(),
        worker: ctx.worker_id(),
    };
    let run = tally_sinks::postgres::jobs::run_started(&pool, start)
        .await
        .map_err(|e| tracing::warn!(error = %e, kind, "could not record a job run"))
        .ok();
    let started = Instant::now();
    let result = work(job_ctx, pool.clone()).await;
    let seconds = started.elapsed().as_secs_f64();
    let m = Metrics::get();
    let outcome = if result.is_ok() {
        "succeeded"
    } else {
        "failed"
    };
    m.duration
        .with_label_values(&[kind, outcome])
        .observe(seconds);
    match &result {
        Ok(summary) => tracing::info!(kind, seconds, summary, "job done"),
        Err(error) => {
            m.failures.with_label_values(&[kind]).inc();
            tracing::warn!(
                kind,
                seconds,
                error,
                attempt = *job.attempts(),
                "job failed; retried with back-off"
            );
        }
    }
    if let Some(run) = run {
        let (error, summary) = match &result {
            Ok(s) => (None, s.as_str()),
            Err(e) => (Some(e.as_str()), ""),
        };
        if let Err(e) = tally_sinks::postgres::jobs::run_finished(&pool, run, error, summary).await
        {
            tracing::warn!(error = %e, kind, "could not record the end of a job run");
        }
    }
    result.map(|_| ())
}
