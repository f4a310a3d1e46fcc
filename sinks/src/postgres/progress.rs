//! Pipeline progress: the Kafka offsets to resume from and the acknowledged frontier.
//!
//! Both are written in one transaction after ClickHouse acknowledged everything they cover, so a
//! restart resumes from a consistent point: every window that closed before the frontier is in
//! ClickHouse in its final form, and every event of a window still open is at or after the saved
//! offsets.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::SinkError;

/// Saved position in one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The partition.
    pub partition: i32,
    /// Where to resume reading: the smallest offset still owed to ClickHouse.
    pub next_offset: i64,
    /// One past the largest offset read so far; what lies between the two is replayed.
    pub read_until: i64,
    /// Every message below this offset that was not a valid event has its dead letter
    /// acknowledged by Kafka: a replay does not dead-letter it again.
    pub dlq_until: i64,
}

/// Saved progress of one pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Per (topic, partition).
    pub offsets: HashMap<(String, i32), PartitionProgress>,
    /// Watermark time before which every output is acknowledged, if any was saved.
    pub acked_frontier_ms: Option<u64>,
}

/// Loads the progress of `pipeline`.
pub async fn load_progress(pool: &PgPool, pipeline: &str) -> Result<Progress, SinkError> {
    let rows: Vec<(String, i32, i64, i64, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset, read_until, dlq_until FROM pipeline_offsets WHERE pipeline = $1",
    )
    .bind(pipeline)
    .fetch_all(pool)
    .await
    .map_err(|e| SinkError::postgres("loading offsets", e))?;
    let acked_frontier_ms = acked_frontier(pool, pipeline).await?;
    Ok(Progress {
        offsets: rows
            .into_iter()
            .map(|(topic, partition, next_offset, read_until, dlq_until)| {
                let saved = PartitionProgress {
                    partition,
                    next_offset,
                    read_until,
                    dlq_until,
                };
                ((topic, partition), saved)
            })
            .collect(),
        acked_frontier_ms,
    })
}

/// The acknowledged frontier of `pipeline` (ms since the epoch): every output of a window that
/// closed before it is in ClickHouse. `None` before the pipeline saved any progress (a stored
/// negative value, which no pipeline writes, reads as `None` too). What `/reports` derives
/// `complete_until` from and what the correction and rebuild jobs wait for.
///
/// Errors: [`SinkError::Postgres`] (retryable when PostgreSQL is unavailable).
pub async fn acked_frontier(pool: &PgPool, pipeline: &str) -> Result<Option<u64>, SinkError> {
    let frontier: Option<i64> =
        sqlx::query_scalar("SELECT acked_frontier_ms FROM pipeline_frontiers WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_optional(pool)
            .await
            .map_err(|e| SinkError::postgres("reading the pipeline frontier", e))?;
    Ok(frontier.and_then(|f| u64::try_from(f).ok()))
}

/// Saves offsets for some partitions of `topic` and raises the frontier (never lowers it), in
/// one transaction, provided the pipeline's lease still has `epoch` (see [`super::lease`]).
///
/// Errors: [`SinkError::Fenced`] when a newer process took the pipeline over (nothing is
/// written); [`SinkError::Postgres`] otherwise.
pub async fn save_progress(
    pool: &PgPool,
    pipeline: &str,
    epoch: i64,
    topic: &str,
    offsets: &[PartitionProgress],
    acked_frontier_ms: u64,
) -> Result<(), SinkError> {
    let ctx = |what: &'static str| move |e| SinkError::postgres(what, e);
    let mut tx = pool
        .begin()
        .await
        .map_err(ctx("starting a progress update"))?;
    // Row lock: a takeover (which bumps the epoch) waits for this save, or this save sees it.
    let current: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM pipeline_leases WHERE pipeline = $1 FOR UPDATE")
            .bind(pipeline)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ctx("checking the pipeline lease"))?;
    if current != Some(epoch) {
        return Err(SinkError::Fenced {
            pipeline: pipeline.to_owned(),
            reason: format!(
                "a newer process took this pipeline over (lease epoch {} > {epoch}); this one stops",
                current.map_or_else(|| "none".to_owned(), |c| c.to_string())
            ),
        });
    }
    for o in offsets {
        sqlx::query(
            "INSERT INTO pipeline_offsets (pipeline, topic, partition, next_offset, read_until, dlq_until)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (pipeline, topic, partition)
             DO UPDATE SET next_offset = GREATEST(pipeline_offsets.next_offset, EXCLUDED.next_offset),
                           read_until = GREATEST(pipeline_offsets.read_until, EXCLUDED.read_until),
                           dlq_until = GREATEST(pipeline_offsets.dlq_until, EXCLUDED.dlq_until),
                           updated_at = now()",
        )
        .bind(pipeline)
        .bind(topic)
        .bind(o.partition)
        .bind(o.next_offset)
        .bind(o.read_until)
        .bind(o.dlq_until)
        .execute(&mut *tx)
        .await
        .map_err(ctx("saving offsets"))?;
    }
    let frontier = i64::try_from(acked_frontier_ms).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO pipeline_frontiers (pipeline, acked_frontier_ms) VALUES ($1, $2)
         ON CONFLICT (pipeline) DO UPDATE
         SET acked_frontier_ms = GREATEST(pipeline_frontiers.acked_frontier_ms, EXCLUDED.acked_frontier_ms),
             updated_at = now()",
    )
    .bind(pipeline)
    .bind(frontier)
    .execute(&mut *tx)
    .await
    .map_err(ctx("saving the frontier"))?;
    tx.commit().await.map_err(ctx("committing progress"))
}
