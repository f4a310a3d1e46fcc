//! Saving progress (offsets + acknowledged frontier) to PostgreSQL off the worker thread.
//!
//! A save runs as a task on the tokio runtime; the worker only starts one and later collects
//! its result, so a slow or unreachable PostgreSQL never stalls a timely worker. A failed save
//! loses nothing (a restart replays a little more) and is retried at the next interval; a
//! fenced save (a newer process took the pipeline over) is fatal.

use std::time::Duration;

use tally_sinks::postgres::{self, PartitionProgress};
use tally_sinks::SinkError;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::source::KafkaSource;
use crate::PipelineError;

type Position = (u64, Vec<PartitionProgress>);

/// One worker's progress saves.
pub(crate) struct ProgressSaver {
    pool: sqlx::PgPool,
    runtime: tokio::runtime::Handle,
    pipeline: String,
    topic: String,
    epoch: i64,
    in_flight: Option<(Position, JoinHandle<Result<(), SinkError>>)>,
    saved: Option<Position>,
}

impl ProgressSaver {
    /// A saver for `pipeline` holding lease `epoch`.
    pub(crate) fn new(
        pool: sqlx::PgPool,
        runtime: tokio::runtime::Handle,
        pipeline: &str,
        topic: &str,
        epoch: i64,
    ) -> Self {
        ProgressSaver {
            pool,
            runtime,
            pipeline: pipeline.to_owned(),
            topic: topic.to_owned(),
            epoch,
            in_flight: None,
            saved: None,
        }
    }

    /// Collects a finished save, if any. Errors only when the pipeline was fenced.
    pub(crate) fn poll(&mut self, source: &KafkaSource) -> Result<(), PipelineError> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|(_, h)| h.is_finished())
        {
            if let Some((position, handle)) = self.in_flight.take() {
                let result = self.runtime.block_on(handle).unwrap_or_else(|e| {
                    Err(SinkError::postgres(
                        "progress task",
                        sqlx::Error::Protocol(e.to_string()),
                    ))
                });
                self.settle(source, position, result)?;
            }
        }
        Ok(())
    }

    /// Starts saving the position for the acknowledged `frontier`, unless a save is still in
    /// flight or nothing changed since the last one.
    pub(crate) fn start(&mut self, source: &mut KafkaSource, frontier: u64) {
        if self.in_flight.is_some() {
            return;
        }
        let offsets = source.committable(frontier);
        if self
            .saved
            .as_ref()
            .is_some_and(|(f, o)| *f == frontier && *o == offsets)
            || (frontier == 0 && offsets.is_empty())
        {
            return;
        }
        let (pool, pipeline, topic, epoch) = (
            self.pool.clone(),
            self.pipeline.clone(),
            self.topic.clone(),
            self.epoch,
        );
        let task_offsets = offsets.clone();
        let handle = self.runtime.spawn(async move {
            postgres::save_progress(&pool, &pipeline, epoch, &topic, &task_offsets, frontier).await
        });
        self.in_flight = Some(((frontier, offsets), handle));
    }

    /// At shutdown: waits up to `timeout` for a save in flight, then saves the final position
    /// and waits for it too.
    pub(crate) fn finish(
        &mut self,
        source: &mut KafkaSource,
        frontier: u64,
        timeout: Duration,
    ) -> Result<(), PipelineError> {
        for _ in 0..2 {
            if let Some((position, handle)) = self.in_flight.take() {
                let waited = self
                    .runtime
                    .block_on(async { tokio::time::timeout(timeout, handle).await });
                match waited {
                    Ok(joined) => {
                        let result = joined.unwrap_or_else(|e| {
                            Err(SinkError::postgres(
                                "progress task",
                                sqlx::Error::Protocol(e.to_string()),
                            ))
                        });
                        self.settle(source, position, result)?;
                    }
                    Err(_) => {
                        tracing::warn!("progress save did not finish in time; a restart replays from the last saved position");
                        return Ok(());
                    }
                }
            }
            self.start(source, frontier);
        }
        Ok(())
    }

    fn settle(
        &mut self,
        source: &KafkaSource,
        position: Position,
        result: Result<(), SinkError>,
    ) -> Result<(), PipelineError> {
        match result {
            Ok(()) => {
                source.commit_to_kafka(&position.1);
                Metrics::get()
                    .acked_frontier
                    .set(i64::try_from(position.0).unwrap_or(i64::MAX));
                self.saved = Some(position);
                Ok(())
            }
            Err(SinkError::Fenced { pipeline, reason }) => {
                Err(PipelineError::Locked { pipeline, reason })
            }
            Err(e) => {
                Metrics::get().progress_save_failures.inc();
                tracing::warn!(error = %e, "saving progress failed; retrying at the next interval");
                Ok(())
            }
        }
    }
}
