//! `[clickhouse]` settings.

use serde::Deserialize;

use crate::SinkError;

/// How to reach ClickHouse and how to write to it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding Tally's tables; created by `tally migrate`.
    pub database: String,
    /// User name.
    pub user: String,
    /// Password (empty for none).
    pub password: String,
    /// Most rows in one insert.
    pub batch_rows: usize,
    /// Longest a row waits in a batch before the batch is written, in milliseconds.
    pub batch_ms: u64,
    /// How long raw events are kept, in days (a TTL where the server has TTL, otherwise whole
    /// monthly partitions are dropped once every row in them is older than this).
    pub retention_days: u32,
    /// User the API reads as (empty: `user`). Give it a profile with `readonly = 2` (reads
    /// only, settings may change) so the per-query limits below still apply.
    pub read_user: String,
    /// Password of `read_user`.
    pub read_password: String,
    /// `max_execution_time` of every API query, seconds (ClickHouse stops a longer one; the
    /// API answers 503).
    pub read_max_execution_time_s: u32,
    /// `max_memory_usage` of every API query, bytes.
    pub read_max_memory_bytes: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".to_owned(),
            database: "tally".to_owned(),
            user: "default".to_owned(),
            password: String::new(),
            batch_rows: 50_000,
            batch_ms: 1_000,
            retention_days: 365,
            read_user: String::new(),
            read_password: String::new(),
            read_max_execution_time_s: 30,
            read_max_memory_bytes: 4_000_000_000,
        }
    }
}

impl ClickHouseConfig {
    /// Checks the settings without contacting the server.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |field, reason: &str| {
            Err(SinkError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return bad(
                "clickhouse.url",
                "must be an http:// or https:// URL of the HTTP interface",
            );
        }
        if self.database.is_empty()
            || !self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad(
                "clickhouse.database",
                "must be non-empty and use only [A-Za-z0-9_]",
            );
        }
        if self.batch_rows == 0 {
            return bad("clickhouse.batch_rows", "must be at least 1");
        }
        if self.batch_ms == 0 {
            return bad("clickhouse.batch_ms", "must be at least 1");
        }
        if self.retention_days == 0 {
            return bad("clickhouse.retention_days", "must be at least 1");
        }
        if self.read_max_execution_time_s == 0 {
            return bad("clickhouse.read_max_execution_time_s", "must be at least 1");
        }
        if self.read_max_memory_bytes < 1 << 20 {
            return bad(
                "clickhouse.read_max_memory_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        Ok(())
    }
}
