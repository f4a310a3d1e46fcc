//! Kafka: settings, topic creation, and the clients the source, the dead-letter writer and the
//! API use (the binary builds the API's producer with [`producer_config`]; how a failed produce
//! is answered is `tally_api::ProduceFailure`).

mod admin;
mod config;

pub use admin::ensure_topics;
pub use config::{KafkaConfig, MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES};

use rdkafka::config::ClientConfig;

/// The record-size rule is part of the event contract (the API refuses an event whose record
/// would not fit).
pub use tally_core::event::{record_bytes, RECORD_OVERHEAD_BYTES};

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

#[cfg(test)]
mod tests {
    use super::*;

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
