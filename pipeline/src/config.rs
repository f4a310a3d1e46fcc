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
    /// Tolerated clock skew, milliseconds: for the watermark an event's time counts at most up to
    /// its Kafka timestamp (never later than the wall clock at read) plus this, so a fast client
    /// clock cannot make other events late. Each millisecond comes out of the delay an on-time
    /// event may have (out-of-orderness + grace), hence the limit in `validate`.
    pub max_clock_skew_ms: u64,
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
    /// How often the `retention` job runs (drops expired partitions on servers without TTL,
    /// prunes old job runs), in seconds.
    pub retention_check_secs: u64,
    /// How long a shutdown waits for ClickHouse to acknowledge what is buffered, in
    /// milliseconds; progress is then saved up to what it did acknowledge (the rest is read
    /// again after a restart, nothing is lost).
    pub drain_timeout_ms: u64,
    /// What to do when Kafka retention deleted messages the pipeline had not read yet (found at
    /// startup): `fail` (default: stop and say so) or `skip` (log, count in
    /// `tally_retention_gap_messages_total`, and go on from the earliest offset left).
    pub on_retention_gap: RetentionGapPolicy,
}

/// See [`PipelineConfig::on_retention_gap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionGapPolicy {
    /// Refuse to start.
    #[default]
    Fail,
    /// Report and go on.
    Skip,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            name: "default".to_owned(),
            workers: 2,
            max_out_of_orderness_ms: 5_000,
            max_clock_skew_ms: crate::watermark::DEFAULT_MAX_CLOCK_SKEW_MS,
            grace_ms: 5_000,
            idle_timeout_ms: 10_000,
            provisional_interval_ms: 2_000,
            commit_interval_ms: 1_000,
            max_poll_records: 5_000,
            max_pending_rows: 500_000,
            retention_check_secs: 3_600,
            drain_timeout_ms: 30_000,
            on_retention_gap: RetentionGapPolicy::Fail,
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
        if self.max_clock_skew_ms > self.max_out_of_orderness_ms.saturating_add(self.grace_ms) {
            return bad(
                "pipeline.max_clock_skew_ms",
                "must be at most max_out_of_orderness_ms + grace_ms, or one fast client clock makes on-time events late",
            );
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
        if self.drain_timeout_ms == 0 {
            return bad("pipeline.drain_timeout_ms", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_tolerance_must_leave_on_time_events_a_margin() {
        let ok = PipelineConfig::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.max_clock_skew_ms, 1_000);
        let at_limit = PipelineConfig {
            max_clock_skew_ms: 10_000,
            ..PipelineConfig::default()
        };
        assert!(at_limit.validate().is_ok());
        let too_much = PipelineConfig {
            max_clock_skew_ms: 10_001,
            ..PipelineConfig::default()
        };
        assert!(matches!(
            too_much.validate(),
            Err(PipelineError::Config {
                field: "pipeline.max_clock_skew_ms",
                ..
            })
        ));
    }
}
