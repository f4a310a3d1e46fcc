//! Each topology's ClickHouse tables: their DDL, their migrations and what a migration would do.
//!
//! A topology writes its window metrics to `table` and, when it has session metrics, its
//! session metrics to `<table>_sessions`; both have the same layout:
//!
//! ```text
//! window_name String, window_start DateTime, dimension String, value String,
//! <one column per Topology::columns(kind)>, is_final UInt8, version UInt64
//! ReplacingMergeTree(version), PARTITION BY toYYYYMM(window_start),
//! ORDER BY (window_name, dimension, value, window_start)
//! ```
//!
//! What was applied is recorded in `tally_topology_tables`, one row per change of one table:
//! `(topology, table_kind, version, revision, table_name, definition, applied_at)`, where
//! `definition` is the JSON of a [`TableDefinition`]. [`migrate_topology`] compares the
//! topology with the latest record and the tables on the server:
//! - new: `CREATE TABLE`;
//! - additive (a new metric: `ALTER TABLE ... ADD COLUMN`, one per new column; a new window
//!   kind or dimension, a dimension's cap: no DDL, only a new record);
//! - breaking (a window kind's size or slide changed under the same name, the filters, the
//!   distinct mode, the sessions' gap or maximum, a column's type, the `table` name): a new
//!   *version* of the topology's tables, `<table>_v<N>` (and `<table>_v<N>_sessions`), created
//!   empty; the old tables are kept and no longer written (`tally rebuild` refills the new ones
//!   from the raw events).
//!
//! Nothing is ever dropped: a removed metric's column and a removed kind's table stay. The
//! `product_analytics` topology's first table gets the rows of the pre-topology `rollups`
//! table (which is kept). Everything runs on ClickHouse 18.16 and on current releases: no
//! `IF NOT EXISTS` on `ADD COLUMN` (18.16 lacks it): the columns are read from `system.columns`
//! first.

mod decide;
mod server;

use serde::{Deserialize, Serialize};
use tally_core::{
    Column, Dimension, DistinctMode, Filter, RowTable, SessionSpec, Topology, WindowSpec,
};

use super::config::ClickHouseConfig;

pub use server::{current_tables, migrate_topology, plan_topology, plan_topology_offline};

/// The ledger of applied topology tables.
pub const TOPOLOGY_TABLES: &str = "tally_topology_tables";

/// What a table's rows depend on, as recorded in `tally_topology_tables.definition` (JSON):
/// a difference in `table`, a window's size or slide, `filters`, `distinct` or `sessions` is
/// breaking; in `windows` (added or removed), `dimensions` or `columns` (added or removed) it
/// is additive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableDefinition {
    /// The topology's `table` (the version-1 name of its window table).
    pub table: String,
    /// Window kinds.
    pub windows: Vec<WindowSpec>,
    /// Filters.
    pub filters: Vec<Filter>,
    /// Dimensions, with their caps.
    pub dimensions: Vec<Dimension>,
    /// Distinct-count mode (window table only).
    pub distinct: Option<DistinctMode>,
    /// Session settings (session table only).
    pub sessions: Option<SessionSpec>,
    /// The stored columns the topology writes.
    pub columns: Vec<Column>,
}

impl TableDefinition {
    /// The definition of `topology`'s table of `kind`.
    pub fn of(topology: &Topology, kind: RowTable) -> TableDefinition {
        TableDefinition {
            table: topology.table.clone(),
            windows: topology.windows.clone(),
            filters: topology.filters.clone(),
            dimensions: topology.dimensions.clone(),
            distinct: (kind == RowTable::Windows).then_some(topology.distinct),
            sessions: match kind {
                RowTable::Windows => None,
                RowTable::Sessions => topology.sessions,
            },
            columns: topology.columns(kind),
        }
    }
}

/// One statement of a migration, and why it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The SQL.
    pub sql: String,
    /// Why, in words (`create rollups_web_sessions (window metrics)`).
    pub why: String,
}

/// What [`migrate_topology`] did, or [`plan_topology`] would do, for one topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyMigration {
    /// The topology's name.
    pub topology: String,
    /// The version of its tables afterwards (1, then +1 per breaking change).
    pub version: u32,
    /// Its tables afterwards: kind and name (without the database).
    pub tables: Vec<(RowTable, String)>,
    /// DDL and data statements, in order. Empty: the tables are up to date.
    pub steps: Vec<Step>,
    /// The inserts into `tally_topology_tables` recording the result.
    pub records: Vec<String>,
    /// What to know: breaking changes, kept columns and tables, copied rows, rebuild advice.
    pub notes: Vec<String>,
    /// Whether this was compared with the server (`false`: an offline plan, which assumes
    /// nothing exists yet).
    pub online: bool,
}

impl TopologyMigration {
    /// Whether nothing has to be (or was) done.
    pub fn is_up_to_date(&self) -> bool {
        self.steps.is_empty() && self.records.is_empty()
    }
}

impl std::fmt::Display for TopologyMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables: Vec<&str> = self.tables.iter().map(|(_, n)| n.as_str()).collect();
        write!(
            f,
            "topology {}: version {}, tables {}",
            self.topology,
            self.version,
            tables.join(", ")
        )?;
        if self.is_up_to_date() {
            write!(f, "; up to date")?;
        }
        for step in &self.steps {
            write!(f, "\n  - {}", step.why)?;
        }
        for note in &self.notes {
            write!(f, "\n  note: {note}")?;
        }
        Ok(())
    }
}

/// The name of `topology`'s table of `kind` at `version`: `<table>` and `<table>_sessions`
/// for version 1, `<table>_v<N>` and `<table>_v<N>_sessions` after.
pub fn versioned_table(topology: &Topology, kind: RowTable, version: u32) -> String {
    let base = if version <= 1 {
        topology.table.clone()
    } else {
        format!("{}_v{version}", topology.table)
    };
    match kind {
        RowTable::Windows => base,
        RowTable::Sessions => format!("{base}_sessions"),
    }
}

/// The key columns before the metric columns, and the ones after, with their types.
pub const LEADING_COLUMNS: [(&str, &str); 4] = [
    ("window_name", "String"),
    ("window_start", "DateTime"),
    ("dimension", "String"),
    ("value", "String"),
];
/// See [`LEADING_COLUMNS`].
pub const TRAILING_COLUMNS: [(&str, &str); 2] = [("is_final", "UInt8"), ("version", "UInt64")];

/// `CREATE TABLE IF NOT EXISTS` of `topology`'s table `name` of `kind` (see the module docs).
pub fn topology_table_sql(
    config: &ClickHouseConfig,
    topology: &Topology,
    kind: RowTable,
    name: &str,
) -> String {
    let columns: Vec<String> = LEADING_COLUMNS
        .iter()
        .map(|(n, t)| format!("{n} {t}"))
        .chain(
            topology
                .columns(kind)
                .iter()
                .map(|c| format!("{} {}", c.name, c.kind.sql())),
        )
        .chain(TRAILING_COLUMNS.iter().map(|(n, t)| format!("{n} {t}")))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{name} (\n    {}\n) ENGINE = ReplacingMergeTree(version)\n\
         PARTITION BY toYYYYMM(window_start)\nORDER BY (window_name, dimension, value, window_start)",
        columns.join(",\n    "),
        db = config.database
    )
}

/// `CREATE TABLE IF NOT EXISTS` of the ledger [`TOPOLOGY_TABLES`].
pub fn topology_tables_sql(config: &ClickHouseConfig) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{TOPOLOGY_TABLES} (topology String, table_kind String, \
         version UInt32, revision UInt32, table_name String, definition String, \
         applied_at DateTime) ENGINE = MergeTree ORDER BY (topology, table_kind, version, revision)",
        config.database
    )
}

/// `windows` or `sessions`, as in `tally_topology_tables.table_kind`.
pub fn kind_name(kind: RowTable) -> &'static str {
    match kind {
        RowTable::Windows => "windows",
        RowTable::Sessions => "sessions",
    }
}

/// A ClickHouse string literal (quotes and backslashes escaped).
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::{Metric, SessionSpec, WindowSpec};

    fn topology(name: &str, gap_ms: u64) -> Topology {
        Topology::builder(name)
            .window(WindowSpec::tumbling("1h", 3_600_000))
            .sessions(SessionSpec {
                gap_ms,
                max_duration_ms: 86_400_000,
            })
            .metric(Metric::Events)
            .metric(Metric::BounceRate)
            .build()
            .expect("valid")
    }

    #[test]
    fn offline_plan_creates_everything() {
        let config = ClickHouseConfig::default();
        let m = plan_topology_offline(&config, &topology("shop", 60_000));
        let whys: Vec<&str> = m.steps.iter().map(|s| s.why.as_str()).collect();
        assert_eq!(
            whys,
            [
                "create database tally (if missing)",
                "create tally_topology_tables (the record of applied topology tables)",
                "create rollups_shop (window metrics)",
                "create rollups_shop_sessions (session metrics)",
            ]
        );
        assert!(m.steps[3].sql.contains(
            "value String,\n    sessions UInt64,\n    bounced_sessions UInt64,\n    is_final UInt8"
        ));
        assert_eq!(m.records.len(), 2);
        assert!(!m.online && m.notes.is_empty());
        let pa = Topology::builder("product_analytics")
            .window(WindowSpec::tumbling("1m", 60_000))
            .metric(Metric::Events)
            .build()
            .expect("valid");
        let m = plan_topology_offline(&config, &pa);
        assert!(m.notes[0].contains("tally.rollups"), "{m}");
        assert!(m.notes[0].contains("WHERE granularity IN ('1m') AND event_type = ''"));
    }

    #[test]
    fn what_breaks_and_what_adds() {
        use decide::{changes, Change};
        let a = TableDefinition::of(&topology("t", 60_000), RowTable::Sessions);
        let b = TableDefinition::of(&topology("t", 120_000), RowTable::Sessions);
        assert!(matches!(&changes(&a, &b)[..], [Change::Breaking(t)] if t.contains("sessions")));
        // The window table does not depend on the sessions.
        let a = TableDefinition::of(&topology("t", 60_000), RowTable::Windows);
        let b = TableDefinition::of(&topology("t", 120_000), RowTable::Windows);
        assert!(changes(&a, &b).is_empty());
        let mut c = b.clone();
        c.windows.push(WindowSpec::tumbling("1d", 86_400_000));
        c.windows[0].size_ms = 7_200_000;
        c.windows[0].slide_ms = 7_200_000;
        assert_eq!(
            changes(&b, &c),
            [
                Change::Breaking("window `1h` changed from size 1h to size 2h".into()),
                Change::Additive(
                    "new window `1d` (size 1d): no DDL, its rows go to the same table".into()
                ),
            ]
        );
        assert_eq!(quote("a'b\\c"), "'a\\'b\\\\c'");
    }
}
