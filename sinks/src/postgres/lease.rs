//! One running process per pipeline name: a PostgreSQL advisory lock refuses a second one, and
//! an epoch (fencing token) keeps an older process from saving progress after a newer one took
//! over (e.g. after the older one lost its lock connection).

use sqlx::{PgConnection, PgPool};

use crate::SinkError;

/// A held pipeline lease. Dropping it closes the lock's connection, which releases the lock.
#[derive(Debug)]
pub struct Lease {
    /// The fencing token: progress saves succeed only while the lease table still holds it.
    pub epoch: i64,
    _lock: PgConnection,
}

/// Takes the lease of `pipeline` for `holder` (e.g. `host pid 1234`).
///
/// Errors: [`SinkError::Fenced`] when another process holds the lock (its holder is named);
/// [`SinkError::Postgres`] when PostgreSQL fails.
pub async fn acquire(pool: &PgPool, pipeline: &str, holder: &str) -> Result<Lease, SinkError> {
    let ctx = |what: &'static str| move |e| SinkError::postgres(what, e);
    let mut lock = pool
        .acquire()
        .await
        .map_err(ctx("opening the lock connection"))?;
    let key = format!("tally.pipeline.{pipeline}");
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .fetch_one(&mut *lock)
        .await
        .map_err(ctx("taking the pipeline lock"))?;
    if !locked {
        let other: Option<(String, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("SELECT holder, acquired_at FROM pipeline_leases WHERE pipeline = $1")
                .bind(pipeline)
                .fetch_optional(pool)
                .await
                .map_err(ctx("reading the pipeline lease"))?;
        let reason = match other {
            Some((holder, at)) => format!(
                "another `tally run` holds this pipeline ({holder}, since {}); stop it, or give \
                 this one another pipeline.name",
                at.to_rfc3339()
            ),
            None => "another `tally run` holds this pipeline".to_owned(),
        };
        return Err(SinkError::Fenced {
            pipeline: pipeline.to_owned(),
            reason,
        });
    }
    let epoch: i64 = sqlx::query_scalar(
        "INSERT INTO pipeline_leases (pipeline, epoch, holder) VALUES ($1, 1, $2)
         ON CONFLICT (pipeline) DO UPDATE
         SET epoch = pipeline_leases.epoch + 1, holder = EXCLUDED.holder, acquired_at = now()
         RETURNING epoch",
    )
    .bind(pipeline)
    .bind(holder)
    .fetch_one(&mut *lock)
    .await
    .map_err(ctx("recording the pipeline lease"))?;
    // The lock connection must not go back to the pool (that would keep the lock with an idle
    // pooled connection); it is closed when the lease is dropped.
    Ok(Lease {
        epoch,
        _lock: lock.detach(),
    })
}
