//! The pipeline's error type.

use thiserror::Error;

/// Why the pipeline could not start or had to stop.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// A setting is unusable.
    #[error("config: `{field}`: {reason}")]
    Config {
        /// The key, as written in tally.toml.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Kafka refused or failed a request.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What Tally was doing.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A sink failed in a way retrying cannot fix.
    #[error(transparent)]
    Sink(#[from] tally_sinks::SinkError),
    /// The timely runtime failed.
    #[error("dataflow: {0}")]
    Dataflow(String),
}

impl PipelineError {
    /// Builds a Kafka error with context.
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        PipelineError::Kafka {
            context: context.into(),
            source,
        }
    }
}
