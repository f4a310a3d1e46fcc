//! PostgreSQL: the platform's own records (applied migrations, pipeline progress, the late-event
//! ledger, job runs and rebuilds; the job queue is graphile_worker's schema).

pub mod audit;
mod config;
pub mod jobs;
pub mod keys;
pub mod lease;
pub mod ledger;
mod progress;
pub mod request_log;
pub mod resources;
mod schema;

pub use config::PostgresConfig;
pub use lease::{acquire as acquire_lease, Lease};
pub use progress::{acked_frontier, load_progress, save_progress, PartitionProgress, Progress};
pub use schema::{migrate, pending_migrations};

/// Opens a connection pool.
pub async fn connect(config: &PostgresConfig) -> Result<sqlx::PgPool, crate::SinkError> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(&config.url)
        .await
        .map_err(|e| {
            crate::SinkError::postgres(format!("connecting to {}", redact(&config.url)), e)
        })
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
