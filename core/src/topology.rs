//! A topology: which events, grouped how, over which windows, computing which metrics.

use serde::{Deserialize, Serialize};

use crate::metric::{Column, Component, FieldPath, Metric};
use crate::rows::RowTable;
use crate::session::SessionSpec;
use crate::window::WindowSpec;

/// The group that values past a dimension's cap fold into.
pub const OTHER: &str = "__other__";
/// A dimension's value for events without the field (or with `null` there).
pub const NOT_SET: &str = "(not set)";

/// Where a dimension's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DimensionSource {
    /// The event type.
    EventType,
    /// A metadata field: strings as they are, numbers and booleans as JSON text, objects and
    /// arrays as compact JSON, missing or `null` as [`NOT_SET`].
    Metadata(FieldPath),
}

/// A dimension to group by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dimension {
    /// `event_type` or `metadata.<path>`; also its name in the API (`group_by=`).
    pub name: String,
    /// Where its value comes from.
    pub source: DimensionSource,
    /// Most distinct values kept per window; further values fold into [`OTHER`]. Which values
    /// keep their own group is decided by hash, not by arrival order (the `max_values` values
    /// with the smallest 64-bit hash), so replays, corrections and any number of workers give
    /// the same groups.
    pub max_values: usize,
}

impl Dimension {
    /// Default [`Dimension::max_values`].
    pub const DEFAULT_MAX_VALUES: usize = 1_000;
    /// Largest accepted [`Dimension::max_values`].
    pub const MAX_MAX_VALUES: usize = 100_000;

    /// A dimension by name (`event_type` or `metadata.<path>`) with the default cap; `None`
    /// for any other name.
    pub fn parse(name: &str) -> Option<Dimension> {
        let source = if name == "event_type" {
            DimensionSource::EventType
        } else {
            DimensionSource::Metadata(FieldPath::parse(name)?)
        };
        Some(Dimension {
            name: name.to_owned(),
            source,
            max_values: Dimension::DEFAULT_MAX_VALUES,
        })
    }

    /// This dimension's value for an event.
    pub fn value_of(
        &self,
        event_type: &str,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> String {
        match &self.source {
            DimensionSource::EventType => event_type.to_owned(),
            DimensionSource::Metadata(path) => match path.get(metadata) {
                None | Some(serde_json::Value::Null) => NOT_SET.to_owned(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            },
        }
    }
}

/// Which events a topology reads; a topology's filters all have to pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    /// The event type is one of these.
    EventTypeIn(Vec<String>),
    /// The event type is none of these.
    EventTypeNotIn(Vec<String>),
    /// The metadata field equals this JSON value (`1` and `1.0` are equal numbers).
    MetadataEquals(FieldPath, serde_json::Value),
}

impl Filter {
    /// Whether an event passes.
    pub fn accepts(
        &self,
        event_type: &str,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        match self {
            Filter::EventTypeIn(types) => types.iter().any(|t| t == event_type),
            Filter::EventTypeNotIn(types) => !types.iter().any(|t| t == event_type),
            Filter::MetadataEquals(path, want) => {
                path.get(metadata)
                    .is_some_and(|v| match (v.as_f64(), want.as_f64()) {
                        (Some(a), Some(b)) => a == b,
                        _ => v == want,
                    })
            }
        }
    }
}

/// How distinct counts (`unique_*`) are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DistinctMode {
    /// Exact: a hash set of 128-bit id hashes per window (about 16–32 bytes per distinct id).
    #[default]
    Exact,
    /// HyperLogLog with 2^12 six-bit registers (Flajolet et al. 2007; the `cardinality-estimator`
    /// crate: HyperLogLog++'s dense registers with the LogLog-Beta bias correction of Qin et al.
    /// 2016, which also covers the small range): relative standard error 1.04/√4096 ≈ 1.6 %, and
    /// exact (up to hash collisions) while a window and group has at most 128 distinct ids. At
    /// most about 3 KiB per window, group and distinct column whatever the count (8 bytes up to
    /// 2 ids, 4 bytes per id up to 128).
    Approx,
}

impl DistinctMode {
    /// Relative standard error of the counts, 0 for exact.
    pub fn standard_error(self) -> f64 {
        match self {
            DistinctMode::Exact => 0.0,
            DistinctMode::Approx => 1.04 / 64.0,
        }
    }
}

/// A topology description is invalid. `key` is the offending key, written as in a topology
/// file (`windows[2].slide`, `metrics[0]`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct TopologyError {
    /// The key, as in the file.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> TopologyError {
    TopologyError {
        key: key.into(),
        message: message.into(),
    }
}

/// A validated topology. Build one with [`Topology::builder`] (topology files are parsed into
/// the builder, so both give the same checks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// Name: lowercase letters, digits and `_`, starting with a letter, at most 48 bytes.
    pub name: String,
    /// Free text.
    pub description: String,
    /// ClickHouse table of its window metrics (default `rollups_<name>`).
    pub table: String,
    /// Filters, all of which an event must pass.
    pub filters: Vec<Filter>,
    /// Dimensions to group by (besides the all-events row).
    pub dimensions: Vec<Dimension>,
    /// Window kinds.
    pub windows: Vec<WindowSpec>,
    /// Sessions, when any session metric is computed.
    pub sessions: Option<SessionSpec>,
    /// Metrics, in declaration order.
    pub metrics: Vec<Metric>,
    /// Distinct-count mode.
    pub distinct: DistinctMode,
}

impl Topology {
    /// A builder for a topology called `name`.
    ///
    /// ```
    /// use tally_core::{Dimension, Metric, SessionSpec, Topology, WindowSpec};
    /// let t = Topology::builder("web_sessions")
    ///     .window(WindowSpec::tumbling("1h", 3_600_000))
    ///     .window(WindowSpec::hopping("1h_15m", 3_600_000, 900_000))
    ///     .sessions(SessionSpec::default())
    ///     .dimension(Dimension::parse("metadata.platform").unwrap())
    ///     .metric(Metric::Events)
    ///     .metric(Metric::BounceRate)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(t.sessions_table(), "rollups_web_sessions_sessions");
    /// // Without sessions a session metric is refused, naming the key.
    /// let e = Topology::builder("x")
    ///     .window(WindowSpec::tumbling("1m", 60_000))
    ///     .metric(Metric::BounceRate)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(e.key, "metrics[0]");
    /// ```
    pub fn builder(name: impl Into<String>) -> TopologyBuilder {
        TopologyBuilder {
            topology: Topology {
                name: name.into(),
                description: String::new(),
                table: String::new(),
                filters: Vec::new(),
                dimensions: Vec::new(),
                windows: Vec::new(),
                sessions: None,
                metrics: Vec::new(),
                distinct: DistinctMode::Exact,
            },
        }
    }

    /// The ClickHouse table of its session metrics: `<table>_sessions`.
    pub fn sessions_table(&self) -> String {
        format!("{}_sessions", self.table)
    }

    /// The table of `table`.
    pub fn table_name(&self, table: RowTable) -> String {
        match table {
            RowTable::Windows => self.table.clone(),
            RowTable::Sessions => self.sessions_table(),
        }
    }

    /// The stored columns of one of its tables, in order (each component once, in the order the
    /// metrics first need them). Empty when no metric is stored there.
    pub fn columns(&self, table: RowTable) -> Vec<Column> {
        let mut out: Vec<Column> = Vec::new();
        for c in self.metrics.iter().flat_map(Metric::components) {
            let wanted = c.is_session() == (table == RowTable::Sessions);
            if wanted && !out.iter().any(|o| o.component == c) {
                out.push(c.column());
            }
        }
        out
    }

    /// How long after a window's end its rows in `table` can still change when nothing is
    /// late (ms): `grace_ms` for window metrics, [`SessionSpec::window_delay_ms`] for session
    /// metrics. A window's final rows are written at its end plus this.
    pub fn close_delay_ms(&self, table: RowTable, grace_ms: u64) -> u64 {
        match (table, self.sessions) {
            (RowTable::Sessions, Some(s)) => s.window_delay_ms(grace_ms),
            _ => grace_ms,
        }
    }

    /// Which table holds a metric.
    pub fn table_of(metric: &Metric) -> RowTable {
        if metric.needs_sessions() {
            RowTable::Sessions
        } else {
            RowTable::Windows
        }
    }

    /// The metadata fields numeric metrics read, each once, in order.
    pub fn fields(&self) -> Vec<FieldPath> {
        let mut out: Vec<FieldPath> = Vec::new();
        for m in &self.metrics {
            if let Metric::Sum(p) | Metric::Avg(p) | Metric::Max(p) = m {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// A window kind by name.
    pub fn window(&self, name: &str) -> Option<&WindowSpec> {
        self.windows.iter().find(|w| w.name == name)
    }

    /// A dimension by name.
    pub fn dimension(&self, name: &str) -> Option<&Dimension> {
        self.dimensions.iter().find(|d| d.name == name)
    }

    /// A metric by name.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.name() == name)
    }

    /// The longest window, ms.
    pub fn longest_window_ms(&self) -> u64 {
        self.windows.iter().map(|w| w.size_ms).max().unwrap_or(0)
    }

    /// Whether an event passes every filter.
    pub fn accepts(
        &self,
        event_type: &str,
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        self.filters.iter().all(|f| f.accepts(event_type, metadata))
    }

    /// Whether it has a table of `table`'s kind (some metric stored there).
    pub fn has(&self, table: RowTable) -> bool {
        !self.columns(table).is_empty()
    }
}

/// Builds a [`Topology`]; [`TopologyBuilder::build`] validates it.
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    topology: Topology,
}

impl TopologyBuilder {
    /// Sets the description.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.topology.description = text.into();
        self
    }

    /// Sets the window-metrics table (default `rollups_<name>`).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.topology.table = table.into();
        self
    }

    /// Adds a filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.topology.filters.push(filter);
        self
    }

    /// Adds a dimension.
    pub fn dimension(mut self, dimension: Dimension) -> Self {
        self.topology.dimensions.push(dimension);
        self
    }

    /// Adds a window kind.
    pub fn window(mut self, window: WindowSpec) -> Self {
        self.topology.windows.push(window);
        self
    }

    /// Declares sessions.
    pub fn sessions(mut self, sessions: SessionSpec) -> Self {
        self.topology.sessions = Some(sessions);
        self
    }

    /// Adds a metric.
    pub fn metric(mut self, metric: Metric) -> Self {
        self.topology.metrics.push(metric);
        self
    }

    /// Sets the distinct-count mode.
    pub fn distinct(mut self, mode: DistinctMode) -> Self {
        self.topology.distinct = mode;
        self
    }

    /// Validates and returns the topology.
    ///
    /// Errors ([`TopologyError`], naming the key): a bad name or table name; no window, a
    /// window name used twice or not made of letters, digits and `_`, a size or slide that is
    /// not a positive whole number of seconds, a slide longer than the size or not dividing
    /// it; no metric, a metric listed twice, a session metric without sessions; a dimension
    /// listed twice or with `max_values` outside 1..=100000; a session gap of 0 or a
    /// `max_duration` shorter than the gap; two names that map to the same column.
    pub fn build(self) -> Result<Topology, TopologyError> {
        let mut t = self.topology;
        if !is_identifier(&t.name) || t.name.len() > 48 {
            return Err(invalid(
                "name",
                format!(
                    "{:?} is not a valid name: use lowercase letters, digits and `_`, starting \
                     with a letter, at most 48 characters",
                    t.name
                ),
            ));
        }
        if t.table.is_empty() {
            t.table = format!("rollups_{}", t.name);
        } else if !is_identifier(&t.table) {
            return Err(invalid(
                "table",
                format!(
                    "{:?} is not a valid table name (lowercase letters, digits, `_`)",
                    t.table
                ),
            ));
        }
        check_windows(&t.windows)?;
        check_metrics(&t)?;
        check_dimensions(&t.dimensions)?;
        if let Some(s) = &t.sessions {
            if s.gap_ms == 0 {
                return Err(invalid("sessions.gap", "must be positive, e.g. \"30m\""));
            }
            if s.max_duration_ms < s.gap_ms {
                return Err(invalid("sessions.max_duration", "must be at least the gap"));
            }
        }
        Ok(t)
    }
}

fn is_identifier(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn check_windows(windows: &[WindowSpec]) -> Result<(), TopologyError> {
    if windows.is_empty() {
        return Err(invalid("windows", "declare at least one window"));
    }
    for (i, w) in windows.iter().enumerate() {
        let key = |k: &str| format!("windows[{i}].{k}");
        let name_ok = !w.name.is_empty()
            && w.name.len() <= 32
            && w.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(invalid(
                key("name"),
                format!("{:?}: use letters, digits and `_` (at most 32)", w.name),
            ));
        }
        if windows[..i].iter().any(|o| o.name == w.name) {
            return Err(invalid(
                key("name"),
                format!("window {:?} is declared twice", w.name),
            ));
        }
        if w.size_ms == 0 || !w.size_ms.is_multiple_of(1_000) {
            return Err(invalid(
                key("size"),
                "must be a positive whole number of seconds",
            ));
        }
        if w.slide_ms == 0 || !w.slide_ms.is_multiple_of(1_000) {
            return Err(invalid(
                key("slide"),
                "must be a positive whole number of seconds",
            ));
        }
        if w.slide_ms > w.size_ms || !w.size_ms.is_multiple_of(w.slide_ms) {
            return Err(invalid(
                key("slide"),
                "must divide the size (a hopping window's slide is shorter than its size)",
            ));
        }
        if w.size_ms / w.slide_ms > 1_440 {
            return Err(invalid(
                key("slide"),
                "at most 1440 windows per event (size / slide)",
            ));
        }
    }
    Ok(())
}

fn check_metrics(t: &Topology) -> Result<(), TopologyError> {
    if t.metrics.is_empty() {
        return Err(invalid("metrics", "declare at least one metric"));
    }
    for (i, m) in t.metrics.iter().enumerate() {
        if t.metrics[..i].contains(m) {
            return Err(invalid(
                format!("metrics[{i}]"),
                format!("{m} is listed twice"),
            ));
        }
        if m.needs_sessions() && t.sessions.is_none() {
            return Err(invalid(
                format!("metrics[{i}]"),
                format!("{m} needs a [sessions] section"),
            ));
        }
    }
    let mut seen: Vec<(String, Component)> = Vec::new();
    for c in t.metrics.iter().flat_map(Metric::components) {
        let col = c.column();
        if let Some((_, other)) = seen.iter().find(|(n, o)| *n == col.name && *o != c) {
            let field = |c: &Component| match c {
                Component::FieldSum(p) | Component::FieldCount(p) | Component::FieldMax(p) => {
                    p.to_string()
                }
                other => other.column().name,
            };
            return Err(invalid(
                "metrics",
                format!(
                    "{} and {} would both be stored as column {:?}: rename one field",
                    field(&c),
                    field(other),
                    col.name
                ),
            ));
        }
        seen.push((col.name, c));
    }
    Ok(())
}

fn check_dimensions(dimensions: &[Dimension]) -> Result<(), TopologyError> {
    for (i, d) in dimensions.iter().enumerate() {
        if dimensions[..i].iter().any(|o| o.name == d.name) {
            return Err(invalid(
                format!("dimensions[{i}]"),
                format!("{} is listed twice", d.name),
            ));
        }
        if d.max_values == 0 || d.max_values > Dimension::MAX_MAX_VALUES {
            return Err(invalid(
                format!("dimensions[{i}].max_values"),
                format!("must be between 1 and {}", Dimension::MAX_MAX_VALUES),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TopologyBuilder {
        Topology::builder("t").window(WindowSpec::tumbling("1m", 60_000))
    }

    #[test]
    fn columns_split_by_table_each_once() {
        let p = FieldPath::parse("metadata.price").expect("path");
        let t = base()
            .sessions(SessionSpec::default())
            .metric(Metric::Events)
            .metric(Metric::Sum(p.clone()))
            .metric(Metric::Avg(p))
            .metric(Metric::BounceRate)
            .metric(Metric::Sessions)
            .build()
            .expect("valid");
        let names =
            |table| -> Vec<String> { t.columns(table).into_iter().map(|c| c.name).collect() };
        assert_eq!(
            names(RowTable::Windows),
            ["events", "sum_metadata_price", "count_metadata_price"]
        );
        assert_eq!(names(RowTable::Sessions), ["sessions", "bounced_sessions"]);
        assert_eq!(t.table, "rollups_t");
    }

    #[test]
    fn every_rule_names_its_key() {
        let cases: Vec<(TopologyBuilder, &str)> = vec![
            (Topology::builder("Bad Name").metric(Metric::Events), "name"),
            (Topology::builder("t").metric(Metric::Events), "windows"),
            (base(), "metrics"),
            (
                base().metric(Metric::Events).metric(Metric::Events),
                "metrics[1]",
            ),
            (
                base()
                    .window(WindowSpec::hopping("h", 3_600_000, 7 * 60_000))
                    .metric(Metric::Events),
                "windows[1].slide",
            ),
            (
                base()
                    .window(WindowSpec::tumbling("1m", 120_000))
                    .metric(Metric::Events),
                "windows[1].name",
            ),
            (
                base()
                    .window(WindowSpec::tumbling("x", 1_500))
                    .metric(Metric::Events),
                "windows[1].size",
            ),
            (
                base()
                    .sessions(SessionSpec {
                        gap_ms: 10_000,
                        max_duration_ms: 5_000,
                    })
                    .metric(Metric::Sessions),
                "sessions.max_duration",
            ),
            (
                base()
                    .dimension(Dimension {
                        max_values: 0,
                        ..Dimension::parse("event_type").expect("d")
                    })
                    .metric(Metric::Events),
                "dimensions[0].max_values",
            ),
        ];
        for (builder, key) in cases {
            let e = builder.build().expect_err(key);
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn filters_and_dimension_values() {
        let meta: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"platform":"ios","n":2,"deep":{"x":true}}"#).expect("json");
        let d = |n: &str| Dimension::parse(n).expect(n);
        assert_eq!(d("metadata.platform").value_of("click", &meta), "ios");
        assert_eq!(d("metadata.n").value_of("click", &meta), "2");
        assert_eq!(d("metadata.deep.x").value_of("click", &meta), "true");
        assert_eq!(d("metadata.absent").value_of("click", &meta), NOT_SET);
        assert_eq!(d("event_type").value_of("click", &meta), "click");
        assert!(Dimension::parse("platform").is_none());
        let p = |s: &str| FieldPath::parse(s).expect(s);
        assert!(
            Filter::MetadataEquals(p("metadata.n"), serde_json::json!(2.0)).accepts("a", &meta)
        );
        assert!(
            !Filter::MetadataEquals(p("metadata.platform"), serde_json::json!("web"))
                .accepts("a", &meta)
        );
        assert!(Filter::EventTypeNotIn(vec!["b".into()]).accepts("a", &meta));
        assert!(!Filter::EventTypeIn(vec!["b".into()]).accepts("a", &meta));
    }
}
