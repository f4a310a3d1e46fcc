//! Batch inserts with retries.

use std::time::Duration;

use clickhouse::{Client, Row, RowOwned, RowWrite};
use serde::Serialize;

use super::client::connect;
use super::config::ClickHouseConfig;
use super::rows::EventRow;
use crate::{ErrorClass, SinkError};

/// Writes batches of events and rollup rows. Cheap to clone.
#[derive(Clone)]
pub struct ClickHouseWriter {
    client: Client,
}

impl ClickHouseWriter {
    /// A writer for the configured database.
    pub fn new(config: &ClickHouseConfig) -> Self {
        ClickHouseWriter {
            client: connect(config, true),
        }
    }

    /// Inserts raw events, retrying transient failures (see [`retry`]).
    pub async fn write_events(&self, rows: &[EventRow]) -> Result<(), SinkError> {
        retry("insert into events", || {
            insert(&self.client, "events", rows)
        })
        .await
    }

    /// Inserts rollup rows (each with its version) into a topology's `table`, whose metric
    /// columns are `columns`, retrying transient failures.
    pub async fn write_rollup_rows(
        &self,
        table: &str,
        columns: &[tally_core::Column],
        rows: &[(tally_core::RollupRow, u64)],
    ) -> Result<(), SinkError> {
        retry(&format!("insert into {table}"), || {
            super::rollup_rows::insert_rows(&self.client, table, columns, rows)
        })
        .await
    }
}

async fn insert<T>(client: &Client, table: &str, rows: &[T]) -> Result<(), SinkError>
where
    T: Row + RowOwned + RowWrite + Serialize,
{
    if rows.is_empty() {
        return Ok(());
    }
    let ctx = |e| SinkError::clickhouse(format!("insert into {table}"), e);
    let mut insert = client.insert::<T>(table).await.map_err(ctx)?;
    for row in rows {
        insert.write(row).await.map_err(ctx)?;
    }
    insert.end().await.map_err(ctx)
}

/// Runs `attempt` until it succeeds or fails with a non-retryable error. Transient errors are
/// retried with exponential back-off (100 ms doubling to 10 s), without limit: the data is not
/// dropped, the pipeline stops committing Kafka offsets meanwhile and resumes when the server is
/// back. A ClickHouse insert of the same block is all-or-nothing, so a retry cannot half-apply.
pub async fn retry<F, Fut>(what: &str, mut attempt: F) -> Result<(), SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SinkError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e) if e.class() == ErrorClass::Retry => {
                failures += 1;
                tracing::warn!(what, failures, error = %e, "clickhouse write failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}
