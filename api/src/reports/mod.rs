//! `GET /reports` (a topology's rollup series, all events, one event type, or grouped by a
//! dimension) and `GET /reports/summary` (exact totals over raw events).

mod assemble;
mod params;

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tally_core::WindowSpec;

pub use assemble::{rank_component, value, Point, Series};
pub(crate) use params::{ms, time_param};
pub use params::{
    parse_report_query, ReportQuery, DEFAULT_LIMIT, DEFAULT_TOPOLOGY, GROUPED_POINTS_FACTOR,
    MAX_LIMIT, MAX_TIME_MS,
};

use crate::{ApiError, AppState};

/// The `/reports` answer, fields in the documented order: the query as understood, then
/// `points` (ungrouped) or `series` (with `group_by`), never both.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReportResponse {
    pub topology: String,
    pub metric: String,
    pub unit: &'static str,
    pub window: String,
    pub window_size_s: u64,
    pub slide_s: u64,
    pub from: String,
    pub to: String,
    pub event_type: Option<String>,
    pub group_by: Option<String>,
    pub limit: Option<usize>,
    pub complete_until: Option<String>,
    /// Windows of this kind in the range that received late events and wait for their
    /// correction (`null` when PostgreSQL could not be asked).
    pub pending_corrections: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<Point>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<Series>>,
}

/// RFC 3339 (UTC, whole seconds) of a time in ms since the epoch.
pub(crate) fn rfc3339(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A failed ClickHouse query: 503 for the client (the server's text is only logged). A missing
/// table or database is logged as an error naming the fix, since retrying cannot help.
pub(crate) fn clickhouse_unavailable(e: tally_sinks::SinkError) -> ApiError {
    if e.is_missing_schema() {
        tracing::error!(error = %e, "clickhouse schema missing: run `tally migrate`");
    } else {
        tracing::warn!(error = %e, "clickhouse query failed");
    }
    ApiError::Unavailable("the analytics store is unavailable; retry later".into())
}

/// `GET /reports`.
#[utoipa::path(get, path = "/reports", tag = "reports",
    params(
        ("metric" = String, Query, description = "A metric of the topology (see GET /topologies), e.g. events, unique_users, sessions"),
        ("window" = Option<String>, Query, description = "A window of the topology, e.g. 1m, 1h, 1d, 1h_15m (default: its first)"),
        ("topology" = Option<String>, Query, description = "Default product_analytics"),
        ("from" = Option<String>, Query, description = "Start, RFC 3339 or ms since the epoch (inclusive)"),
        ("to" = Option<String>, Query, description = "End, RFC 3339 or ms since the epoch (exclusive)"),
        ("event_type" = Option<String>, Query, description = "Only this event type (topologies with an event_type dimension)"),
        ("group_by" = Option<String>, Query, description = "A dimension: one series per value, top `limit` by total plus __other__"),
        ("limit" = Option<usize>, Query, description = "Groups with group_by, 1..=100, default 10"),
        ("format" = Option<String>, Query, description = "json (default) or csv (a header row, one row per point)")),
    responses(
        (status = 200, description = "The series (`points`) or grouped series (`series`); with format=csv a table with a header row (`window_start,value`, grouped `group,window_start,value`)",
            content((ReportResponse = "application/json"), (String = "text/csv"))),
        (status = 400, description = "A parameter is missing, unknown or invalid; the reason lists what exists", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key's role may not read", body = crate::openapi::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_report(
    _caller: crate::auth::Read,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let format = crate::csv::format_param(&params)?;
    let report = run_report(&state, &params).await?;
    match format {
        crate::csv::Format::Json => Ok(Json(report).into_response()),
        crate::csv::Format::Csv => Ok(crate::csv::response(report_csv(&report)?)),
    }
}

/// A report as CSV: `window_start,value` per point, or `group,window_start,value` per group and
/// point of a grouped report (times RFC 3339, an empty value where JSON has `null`).
pub fn report_csv(report: &ReportResponse) -> Result<Vec<u8>, ApiError> {
    use crate::csv::{body, Cell};
    let value = |v: &serde_json::Value| {
        Cell::Plain(if v.is_null() {
            String::new()
        } else {
            v.to_string()
        })
    };
    if let Some(series) = &report.series {
        let rows = series.iter().flat_map(|s| {
            s.points.iter().map(|p| {
                vec![
                    Cell::Text(s.group.clone()),
                    Cell::Plain(p.window_start.clone()),
                    value(&p.value),
                ]
            })
        });
        return body(&["group", "window_start", "value"], rows);
    }
    let points = report.points.iter().flatten();
    let rows = points.map(|p| vec![Cell::Plain(p.window_start.clone()), value(&p.value)]);
    body(&["window_start", "value"], rows)
}

/// Validates `params` as `/reports` does and answers them: what `GET /reports` returns, for
/// other handlers (saved resources, dashboard data). Errors: `BadRequest` (the reason lists
/// what exists), `Unavailable` (ClickHouse).
pub async fn run_report(
    state: &AppState,
    params: &HashMap<String, String>,
) -> Result<ReportResponse, ApiError> {
    let q = parse_report_query(params, &state.topologies, state.config.max_report_windows)?;
    let (points, series) = if q.group_by.is_some() {
        let (top, rows) = crate::queries::grouped(&state.clickhouse, &q)
            .await
            .map_err(clickhouse_unavailable)?;
        (None, Some(assemble::grouped(&q, &top, &rows)))
    } else {
        let rows = crate::queries::series(&state.clickhouse, &q)
            .await
            .map_err(clickhouse_unavailable)?;
        (Some(assemble::series_points(&q, &rows)), None)
    };
    let complete_until = complete_until(state, &q.window, q.close_delay_ms(state.grace_ms))
        .await
        .map(rfc3339);
    let pending_corrections = tally_sinks::postgres::ledger::pending_in_range(
        &state.postgres,
        &state.pipeline_name,
        &q.topology,
        tally_core::Topology::table_of(&q.metric),
        &q.window.name,
        i64::try_from(q.first_start()).unwrap_or(i64::MAX),
        i64::try_from(params::ms(q.to)).unwrap_or(i64::MAX),
    )
    .await
    .map_err(|e| tracing::warn!(error = %e, "reading pending corrections failed"))
    .ok();
    let grouped = q.group_by.is_some();
    let response = ReportResponse {
        unit: q.metric.unit(),
        metric: q.metric.name(),
        window_size_s: q.window.size_ms / 1000,
        slide_s: q.window.slide_ms / 1000,
        window: q.window.name,
        from: q.from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        to: q.to.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        topology: q.topology,
        event_type: q.event_type,
        group_by: q.group_by,
        limit: grouped.then_some(q.limit),
        complete_until,
        pending_corrections,
        points,
        series,
    };
    Ok(response)
}

/// The start before which every window of this kind is final and stored: a window is final
/// once the acknowledged frontier passed its end plus `delay_ms` (the grace period; for session
/// metrics the session delay). Never past the wall clock: a window that has not ended cannot be
/// complete. `None` before the pipeline saved progress or when PostgreSQL cannot be asked.
async fn complete_until(state: &AppState, window: &WindowSpec, delay_ms: u64) -> Option<u64> {
    let frontier = tally_sinks::postgres::acked_frontier(&state.postgres, &state.pipeline_name)
        .await
        .map_err(|e| tracing::warn!(error = %e, "reading the pipeline frontier failed"))
        .ok()
        .flatten()?;
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    complete_until_from(frontier, delay_ms, window, now_ms)
}

/// See [`complete_until`]: the smallest window start `c` (a multiple of the slide) such that
/// every window starting before it ends at some `e` with `e + delay < frontier` and
/// `e <= now_ms`. For a tumbling window this is the end of the last final window.
pub fn complete_until_from(
    frontier_ms: u64,
    delay_ms: u64,
    window: &WindowSpec,
    now_ms: u64,
) -> Option<u64> {
    let last_final_end = frontier_ms.checked_sub(delay_ms + 1)?.min(now_ms);
    let slide = window.slide_ms.max(1);
    // Windows with start s <= last_final_end - size are final; c is the next multiple of the
    // slide after the last such start.
    Some((last_final_end + slide).saturating_sub(window.size_ms) / slide * slide)
}

/// The `/reports/summary` answer.
#[derive(clickhouse::Row, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Summary {
    /// Events (distinct event ids).
    pub events: u64,
    /// Distinct users.
    pub unique_users: u64,
    /// Distinct non-empty client `session_id`s.
    pub unique_sessions: u64,
    /// Distinct event types.
    pub unique_event_types: u64,
}

/// `GET /reports/summary`: exact totals over raw events in `[from, to)`.
#[utoipa::path(get, path = "/reports/summary", tag = "reports",
    params(
        ("from" = Option<String>, Query, description = "Start, RFC 3339 or ms since the epoch (inclusive)"),
        ("to" = Option<String>, Query, description = "End, RFC 3339 or ms since the epoch (exclusive)"),
        ("event_type" = Option<String>, Query, description = "Only this event type")),
    responses(
        (status = 200, description = "Exact totals over the raw events of the range", body = Summary),
        (status = 400, description = "A parameter is missing, unknown or invalid; the reason lists what exists", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key's role may not read", body = crate::openapi::ErrorBody),
        (status = 503, description = "ClickHouse unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_summary(
    _caller: crate::auth::Read,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Summary>, ApiError> {
    const KNOWN: [&str; 3] = ["from", "to", "event_type"];
    if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown parameter `{k}` (expected from, to, event_type)"
        )));
    }
    let (from, to) = params::range(&params)?;
    let event_type = params::event_type_param(&params)?;
    let query = crate::queries::summary(
        &state.clickhouse,
        params::ms(from),
        params::ms(to),
        event_type.as_deref(),
    );
    let summary: Summary = query
        .fetch_one()
        .await
        .map_err(|e| clickhouse_unavailable(tally_sinks::SinkError::clickhouse("summary", e)))?;
    Ok(Json(summary))
}

#[cfg(test)]
mod tests;
