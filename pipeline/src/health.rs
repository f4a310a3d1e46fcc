//! The pipeline's state, as `/healthz` and `/readyz` report it (defined in `tally_core`, which the
//! API shares), and the slot where the first fatal error of any worker is kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use tally_core::{Health, HealthSnapshot, PipelineState};

use crate::PipelineError;

/// The first fatal error raised by any worker or sink task. Raising it also stops every worker
/// (they drain and exit); the error is returned from [`crate::run`].
#[derive(Debug, Default)]
pub(crate) struct Failure {
    raised: AtomicBool,
    first: Mutex<Option<PipelineError>>,
}

impl Failure {
    /// Records `error` unless one was raised before; logs it either way.
    pub(crate) fn raise(&self, error: PipelineError) {
        tracing::error!(error = %error, "fatal: stopping the pipeline");
        if let Ok(mut first) = self.first.lock() {
            first.get_or_insert(error);
        }
        self.raised.store(true, Ordering::SeqCst);
    }

    /// Whether a fatal error was raised.
    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }

    /// The first error, once.
    pub(crate) fn take(&self) -> Option<PipelineError> {
        self.first.lock().ok().and_then(|mut f| f.take())
    }
}
