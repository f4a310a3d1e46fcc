//! `GET /reports` (rollup series) and `GET /reports/summary` (exact totals over raw events).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tally_operators::Window;

use crate::{ApiError, AppState};

/// A rollup metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Events.
    Events,
    /// Distinct users.
    UniqueUsers,
    /// Distinct non-empty sessions.
    UniqueSessions,
    /// Distinct event types.
    UniqueEventTypes,
}

impl Metric {
    /// Every metric with its name in the API.
    pub const ALL: [(&'static str, Metric); 4] = [
        ("events", Metric::Events),
        ("unique_users", Metric::UniqueUsers),
        ("unique_sessions", Metric::UniqueSessions),
        ("unique_event_types", Metric::UniqueEventTypes),
    ];

    /// The name in the API.
    pub fn name(self) -> &'static str {
        Metric::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("events", |(n, _)| n)
    }

    /// The `rollups` column (a fixed identifier: never built from input).
    pub(crate) fn column(self) -> &'static str {
        self.name()
    }
}

/// A validated `/reports` request.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportQuery {
    /// What to report.
    pub metric: Metric,
    /// Window kind.
    pub window: Window,
    /// Range start as given.
    pub from: DateTime<Utc>,
    /// Range end (exclusive).
    pub to: DateTime<Utc>,
    /// Optional event-type filter.
    pub event_type: Option<String>,
}

impl ReportQuery {
    /// Window starts covered: every window overlapping `[from, to)`.
    pub fn window_starts(&self) -> impl Iterator<Item = u64> {
        let g = self.window.millis();
        let first = self.window.start_of(ms(self.from));
        let end = ms(self.to);
        (0..)
            .map(move |i| first + i * g)
            .take_while(move |s| *s < end)
    }

    /// Number of windows in the range.
    pub fn window_count(&self) -> u64 {
        let g = self.window.millis();
        let first = self.window.start_of(ms(self.from));
        (ms(self.to) - first).div_ceil(g)
    }
}

pub(crate) fn ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest(reason.into())
}

/// The end of what ClickHouse `DateTime` (unsigned 32-bit seconds) can store, as an exclusive
/// bound in milliseconds: 2106-02-07T06:28:16Z.
pub const MAX_TIME_MS: u64 = (u32::MAX as u64 + 1) * 1000;

/// A `from`/`to` parameter: RFC 3339 only (a bare number is refused, since epoch seconds and
/// milliseconds cannot be told apart), within `[1970-01-01T00:00:00Z, 2106-02-07T06:28:16Z]`.
/// Times outside the storable range are refused, never wrapped or silently clamped.
fn time_param(params: &HashMap<String, String>, name: &str) -> Result<DateTime<Utc>, ApiError> {
    let raw = params.get(name).ok_or_else(|| {
        bad(format!(
            "`{name}` is required (RFC 3339, e.g. 2024-03-13T10:00:00Z)"
        ))
    })?;
    let shown: String = raw.chars().take(64).collect();
    let t = DateTime::parse_from_rfc3339(raw)
        .map_err(|_| {
            bad(format!(
                "`{name}` must be an RFC 3339 time such as 2024-03-13T10:00:00Z (not epoch \
                 seconds or milliseconds), got `{shown}`"
            ))
        })?
        .with_timezone(&Utc);
    let in_range = u64::try_from(t.timestamp_millis()).is_ok_and(|ms| ms <= MAX_TIME_MS);
    if !in_range {
        return Err(bad(format!(
            "`{name}` must be between 1970-01-01T00:00:00Z and 2106-02-07T06:28:16Z (what \
             ClickHouse DateTime stores), got `{shown}`"
        )));
    }
    Ok(t)
}

fn range(params: &HashMap<String, String>) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let (from, to) = (time_param(params, "from")?, time_param(params, "to")?);
    if from >= to {
        return Err(bad("`from` must be before `to` (the range is [from, to))"));
    }
    Ok((from, to))
}

fn event_type_param(params: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    match params.get("event_type") {
        None => Ok(None),
        Some(t) if t.is_empty() => Err(bad("`event_type` must not be empty")),
        Some(t) if t.chars().count() > tally_pipeline::event::MAX_EVENT_TYPE_LEN => {
            Err(bad("`event_type` must be at most 128 characters"))
        }
        Some(t) => Ok(Some(t.clone())),
    }
}

/// Validates `/reports` parameters.
pub fn parse_report_query(
    params: &HashMap<String, String>,
    max_windows: u64,
) -> Result<ReportQuery, ApiError> {
    const KNOWN: [&str; 5] = ["metric", "window", "from", "to", "event_type"];
    if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown parameter `{k}` (expected metric, window, from, to, event_type)"
        )));
    }
    let metric_raw = params
        .get("metric")
        .ok_or_else(|| bad("`metric` is required"))?;
    let metric = Metric::ALL
        .iter()
        .find(|(n, _)| n == metric_raw)
        .map(|(_, m)| *m)
        .ok_or_else(|| bad(format!("unknown metric `{metric_raw}`: use events, unique_users, unique_sessions or unique_event_types")))?;
    let window_raw = params
        .get("window")
        .ok_or_else(|| bad("`window` is required"))?;
    let window = Window::from_label(window_raw)
        .ok_or_else(|| bad(format!("unknown window `{window_raw}`: use 1m, 1h or 1d")))?;
    let (from, to) = range(params)?;
    let event_type = event_type_param(params)?;
    if event_type.is_some() && metric == Metric::UniqueEventTypes {
        return Err(bad(
            "`event_type` cannot be combined with metric unique_event_types",
        ));
    }
    let q = ReportQuery {
        metric,
        window,
        from,
        to,
        event_type,
    };
    if q.window_count() > max_windows {
        return Err(bad(format!(
            "the range spans {} windows of {}; the limit is {max_windows}",
            q.window_count(),
            window
        )));
    }
    Ok(q)
}

#[derive(Serialize)]
pub struct Point {
    window_start: String,
    value: u64,
}

/// The `/reports` answer, fields in the documented order.
#[derive(Serialize)]
pub struct ReportResponse {
    metric: &'static str,
    window: &'static str,
    from: String,
    to: String,
    event_type: Option<String>,
    complete_until: Option<String>,
    /// Windows of this kind in the range that received late events and wait for their
    /// correction (`null` when PostgreSQL could not be asked).
    pending_corrections: Option<i64>,
    points: Vec<Point>,
}

/// One point as ClickHouse returns it.
#[derive(clickhouse::Row, Deserialize)]
pub struct SeriesRow {
    /// Window start, seconds.
    pub window_start: u32,
    /// The metric's latest value.
    pub value: u64,
}

fn rfc3339(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A failed ClickHouse query: 503 for the client (the server's text is only logged). A missing
/// table or database is logged as an error naming the fix, since retrying cannot help.
fn clickhouse_unavailable(e: clickhouse::error::Error) -> ApiError {
    let e = tally_sinks::SinkError::clickhouse("report query", e);
    if e.is_missing_schema() {
        tracing::error!(error = %e, "clickhouse schema missing: run `tally migrate`");
    } else {
        tracing::warn!(error = %e, "clickhouse query failed");
    }
    ApiError::Unavailable("the analytics store is unavailable; retry later".into())
}

/// `GET /reports`.
pub async fn get_report(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ReportResponse>, ApiError> {
    let q = parse_report_query(&params, state.config.max_report_windows)?;
    let rows: Vec<SeriesRow> = crate::queries::series(&state.clickhouse, &q)
        .fetch_all()
        .await
        .map_err(clickhouse_unavailable)?;
    let values: HashMap<u64, u64> = rows
        .into_iter()
        .map(|r| (u64::from(r.window_start) * 1000, r.value))
        .collect();
    let points = q
        .window_starts()
        .map(|s| Point {
            window_start: rfc3339(s),
            value: values.get(&s).copied().unwrap_or(0),
        })
        .collect();
    let complete_until = complete_until(&state, q.window).await.map(rfc3339);
    let pending_corrections = tally_sinks::postgres::ledger::pending_in_range(
        &state.postgres,
        &state.pipeline_name,
        tally_sinks::postgres::ledger::DEFAULT_TOPOLOGY,
        q.window.label(),
        i64::try_from(q.window.start_of(ms(q.from))).unwrap_or(i64::MAX),
        i64::try_from(ms(q.to)).unwrap_or(i64::MAX),
    )
    .await
    .map_err(|e| tracing::warn!(error = %e, "reading pending corrections failed"))
    .ok();
    let response = ReportResponse {
        metric: q.metric.name(),
        window: q.window.label(),
        from: q.from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        to: q.to.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        event_type: q.event_type,
        complete_until,
        pending_corrections,
        points,
    };
    Ok(Json(response))
}

/// The end of the last window of this kind before which every window is final and stored:
/// a window is final once the acknowledged frontier passed its end plus the grace period.
/// Never past the wall clock: a window that has not ended cannot be complete.
async fn complete_until(state: &AppState, window: Window) -> Option<u64> {
    let frontier: Option<i64> =
        sqlx::query_scalar("SELECT acked_frontier_ms FROM pipeline_frontiers WHERE pipeline = $1")
            .bind(&state.pipeline_name)
            .fetch_optional(&state.postgres)
            .await
            .map_err(|e| tracing::warn!(error = %e, "reading the pipeline frontier failed"))
            .ok()
            .flatten();
    let now_ms = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    complete_until_from(
        u64::try_from(frontier?).ok()?,
        state.grace_ms,
        window,
        now_ms,
    )
}

/// See [`complete_until`]: the largest window end `e` with `e + grace < frontier` and
/// `e <= now_ms`.
pub fn complete_until_from(
    frontier_ms: u64,
    grace_ms: u64,
    window: Window,
    now_ms: u64,
) -> Option<u64> {
    let last_final_end = frontier_ms.checked_sub(grace_ms + 1)?;
    Some(window.start_of(last_final_end.min(now_ms)))
}

/// The `/reports/summary` answer.
#[derive(clickhouse::Row, Deserialize, Serialize)]
pub struct Summary {
    events: u64,
    unique_users: u64,
    unique_sessions: u64,
    unique_event_types: u64,
}

/// `GET /reports/summary`: exact totals over raw events in `[from, to)`.
pub async fn get_summary(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Summary>, ApiError> {
    const KNOWN: [&str; 3] = ["from", "to", "event_type"];
    if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown parameter `{k}` (expected from, to, event_type)"
        )));
    }
    let (from, to) = range(&params)?;
    let event_type = event_type_param(&params)?;
    let query = crate::queries::summary(&state.clickhouse, ms(from), ms(to), event_type.as_deref());
    let summary: Summary = query.fetch_one().await.map_err(clickhouse_unavailable)?;
    Ok(Json(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        match parse_report_query(&params(pairs), 10_000) {
            Err(ApiError::BadRequest(reason)) => reason,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn valid_query_and_windows() {
        let q = parse_report_query(
            &params(&[
                ("metric", "events"),
                ("window", "1h"),
                ("from", "2024-03-13T10:30:00Z"),
                ("to", "2024-03-13T13:00:00Z"),
            ]),
            10_000,
        )
        .expect("valid");
        // Windows overlapping [10:30, 13:00): 10:00, 11:00, 12:00.
        let starts: Vec<String> = q.window_starts().map(rfc3339).collect();
        assert_eq!(
            starts,
            [
                "2024-03-13T10:00:00Z",
                "2024-03-13T11:00:00Z",
                "2024-03-13T12:00:00Z"
            ]
        );
        assert_eq!(q.window_count(), 3);
    }

    #[test]
    fn bad_queries_say_why() {
        let base = [
            ("window", "1m"),
            ("from", "2024-03-13T10:00:00Z"),
            ("to", "2024-03-13T11:00:00Z"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v: Vec<(&str, &str)> = base.to_vec();
            v.extend_from_slice(extra);
            v
        };
        assert!(err(&with(&[("metric", "revenue")])).contains("unknown metric"));
        assert!(err(&base).contains("`metric` is required"));
        assert!(err(&[
            ("metric", "events"),
            ("window", "2m"),
            ("from", "2024-03-13T10:00:00Z"),
            ("to", "2024-03-13T11:00:00Z")
        ])
        .contains("unknown window"));
        assert!(err(&[
            ("metric", "events"),
            ("window", "1m"),
            ("from", "yesterday"),
            ("to", "2024-03-13T11:00:00Z")
        ])
        .contains("RFC 3339"));
        assert!(err(&[
            ("metric", "events"),
            ("window", "1m"),
            ("from", "2024-03-13T11:00:00Z"),
            ("to", "2024-03-13T10:00:00Z")
        ])
        .contains("before"));
        assert!(err(&with(&[
            ("metric", "unique_event_types"),
            ("event_type", "click")
        ]))
        .contains("cannot be combined"));
        assert!(err(&with(&[("metric", "events"), ("x", "1")])).contains("unknown parameter"));
        // 10,001 one-minute windows.
        let too_long = err(&[
            ("metric", "events"),
            ("window", "1m"),
            ("from", "2024-03-13T00:00:00Z"),
            ("to", "2024-03-19T22:41:00Z"),
        ]);
        assert!(too_long.contains("limit is 10000"), "{too_long}");
        assert!(parse_report_query(
            &params(&[
                ("metric", "events"),
                ("window", "1m"),
                ("from", "2024-03-13T00:00:00Z"),
                ("to", "2024-03-19T22:40:00Z")
            ]),
            10_000
        )
        .is_ok());
    }

    #[test]
    fn complete_until_needs_grace_past_the_end() {
        let t0 = 1_710_324_000_000; // 10:00:00
                                    // The 10:00 minute closes at 10:01:00 + 5 s; it is final once the frontier passes that.
        let later = t0 + 3_600_000;
        assert_eq!(
            complete_until_from(t0 + 65_000, 5_000, Window::Minute, later),
            Some(t0)
        );
        assert_eq!(
            complete_until_from(t0 + 65_001, 5_000, Window::Minute, later),
            Some(t0 + 60_000)
        );
        assert_eq!(
            complete_until_from(3_000, 5_000, Window::Minute, later),
            None
        );
    }

    #[test]
    fn complete_until_never_passes_the_wall_clock() {
        // At 10:00:30 the frontier is 2 minutes ahead (a fast clock, or a frontier saved by a
        // pipeline without the clock-skew cap): nothing after 10:00 may be called complete.
        let t0 = 1_710_324_000_000; // 10:00:00
        let frontier = t0 + 120_000 + 5_001;
        assert_eq!(
            complete_until_from(frontier, 5_000, Window::Minute, t0 + 30_000),
            Some(t0)
        );
        assert_eq!(
            complete_until_from(frontier, 5_000, Window::Minute, t0 + 60_000),
            Some(t0 + 60_000)
        );
        assert_eq!(
            complete_until_from(frontier, 5_000, Window::Hour, t0 + 30_000),
            Some(t0)
        );
        // Behind the wall clock, the frontier decides.
        assert_eq!(
            complete_until_from(frontier, 5_000, Window::Minute, t0 + 600_000),
            Some(t0 + 120_000)
        );
    }
}
