//! Turning stored components into report points: one value per window of the range (windows
//! without rows as if every component were 0), metric values from `Metric::value`, series
//! ranked as the query ranked them, and `__other__` last when anything is in it.

use std::collections::HashMap;

use serde::Serialize;
use tally_core::{ColumnKind, Metric, OTHER};
use tally_sinks::clickhouse::read::{GroupRow, GroupTotal, SeriesRow};

use super::params::ReportQuery;
use super::rfc3339;

/// One point: a window start and the metric's value there (an integer for counts, a double
/// for ratios, averages and field aggregates, `null` where a ratio or average has nothing to
/// divide by).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// Window start, RFC 3339 (UTC).
    pub window_start: String,
    /// The value.
    pub value: serde_json::Value,
}

/// One group of a grouped report.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Series {
    /// The dimension's value, or `__other__`.
    pub group: String,
    /// What the groups are ranked by, over the range (see [`rank_component`]).
    pub total: serde_json::Value,
    /// One point per window of the range.
    pub points: Vec<Point>,
}

/// Which of `metric.components()` ranks groups: the metric itself for counts and sums; for
/// ratios and averages the count they divide by (sessions, or events carrying the field).
pub fn rank_component(metric: &Metric) -> usize {
    match metric {
        Metric::Avg(_) | Metric::Max(_) => 1,
        _ => 0,
    }
}

/// Whether the metric's values are whole counts (written as JSON integers).
fn is_count(metric: &Metric) -> bool {
    matches!(
        metric,
        Metric::Events
            | Metric::UniqueUsers
            | Metric::UniqueSessions
            | Metric::UniqueEventTypes
            | Metric::Sessions
    )
}

/// `v` as a JSON integer when `integer`, else as a double (`null` for NaN or infinities).
fn number(v: f64, integer: bool) -> serde_json::Value {
    if integer && (0.0..9_007_199_254_740_992.0).contains(&v) {
        serde_json::Value::from(v as u64)
    } else {
        serde_json::Value::from(v)
    }
}

/// The metric's value from its components, as JSON.
pub fn value(metric: &Metric, components: &[f64]) -> serde_json::Value {
    match metric.value(components) {
        Some(v) => number(v, is_count(metric)),
        None => serde_json::Value::Null,
    }
}

/// One point per window of `q`, from rows keyed by window start (ms).
fn points(q: &ReportQuery, rows: &HashMap<u64, &[f64]>) -> Vec<Point> {
    let zeros = vec![0.0; q.metric.components().len()];
    q.window_starts()
        .map(|s| Point {
            window_start: rfc3339(s),
            value: value(&q.metric, rows.get(&s).copied().unwrap_or(&zeros)),
        })
        .collect()
}

/// The points of an ungrouped report.
pub fn series_points(q: &ReportQuery, rows: &[SeriesRow]) -> Vec<Point> {
    let by_start: HashMap<u64, &[f64]> = rows
        .iter()
        .map(|r| (u64::from(r.window_start) * 1000, r.values.as_slice()))
        .collect();
    points(q, &by_start)
}

/// The series of a grouped report: the groups of `top` in their order, then `__other__` when
/// one of its windows has a non-zero component.
pub fn grouped(q: &ReportQuery, top: &[GroupTotal], rows: &[GroupRow]) -> Vec<Series> {
    let components = q.metric.components();
    let rank = rank_component(&q.metric);
    let integer_total = components
        .get(rank)
        .is_some_and(|c| c.column().kind == ColumnKind::UInt64);
    let mut by_group: HashMap<&str, HashMap<u64, &[f64]>> = HashMap::new();
    for r in rows {
        by_group
            .entry(r.group.as_str())
            .or_default()
            .insert(u64::from(r.window_start) * 1000, r.values.as_slice());
    }
    let empty = HashMap::new();
    let mut out: Vec<Series> = top
        .iter()
        .map(|g| Series {
            group: g.group.clone(),
            total: number(g.total, integer_total),
            points: points(q, by_group.get(g.group.as_str()).unwrap_or(&empty)),
        })
        .collect();
    if let Some(other) = by_group.get(OTHER) {
        let nonzero = other.values().any(|v| v.iter().any(|x| *x != 0.0));
        if nonzero {
            let total: f64 = other
                .values()
                .map(|v| v.get(rank).copied().unwrap_or(0.0))
                .sum();
            out.push(Series {
                group: OTHER.to_owned(),
                total: number(total, integer_total),
                points: points(q, other),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use tally_core::{SessionSpec, WindowSpec};

    const T0: u64 = 1_710_324_000_000; // 2024-03-13T10:00:00Z

    fn at(ms: u64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default()
    }

    fn query(metric: Metric, window: WindowSpec, hours: u64) -> ReportQuery {
        ReportQuery {
            topology: "web".into(),
            table: "t".into(),
            metric,
            window,
            sessions: Some(SessionSpec::default()),
            from: at(T0),
            to: at(T0 + hours * 3_600_000),
            event_type: None,
            group_by: Some("metadata.platform".into()),
            limit: 2,
        }
    }

    #[test]
    fn hopping_points_step_by_the_slide_and_empty_ratios_are_null() {
        let q = query(
            Metric::BounceRate,
            WindowSpec::hopping("1h_15m", 3_600_000, 900_000),
            1,
        );
        let s = |ms: u64| (ms / 1000) as u32;
        // 3 sessions, 1 bounced at 10:15; nothing stored at 10:00, 10:30; 0 sessions at 10:45.
        let rows = [
            SeriesRow {
                window_start: s(T0 + 900_000),
                values: vec![3.0, 1.0],
            },
            SeriesRow {
                window_start: s(T0 + 2_700_000),
                values: vec![0.0, 0.0],
            },
        ];
        let p = series_points(&q, &rows);
        let got: Vec<(&str, serde_json::Value)> = p
            .iter()
            .map(|p| (p.window_start.as_str(), p.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("2024-03-13T10:00:00Z", serde_json::Value::Null),
                ("2024-03-13T10:15:00Z", serde_json::json!(1.0 / 3.0)),
                ("2024-03-13T10:30:00Z", serde_json::Value::Null),
                ("2024-03-13T10:45:00Z", serde_json::Value::Null),
            ]
        );
        // Full precision: 0.3333333333333333, not a rounded 0.33.
        assert_eq!(
            serde_json::to_string(&p[1].value).ok().as_deref(),
            Some("0.3333333333333333")
        );
    }

    #[test]
    fn counts_are_integers_and_missing_windows_zero() {
        let q = query(Metric::Events, WindowSpec::tumbling("1h", 3_600_000), 2);
        let rows = [SeriesRow {
            window_start: ((T0 + 3_600_000) / 1000) as u32,
            values: vec![7.0],
        }];
        let p = series_points(&q, &rows);
        assert_eq!(p[0].value, serde_json::json!(0));
        assert_eq!(
            serde_json::to_string(&p[1].value).ok().as_deref(),
            Some("7")
        );
    }

    #[test]
    fn groups_keep_their_rank_and_other_comes_last_when_not_empty() {
        let q = query(Metric::BounceRate, WindowSpec::tumbling("1h", 3_600_000), 2);
        let (h0, h1) = ((T0 / 1000) as u32, ((T0 + 3_600_000) / 1000) as u32);
        let top = [
            GroupTotal {
                group: "web".into(),
                total: 5.0,
            },
            GroupTotal {
                group: "ios".into(),
                total: 2.0,
            },
        ];
        let row = |ws, g: &str, v: [f64; 2]| GroupRow {
            window_start: ws,
            group: g.into(),
            values: v.to_vec(),
        };
        let rows = [
            row(h0, "ios", [2.0, 2.0]),
            row(h0, "web", [4.0, 1.0]),
            row(h1, "web", [1.0, 0.0]),
            row(h1, OTHER, [1.0, 1.0]),
        ];
        let s = grouped(&q, &top, &rows);
        let shape: Vec<(&str, serde_json::Value, Vec<serde_json::Value>)> = s
            .iter()
            .map(|s| {
                (
                    s.group.as_str(),
                    s.total.clone(),
                    s.points.iter().map(|p| p.value.clone()).collect(),
                )
            })
            .collect();
        let j = |v: f64| serde_json::json!(v);
        let null = serde_json::Value::Null;
        assert_eq!(
            shape,
            vec![
                ("web", serde_json::json!(5), vec![j(0.25), j(0.0)]),
                ("ios", serde_json::json!(2), vec![j(1.0), null.clone()]),
                (OTHER, serde_json::json!(1), vec![null, j(1.0)]),
            ]
        );
        // An all-zero other (groups folded after being written) is left out.
        let rows = [row(h0, "web", [4.0, 1.0]), row(h1, OTHER, [0.0, 0.0])];
        assert_eq!(grouped(&q, &top[..1], &rows).len(), 1);
    }
}
