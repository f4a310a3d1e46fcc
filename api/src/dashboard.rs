//! `GET /dashboard` (the web app) and `GET /dashboard/data` (everything the overview draws).
//!
//! Until the dashboard issue ships the app, `/dashboard` serves a minimal page embedded in the
//! binary. `/dashboard/data` answers in one call: exact totals over raw events for the range
//! and the period of equal length before it, the series of the `product_analytics` topology
//! (what `/reports` answers), the top event types, `complete_until` and the pipeline's lag.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tally_sinks::clickhouse::users::{top_event_types, EventTypeRow};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::reports::{clickhouse_unavailable, ms, run_report, Summary, DEFAULT_TOPOLOGY};
use crate::{ApiError, AppState};

/// The range when `from`/`to` are not given: the last 24 hours.
pub const DEFAULT_RANGE_MS: u64 = 86_400_000;
/// The default window is the smallest of the topology's windows giving at most this many
/// points over the range.
pub const TARGET_POINTS: u64 = 360;
/// Event types in `top_event_types`.
pub const TOP_EVENT_TYPES: u64 = 10;

/// A total now and in the previous period.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Total {
    /// Over `[from, to)`.
    pub value: u64,
    /// Over the previous period `[from - (to - from), from)`.
    pub previous: u64,
    /// `(value - previous) / previous`; `null` when `previous` is 0.
    pub change: Option<f64>,
}

/// Exact totals over raw events (each event id once).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Totals {
    /// Events.
    pub events: Total,
    /// Distinct users.
    pub unique_users: Total,
    /// Distinct non-empty client `session_id`s.
    pub unique_sessions: Total,
}

/// One window of the series.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeriesPoint {
    /// Window start, RFC 3339 (UTC).
    pub window_start: String,
    /// Events in the window.
    pub events: serde_json::Value,
    /// Distinct users in the window.
    pub unique_users: serde_json::Value,
    /// Distinct client sessions in the window.
    pub unique_sessions: serde_json::Value,
}

/// One of the top event types of the range.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EventTypeShare {
    /// The event type.
    pub event_type: String,
    /// Its events in the range.
    pub events: u64,
    /// Distinct users who sent it in the range.
    pub unique_users: u64,
}

/// The `/dashboard/data` answer.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DashboardData {
    /// Range start, RFC 3339 (inclusive).
    pub from: String,
    /// Range end, RFC 3339 (exclusive).
    pub to: String,
    /// Start of the previous period (its end is `from`), RFC 3339.
    pub previous_from: String,
    /// The window of the series (a window of `product_analytics`, e.g. `1h`).
    pub window: String,
    /// Exact totals with the previous period.
    pub totals: Totals,
    /// One point per window of the range (rollups: provisional after `complete_until`).
    pub series: Vec<SeriesPoint>,
    /// The event types with the most events in the range (most first, ties by name).
    pub top_event_types: Vec<EventTypeShare>,
    /// Windows starting before this are final (RFC 3339); `null` before the pipeline saved
    /// progress.
    pub complete_until: Option<String>,
    /// Seconds between now and the pipeline's acknowledged event-time frontier; `null` before
    /// the pipeline saved progress.
    pub lag_s: Option<f64>,
}

/// The validated parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct DashboardQuery {
    /// Range start, ms since the epoch.
    pub from_ms: u64,
    /// Range end (exclusive), ms since the epoch.
    pub to_ms: u64,
    /// The window name.
    pub window: String,
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest(reason.into())
}

/// Validates `/dashboard/data` parameters against `product_analytics` in `state`.
pub fn parse_dashboard_query(
    params: &HashMap<String, String>,
    state: &AppState,
    now_ms: u64,
) -> Result<DashboardQuery, ApiError> {
    const KNOWN: [&str; 3] = ["from", "to", "window"];
    if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        let shown: String = k.chars().take(64).collect();
        return Err(bad(format!(
            "unknown parameter `{shown}` (expected from, to, window)"
        )));
    }
    let time = |name: &str| -> Result<Option<u64>, ApiError> {
        if params.contains_key(name) {
            crate::reports::time_param(params, name).map(|t| Some(ms(t)))
        } else {
            Ok(None)
        }
    };
    let (from, to) = (time("from")?, time("to")?);
    let to_ms = to.unwrap_or(now_ms);
    let from_ms = from.unwrap_or(to_ms.saturating_sub(DEFAULT_RANGE_MS));
    if from_ms >= to_ms {
        return Err(bad("`from` must be before `to` (the range is [from, to))"));
    }
    let topology = state
        .topologies
        .iter()
        .find(|t| t.name == DEFAULT_TOPOLOGY)
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "the dashboard reads topology {DEFAULT_TOPOLOGY}, which this deployment does \
                 not run"
            ))
        })?;
    let window = match params.get("window") {
        Some(w) => topology.window(w).map(|w| w.name.clone()).ok_or_else(|| {
            let names: Vec<&str> = topology.windows.iter().map(|w| w.name.as_str()).collect();
            let shown: String = w.chars().take(32).collect();
            bad(format!(
                "unknown window `{shown}`: use {}",
                names.join(", ")
            ))
        })?,
        None => {
            let mut windows: Vec<_> = topology.windows.iter().collect();
            windows.sort_by_key(|w| (w.slide_ms, w.size_ms));
            let span = to_ms - from_ms;
            let fits = windows
                .iter()
                .find(|w| span.div_ceil(w.slide_ms.max(1)) <= TARGET_POINTS)
                .or(windows.last());
            fits.map(|w| w.name.clone())
                .ok_or_else(|| bad(format!("topology {DEFAULT_TOPOLOGY} has no windows")))?
        }
    };
    let q = DashboardQuery {
        from_ms,
        to_ms,
        window,
    };
    // The series' checks (e.g. the number of windows) before anything is read.
    crate::reports::parse_report_query(
        &report_params(&q, "events"),
        &state.topologies,
        state.config.max_report_windows,
    )?;
    Ok(q)
}

/// The `/reports` parameters of one metric of the series.
fn report_params(q: &DashboardQuery, metric: &str) -> HashMap<String, String> {
    HashMap::from([
        ("topology".to_owned(), DEFAULT_TOPOLOGY.to_owned()),
        ("metric".to_owned(), metric.to_owned()),
        ("window".to_owned(), q.window.clone()),
        ("from".to_owned(), rfc3339_ms(q.from_ms)),
        ("to".to_owned(), rfc3339_ms(q.to_ms)),
    ])
}

fn rfc3339_ms(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `(value - previous) / previous`, `None` when `previous` is 0.
pub fn change(value: u64, previous: u64) -> Option<f64> {
    (previous > 0).then(|| (value as f64 - previous as f64) / previous as f64)
}

async fn summary(state: &AppState, from_ms: u64, to_ms: u64) -> Result<Summary, ApiError> {
    crate::queries::summary(&state.clickhouse, from_ms, to_ms, None)
        .fetch_one()
        .await
        .map_err(|e| clickhouse_unavailable(tally_sinks::SinkError::clickhouse("summary", e)))
}

/// The series: one `/reports` per metric over the same windows, zipped by window start.
async fn series(
    state: &AppState,
    q: &DashboardQuery,
) -> Result<(Vec<SeriesPoint>, Option<String>), ApiError> {
    let mut columns = Vec::new();
    let mut complete_until = None;
    for metric in ["events", "unique_users", "unique_sessions"] {
        let report = run_report(state, &report_params(q, metric)).await?;
        complete_until = complete_until.or(report.complete_until);
        columns.push(report.points.unwrap_or_default());
    }
    let [events, users, sessions] = <[_; 3]>::try_from(columns)
        .map_err(|_| ApiError::Internal("dashboard series: three reports expected".into()))?;
    let points = events
        .into_iter()
        .zip(users)
        .zip(sessions)
        .map(|((e, u), s)| SeriesPoint {
            window_start: e.window_start,
            events: e.value,
            unique_users: u.value,
            unique_sessions: s.value,
        })
        .collect();
    Ok((points, complete_until))
}

/// `GET /dashboard/data`.
#[utoipa::path(get, path = "/dashboard/data", tag = "dashboard",
    params(
        ("from" = Option<String>, Query, description = "Start, RFC 3339 (inclusive; default: `to` minus 24 h)"),
        ("to" = Option<String>, Query, description = "End, RFC 3339 (exclusive; default: now)"),
        ("window" = Option<String>, Query, description = "A window of product_analytics (1m, 1h, 1d); default: the smallest giving at most 360 points")),
    responses(
        (status = 200, description = "Totals with the previous period, series, top event types, complete_until and lag", body = DashboardData),
        (status = 400, description = "A parameter is unknown or invalid, or the range has too many windows", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key's role may not read", body = crate::openapi::ErrorBody),
        (status = 503, description = "ClickHouse unavailable or the query hit its limits; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_dashboard_data(
    _caller: crate::auth::Read,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<DashboardData>, ApiError> {
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    let q = parse_dashboard_query(&params, &state, now_ms)?;
    let previous_from = q.from_ms.saturating_sub(q.to_ms - q.from_ms);
    let current = summary(&state, q.from_ms, q.to_ms).await?;
    let previous = summary(&state, previous_from, q.from_ms).await?;
    let (series, complete_until) = series(&state, &q).await?;
    let top: Vec<EventTypeRow> =
        top_event_types(&state.clickhouse, q.from_ms, q.to_ms, TOP_EVENT_TYPES)
            .fetch_all()
            .await
            .map_err(|e| {
                clickhouse_unavailable(tally_sinks::SinkError::clickhouse("top event types", e))
            })?;
    let frontier = tally_sinks::postgres::acked_frontier(&state.postgres, &state.pipeline_name)
        .await
        .map_err(|e| tracing::warn!(error = %e, "reading the pipeline frontier failed"))
        .ok()
        .flatten();
    let total = |v: u64, p: u64| Total {
        value: v,
        previous: p,
        change: change(v, p),
    };
    Ok(Json(DashboardData {
        from: rfc3339_ms(q.from_ms),
        to: rfc3339_ms(q.to_ms),
        previous_from: rfc3339_ms(previous_from),
        window: q.window,
        totals: Totals {
            events: total(current.events, previous.events),
            unique_users: total(current.unique_users, previous.unique_users),
            unique_sessions: total(current.unique_sessions, previous.unique_sessions),
        },
        series,
        top_event_types: top
            .into_iter()
            .map(|t| EventTypeShare {
                event_type: t.event_type,
                events: t.events,
                unique_users: t.unique_users,
            })
            .collect(),
        complete_until,
        lag_s: frontier.map(|f| (now_ms as f64 - f as f64).max(0.0) / 1000.0),
    }))
}

/// `GET /dashboard/data` (documented); the static app is served by [`assets`].
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_dashboard_data))
}

/// The page `/dashboard` serves until the dashboard app is built.
pub const PLACEHOLDER_HTML: &str = include_str!("dashboard.html");

async fn placeholder() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PLACEHOLDER_HTML,
    )
}

/// `GET /dashboard` and its static files (public, outside the OpenAPI description).
pub(crate) fn assets() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/dashboard", get(placeholder))
        .route("/dashboard/", get(placeholder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_is_relative_and_null_without_a_base() {
        assert_eq!(change(150, 100), Some(0.5));
        assert_eq!(change(50, 100), Some(-0.5));
        assert_eq!(change(5, 0), None);
    }
}
