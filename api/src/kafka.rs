//! What `POST /events` needs of Kafka: where to write, and how a failed produce is answered.
//! The producer itself is built by the binary (`tally_pipeline::kafka::producer_config`), so the
//! API does not depend on the pipeline.

/// Where and how `POST /events` writes: the parts of `[kafka]` the API uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTarget {
    /// Topic holding the raw events (`kafka.topic`).
    pub topic: String,
    /// How long a produce may take before it is reported failed, ms
    /// (`kafka.produce_timeout_ms`).
    pub produce_timeout_ms: u64,
    /// Largest Kafka record, bytes (`kafka.max_message_bytes`): an event whose record would be
    /// larger is rejected (see [`tally_core::event::record_bytes`]).
    pub max_message_bytes: usize,
}

/// How a failed produce is answered (by `POST /events` and `tally import`).
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
}
