//! `GET /users` (admin): the tracked users with first/last seen, events, sessions and top
//! event type.
//!
//! SKELETON (issue 8): filled in by the users work.

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// `GET /users`.
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
