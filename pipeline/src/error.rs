//! The pipeline's error type, and how each error ends the process.

use thiserror::Error;

/// Why the pipeline could not start or had to stop.
///
/// `Display` says what happened and what to do; it does not repeat the `#[source]`, which
/// callers print as the cause chain (`{:#}` with anyhow).
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
    /// The schema or topics Tally needs are missing or older than this build: `tally migrate`
    /// was not run (or not since an upgrade).
    #[error("{what} is missing; run `tally migrate` first")]
    NotMigrated {
        /// What is missing, e.g. "ClickHouse table tally.events".
        what: String,
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
    /// A service did not answer at startup.
    #[error("{service} at {address} is unreachable: {reason}")]
    Unavailable {
        /// `kafka`, `clickhouse` or `postgres`.
        service: &'static str,
        /// Where Tally looked (without credentials).
        address: String,
        /// What the client said.
        reason: String,
    },
    /// Another process runs a pipeline of the same name (PostgreSQL advisory lock held), or a
    /// newer one took over and fenced this one out.
    #[error("pipeline `{pipeline}`: {reason}")]
    Locked {
        /// `pipeline.name`.
        pipeline: String,
        /// Who holds it.
        reason: String,
    },
    /// Kafka deleted messages (retention) that the pipeline had not read yet: resuming would
    /// skip them silently.
    #[error(
        "partition {partition}: messages {saved}..{earliest} were deleted by Kafka retention \
         before the pipeline read them ({lost} messages){others}; set \
         pipeline.on_retention_gap = \"skip\" to accept the loss and go on"
    )]
    RetentionGap {
        /// The partition.
        partition: i32,
        /// The saved offset to resume from.
        saved: i64,
        /// The earliest offset the broker still holds.
        earliest: i64,
        /// How many messages are gone (`earliest - saved`).
        lost: i64,
        /// The other partitions with a gap, as text (empty when none), e.g.
        /// ` (also partitions 1 (4 messages), 3 (2 messages))`.
        others: String,
    },
    /// A sink failed in a way retrying cannot fix.
    #[error(transparent)]
    Sink(#[from] tally_sinks::SinkError),
    /// The timely runtime failed, or a worker panicked (a bug).
    #[error("dataflow: {0}")]
    Dataflow(String),
}

/// How an error ends the process: one exit code per class (sysexits.h), so supervisors and
/// scripts can tell "fix the config" from "retry later" from "report a bug".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitClass {
    /// Configuration or setup (including `tally migrate` not run): exit 78 (`EX_CONFIG`).
    Config,
    /// A service is down or failing: exit 69 (`EX_UNAVAILABLE`). Restarting later may help.
    Unavailable,
    /// Another instance holds the pipeline: exit 75 (`EX_TEMPFAIL`).
    Conflict,
    /// A bug (panic, broken invariant, unexpected server answer): exit 70 (`EX_SOFTWARE`).
    Bug,
}

impl ExitClass {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            ExitClass::Config => 78,
            ExitClass::Unavailable => 69,
            ExitClass::Conflict => 75,
            ExitClass::Bug => 70,
        }
    }
}

impl PipelineError {
    /// Builds a Kafka error with context.
    pub fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        PipelineError::Kafka {
            context: context.into(),
            source,
        }
    }

    /// Which exit code the error ends the process with.
    pub fn exit_class(&self) -> ExitClass {
        match self {
            PipelineError::Config { .. }
            | PipelineError::NotMigrated { .. }
            | PipelineError::RetentionGap { .. } => ExitClass::Config,
            PipelineError::Kafka { .. } | PipelineError::Unavailable { .. } => {
                ExitClass::Unavailable
            }
            PipelineError::Locked { .. } => ExitClass::Conflict,
            PipelineError::Sink(e) => ExitClass::of_sink(e),
            PipelineError::Dataflow(_) => ExitClass::Bug,
        }
    }
}

impl ExitClass {
    /// The class of a sink error: config (incl. a missing schema), conflict (fenced),
    /// unavailable (retryable), else bug.
    pub fn of_sink(e: &tally_sinks::SinkError) -> ExitClass {
        use tally_sinks::{ErrorClass, SinkError};
        match e {
            SinkError::Config { .. } => ExitClass::Config,
            SinkError::Fenced { .. } => ExitClass::Conflict,
            e if e.is_auth_error() => ExitClass::Config,
            e if e.is_missing_schema() => ExitClass::Config,
            e if e.class() == ErrorClass::Retry => ExitClass::Unavailable,
            _ => ExitClass::Bug,
        }
    }

    /// The class of the first typed error in an error chain; `None` when none is typed.
    pub fn of_chain<'a>(
        mut chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
    ) -> Option<ExitClass> {
        chain.find_map(|e| {
            e.downcast_ref::<PipelineError>()
                .map(PipelineError::exit_class)
                .or_else(|| {
                    e.downcast_ref::<tally_sinks::SinkError>()
                        .map(ExitClass::of_sink)
                })
        })
    }
}
