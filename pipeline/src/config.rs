//! `[pipeline]` settings.

use serde::Deserialize;

use crate::PipelineError;

/// How the pipeline computes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Name under which progress is saved; two pipelines with one name share progress.
    pub name: String,
    /// Timely worker threads.
    pub workers: usize,
    /// Bounded out-of-orderness: a partition's watermark trails its largest event time by this.
    pub max_out_of_orderness_ms: u64,
    /// How long after a window's end (in watermark time) it still accepts events.
    pub grace_ms: u64,
    /// A caught-up partition that delivers nothing for this long stops holding the watermark.
    pub idle_timeout_ms: u64,
    /// How often open windows that changed are written provisionally.
    pub provisional_interval_ms: u64,
    /// How often progress (offsets, frontier) is saved.
    pub commit_interval_ms: u64,
    /// Most messages taken from Kafka per worker step.
    pub max_poll_records: usize,
    /// Reading from Kafka pauses while more rows than this wait for ClickHouse (per worker).
    pub max_pending_rows: usize,
    /// How often dropping expired partitions is checked on servers without TTL, in seconds.
    pub retention_check_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "default".to_owned(),
            workers: 2,
            max_out_of_orderness_ms: 5_000,
            grace_ms: 5_000,
            idle_timeout_ms: 10_000,
            provisional_interval_ms: 2_000,
            commit_interval_ms: 1_000,
            max_poll_records: 5_000,
            max_pending_rows: 500_000,
            retention_check_secs: 3_600,
        }
    }
}

impl PipelineConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let bad = |field: &'static str, reason: &str| {
            Err(PipelineError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.name.is_empty() {
            return bad("pipeline.name", "must not be empty");
        }
        if !(1..=64).contains(&self.workers) {
            return bad("pipeline.workers", "must be between 1 and 64");
        }
        if self.provisional_interval_ms == 0 {
            return bad("pipeline.provisional_interval_ms", "must be at least 1");
        }
        if self.commit_interval_ms == 0 {
            return bad("pipeline.commit_interval_ms", "must be at least 1");
        }
        if self.max_poll_records == 0 {
            return bad("pipeline.max_poll_records", "must be at least 1");
        }
        if self.max_pending_rows == 0 {
            return bad("pipeline.max_pending_rows", "must be at least 1");
        }
        if self.retention_check_secs == 0 {
            return bad("pipeline.retention_check_secs", "must be at least 1");
        }
        Ok(())
    }
}
