//! Rate limits (GCRA, `governor`) per key or client IP: saved resources' creates and gets,
//! and optionally `POST /events`.
//!
//! SKELETON (issue 8): filled in by the rate-limit work.

use crate::ApiConfig;

/// One limiter per limited route class.
pub struct Limiters {}

impl Limiters {
    /// The limiters `config` asks for.
    pub fn new(_config: &ApiConfig) -> Limiters {
        Limiters {}
    }
}
