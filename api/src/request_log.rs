//! The request log: every request, written to PostgreSQL's `request_log` by a bounded
//! asynchronous batch writer that never blocks or fails a request; `GET /admin/requests`.
//!
//! The middleware hands each answered request to a bounded queue with `try_send`: a full queue
//! drops the entry (`tally_api_request_log_dropped_total{reason="queue_full"}`). A writer task
//! inserts batches of up to [`BATCH_ROWS`] rows or whatever arrived within [`BATCH_WAIT`], one
//! statement each; a failed insert drops its batch (`reason="postgres"`) with a warning at
//! most once a minute. Another task keeps the monthly partitions (at start, then hourly).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::HttpBody as _;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tally_sinks::postgres::request_log::{self as store, RequestRow};
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Admin, Authn};
use crate::metrics::Metrics;
use crate::openapi::ErrorBody;
use crate::{ApiConfig, ApiError, AppState};

/// Most rows in one insert.
pub const BATCH_ROWS: usize = 1000;
/// Longest a row waits for its batch to fill.
pub const BATCH_WAIT: Duration = Duration::from_secs(1);
/// How often the partitions are maintained.
pub const MAINTAIN_EVERY: Duration = Duration::from_secs(3600);
/// Longest `User-Agent` stored, characters.
pub const MAX_USER_AGENT: usize = 256;
/// Rows per `GET /admin/requests` page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 100;
/// Largest `GET /admin/requests` page.
pub const MAX_PAGE: i64 = 1000;

/// This writer's counts (the metrics add up every writer of the process).
#[derive(Debug, Default)]
pub struct Counts {
    /// Rows inserted.
    pub written: AtomicU64,
    /// Rows dropped because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Rows dropped because their batch failed to insert.
    pub dropped_postgres: AtomicU64,
}

/// The sending side of the writer. Cheap to clone.
#[derive(Clone, Default)]
pub struct RequestLog {
    queue: Option<mpsc::Sender<RequestRow>>,
    counts: Arc<Counts>,
}

impl RequestLog {
    /// Starts the writer and the partition maintenance on the current tokio runtime (nothing
    /// when `api.request_log` is off or no runtime is running). They stop once every clone of
    /// the returned log is dropped, after writing what is queued.
    pub fn start(pool: sqlx::PgPool, config: &ApiConfig) -> RequestLog {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: the request log is off");
            return RequestLog::disabled();
        };
        if !config.request_log {
            return RequestLog::disabled();
        }
        let (tx, rx) = mpsc::channel(config.request_log_queue.max(1));
        let counts = Arc::new(Counts::default());
        let maintenance =
            runtime.spawn(maintain(pool.clone(), config.request_log_retention_months));
        runtime.spawn(write(pool, rx, Arc::clone(&counts), maintenance));
        RequestLog {
            queue: Some(tx),
            counts,
        }
    }

    /// A log that records nothing (tests, `api.request_log = false`).
    pub fn disabled() -> RequestLog {
        RequestLog::default()
    }

    /// Whether requests are recorded.
    pub fn is_enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// This writer's counts.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Queues `row` without waiting; a full queue drops it (counted).
    fn send(&self, row: RequestRow) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(row).is_err() {
            self.counts
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            Metrics::get()
                .request_log_dropped
                .with_label_values(&["queue_full"])
                .inc();
        }
    }
}

/// The writer: batches rows and inserts them until the queue closes.
async fn write(
    pool: sqlx::PgPool,
    mut rx: mpsc::Receiver<RequestRow>,
    counts: Arc<Counts>,
    maintenance: tokio::task::JoinHandle<()>,
) {
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut last_warning: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH_ROWS {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(row)) => batch.push(row),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        match store::insert_batch(&pool, &batch).await {
            Ok(_) => {
                counts.written.fetch_add(n, Ordering::Relaxed);
                Metrics::get().request_log_written.inc_by(n);
            }
            Err(e) => {
                counts.dropped_postgres.fetch_add(n, Ordering::Relaxed);
                Metrics::get()
                    .request_log_dropped
                    .with_label_values(&["postgres"])
                    .inc_by(n);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(error = %e, rows = n, "request log batch dropped");
                }
            }
        }
        batch.clear();
    }
    maintenance.abort();
}

/// Keeps the partitions: now, then every [`MAINTAIN_EVERY`].
async fn maintain(pool: sqlx::PgPool, retention_months: u32) {
    let mut every = tokio::time::interval(MAINTAIN_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match store::maintain(&pool, Utc::now(), retention_months).await {
            Ok(done) if done.created.is_empty() && done.dropped.is_empty() => {}
            Ok(done) => tracing::info!(
                created = ?done.created,
                moved_rows = done.moved_rows,
                dropped = ?done.dropped,
                "request log partitions maintained"
            ),
            Err(e) => tracing::warn!(error = %e, "request log partition maintenance failed"),
        }
    }
}

/// The route template of a request (`/resources/{id}`, without a trailing slash), or
/// `unmatched`.
fn route_of(request: &Request) -> String {
    match request.extensions().get::<MatchedPath>() {
        Some(p) if p.as_str() != "/" => p.as_str().trim_end_matches('/').to_owned(),
        Some(p) => p.as_str().to_owned(),
        None => "unmatched".to_owned(),
    }
}

fn content_length(headers: &axum::http::HeaderMap) -> Option<i64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Middleware: records the request once it is answered (latency is until the response head).
pub(crate) async fn record(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !state.request_log.is_enabled() {
        return next.run(request).await;
    }
    let (at, start) = (Utc::now(), Instant::now());
    let method = request.method().as_str().to_owned();
    let route = route_of(&request);
    let key_id = match request.extensions().get::<Authn>() {
        Some(Authn::Key(caller)) => Some(caller.key_id),
        _ => None,
    };
    let request_bytes = content_length(request.headers())
        .or_else(|| {
            request
                .body()
                .size_hint()
                .exact()
                .and_then(|n| i64::try_from(n).ok())
        })
        .unwrap_or(0);
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string());
    let user_agent = request.headers().get(header::USER_AGENT).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(MAX_USER_AGENT)
            .collect()
    });
    let response = next.run(request).await;
    let response_bytes = response
        .body()
        .size_hint()
        .exact()
        .and_then(|n| i64::try_from(n).ok())
        .or_else(|| content_length(response.headers()))
        .unwrap_or(0);
    state.request_log.send(RequestRow {
        id: 0,
        at,
        method,
        route,
        status: i16::try_from(response.status().as_u16()).unwrap_or(i16::MAX),
        latency_ms: start.elapsed().as_secs_f64() * 1000.0,
        key_id,
        request_bytes,
        response_bytes,
        client_ip,
        user_agent,
    });
    response
}

/// One logged request as `GET /admin/requests` answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestEntry {
    /// When it arrived, RFC 3339 with microseconds.
    pub at: String,
    /// Increasing id (the paging cursor).
    pub id: i64,
    /// e.g. `GET`.
    pub method: String,
    /// The route template, e.g. `/resources/{id}`, or `unmatched`.
    pub route: String,
    /// The status answered.
    pub status: i16,
    /// Milliseconds until the response head.
    pub latency_ms: f64,
    /// The caller's key id (`null` without a key).
    pub key_id: Option<i64>,
    /// Request body bytes.
    pub request_bytes: i64,
    /// Response body bytes (0 when unknown).
    pub response_bytes: i64,
    /// The peer's IP address.
    pub client_ip: Option<String>,
    /// The `User-Agent` (at most 256 characters).
    pub user_agent: Option<String>,
}

/// A page of `GET /admin/requests`, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestPage {
    /// At most `limit` requests.
    pub requests: Vec<RequestEntry>,
    /// The `before` of the next page (the last entry's `id`); `null` on the last page.
    pub next: Option<String>,
}

fn rfc3339_micros(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `GET /admin/requests[?limit=N&before=T]`: the request log, newest first.
#[utoipa::path(get, path = "/admin/requests", tag = "admin",
    params(
        ("limit" = Option<i64>, Query, description = "Requests per page, 1..=1000, default 100"),
        ("before" = Option<String>, Query, description = "Only requests logged before this one: the previous page's `next`")),
    responses(
        (status = 200, description = "A page of the request log", body = RequestPage),
        (status = 400, description = "`limit` or `before` invalid, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "The key is not an admin's", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_requests(
    _caller: Admin,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<RequestPage>, ApiError> {
    crate::paging::only(&params, &["limit", "before"])?;
    let limit = crate::paging::limit(&params, DEFAULT_PAGE, MAX_PAGE)?;
    let before = crate::paging::before_id(&params)?;
    let rows = store::page(&state.postgres, before, limit)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading the request log failed");
            ApiError::Unavailable("the platform database is unavailable; retry later".into())
        })?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let requests = rows
        .into_iter()
        .map(|r| RequestEntry {
            id: r.id,
            at: rfc3339_micros(r.at),
            method: r.method,
            route: r.route,
            status: r.status,
            latency_ms: r.latency_ms,
            key_id: r.key_id,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            client_ip: r.client_ip,
            user_agent: r.user_agent,
        })
        .collect();
    Ok(Json(RequestPage { requests, next }))
}

/// `GET /admin/requests`.
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_requests))
}
