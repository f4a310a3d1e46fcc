//! Helpers for Tally's end-to-end tests, which run against the real local stack
//! (`deploy/local/stack.sh up`). They are skipped, with a message, unless `TALLY_E2E=1`.

use std::time::{Duration, Instant};

pub mod harness;

/// Whether the service tests should run; prints why they are skipped otherwise.
pub fn enabled(test: &str) -> bool {
    if std::env::var("TALLY_E2E").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "skipping {test}: set TALLY_E2E=1 with the local stack up (deploy/local/test.sh does both)"
    );
    false
}

/// An environment variable or a default.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Polls `check` until it returns `Ok`, or fails with its last error after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: not true after {timeout:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
