//! Tally's HTTP API: event ingest, reports, topologies, health and metrics.
//!
//! [`router`] builds the whole application without touching a socket, so tests can call it
//! directly; [`serve`] runs it on a listener the caller bound. It depends on `tally_core` (the
//! event contract, topologies) and `tally_sinks` (stores and their read queries) only.

mod config;
mod error;
pub mod ingest;
mod kafka;
pub mod metrics;
pub mod queries;
pub mod reports;
mod state;
pub mod topologies;

use std::future::Future;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use config::ApiConfig;
pub use error::ApiError;
pub use kafka::{KafkaTarget, ProduceFailure};
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
        .route("/reports/summary/", get(reports::get_summary))
        .route("/topologies", get(topologies::get_topologies))
        .route("/topologies/", get(topologies::get_topologies))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus_text))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {method} {}", uri.path()))
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

/// Liveness: 200 while the process serves, with the pipeline's state (when this process runs
/// one): `{"status": "ok", "pipeline": {"state": "running", "since_ms": ..}}`.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let pipeline = state.pipeline.as_ref().map(tally_core::Health::snapshot);
    axum::Json(serde_json::json!({ "status": "ok", "pipeline": pipeline }))
}

/// Readiness: 200 when this process can do its work, 503 (JSON, with the pipeline's state)
/// while its pipeline is starting, draining, stopped or failed. An API without a pipeline
/// (`tally serve`) is ready while it serves.
async fn readyz(State(state): State<AppState>) -> Response {
    let Some(health) = &state.pipeline else {
        return axum::Json(serde_json::json!({ "status": "ready" })).into_response();
    };
    let snapshot = health.snapshot();
    if health.is_ready() {
        axum::Json(serde_json::json!({ "status": "ready", "pipeline": snapshot })).into_response()
    } else {
        let body = serde_json::json!({
            "error": format!("pipeline is {}", snapshot.state.name()),
            "pipeline": snapshot,
        });
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(body),
        )
            .into_response()
    }
}

/// A router serving only `GET /metrics` (Prometheus text of the default registry), for
/// processes without the API (`tally worker --metrics-listen`).
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(prometheus_text))
}

async fn prometheus_text() -> Response {
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
    metrics::Metrics::get()
        .http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}
