//! `GET /dashboard` (the web app) and `GET /dashboard/data` (everything the overview draws).
//!
//! SKELETON (issue 8): filled in by the dashboard-data work.

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// `GET /dashboard/data` (documented); the static app is served by [`assets`].
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}

/// `GET /dashboard` and its static files (public, outside the OpenAPI description).
pub(crate) fn assets() -> axum::Router<AppState> {
    axum::Router::new()
}
