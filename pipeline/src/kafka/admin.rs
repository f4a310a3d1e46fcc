//! Creating Tally's topics and keeping their message-size limit in step with the config.

use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use super::{client_config, KafkaConfig};
use crate::PipelineError;

/// The topic setting that bounds a record batch's size.
const MAX_MESSAGE_BYTES_KEY: &str = "max.message.bytes";

/// Creates the events and dead-letter topics if missing, with `max.message.bytes` set to
/// `kafka.max_message_bytes`; raises that setting on existing topics where it is lower (never
/// lowers it), so running it again changes nothing. Returns the topics it created.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<Vec<String>, PipelineError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|e| PipelineError::kafka("creating an admin client", e))?;
    let replication = || TopicReplication::Fixed(config.replication_factor);
    let max_bytes = config.max_message_bytes.to_string();
    let topics = [
        NewTopic::new(&config.topic, config.partitions, replication())
            .set(MAX_MESSAGE_BYTES_KEY, &max_bytes),
        NewTopic::new(&config.dlq_topic, 1, replication()).set(MAX_MESSAGE_BYTES_KEY, &max_bytes),
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
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                raise_max_message_bytes(&admin, &topic, config.max_message_bytes).await?;
            }
            Err((topic, code)) => {
                return Err(PipelineError::kafka(
                    format!("creating topic {topic}"),
                    KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(created)
}

/// Sets `max.message.bytes` of an existing `topic` to `wanted` when it is lower. The AlterConfigs
/// request replaces every per-topic override, so the topic's other overrides are sent along.
async fn raise_max_message_bytes(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    wanted: usize,
) -> Result<(), PipelineError> {
    let context = || format!("reading the config of topic {topic}");
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let resource = ResourceSpecifier::Topic(topic);
    let described = admin
        .describe_configs([&resource], &opts)
        .await
        .map_err(|e| PipelineError::kafka(context(), e))?;
    let Some(result) = described.into_iter().next() else {
        return Err(PipelineError::kafka(
            context(),
            KafkaError::AdminOpCreation("empty answer".into()),
        ));
    };
    let found =
        result.map_err(|code| PipelineError::kafka(context(), KafkaError::AdminOp(code)))?;
    let current = found
        .get(MAX_MESSAGE_BYTES_KEY)
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse::<usize>().ok());
    if current.is_some_and(|c| c >= wanted) {
        return Ok(());
    }
    let wanted_text = wanted.to_string();
    let mut alter = AlterConfig::new(resource);
    for entry in &found.entries {
        if let (ConfigSource::DynamicTopic, Some(value)) = (&entry.source, &entry.value) {
            alter = alter.set(&entry.name, value);
        }
    }
    alter = alter.set(MAX_MESSAGE_BYTES_KEY, &wanted_text);
    let altered = admin
        .alter_configs([&alter], &opts)
        .await
        .map_err(|e| PipelineError::kafka(format!("altering topic {topic}"), e))?;
    if let Some(Err((_, code))) = altered.into_iter().next() {
        return Err(PipelineError::kafka(
            format!("setting {MAX_MESSAGE_BYTES_KEY} of topic {topic}"),
            KafkaError::AdminOp(code),
        ));
    }
    tracing::info!(topic, from = ?current, to = wanted, "raised max.message.bytes");
    Ok(())
}
