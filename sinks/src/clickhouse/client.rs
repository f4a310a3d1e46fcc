//! Building the HTTP client and detecting what the server can do.

use clickhouse::Client;

use super::config::ClickHouseConfig;
use crate::SinkError;

/// A client for `config`, usable against ClickHouse 18.16 and current versions: no row-type
/// validation (18.16 lacks `RowBinaryWithNamesAndTypes`) and no compression (18.16 fails
/// SELECTs with LZ4 from this client).
pub fn connect(config: &ClickHouseConfig, with_database: bool) -> Client {
    let client = Client::default()
        .with_url(config.url.clone())
        .with_user(config.user.clone())
        .with_password(config.password.clone())
        .with_validation(false);
    if with_database {
        client.with_database(config.database.clone())
    } else {
        client
    }
}

/// The API's client: as [`connect`] with the database selected, as `read_user` when set, and
/// every query sent with `readonly=2` (the server refuses writes and DDL, on 18.16 and current
/// versions alike), `max_execution_time` and `max_memory_usage` from the config.
pub fn connect_reader(config: &ClickHouseConfig) -> Client {
    let mut client = connect(config, true);
    if !config.read_user.is_empty() {
        client = client
            .with_user(config.read_user.clone())
            .with_password(config.read_password.clone());
    }
    client
        .with_setting("readonly", "2")
        .with_setting(
            "max_execution_time",
            config.read_max_execution_time_s.to_string(),
        )
        .with_setting("max_memory_usage", config.read_max_memory_bytes.to_string())
}

/// What the connected server supports, found by asking it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// `SELECT version()`.
    pub version: String,
    /// Table `TTL` clauses (absent before 19.6).
    pub ttl: bool,
}

impl Features {
    /// Probes the server: creates (and drops) a scratch table with a TTL clause in `database`.
    pub async fn detect(client: &Client, database: &str) -> Result<Features, SinkError> {
        let version: String = client
            .query("SELECT version()")
            .fetch_one()
            .await
            .map_err(|e| SinkError::clickhouse("reading the server version", e))?;
        let probe = format!("{database}._tally_probe_ttl");
        let drop = format!("DROP TABLE IF EXISTS {probe}");
        client
            .query(&drop)
            .execute()
            .await
            .map_err(|e| SinkError::clickhouse("probe", e))?;
        let create = ttl_probe_sql(&probe);
        let ttl = match client.query(&create).execute().await {
            Ok(()) => true,
            Err(clickhouse::error::Error::BadResponse(text)) if text.contains("Code: 62") => false,
            Err(e) => return Err(SinkError::clickhouse("probing TTL support", e)),
        };
        client
            .query(&drop)
            .execute()
            .await
            .map_err(|e| SinkError::clickhouse("probe", e))?;
        Ok(Features { version, ttl })
    }
}

/// A table with a TTL clause: creating it succeeds exactly where the server supports TTL.
pub fn ttl_probe_sql(table: &str) -> String {
    format!("CREATE TABLE {table} (d Date) ENGINE = MergeTree ORDER BY d TTL d + INTERVAL 1 DAY")
}
