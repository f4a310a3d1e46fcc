//! The pipeline's state, as `/healthz` and `/readyz` report it, and the slot where the first
//! fatal error of any worker is kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::PipelineError;

/// Where the pipeline is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineState {
    /// Checking services and opening the source.
    Starting,
    /// Reading Kafka and writing ClickHouse.
    Running,
    /// Shutting down: no more reads; writing what is buffered and saving progress.
    Draining,
    /// Stopped after a clean drain.
    Stopped,
    /// Stopped by a fatal error (see `error`); the process exits non-zero.
    Failed,
}

/// A snapshot of [`Health`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthSnapshot {
    /// The state.
    pub state: PipelineState,
    /// When it was entered, milliseconds since the Unix epoch.
    pub since_ms: i64,
    /// The fatal error, when `state` is `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The pipeline's state, shared with the API of the same process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Health(Arc<Mutex<HealthSnapshot>>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(Mutex::new(HealthSnapshot {
            state: PipelineState::Starting,
            since_ms: chrono::Utc::now().timestamp_millis(),
            error: None,
        })))
    }
}

impl Health {
    /// Enters `state` (a `failed` state is kept: nothing overrides it).
    pub fn set(&self, state: PipelineState) {
        if let Ok(mut h) = self.0.lock() {
            if h.state != PipelineState::Failed && h.state != state {
                h.state = state;
                h.since_ms = chrono::Utc::now().timestamp_millis();
            }
        }
    }

    /// Enters `failed` with `error`.
    pub fn fail(&self, error: &PipelineError) {
        if let Ok(mut h) = self.0.lock() {
            if h.state != PipelineState::Failed {
                h.state = PipelineState::Failed;
                h.since_ms = chrono::Utc::now().timestamp_millis();
                h.error = Some(error.to_string());
            }
        }
    }

    /// The current state.
    pub fn snapshot(&self) -> HealthSnapshot {
        match self.0.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether the pipeline is running (what `/readyz` answers 200 for).
    pub fn is_ready(&self) -> bool {
        self.snapshot().state == PipelineState::Running
    }
}

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
