//! `[postgres]` settings.

use serde::Deserialize;

use crate::SinkError;

/// How to reach PostgreSQL.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Connection URL, e.g. `postgres://tally@127.0.0.1:5432/tally`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: "postgres://tally@127.0.0.1:5432/tally".to_owned(),
            max_connections: 4,
        }
    }
}

impl PostgresConfig {
    /// Checks the settings without connecting.
    pub fn validate(&self) -> Result<(), SinkError> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(SinkError::Config {
                field: "postgres.url",
                reason: "must be a postgres:// URL".to_owned(),
            });
        }
        if self.max_connections == 0 {
            return Err(SinkError::Config {
                field: "postgres.max_connections",
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }
}
