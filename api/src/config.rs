//! `[api]` settings.

use serde::Deserialize;

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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 1 << 20,
            max_decompressed_bytes: 10 << 20,
            max_batch_events: 1_000,
            max_report_windows: 10_000,
        }
    }
}

impl ApiConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "api.listen",
                format!("`{}` is not an address like 127.0.0.1:8080", self.listen),
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
        Ok(())
    }
}
