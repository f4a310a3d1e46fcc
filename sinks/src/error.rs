//! The sinks' one error type, each variant classified for its caller.

use thiserror::Error;

/// How a caller should treat an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: try the same request again after a back-off.
    Retry,
    /// Retrying cannot help (schema missing, bad SQL, bad config): stop and say what to do.
    Fatal,
}

/// Errors from ClickHouse or PostgreSQL.
#[derive(Debug, Error)]
pub enum SinkError {
    /// A ClickHouse request failed.
    #[error("clickhouse: {context}: {source}")]
    ClickHouse {
        /// What Tally was doing.
        context: String,
        /// The client's error, with the server's message where there is one.
        #[source]
        source: ::clickhouse::error::Error,
    },
    /// A PostgreSQL request failed.
    #[error("postgres: {context}: {source}")]
    Postgres {
        /// What Tally was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A configuration value is unusable.
    #[error("config: `{field}`: {reason}")]
    Config {
        /// The key, as written in tally.toml.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// ClickHouse error codes that are worth retrying: memory limit, too many simultaneous queries,
/// too many parts, timeouts, network errors, a table in read-only mode.
const RETRYABLE_CLICKHOUSE_CODES: &[&str] = &[
    "Code: 241",
    "Code: 202",
    "Code: 252",
    "Code: 159",
    "Code: 209",
    "Code: 210",
    "Code: 242",
];

impl SinkError {
    /// Builds a ClickHouse error with context.
    pub fn clickhouse(context: impl Into<String>, source: ::clickhouse::error::Error) -> Self {
        SinkError::ClickHouse {
            context: context.into(),
            source,
        }
    }

    /// Builds a PostgreSQL error with context.
    pub fn postgres(context: impl Into<String>, source: sqlx::Error) -> Self {
        SinkError::Postgres {
            context: context.into(),
            source,
        }
    }

    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        use ::clickhouse::error::Error as Ch;
        match self {
            SinkError::ClickHouse { source, .. } => match source {
                Ch::Network(_) | Ch::TimedOut => ErrorClass::Retry,
                Ch::BadResponse(text) => {
                    let coded = text.contains("Code: ");
                    if !coded || RETRYABLE_CLICKHOUSE_CODES.iter().any(|c| text.contains(c)) {
                        ErrorClass::Retry
                    } else {
                        ErrorClass::Fatal
                    }
                }
                _ => ErrorClass::Fatal,
            },
            SinkError::Postgres { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                    ErrorClass::Retry
                }
                _ => ErrorClass::Fatal,
            },
            SinkError::Config { .. } => ErrorClass::Fatal,
        }
    }
}
