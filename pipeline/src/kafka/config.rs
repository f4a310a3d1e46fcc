//! `[kafka]` settings.

use serde::Deserialize;

/// How to reach Kafka and which topics Tally uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Topic holding the raw events.
    pub topic: String,
    /// Dead-letter topic for messages that are not valid events.
    pub dlq_topic: String,
    /// Consumer group (used for committed offsets, which lag tools read).
    pub group_id: String,
    /// Partitions of the events topic when `tally migrate` creates it.
    pub partitions: i32,
    /// Replication factor of topics `tally migrate` creates.
    pub replication_factor: i32,
    /// How long a produce may take before it is reported failed, in milliseconds.
    pub produce_timeout_ms: u64,
    /// Largest Kafka message Tally writes, in bytes: the producer's `message.max.bytes` and the
    /// `max.message.bytes` of the topics `tally migrate` creates (raised on existing topics
    /// whose limit is lower). The API rejects an event whose record would not fit, counting
    /// `canonical JSON + key (user_id) + RECORD_OVERHEAD_BYTES` (see [`super::record_bytes`]).
    /// Between [`MIN_MESSAGE_BYTES`] and [`MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
}

/// Smallest accepted `kafka.max_message_bytes` (1 KiB).
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest accepted `kafka.max_message_bytes` (50 MiB): above this a message no longer fits
/// Kafka's default request and fetch limits with room to spare (the broker's
/// `socket.request.max.bytes` is 100 MiB, librdkafka's `receive.message.max.bytes` 100 MB).
pub const MAX_MESSAGE_BYTES: usize = 50 << 20;

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".to_owned(),
            topic: "events".to_owned(),
            dlq_topic: "events.dlq".to_owned(),
            group_id: "tally".to_owned(),
            partitions: 4,
            replication_factor: 1,
            produce_timeout_ms: 10_000,
            max_message_bytes: 1_000_000,
        }
    }
}

impl KafkaConfig {
    /// Checks the settings without contacting the brokers.
    pub fn validate(&self) -> Result<(), crate::PipelineError> {
        let bad = |field: &'static str, reason: &str| {
            Err(crate::PipelineError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers", "must list at least one host:port");
        }
        let topic_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= 249
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !topic_ok(&self.topic) {
            return bad("kafka.topic", "must be 1-249 characters of [A-Za-z0-9._-]");
        }
        if !topic_ok(&self.dlq_topic) || self.dlq_topic == self.topic {
            return bad(
                "kafka.dlq_topic",
                "must be a valid topic name other than kafka.topic",
            );
        }
        if self.group_id.is_empty() {
            return bad("kafka.group_id", "must not be empty");
        }
        if self.partitions < 1 {
            return bad("kafka.partitions", "must be at least 1");
        }
        if self.replication_factor < 1 {
            return bad("kafka.replication_factor", "must be at least 1");
        }
        if self.produce_timeout_ms == 0 {
            return bad("kafka.produce_timeout_ms", "must be at least 1");
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.max_message_bytes) {
            return Err(crate::PipelineError::Config {
                field: "kafka.max_message_bytes",
                reason: format!(
                    "must be between {MIN_MESSAGE_BYTES} and {MAX_MESSAGE_BYTES} bytes, got {}",
                    self.max_message_bytes
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_message_bytes_is_bounded() {
        let with = |n: usize| KafkaConfig {
            max_message_bytes: n,
            ..KafkaConfig::default()
        };
        assert!(KafkaConfig::default().validate().is_ok());
        assert!(with(MIN_MESSAGE_BYTES).validate().is_ok());
        assert!(with(MAX_MESSAGE_BYTES).validate().is_ok());
        for n in [0, MIN_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES + 1] {
            let err = with(n).validate().expect_err("out of range").to_string();
            assert!(err.contains("kafka.max_message_bytes"), "{err}");
        }
    }
}
