//! Saved resources (reports and dashboards) in PostgreSQL: `POST /create_resource`,
//! `GET /get_resource`, and the RESTful `POST /resources`, `GET /resources`,
//! `GET /resources/{id}`.
//!
//! SKELETON (issue 8): filled in by the resources work.

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// The resource routes, rate-limited per key.
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
