//! Kafka: settings, topic creation, and the clients the source and the API use.

mod admin;
mod config;

pub use admin::ensure_topics;
pub use config::{KafkaConfig, MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES};

use rdkafka::config::ClientConfig;

/// Bytes a record needs beyond its key and value: the v2 record-batch header (61 bytes) plus
/// librdkafka's worst-case record framing (36 bytes), rounded up for headroom.
pub const RECORD_OVERHEAD_BYTES: usize = 128;

/// What a record with this key and value (and no headers) counts against
/// `kafka.max_message_bytes`: `key + value + RECORD_OVERHEAD_BYTES`. A record within the limit
/// passes both the producer's `message.max.bytes` check and the topic's `max.message.bytes`.
pub fn record_bytes(key_len: usize, value_len: usize) -> usize {
    key_len
        .saturating_add(value_len)
        .saturating_add(RECORD_OVERHEAD_BYTES)
}

/// Base client settings for `config`.
pub fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    c.set("client.id", "tally");
    c
}

/// Settings of a producer that only reports success once every in-sync replica has the record,
/// and never duplicates or reorders a record on retry.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(config);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", config.produce_timeout_ms.to_string())
        .set("message.max.bytes", config.max_message_bytes.to_string());
    c
}

/// How a failed produce is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProduceFailure {
    /// The record is over a size limit: retrying the same record can never succeed.
    TooLarge,
    /// Kafka is unreachable or not ready (timeouts, transport, no leader, all brokers down):
    /// retry later.
    Unavailable,
    /// Anything else (authorization, invalid request, a fatal producer state): not retryable
    /// as is; details belong in the log.
    Refused,
}

impl ProduceFailure {
    /// Classifies a produce error.
    pub fn of(error: &rdkafka::error::KafkaError) -> ProduceFailure {
        use rdkafka::types::RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(C::MessageSizeTooLarge | C::MessageBatchTooLarge) => ProduceFailure::TooLarge,
            Some(
                C::MessageTimedOut
                | C::RequestTimedOut
                | C::OperationTimedOut
                | C::TimedOutQueue
                | C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::BrokerNotAvailable
                | C::NetworkException
                | C::Resolve
                | C::QueueFull
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::ReplicaNotAvailable
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::UnknownTopicOrPartition
                | C::UnknownTopic
                | C::UnknownPartition
                | C::KafkaStorageError
                | C::BrokerDestroy
                | C::PurgeQueue
                | C::PurgeInflight
                | C::Retry,
            )
            | None => ProduceFailure::Unavailable,
            Some(_) => ProduceFailure::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn too_large_is_never_unavailable() {
        let of = |c| ProduceFailure::of(&KafkaError::MessageProduction(c));
        assert_eq!(of(C::MessageSizeTooLarge), ProduceFailure::TooLarge);
        assert_eq!(of(C::MessageBatchTooLarge), ProduceFailure::TooLarge);
        for c in [
            C::MessageTimedOut,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
        ] {
            assert_eq!(of(c), ProduceFailure::Unavailable, "{c:?}");
        }
        assert_eq!(of(C::TopicAuthorizationFailed), ProduceFailure::Refused);
        assert_eq!(of(C::InvalidRecord), ProduceFailure::Refused);
    }

    #[test]
    fn producer_and_record_limits_follow_the_config() {
        let config = KafkaConfig {
            max_message_bytes: 4096,
            ..KafkaConfig::default()
        };
        assert_eq!(
            producer_config(&config).get("message.max.bytes"),
            Some("4096")
        );
        assert_eq!(record_bytes(2, 10), 12 + RECORD_OVERHEAD_BYTES);
    }
}
