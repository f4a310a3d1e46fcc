//! `[api]` settings. Every key is flat (`TALLY_API__<KEY>` overrides it).

use serde::Deserialize;

/// Who may call the API without a key.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every route but the public ones (`/healthz`, `/readyz`, `/openapi.json`, `/docs`,
    /// `/dashboard` assets, `/metrics`) needs a key with the route's role.
    #[default]
    Required,
    /// As `required`, except `POST /events` also accepts requests without a key (browsers
    /// sending events, as product-analytics SDKs do with public project tokens). A key that is
    /// sent must still be valid.
    IngestOpen,
}

/// How the API listens and what it accepts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: String,
    /// Largest request body, bytes (compressed size for gzip bodies).
    pub max_body_bytes: usize,
    /// Largest decompressed size of a gzip body, bytes.
    pub max_decompressed_bytes: usize,
    /// Most events in one `POST /events`.
    pub max_batch_events: usize,
    /// Most windows one report may span.
    pub max_report_windows: u64,
    /// `required` (default) or `ingest_open`; see [`AuthMode`].
    pub auth: AuthMode,
    /// Where `/metrics` is served: empty (default) on `listen`, or an address of its own
    /// (e.g. `127.0.0.1:9464`), which then serves only `/metrics`.
    pub metrics_listen: String,
    /// Origins allowed to call the API from a browser (CORS), e.g.
    /// `["https://dash.example.com"]` (or the string `"https://a.example,https://b.example"`,
    /// handy in `TALLY_API__CORS_ORIGINS`); `["*"]` allows any. Empty (default): no CORS
    /// headers.
    #[serde(deserialize_with = "list_or_csv")]
    pub cors_origins: Vec<String>,
    /// A request not answered within this many ms gets 503 (JSON). Default 30 000.
    pub request_timeout_ms: u64,
    /// GCRA rate of `POST /create_resource` and `POST /resources`, per key (or client IP),
    /// requests per second. Default 5.
    pub create_resource_per_second: u32,
    /// Burst of `create_resource_per_second`: requests allowed at once. Default 20.
    pub create_resource_burst: u32,
    /// GCRA rate of `GET /get_resource`, `GET /resources`, `GET /resources/{id}`, per key (or
    /// client IP), requests per second. Default 50.
    pub get_resource_per_second: u32,
    /// Burst of `get_resource_per_second`. Default 100.
    pub get_resource_burst: u32,
    /// GCRA rate of `POST /events` per key (or client IP), requests per second; 0 (default)
    /// leaves ingest unlimited.
    pub ingest_per_second: u32,
    /// Burst of `ingest_per_second`. Default 100.
    pub ingest_burst: u32,
    /// Write every request to PostgreSQL's `request_log` (default true).
    pub request_log: bool,
    /// Requests waiting for the request-log writer; past it, entries are dropped and counted
    /// (`tally_api_request_log_dropped_total`). Default 10 000.
    pub request_log_queue: usize,
    /// Months of `request_log` kept (monthly partitions older are dropped). Default 3.
    pub request_log_retention_months: u32,
}

/// A list, one string of comma-separated items (blank items dropped), or one string spelling a
/// list (`["a", "b"]`).
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(items) => items,
        // `["a", "b"]` given as one string (an environment variable's text): the list it spells.
        ListOrCsv::Csv(text) if text.trim_start().starts_with('[') => serde_json::from_str(&text)
            .map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a list of strings: {e}"))
        })?,
        ListOrCsv::Csv(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: 10 << 20,
            max_batch_events: 1_000,
            max_report_windows: 10_000,
            auth: AuthMode::Required,
            metrics_listen: String::new(),
            cors_origins: Vec::new(),
            request_timeout_ms: 30_000,
            create_resource_per_second: 5,
            create_resource_burst: 20,
            get_resource_per_second: 50,
            get_resource_burst: 100,
            ingest_per_second: 0,
            ingest_burst: 100,
            request_log: true,
            request_log_queue: 10_000,
            request_log_retention_months: 3,
        }
    }
}

impl ApiConfig {
    /// Checks the settings; an error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "api.listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.listen),
            ));
        }
        if !self.metrics_listen.is_empty()
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err((
                "api.metrics_listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:9464 (or empty: /metrics on api.listen)",
                    self.metrics_listen
                ),
            ));
        }
        if self.max_body_bytes == 0 || self.max_decompressed_bytes < self.max_body_bytes {
            return Err((
                "api.max_decompressed_bytes",
                "must be at least api.max_body_bytes (> 0)".to_owned(),
            ));
        }
        if self.max_batch_events == 0 {
            return Err(("api.max_batch_events", "must be at least 1".to_owned()));
        }
        if self.max_report_windows == 0 {
            return Err(("api.max_report_windows", "must be at least 1".to_owned()));
        }
        if self.request_timeout_ms == 0 {
            return Err(("api.request_timeout_ms", "must be at least 1".to_owned()));
        }
        for origin in &self.cors_origins {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err()
                || !(origin == "*"
                    || origin.starts_with("http://")
                    || origin.starts_with("https://"))
            {
                return Err((
                    "api.cors_origins",
                    format!("`{origin}` is not an origin like https://dash.example.com (or \"*\")"),
                ));
            }
        }
        let limits = [
            (
                "api.create_resource_per_second",
                self.create_resource_per_second,
            ),
            ("api.create_resource_burst", self.create_resource_burst),
            ("api.get_resource_per_second", self.get_resource_per_second),
            ("api.get_resource_burst", self.get_resource_burst),
            ("api.ingest_burst", self.ingest_burst),
        ];
        if let Some((field, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err((field, "must be at least 1".to_owned()));
        }
        if self.request_log_queue == 0 {
            return Err(("api.request_log_queue", "must be at least 1".to_owned()));
        }
        if self.request_log_retention_months == 0 {
            return Err((
                "api.request_log_retention_months",
                "must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}
