//! Tally's HTTP API: event ingest, reports, health and metrics.
//!
//! [`router`] builds the whole application without touching a socket, so tests can call it
//! directly; [`serve`] runs it on a listener the caller bound.

mod config;
mod error;
mod ingest;
pub mod queries;
pub mod reports;
mod state;

use std::future::Future;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use config::ApiConfig;
pub use error::ApiError;
pub use state::AppState;

/// The application: every route, no I/O until a request arrives.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    Router::new()
        .route("/events", post(ingest::post_events))
        .route("/events/", post(ingest::post_events))
        .route("/reports", get(reports::get_report))
        .route("/reports/", get(reports::get_report))
        .route("/reports/summary", get(reports::get_summary))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics() -> Response {
    let families = prometheus::default_registry().gather();
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([("content-type", "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => ApiError::Internal(format!("encoding metrics: {e}")).into_response(),
    }
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || "unmatched".to_owned(),
        |p| p.as_str().trim_end_matches('/').to_owned(),
    );
    let response = next.run(request).await;
    tally_pipeline::metrics::Metrics::get()
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}
