//! Creating Tally's topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::{client_config, KafkaConfig};
use crate::PipelineError;

/// Creates the events and dead-letter topics if missing. Returns the topics it created.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<Vec<String>, PipelineError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|e| PipelineError::kafka("creating an admin client", e))?;
    let replication = || TopicReplication::Fixed(config.replication_factor);
    let topics = [
        NewTopic::new(&config.topic, config.partitions, replication()),
        NewTopic::new(&config.dlq_topic, 1, replication()),
    ];
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(|e| PipelineError::kafka("creating topics", e))?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(PipelineError::kafka(
                    format!("creating topic {topic}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(created)
}
