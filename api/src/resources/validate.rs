//! A resource body, checked field by field; a report definition is checked as `GET /reports`
//! checks its parameters, and a refusal names the field (`reports[2].window: ...`).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use tally_sinks::postgres::resources::ResourceInput;

use super::ResourceBody;
use crate::reports::{parse_report_query, run_report};
use crate::{ApiError, AppState};

/// Longest `name`, characters.
pub const MAX_NAME: usize = 200;
/// Longest `description`, characters.
pub const MAX_DESCRIPTION: usize = 2000;
/// Most reports of a dashboard.
pub const MAX_REPORTS: usize = 20;

/// Most points a resource's data may hold, all its reports together, as a multiple of
/// `api.max_report_windows`: as many as one grouped `/reports` answer may hold, so `with_data`
/// costs no more memory than the largest single report.
pub const POINTS_FACTOR: u64 = crate::reports::GROUPED_POINTS_FACTOR;

/// The body of `POST /create_resource`, `POST /resources` and `PUT /resources/{id}`: exactly
/// one of `report` and `reports`. Other fields are refused.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(
    dead_code,
    reason = "documents the body; handlers check it field by field"
)]
pub struct ResourceRequest {
    /// 1..=200 characters, not blank.
    name: String,
    /// At most 2000 characters (default empty).
    description: Option<String>,
    /// A saved report (kind `report`).
    report: Option<ReportDefinition>,
    /// A saved dashboard (kind `dashboard`): 1..=20 reports.
    reports: Option<Vec<ReportDefinition>>,
}

/// A report as `GET /reports` takes it (strings; `limit` may be a number).
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(
    dead_code,
    reason = "documents the body; handlers check it field by field"
)]
pub struct ReportDefinition {
    /// A metric of the topology.
    metric: String,
    /// A window of the topology.
    window: String,
    /// Default `product_analytics`.
    topology: Option<String>,
    /// RFC 3339, inclusive.
    from: String,
    /// RFC 3339, exclusive.
    to: String,
    /// Only this event type.
    event_type: Option<String>,
    /// A dimension to group by.
    group_by: Option<String>,
    /// Groups with `group_by`, 1..=100.
    limit: Option<u32>,
}

const FIELDS: [&str; 4] = ["name", "description", "report", "reports"];
const REPORT_FIELDS: [&str; 8] = [
    "topology",
    "metric",
    "window",
    "from",
    "to",
    "event_type",
    "group_by",
    "limit",
];

/// A checked body.
pub(crate) struct Valid {
    kind: &'static str,
    name: String,
    description: String,
    definition: Value,
}

impl Valid {
    pub(crate) fn input(&self) -> ResourceInput<'_> {
        ResourceInput {
            kind: self.kind,
            name: &self.name,
            description: &self.description,
            definition: &self.definition,
        }
    }
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadRequest(reason.into())
}

/// Checks a resource body; errors are 400s naming the field.
pub(crate) fn resource(state: &AppState, body: &Value) -> Result<Valid, ApiError> {
    // PostgreSQL text and JSONB cannot hold U+0000: refuse it here, naming the field, rather
    // than failing the insert.
    if let Some(path) = nul_at(body, String::new()) {
        return Err(bad(format!(
            "{path}: text must not contain the NUL character (\\u0000)"
        )));
    }
    let Some(obj) = body.as_object() else {
        return Err(bad(
            "the body must be a JSON object with `name`, `description` and `report` or `reports`",
        ));
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown field `{k}` (expected {})",
            FIELDS.join(", ")
        )));
    }
    let name = match obj.get("name") {
        None => return Err(bad("`name` is required")),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("`name` must be a string")),
    };
    if name.trim().is_empty() || name.chars().count() > MAX_NAME {
        return Err(bad(format!(
            "`name` must be 1 to {MAX_NAME} characters, not blank"
        )));
    }
    let description = match obj.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.chars().count() <= MAX_DESCRIPTION => s.clone(),
        Some(Value::String(_)) => {
            return Err(bad(format!(
                "`description` must be at most {MAX_DESCRIPTION} characters"
            )))
        }
        Some(_) => return Err(bad("`description` must be a string")),
    };
    let (kind, definition) = match (obj.get("report"), obj.get("reports")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "send either `report` (a saved report) or `reports` (a dashboard), not both",
            ))
        }
        (None, None) => return Err(bad("`report` (or `reports`, for a dashboard) is required")),
        (Some(report), None) => {
            let points = check_report(state, "report", report)?;
            check_points(state, "report", points)?;
            ("report", serde_json::json!({ "report": report }))
        }
        (None, Some(reports)) => {
            let list = reports
                .as_array()
                .filter(|l| (1..=MAX_REPORTS).contains(&l.len()))
                .ok_or_else(|| {
                    bad(format!(
                        "`reports` must be an array of 1 to {MAX_REPORTS} reports"
                    ))
                })?;
            let mut points = 0u64;
            for (i, report) in list.iter().enumerate() {
                points =
                    points.saturating_add(check_report(state, &format!("reports[{i}]"), report)?);
            }
            check_points(state, "reports", points)?;
            ("dashboard", serde_json::json!({ "reports": reports }))
        }
    };
    Ok(Valid {
        kind,
        name,
        description,
        definition,
    })
}

/// A report object as `/reports` parameters; refusals are prefixed with `path`.
fn params(path: &str, report: &Value) -> Result<HashMap<String, String>, ApiError> {
    let obj: &Map<String, Value> = report.as_object().ok_or_else(|| {
        bad(format!(
            "{path}: must be an object with metric, window, from, to (as GET /reports takes them)"
        ))
    })?;
    let mut params = HashMap::new();
    for (k, v) in obj {
        if !REPORT_FIELDS.contains(&k.as_str()) {
            return Err(bad(format!(
                "{path}.{k}: unknown field (expected {})",
                REPORT_FIELDS.join(", ")
            )));
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) if k == "limit" => n.to_string(),
            _ if k == "limit" => return Err(bad(format!("{path}.{k}: must be a number"))),
            _ => return Err(bad(format!("{path}.{k}: must be a string"))),
        };
        params.insert(k.clone(), text);
    }
    Ok(params)
}

/// The field a `/reports` refusal is about, when it can be told from its text.
fn field_of(reason: &str) -> Option<&'static str> {
    const BY_PHRASE: [(&str, &str); 4] = [
        ("unknown topology", "topology"),
        ("unknown metric", "metric"),
        ("unknown window", "window"),
        ("unknown dimension", "group_by"),
    ];
    BY_PHRASE
        .iter()
        .find(|(phrase, _)| reason.contains(phrase))
        .map(|(_, field)| *field)
        .or_else(|| {
            // The field mentioned first, e.g. `from` in "`from` must be before `to`".
            REPORT_FIELDS
                .iter()
                .filter_map(|f| reason.find(&format!("`{f}`")).map(|at| (at, *f)))
                .min()
                .map(|(_, f)| f)
        })
}

/// Prefixes a refusal with the path of the field it is about.
fn at(path: &str, e: ApiError) -> ApiError {
    match e {
        ApiError::BadRequest(reason) => match field_of(&reason) {
            Some(field) => bad(format!("{path}.{field}: {reason}")),
            None => bad(format!("{path}: {reason}")),
        },
        other => other,
    }
}

/// Checks one report; the points its answer holds (windows, times the groups + `__other__`
/// with `group_by`).
fn check_report(state: &AppState, path: &str, report: &Value) -> Result<u64, ApiError> {
    let params = params(path, report)?;
    let q = parse_report_query(&params, &state.topologies, state.config.max_report_windows)
        .map_err(|e| at(path, e))?;
    let groups = if q.group_by.is_some() {
        q.limit as u64 + 1
    } else {
        1
    };
    Ok(q.window_count().saturating_mul(groups))
}

/// Refuses a resource whose data would hold more than [`POINTS_FACTOR`] ×
/// `api.max_report_windows` points.
fn check_points(state: &AppState, path: &str, points: u64) -> Result<(), ApiError> {
    let max = state
        .config
        .max_report_windows
        .saturating_mul(POINTS_FACTOR);
    if points > max {
        return Err(bad(format!(
            "{path}: the data would hold {points} points (windows × groups, all reports \
             together); at most {max}: shorten the ranges, use a larger window or fewer groups"
        )));
    }
    Ok(())
}

/// The path of the first string (or object key) in `value` holding U+0000.
fn nul_at(value: &Value, path: String) -> Option<String> {
    let here = || {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path.clone()
        }
    };
    match value {
        Value::String(s) => s.contains('\0').then(here),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let child = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(here())
            } else {
                nul_at(v, child)
            }
        }),
        _ => None,
    }
}

/// The current data of a stored resource's report(s): one `/reports` answer (kind `report`)
/// or an array of them (`dashboard`). A stored report that no longer validates (its topology
/// changed) is a 409 naming it.
pub(crate) async fn data(state: &AppState, body: &ResourceBody) -> Result<Value, ApiError> {
    let stale = |e: ApiError| match e {
        ApiError::BadRequest(reason) => ApiError::Conflict(format!(
            "resource {} no longer validates: {reason}",
            body.id
        )),
        other => other,
    };
    let answer = |path: String, report: Value| async move {
        let params = params(&path, &report).map_err(stale)?;
        let response = run_report(state, &params)
            .await
            .map_err(|e| stale(at(&path, e)))?;
        serde_json::to_value(response).map_err(|e| ApiError::Internal(format!("report: {e}")))
    };
    match (&body.report, &body.reports) {
        (Some(report), _) => answer("report".into(), report.clone()).await,
        (None, Some(Value::Array(reports))) => {
            let mut all = Vec::with_capacity(reports.len());
            for (i, report) in reports.iter().enumerate() {
                all.push(answer(format!("reports[{i}]"), report.clone()).await?);
            }
            Ok(Value::Array(all))
        }
        _ => Err(ApiError::Internal(format!(
            "resource {} has no report definition",
            body.id
        ))),
    }
}
