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
    /// Another process holds the pipeline, or took it over since this one started (its lease
    /// epoch is newer): this process must stop writing progress.
    #[error("pipeline `{pipeline}`: {reason}")]
    Fenced {
        /// `pipeline.name`.
        pipeline: String,
        /// Who holds it, or that a newer process took over.
        reason: String,
    },
    /// A topology's tables are missing, or were made for another definition of it: run
    /// `tally migrate`.
    #[error("topology `{topology}`: {reason}: run `tally migrate`")]
    TopologyNotMigrated {
        /// The topology's name.
        topology: String,
        /// What is missing or different.
        reason: String,
    },
    /// A table a topology needs exists but is not one Tally made for it (other key columns, or
    /// a column of another type): rename or drop it by hand, or give the topology another
    /// `table`.
    #[error("topology `{topology}`: table {table}: {reason}")]
    TopologyConflict {
        /// The topology's name.
        topology: String,
        /// The table, `database.name`.
        table: String,
        /// What does not fit.
        reason: String,
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

/// ClickHouse error codes that are worth retrying: memory limit (241), too many simultaneous
/// queries (202), too many parts (252), timeouts (159, 209), network errors (210), a table in
/// read-only mode (242). Codes from ClickHouse's `src/Common/ErrorCodes.cpp`.
const RETRYABLE_CLICKHOUSE_CODES: &[u32] = &[241, 202, 252, 159, 209, 210, 242];

/// ClickHouse error codes meaning the schema is missing or older than this build: no such
/// column (16), table (60) or database (81).
const MISSING_SCHEMA_CLICKHOUSE_CODES: &[u32] = &[16, 60, 81];

/// ClickHouse error codes meaning the credentials or the user's rights are wrong: unknown user
/// (192), wrong password (193), password required (194), access denied (497), authentication
/// failed (516).
const AUTH_CLICKHOUSE_CODES: &[u32] = &[192, 193, 194, 497, 516];

/// PostgreSQL SQLSTATEs meaning the connection settings are wrong: invalid authorization
/// (class 28: unknown role, wrong password) and a database that does not exist (3D000).
const AUTH_POSTGRES_STATES: &[&str] = &["28000", "28P01", "3D000"];

/// PostgreSQL SQLSTATEs meaning the schema is missing: undefined table, undefined column.
const MISSING_SCHEMA_POSTGRES_STATES: &[&str] = &["42P01", "42703"];

/// The error code in a ClickHouse error text (`Code: 60, e.displayText() = ...` on 18.16,
/// `Code: 60. DB::Exception: ...` on current releases).
pub fn clickhouse_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

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

    /// Whether the error says a table, column or database Tally creates is missing, i.e.
    /// `tally migrate` has not been run (or not since an upgrade).
    pub fn is_missing_schema(&self) -> bool {
        match self {
            SinkError::ClickHouse {
                source: ::clickhouse::error::Error::BadResponse(text),
                ..
            } => {
                clickhouse_code(text).is_some_and(|c| MISSING_SCHEMA_CLICKHOUSE_CODES.contains(&c))
            }
            SinkError::Postgres {
                source: sqlx::Error::Database(db),
                ..
            } => db
                .code()
                .is_some_and(|c| MISSING_SCHEMA_POSTGRES_STATES.contains(&c.as_ref())),
            SinkError::TopologyNotMigrated { .. } => true,
            _ => false,
        }
    }

    /// Whether the error says the credentials, the user's rights or the database named in the
    /// settings are wrong: a configuration error, which retrying cannot fix.
    pub fn is_auth_error(&self) -> bool {
        match self {
            SinkError::ClickHouse {
                source: ::clickhouse::error::Error::BadResponse(text),
                ..
            } => clickhouse_code(text).is_some_and(|c| AUTH_CLICKHOUSE_CODES.contains(&c)),
            SinkError::Postgres {
                source: sqlx::Error::Database(db),
                ..
            } => db
                .code()
                .is_some_and(|c| AUTH_POSTGRES_STATES.contains(&c.as_ref())),
            _ => false,
        }
    }

    /// Whether retrying may help.
    pub fn class(&self) -> ErrorClass {
        use ::clickhouse::error::Error as Ch;
        match self {
            SinkError::ClickHouse { source, .. } => match source {
                Ch::Network(_) | Ch::TimedOut => ErrorClass::Retry,
                Ch::BadResponse(text) => match clickhouse_code(text) {
                    None => ErrorClass::Retry,
                    Some(code) if RETRYABLE_CLICKHOUSE_CODES.contains(&code) => ErrorClass::Retry,
                    Some(_) => ErrorClass::Fatal,
                },
                _ => ErrorClass::Fatal,
            },
            SinkError::Postgres { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                    ErrorClass::Retry
                }
                // Connection lost (08), server shutting down (57P), serialization failure or
                // deadlock (40): SQLSTATE classes where the same statement can succeed later.
                sqlx::Error::Database(db)
                    if db.code().is_some_and(|c| {
                        c.starts_with("08") || c.starts_with("57P") || c.starts_with("40")
                    }) =>
                {
                    ErrorClass::Retry
                }
                _ => ErrorClass::Fatal,
            },
            SinkError::Config { .. }
            | SinkError::Fenced { .. }
            | SinkError::TopologyNotMigrated { .. }
            | SinkError::TopologyConflict { .. } => ErrorClass::Fatal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_parsed_not_matched_as_substrings() {
        assert_eq!(
            clickhouse_code("Code: 60, e.displayText() = DB::Exception: Table x doesn't exist"),
            Some(60)
        );
        assert_eq!(
            clickhouse_code("Code: 241. DB::Exception: Memory limit"),
            Some(241)
        );
        assert_eq!(clickhouse_code("no code here"), None);
        let err = |t: &str| {
            SinkError::clickhouse("q", ::clickhouse::error::Error::BadResponse(t.to_owned()))
        };
        assert_eq!(
            err("Code: 241. DB::Exception: x").class(),
            ErrorClass::Retry
        );
        // 2410 is not 241.
        assert_eq!(
            err("Code: 2410. DB::Exception: x").class(),
            ErrorClass::Fatal
        );
        assert!(
            err("Code: 60. DB::Exception: Table tally.events doesn't exist").is_missing_schema()
        );
        assert!(!err("Code: 62. DB::Exception: Syntax error").is_missing_schema());
        assert!(
            err("Code: 193, e.displayText() = DB::Exception: Wrong password for user default")
                .is_auth_error()
        );
        assert!(err("Code: 516. DB::Exception: default: Authentication failed").is_auth_error());
        assert!(!err("Code: 60. DB::Exception: Table x doesn't exist").is_auth_error());
        assert_eq!(err("proxy said 502").class(), ErrorClass::Retry);
    }
}
