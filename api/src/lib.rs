//! Tally's HTTP API: event ingest, reports, topologies, health and metrics.
//!
//! [`router`] builds the whole application without touching a socket, so tests can call it
//! directly; [`serve`] runs it on a listener the caller bound. It depends on `tally_core` (the
//! event contract, topologies) and `tally_sinks` (stores and their read queries) only.

pub mod auth;
mod config;
pub mod csv;
pub mod dashboard;
mod error;
pub mod ingest;
mod kafka;
pub mod limits;
pub mod metrics;
pub mod openapi;
mod paging;
pub mod queries;
pub mod reports;
pub mod request_log;
pub mod resources;
mod state;
pub mod topologies;
pub mod users;

use std::future::Future;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::{ApiConfig, AuthMode};
pub use error::ApiError;
pub use kafka::{KafkaTarget, ProduceFailure};
pub use state::AppState;

/// The documented routes (each handler's `#[utoipa::path]`), with their OpenAPI description.
pub fn api_routes(state: &AppState) -> OpenApiRouter<AppState> {
    // `api.ingest_per_second` (off by default) limits both spellings of POST /events.
    let ingest = OpenApiRouter::new()
        .routes(routes!(ingest::post_events))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_ingest,
        ));
    let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(ingest)
        .routes(routes!(reports::get_report))
        .routes(routes!(reports::get_summary))
        .routes(routes!(topologies::get_topologies))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .merge(users::routes(state))
        .merge(resources::routes(state))
        .merge(dashboard::routes(state))
        .merge(auth::routes(state))
        .merge(request_log::routes(state));
    if state.config.metrics_listen.is_empty() {
        api = api.routes(routes!(prometheus_text));
    }
    api
}

/// The OpenAPI 3.1 description of every documented route, as `GET /openapi.json` serves it.
pub fn openapi_spec(state: &AppState) -> utoipa::openapi::OpenApi {
    api_routes(state).split_for_parts().1
}

/// The application: every route, no I/O until a request arrives.
pub fn router(state: AppState) -> Router {
    let config = std::sync::Arc::clone(&state.config);
    let (api, spec) = api_routes(&state).split_for_parts();
    // Other spellings of documented routes (a trailing slash), same handlers.
    let aliases = Router::new()
        .route(
            "/events/",
            post(ingest::post_events).route_layer(middleware::from_fn_with_state(
                state.clone(),
                limits::limit_ingest,
            )),
        )
        .route("/reports/", get(reports::get_report))
        .route("/reports/summary/", get(reports::get_summary))
        .route("/topologies/", get(topologies::get_topologies));
    Router::new()
        .merge(api)
        .merge(aliases)
        .merge(openapi::routes(spec))
        .merge(dashboard::assets())
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(config.max_body_bytes))
        .layer(cors(&config))
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(config.request_timeout_ms),
            time_limit,
        ))
        .layer(middleware::from_fn(single_valued_query))
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_log::record,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn(close_after_unread_bodies))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Adds `Connection: close` to a refusal (401, 403, 413, 415, 429) of a request that carries a
/// body: the body was not read, so the server will not reuse the connection, and a client that
/// does not know it would send its next request into a closed socket.
async fn close_after_unread_bodies(request: Request, next: Next) -> Response {
    use axum::http::{header, StatusCode};
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    let mut response = next.run(request).await;
    let refused = matches!(
        response.status(),
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::TOO_MANY_REQUESTS
    );
    if has_body && refused {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Answers 503 (JSON, naming the setting) when the request is not answered within
/// `api.request_timeout_ms`.
async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request was not answered within {} ms (api.request_timeout_ms); retry later",
            limit.as_millis()
        ))
        .into_response(),
    }
}

/// Refuses a query string that repeats a parameter (400 naming it): every Tally parameter
/// takes one value, and silently using one of several would answer another question than
/// the one asked.
async fn single_valued_query(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query() {
        let mut seen = std::collections::HashSet::new();
        for (name, _) in form_urlencoded::parse(query.as_bytes()) {
            if !seen.insert(name.clone()) {
                return ApiError::BadRequest(format!(
                    "parameter `{name}` is given more than once; give it once"
                ))
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// CORS for `api.cors_origins` (none: no CORS headers, browsers keep other origins out).
fn cors(config: &ApiConfig) -> CorsLayer {
    let origins = &config.cors_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    if origins.is_empty() {
        return CorsLayer::new();
    }
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::header::CONTENT_ENCODING,
            axum::http::HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderName::from_static("ratelimit-limit"),
            axum::http::HeaderName::from_static("ratelimit-remaining"),
            axum::http::HeaderName::from_static("ratelimit-reset"),
            axum::http::HeaderName::from_static("x-next-cursor"),
        ])
        .max_age(Duration::from_secs(600))
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {method} {}", uri.path()))
}

/// How long [`serve`] lets a connection keep the server waiting for its next bytes (request
/// headers, a body, the next request of a kept-alive connection) before closing it: a client
/// that opens connections and sends a request slowly, or never finishes it (slowloris), holds
/// them for at most this long. Longer than `api.request_timeout_ms`'s default (30 s), so a
/// slow answer is never cut by it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `shutdown` resolves, then finishes in-flight requests;
/// connections idle for [`READ_TIMEOUT`] are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_read_timeout(listener, router, shutdown, READ_TIMEOUT).await
}

/// As [`serve`], closing a connection whose client sends nothing for `read_timeout`.
pub async fn serve_with_read_timeout(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    read_timeout: Duration,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = ReadTimeoutListener {
        inner: listener,
        read_timeout,
    }
    // `tap_io` gives the listener axum's `ConnectInfo<SocketAddr>` support.
    .tap_io(|_| ());
    // The peer address reaches handlers and layers as `ConnectInfo<SocketAddr>` (rate limits
    // and the request log key anonymous clients by it).
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A TCP listener whose connections fail a read that waits longer than `read_timeout`
/// (`tokio-io-timeout`), which makes hyper close them.
struct ReadTimeoutListener {
    inner: tokio::net::TcpListener,
    read_timeout: Duration,
}

impl axum::serve::Listener for ReadTimeoutListener {
    type Io = std::pin::Pin<Box<tokio_io_timeout::TimeoutStream<tokio::net::TcpStream>>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_read_timeout(Some(self.read_timeout));
        (Box::pin(stream), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process serves", body = serde_json::Value)))]
/// Liveness: 200 while the process serves, with the pipeline's state (when this process runs
/// one): `{"status": "ok", "pipeline": {"state": "running", "since_ms": ..}}`.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let pipeline = state.pipeline.as_ref().map(tally_core::Health::snapshot);
    axum::Json(serde_json::json!({ "status": "ok", "pipeline": pipeline }))
}

#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready", body = serde_json::Value),
        (status = 503, description = "The pipeline is starting, draining or stopped", body = openapi::ErrorBody)))]
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

/// `GET /metrics`: Prometheus text exposition of the process's metrics (public; with
/// `api.metrics_listen` set it moves to a listener of its own).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
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
