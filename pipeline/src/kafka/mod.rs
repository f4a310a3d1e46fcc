//! Kafka: settings, topic creation, and the clients the source and the API use.

mod admin;
mod config;

pub use admin::ensure_topics;
pub use config::KafkaConfig;

use rdkafka::config::ClientConfig;

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
        .set("message.timeout.ms", config.produce_timeout_ms.to_string());
    c
}
