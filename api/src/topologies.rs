//! `GET /topologies`: what each topology reads, groups by, computes and where it stores it, so
//! a client can build `/reports` queries without reading the topology files.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use tally_core::{DistinctMode, Filter, RowTable, Topology};

use crate::AppState;

/// The `/topologies` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopologiesResponse {
    /// Every topology the API reports on, in the configured order.
    pub topologies: Vec<TopologyView>,
}

/// One topology as `/topologies` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TopologyView {
    /// `topology=` of `/reports`.
    pub name: String,
    /// Free text from the topology file.
    pub description: String,
    /// Which events it reads (all of them when empty), e.g. `event_type in [click, view]`.
    pub filters: Vec<String>,
    /// `window=` values.
    pub windows: Vec<WindowView>,
    /// `group_by=` values.
    pub dimensions: Vec<DimensionView>,
    /// `metric=` values.
    pub metrics: Vec<MetricView>,
    /// How sessions are cut, `null` without session metrics.
    pub sessions: Option<SessionsView>,
    /// How distinct counts are computed.
    pub distinct: DistinctView,
    /// Its ClickHouse tables (as currently stored).
    pub tables: Vec<String>,
}

/// A window kind.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WindowView {
    /// Its name.
    pub name: String,
    /// `tumbling` or `hopping`.
    pub kind: &'static str,
    /// Length, seconds.
    pub size_s: u64,
    /// Distance between starts, seconds (equal to `size_s` when tumbling).
    pub slide_s: u64,
}

/// A dimension.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DimensionView {
    /// Its name (`event_type`, `metadata.platform`).
    pub name: String,
    /// Values kept per window; the rest fold into `__other__`.
    pub max_values: usize,
}

/// A metric.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MetricView {
    /// Its name.
    pub name: String,
    /// The unit of its values.
    pub unit: &'static str,
    /// The table its components are stored in.
    pub table: String,
}

/// Session settings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionsView {
    /// Inactivity that ends a session, seconds (a whole number unless the gap is not).
    pub gap_s: serde_json::Value,
    /// Longest session, seconds (likewise).
    pub max_duration_s: serde_json::Value,
}

/// Distinct-count mode.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DistinctView {
    /// `exact` or `approx`.
    pub mode: &'static str,
    /// Relative standard error of distinct counts (0 when exact).
    pub standard_error: f64,
}

/// `ms` in seconds: an integer when whole, else a double.
fn seconds(ms: u64) -> serde_json::Value {
    if ms.is_multiple_of(1000) {
        serde_json::Value::from(ms / 1000)
    } else {
        serde_json::Value::from(ms as f64 / 1000.0)
    }
}

fn filter_text(f: &Filter) -> String {
    match f {
        Filter::EventTypeIn(types) => format!("event_type in [{}]", types.join(", ")),
        Filter::EventTypeNotIn(types) => format!("event_type not in [{}]", types.join(", ")),
        Filter::MetadataEquals(path, value) => format!("{path} = {value}"),
    }
}

impl TopologyView {
    /// How `/topologies` shows `t`.
    pub fn of(t: &Topology) -> TopologyView {
        TopologyView {
            name: t.name.clone(),
            description: t.description.clone(),
            filters: t.filters.iter().map(filter_text).collect(),
            windows: t
                .windows
                .iter()
                .map(|w| WindowView {
                    name: w.name.clone(),
                    kind: w.kind(),
                    size_s: w.size_ms / 1000,
                    slide_s: w.slide_ms / 1000,
                })
                .collect(),
            dimensions: t
                .dimensions
                .iter()
                .map(|d| DimensionView {
                    name: d.name.clone(),
                    max_values: d.max_values,
                })
                .collect(),
            metrics: t
                .metrics
                .iter()
                .map(|m| MetricView {
                    name: m.name(),
                    unit: m.unit(),
                    table: t.table_name(Topology::table_of(m)),
                })
                .collect(),
            sessions: t.sessions.map(|s| SessionsView {
                gap_s: seconds(s.gap_ms),
                max_duration_s: seconds(s.max_duration_ms),
            }),
            distinct: DistinctView {
                mode: match t.distinct {
                    DistinctMode::Exact => "exact",
                    DistinctMode::Approx => "approx",
                },
                standard_error: t.distinct.standard_error(),
            },
            tables: [RowTable::Windows, RowTable::Sessions]
                .into_iter()
                .filter(|&table| t.has(table))
                .map(|table| t.table_name(table))
                .collect(),
        }
    }
}

/// `GET /topologies`.
#[utoipa::path(get, path = "/topologies", tag = "reports",
    responses(
        (status = 200, description = "The topologies this API reports on", body = TopologiesResponse),
        (status = 400, description = "A query parameter was given (this route takes none)", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key's role may not read", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_topologies(
    _caller: crate::auth::Read,
    State(state): State<AppState>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<TopologiesResponse>, crate::ApiError> {
    crate::paging::only(&params, &[])?;
    Ok(Json(TopologiesResponse {
        topologies: state.topologies.iter().map(TopologyView::of).collect(),
    }))
}
