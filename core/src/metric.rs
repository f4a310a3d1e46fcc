//! Metrics a topology can compute, and the stored columns (components) they are derived from.

use serde::{Deserialize, Serialize};

/// A path into an event's `metadata` object, written `metadata.a.b` (keys `a` then `b`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldPath(pub Vec<String>);

impl FieldPath {
    /// Parses `metadata.key[.key...]`; keys are non-empty and made of letters, digits, `_` and
    /// `-`. `None` otherwise.
    pub fn parse(text: &str) -> Option<FieldPath> {
        let rest = text.strip_prefix("metadata.")?;
        let keys: Vec<String> = rest.split('.').map(str::to_owned).collect();
        let ok = keys.iter().all(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
        ok.then_some(FieldPath(keys))
    }

    /// The value at this path in `metadata`, if any.
    pub fn get<'a>(
        &self,
        metadata: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Option<&'a serde_json::Value> {
        let (first, rest) = self.0.split_first()?;
        let mut v = metadata.get(first)?;
        for key in rest {
            v = v.as_object()?.get(key)?;
        }
        Some(v)
    }

    /// A column-name fragment: `metadata.a.b-c` → `metadata_a_b_c`.
    pub fn column_fragment(&self) -> String {
        let mut s = String::from("metadata");
        for k in &self.0 {
            s.push('_');
            s.extend(k.chars().map(|c| if c == '-' { '_' } else { c }));
        }
        s
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "metadata.{}", self.0.join("."))
    }
}

/// A metric, as named in topology files and in `GET /reports?metric=`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Metric {
    /// Events (distinct event ids), `events`.
    Events,
    /// Distinct users, `unique_users`.
    UniqueUsers,
    /// Distinct non-empty client `session_id`s, `unique_sessions`.
    UniqueSessions,
    /// Distinct event types, `unique_event_types`.
    UniqueEventTypes,
    /// Sessions (derived from event time, see [`crate::SessionSpec`]) starting in the window,
    /// `sessions`.
    Sessions,
    /// Sessions with exactly one event / sessions, in [0, 1]; `bounce_rate`.
    BounceRate,
    /// Mean of (last − first event time) over sessions, seconds; `avg_session_duration_s`.
    AvgSessionDurationS,
    /// Events in sessions / sessions, `events_per_session`.
    EventsPerSession,
    /// Sum of a numeric metadata field, `sum(metadata.x)`.
    Sum(FieldPath),
    /// Mean of a numeric metadata field over events that carry it, `avg(metadata.x)`.
    Avg(FieldPath),
    /// Largest value of a numeric metadata field, `max(metadata.x)`.
    Max(FieldPath),
}

/// What one stored column accumulates. Rollup rows carry one value per component.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Component {
    /// Events.
    Events,
    /// Distinct users.
    UniqueUsers,
    /// Distinct non-empty client session ids.
    UniqueSessions,
    /// Distinct event types.
    UniqueEventTypes,
    /// Sum of a field over events carrying a number there.
    FieldSum(FieldPath),
    /// Events carrying a number at the field.
    FieldCount(FieldPath),
    /// Largest number at the field (0 when `FieldCount` is 0).
    FieldMax(FieldPath),
    /// Sessions starting in the window.
    Sessions,
    /// Of those, sessions with one event.
    BouncedSessions,
    /// Sum of their durations, ms.
    SessionDurationMs,
    /// Sum of their events.
    SessionEvents,
}

/// The ClickHouse type of a stored column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ColumnKind {
    /// `UInt64`.
    UInt64,
    /// `Float64`.
    Float64,
}

impl ColumnKind {
    /// The ClickHouse type name.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnKind::UInt64 => "UInt64",
            ColumnKind::Float64 => "Float64",
        }
    }
}

/// A stored column of a rollup table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// What it holds.
    pub component: Component,
    /// Its type.
    pub kind: ColumnKind,
}

impl Component {
    /// The column this component is stored in.
    pub fn column(&self) -> Column {
        let (name, kind) = match self {
            Component::Events => ("events".to_owned(), ColumnKind::UInt64),
            Component::UniqueUsers => ("unique_users".to_owned(), ColumnKind::UInt64),
            Component::UniqueSessions => ("unique_sessions".to_owned(), ColumnKind::UInt64),
            Component::UniqueEventTypes => ("unique_event_types".to_owned(), ColumnKind::UInt64),
            Component::FieldSum(p) => (format!("sum_{}", p.column_fragment()), ColumnKind::Float64),
            Component::FieldCount(p) => {
                (format!("count_{}", p.column_fragment()), ColumnKind::UInt64)
            }
            Component::FieldMax(p) => (format!("max_{}", p.column_fragment()), ColumnKind::Float64),
            Component::Sessions => ("sessions".to_owned(), ColumnKind::UInt64),
            Component::BouncedSessions => ("bounced_sessions".to_owned(), ColumnKind::UInt64),
            Component::SessionDurationMs => ("session_duration_ms".to_owned(), ColumnKind::UInt64),
            Component::SessionEvents => ("session_events".to_owned(), ColumnKind::UInt64),
        };
        Column {
            name,
            component: self.clone(),
            kind,
        }
    }

    /// Whether the session operator (not the window rollup) computes it.
    pub fn is_session(&self) -> bool {
        matches!(
            self,
            Component::Sessions
                | Component::BouncedSessions
                | Component::SessionDurationMs
                | Component::SessionEvents
        )
    }

    /// Whether it is a distinct count (exact or HyperLogLog, see [`crate::DistinctMode`]).
    pub fn is_distinct(&self) -> bool {
        matches!(
            self,
            Component::UniqueUsers | Component::UniqueSessions | Component::UniqueEventTypes
        )
    }
}

impl Metric {
    /// Every metric name without a field, as accepted by [`Metric::parse`].
    pub const NAMES: [&'static str; 8] = [
        "events",
        "unique_users",
        "unique_sessions",
        "unique_event_types",
        "sessions",
        "bounce_rate",
        "avg_session_duration_s",
        "events_per_session",
    ];

    /// Parses a metric name: one of [`Metric::NAMES`], or `sum(metadata.x)`, `avg(...)`,
    /// `max(...)` of a metadata field path.
    pub fn parse(text: &str) -> Option<Metric> {
        let simple = match text {
            "events" => Some(Metric::Events),
            "unique_users" => Some(Metric::UniqueUsers),
            "unique_sessions" => Some(Metric::UniqueSessions),
            "unique_event_types" => Some(Metric::UniqueEventTypes),
            "sessions" => Some(Metric::Sessions),
            "bounce_rate" => Some(Metric::BounceRate),
            "avg_session_duration_s" => Some(Metric::AvgSessionDurationS),
            "events_per_session" => Some(Metric::EventsPerSession),
            _ => None,
        };
        if simple.is_some() {
            return simple;
        }
        let (func, rest) = text.split_once('(')?;
        let path = FieldPath::parse(rest.strip_suffix(')')?.trim())?;
        match func.trim() {
            "sum" => Some(Metric::Sum(path)),
            "avg" => Some(Metric::Avg(path)),
            "max" => Some(Metric::Max(path)),
            _ => None,
        }
    }

    /// The name [`Metric::parse`] reads.
    pub fn name(&self) -> String {
        match self {
            Metric::Events => "events".into(),
            Metric::UniqueUsers => "unique_users".into(),
            Metric::UniqueSessions => "unique_sessions".into(),
            Metric::UniqueEventTypes => "unique_event_types".into(),
            Metric::Sessions => "sessions".into(),
            Metric::BounceRate => "bounce_rate".into(),
            Metric::AvgSessionDurationS => "avg_session_duration_s".into(),
            Metric::EventsPerSession => "events_per_session".into(),
            Metric::Sum(p) => format!("sum({p})"),
            Metric::Avg(p) => format!("avg({p})"),
            Metric::Max(p) => format!("max({p})"),
        }
    }

    /// Whether it is computed from sessions (needs `[sessions]` in the topology).
    pub fn needs_sessions(&self) -> bool {
        matches!(
            self,
            Metric::Sessions
                | Metric::BounceRate
                | Metric::AvgSessionDurationS
                | Metric::EventsPerSession
        )
    }

    /// The stored components it is derived from.
    pub fn components(&self) -> Vec<Component> {
        match self {
            Metric::Events => vec![Component::Events],
            Metric::UniqueUsers => vec![Component::UniqueUsers],
            Metric::UniqueSessions => vec![Component::UniqueSessions],
            Metric::UniqueEventTypes => vec![Component::UniqueEventTypes],
            Metric::Sessions => vec![Component::Sessions],
            Metric::BounceRate => vec![Component::Sessions, Component::BouncedSessions],
            Metric::AvgSessionDurationS => vec![Component::Sessions, Component::SessionDurationMs],
            Metric::EventsPerSession => vec![Component::Sessions, Component::SessionEvents],
            Metric::Sum(p) | Metric::Avg(p) => vec![
                Component::FieldSum(p.clone()),
                Component::FieldCount(p.clone()),
            ],
            Metric::Max(p) => vec![
                Component::FieldMax(p.clone()),
                Component::FieldCount(p.clone()),
            ],
        }
    }

    /// The metric's value from its components' values (in [`Metric::components`] order).
    /// Ratios and means of no sessions / no values are `None` (reported as `null`); counts and
    /// sums are never `None`. Unrounded.
    pub fn value(&self, components: &[f64]) -> Option<f64> {
        let c = |i: usize| components.get(i).copied().unwrap_or(0.0);
        let ratio = |num: f64, den: f64| (den > 0.0).then(|| num / den);
        match self {
            Metric::Events
            | Metric::UniqueUsers
            | Metric::UniqueSessions
            | Metric::UniqueEventTypes
            | Metric::Sessions
            | Metric::Sum(_) => Some(c(0)),
            Metric::BounceRate | Metric::EventsPerSession => ratio(c(1), c(0)),
            Metric::AvgSessionDurationS => ratio(c(1) / 1000.0, c(0)),
            Metric::Avg(_) => ratio(c(0), c(1)),
            Metric::Max(_) => (c(1) > 0.0).then(|| c(0)),
        }
    }

    /// The unit of its values, for docs and `GET /topologies`.
    pub fn unit(&self) -> &'static str {
        match self {
            Metric::BounceRate => "ratio in [0, 1]",
            Metric::AvgSessionDurationS => "seconds",
            Metric::EventsPerSession => "events per session",
            Metric::Sum(_) | Metric::Avg(_) | Metric::Max(_) => "the field's unit",
            _ => "count",
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Metric::NAMES
            .iter()
            .map(|s| s.to_string())
            .chain(["sum(metadata.price)".into(), "max(metadata.a.b-c)".into()])
        {
            let m = Metric::parse(&name).expect(&name);
            assert_eq!(m.name(), name);
        }
        assert_eq!(Metric::parse("median(metadata.x)"), None);
        assert_eq!(Metric::parse("sum(price)"), None);
        assert_eq!(Metric::parse("sum(metadata.)"), None);
        let p = FieldPath::parse("metadata.a.b-c").expect("path");
        assert_eq!(
            Component::FieldMax(p).column().name,
            "max_metadata_a_b_c".to_owned()
        );
    }

    #[test]
    fn derived_values() {
        assert_eq!(Metric::BounceRate.value(&[4.0, 1.0]), Some(0.25));
        assert_eq!(Metric::BounceRate.value(&[0.0, 0.0]), None);
        assert_eq!(
            Metric::AvgSessionDurationS.value(&[2.0, 3_000.0]),
            Some(1.5)
        );
        assert_eq!(Metric::EventsPerSession.value(&[3.0, 7.0]), Some(7.0 / 3.0));
        let p = FieldPath::parse("metadata.x").expect("path");
        assert_eq!(Metric::Avg(p.clone()).value(&[9.0, 2.0]), Some(4.5));
        assert_eq!(Metric::Max(p).value(&[0.0, 0.0]), None);
    }

    #[test]
    fn paths_read_nested_metadata() {
        let meta: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"a":{"b":3},"c":"x"}"#).expect("json");
        let p = FieldPath::parse("metadata.a.b").expect("path");
        assert_eq!(p.get(&meta), Some(&serde_json::json!(3)));
        assert_eq!(
            FieldPath::parse("metadata.c.d").expect("p").get(&meta),
            None
        );
    }
}
