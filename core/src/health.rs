//! The pipeline's state, as `/healthz` and `/readyz` report it: written by the pipeline,
//! read by the API of the same process (`tally all`).

use std::sync::{Arc, Mutex};

use serde::Serialize;

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

impl PipelineState {
    /// The name as serialized (`running`).
    pub fn name(self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Running => "running",
            PipelineState::Draining => "draining",
            PipelineState::Stopped => "stopped",
            PipelineState::Failed => "failed",
        }
    }
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

    /// Enters `failed` with `error` (its text is what `/healthz` shows).
    pub fn fail(&self, error: &dyn std::fmt::Display) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_is_final_and_names_serialize() {
        let h = Health::default();
        assert_eq!(h.snapshot().state, PipelineState::Starting);
        h.set(PipelineState::Running);
        assert!(h.is_ready());
        h.fail(&"disk on fire");
        h.set(PipelineState::Running);
        let s = h.snapshot();
        assert_eq!(s.state, PipelineState::Failed);
        assert_eq!(s.error.as_deref(), Some("disk on fire"));
        for state in [
            PipelineState::Starting,
            PipelineState::Running,
            PipelineState::Draining,
            PipelineState::Stopped,
            PipelineState::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::Value::from(state.name()))
            );
        }
    }
}
