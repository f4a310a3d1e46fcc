//! `/reports` and `/reports/summary` parameters: parsed and checked against the topologies
//! before anything is queried. Every refusal is a 400 that says what to send instead.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tally_core::event::MAX_EVENT_TYPE_LEN;
use tally_core::{Metric, RowTable, SessionSpec, Topology, WindowSpec};

use crate::ApiError;

/// The topology a report reads when `topology` is not given.
pub const DEFAULT_TOPOLOGY: &str = "product_analytics";
/// Groups per grouped report when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 10;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 100;
/// A grouped report may hold this many times `api.max_report_windows` points in all
/// (windows × (limit + 1)).
pub const GROUPED_POINTS_FACTOR: u64 = 10;

/// The end of what ClickHouse `DateTime` (unsigned 32-bit seconds) can store, as an exclusive
/// bound in milliseconds: 2106-02-07T06:28:16Z.
pub const MAX_TIME_MS: u64 = (u32::MAX as u64 + 1) * 1000;

/// A validated `/reports` request.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportQuery {
    /// The topology's name.
    pub topology: String,
    /// The table holding the metric (the topology's windows or sessions table, as stored).
    pub table: String,
    /// What to report.
    pub metric: Metric,
    /// The window kind.
    pub window: WindowSpec,
    /// The topology's sessions, if any (session rows become final later).
    pub sessions: Option<SessionSpec>,
    /// Range start as given.
    pub from: DateTime<Utc>,
    /// Range end (exclusive).
    pub to: DateTime<Utc>,
    /// Only the rows of this event type (the `event_type` dimension).
    pub event_type: Option<String>,
    /// The dimension to group by.
    pub group_by: Option<String>,
    /// Most groups of a grouped report (besides `__other__`).
    pub limit: usize,
}

impl ReportQuery {
    /// The first window start: `from` rounded down to the slide.
    pub fn first_start(&self) -> u64 {
        let slide = self.window.slide_ms.max(1);
        let from = ms(self.from);
        from - from % slide
    }

    /// Window starts covered, every slide from [`ReportQuery::first_start`] while before `to`
    /// (for a tumbling window: every window overlapping `[from, to)`).
    pub fn window_starts(&self) -> impl Iterator<Item = u64> {
        let slide = self.window.slide_ms.max(1);
        let first = self.first_start();
        let end = ms(self.to);
        (0..)
            .map(move |i| first + i * slide)
            .take_while(move |s| *s < end)
    }

    /// Number of windows in the range.
    pub fn window_count(&self) -> u64 {
        (ms(self.to) - self.first_start()).div_ceil(self.window.slide_ms.max(1))
    }

    /// The rows read when not grouping: `(dimension, value)`, both empty for all events.
    pub fn row_filter(&self) -> (&str, &str) {
        match &self.event_type {
            Some(t) => ("event_type", t.as_str()),
            None => ("", ""),
        }
    }

    /// How long after a window's end its rows may still change when nothing is late: the grace
    /// period, and for session metrics [`SessionSpec::window_delay_ms`].
    pub fn close_delay_ms(&self, grace_ms: u64) -> u64 {
        match (&self.sessions, Topology::table_of(&self.metric)) {
            (Some(s), RowTable::Sessions) => s.window_delay_ms(grace_ms),
            _ => grace_ms,
        }
    }
}

/// Milliseconds since the epoch of a time already checked to be in range.
pub(crate) fn ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest(reason.into())
}

/// A `from`/`to` parameter: RFC 3339 only (a bare number is refused, since epoch seconds and
/// milliseconds cannot be told apart), within `[1970-01-01T00:00:00Z, 2106-02-07T06:28:16Z]`.
/// Times outside the storable range are refused, never wrapped or silently clamped.
pub(crate) fn time_param(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<DateTime<Utc>, ApiError> {
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

/// `from` and `to`, `from` before `to`.
pub(crate) fn range(
    params: &HashMap<String, String>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let (from, to) = (time_param(params, "from")?, time_param(params, "to")?);
    if from >= to {
        return Err(bad("`from` must be before `to` (the range is [from, to))"));
    }
    Ok((from, to))
}

/// `event_type`: absent, or a non-empty type of at most 128 characters.
pub(crate) fn event_type_param(
    params: &HashMap<String, String>,
) -> Result<Option<String>, ApiError> {
    match params.get("event_type") {
        None => Ok(None),
        Some(t) if t.is_empty() => Err(bad("`event_type` must not be empty")),
        Some(t) if t.chars().count() > MAX_EVENT_TYPE_LEN => Err(bad(format!(
            "`event_type` must be at most {MAX_EVENT_TYPE_LEN} characters"
        ))),
        Some(t) => Ok(Some(t.clone())),
    }
}

/// `a, b, c`, or `none` for an empty list.
fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

/// Checks a name against what the topology declares; the refusal lists what it declares.
fn declared<'t, T>(
    found: Option<&'t T>,
    what: &str,
    raw: &str,
    topology: &Topology,
    names: impl Iterator<Item = String>,
) -> Result<&'t T, ApiError> {
    found.ok_or_else(|| {
        let names: Vec<String> = names.collect();
        bad(format!(
            "unknown {what} `{raw}` in topology {}: use {}",
            topology.name,
            list(names.iter().map(String::as_str))
        ))
    })
}

fn topology_param<'t>(
    params: &HashMap<String, String>,
    topologies: &'t [Topology],
) -> Result<&'t Topology, ApiError> {
    let name = params
        .get("topology")
        .map_or(DEFAULT_TOPOLOGY, String::as_str);
    topologies.iter().find(|t| t.name == name).ok_or_else(|| {
        let default = if params.contains_key("topology") {
            ""
        } else {
            " (the default)"
        };
        bad(format!(
            "unknown topology `{name}`{default}: use {} (GET /topologies lists them)",
            list(topologies.iter().map(|t| t.name.as_str()))
        ))
    })
}

fn limit_param(params: &HashMap<String, String>, grouped: bool) -> Result<usize, ApiError> {
    let Some(raw) = params.get("limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    if !grouped {
        return Err(bad(
            "`limit` applies to grouped reports only: add `group_by`",
        ));
    }
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            bad(format!(
                "`limit` must be a whole number from 1 to {MAX_LIMIT}"
            ))
        })
}

/// Validates `/reports` parameters against `topologies`.
pub fn parse_report_query(
    params: &HashMap<String, String>,
    topologies: &[Topology],
    max_windows: u64,
) -> Result<ReportQuery, ApiError> {
    const KNOWN: [&str; 9] = [
        "topology",
        "metric",
        "window",
        "from",
        "to",
        "event_type",
        "group_by",
        "limit",
        "format",
    ];
    if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown parameter `{k}` (expected {})",
            KNOWN.join(", ")
        )));
    }
    let topology = topology_param(params, topologies)?;
    let metric_raw = params
        .get("metric")
        .ok_or_else(|| bad("`metric` is required"))?;
    let metric = declared(
        topology.metric(metric_raw),
        "metric",
        metric_raw,
        topology,
        topology.metrics.iter().map(Metric::name),
    )?;
    let window_raw = params
        .get("window")
        .ok_or_else(|| bad("`window` is required"))?;
    let window = declared(
        topology.window(window_raw),
        "window",
        window_raw,
        topology,
        topology.windows.iter().map(|w| w.name.clone()),
    )?;
    let (from, to) = range(params)?;
    let group_by = match params.get("group_by") {
        None => None,
        Some(raw) => Some(
            declared(
                topology.dimension(raw),
                "dimension",
                raw,
                topology,
                topology.dimensions.iter().map(|d| d.name.clone()),
            )?
            .name
            .clone(),
        ),
    };
    let event_type = event_type_param(params)?;
    if event_type.is_some() {
        check_event_type_filter(topology, metric, group_by.as_deref())?;
    }
    let limit = limit_param(params, group_by.is_some())?;
    let q = ReportQuery {
        topology: topology.name.clone(),
        table: topology.table_name(Topology::table_of(metric)),
        metric: metric.clone(),
        window: window.clone(),
        sessions: topology.sessions,
        from,
        to,
        event_type,
        group_by,
        limit,
    };
    check_size(&q, max_windows)?;
    Ok(q)
}

fn check_event_type_filter(
    topology: &Topology,
    metric: &Metric,
    group_by: Option<&str>,
) -> Result<(), ApiError> {
    if topology.dimension("event_type").is_none() {
        return Err(bad(format!(
            "`event_type` needs an event_type dimension, which topology {} does not declare \
             (its dimensions: {})",
            topology.name,
            list(topology.dimensions.iter().map(|d| d.name.as_str()))
        )));
    }
    if *metric == Metric::UniqueEventTypes {
        return Err(bad(
            "`event_type` cannot be combined with metric unique_event_types",
        ));
    }
    if group_by.is_some() {
        return Err(bad(
            "`event_type` cannot be combined with `group_by` (rows are stored per dimension, \
             not per pair of dimensions); use group_by=event_type to compare types",
        ));
    }
    Ok(())
}

fn check_size(q: &ReportQuery, max_windows: u64) -> Result<(), ApiError> {
    let windows = q.window_count();
    if windows > max_windows {
        return Err(bad(format!(
            "the range spans {windows} windows of {}; the limit is {max_windows}",
            q.window
        )));
    }
    if q.group_by.is_some() {
        let points = windows.saturating_mul(q.limit as u64 + 1);
        let max_points = max_windows.saturating_mul(GROUPED_POINTS_FACTOR);
        if points > max_points {
            return Err(bad(format!(
                "the report would hold {points} points ({windows} windows × {} series); the \
                 limit is {max_points}: shorten the range or lower `limit`",
                q.limit + 1
            )));
        }
    }
    Ok(())
}
