//! The request log: every request, written to PostgreSQL's `request_log` by a bounded
//! asynchronous batch writer that never blocks or fails a request; `GET /admin/requests`.
//!
//! SKELETON (issue 8): filled in by the request-log work.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;

use crate::{ApiConfig, AppState};

/// The sending side of the writer. Cheap to clone.
#[derive(Clone, Default)]
pub struct RequestLog {}

impl RequestLog {
    /// Starts the writer on the current tokio runtime (nothing when `api.request_log` is off).
    pub fn start(_pool: sqlx::PgPool, _config: &ApiConfig) -> RequestLog {
        RequestLog {}
    }

    /// A log that records nothing (tests, `api.request_log = false`).
    pub fn disabled() -> RequestLog {
        RequestLog {}
    }
}

/// Middleware: records the request once it is answered.
pub(crate) async fn record(
    State(_state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    next.run(request).await
}

/// `GET /admin/requests`.
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
