//! The pipeline's acknowledged frontier as saved in PostgreSQL.

use sqlx::PgPool;

use crate::SinkError;

/// The saved acknowledged frontier of `pipeline` (ms, event time: every rollup row of an
/// earlier time is stored in ClickHouse); 0 before the first save.
///
/// Errors: [`SinkError::Postgres`].
pub async fn acked_frontier(pool: &PgPool, pipeline: &str) -> Result<u64, SinkError> {
    let frontier: Option<i64> =
        sqlx::query_scalar("SELECT acked_frontier_ms FROM pipeline_frontiers WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_optional(pool)
            .await
            .map_err(|e| SinkError::postgres("reading the pipeline frontier", e))?;
    Ok(u64::try_from(frontier.unwrap_or(0)).unwrap_or(0))
}
