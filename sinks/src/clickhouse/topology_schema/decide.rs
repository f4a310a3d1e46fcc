//! What a migration does, decided from the topology and what the server holds. No I/O: the
//! server's state is gathered by `server.rs` (or assumed empty for an offline plan).

use std::collections::BTreeMap;

use serde::Deserialize;
use tally_core::{RowTable, Topology, WindowSpec};

use super::{
    kind_name, quote, topology_table_sql, topology_tables_sql, versioned_table, Step,
    TableDefinition, TopologyMigration, LEADING_COLUMNS, TOPOLOGY_TABLES, TRAILING_COLUMNS,
};
use crate::clickhouse::config::ClickHouseConfig;
use crate::SinkError;

/// One row of `tally_topology_tables`.
#[derive(Clone, Debug, clickhouse::Row, Deserialize)]
pub(super) struct Record {
    pub table_kind: String,
    pub version: u32,
    pub revision: u32,
    pub table_name: String,
    pub definition: String,
}

/// What the server holds that a migration depends on.
#[derive(Clone, Debug, Default)]
pub(super) struct ServerState {
    /// Whether `tally_topology_tables` exists.
    pub ledger: bool,
    /// The topology's records, any order.
    pub records: Vec<Record>,
    /// Tables of the database → their columns `(name, type)` in table order.
    pub columns: BTreeMap<String, Vec<(String, String)>>,
    /// Tables of the database → rows in active parts.
    pub rows: BTreeMap<String, u64>,
}

/// The windows of the pre-topology `rollups` table (`granularity`) and their sizes, ms.
const OLD_WINDOWS: [(&str, u64); 3] = [("1m", 60_000), ("1h", 3_600_000), ("1d", 86_400_000)];
/// The metric columns of the pre-topology `rollups` table.
const OLD_COLUMNS: [&str; 4] = [
    "events",
    "unique_users",
    "unique_sessions",
    "unique_event_types",
];

/// The kinds of table `t` writes.
pub(super) fn kinds(t: &Topology) -> Vec<RowTable> {
    [RowTable::Windows, RowTable::Sessions]
        .into_iter()
        .filter(|k| t.has(*k))
        .collect()
}

/// The latest record of each kind (largest version, then revision).
pub(super) fn latest(records: &[Record]) -> BTreeMap<&str, &Record> {
    let mut out: BTreeMap<&str, &Record> = BTreeMap::new();
    for r in records {
        let newer = out
            .get(r.table_kind.as_str())
            .is_none_or(|o| (r.version, r.revision) > (o.version, o.revision));
        if newer {
            out.insert(&r.table_kind, r);
        }
    }
    out
}

/// The recorded definition, or a conflict when it cannot be read.
pub(super) fn recorded(t: &Topology, r: &Record) -> Result<TableDefinition, SinkError> {
    serde_json::from_str(&r.definition).map_err(|e| SinkError::TopologyConflict {
        topology: t.name.clone(),
        table: r.table_name.clone(),
        reason: format!("its definition in {TOPOLOGY_TABLES} cannot be read ({e})"),
    })
}

/// A difference between a recorded and a desired definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Old rows mean something else: a new version of the tables.
    Breaking(String),
    /// Old rows stay valid.
    Additive(String),
}

fn span(w: &WindowSpec) -> String {
    if w.is_hopping() {
        format!(
            "size {} slide {}",
            WindowSpec::format_duration(w.size_ms),
            WindowSpec::format_duration(w.slide_ms)
        )
    } else {
        format!("size {}", WindowSpec::format_duration(w.size_ms))
    }
}

/// Every difference from `old` to `new`, breaking ones first.
pub(super) fn changes(old: &TableDefinition, new: &TableDefinition) -> Vec<Change> {
    use Change::{Additive, Breaking};
    let mut out = Vec::new();
    if old.table != new.table {
        out.push(Breaking(format!(
            "`table` changed from {} to {}",
            old.table, new.table
        )));
    }
    for w in &new.windows {
        match old.windows.iter().find(|o| o.name == w.name) {
            Some(o) if o != w => out.push(Breaking(format!(
                "window `{}` changed from {} to {}",
                w.name,
                span(o),
                span(w)
            ))),
            Some(_) => {}
            None => out.push(Additive(format!(
                "new window `{}` ({}): no DDL, its rows go to the same table",
                w.name,
                span(w)
            ))),
        }
    }
    for o in old
        .windows
        .iter()
        .filter(|o| !new.windows.iter().any(|w| w.name == o.name))
    {
        out.push(Additive(format!(
            "window `{}` removed: its rows stay in the table, no longer written",
            o.name
        )));
    }
    if old.filters != new.filters {
        out.push(Breaking(format!(
            "filters changed from {:?} to {:?}",
            old.filters, new.filters
        )));
    }
    if old.distinct != new.distinct {
        out.push(Breaking(format!(
            "distinct mode changed from {:?} to {:?}",
            old.distinct, new.distinct
        )));
    }
    if old.sessions != new.sessions {
        let text = |s: &Option<tally_core::SessionSpec>| match s {
            None => "none".to_owned(),
            Some(s) => format!(
                "gap {}, max_duration {}",
                tally_core::WindowSpec::format_duration(s.gap_ms),
                tally_core::WindowSpec::format_duration(s.max_duration_ms)
            ),
        };
        out.push(Breaking(format!(
            "sessions changed from {} to {}",
            text(&old.sessions),
            text(&new.sessions)
        )));
    }
    for c in &new.columns {
        match old.columns.iter().find(|o| o.name == c.name) {
            Some(o) if o.kind != c.kind => out.push(Breaking(format!(
                "column `{}` changed type from {} to {}",
                c.name,
                o.kind.sql(),
                c.kind.sql()
            ))),
            Some(_) => {}
            None => out.push(Additive(format!("new column `{}`", c.name))),
        }
    }
    for o in old
        .columns
        .iter()
        .filter(|o| !new.columns.iter().any(|c| c.name == o.name))
    {
        out.push(Additive(format!(
            "column `{}` kept: no metric writes it any more (its values stay readable; nothing \
             is dropped)",
            o.name
        )));
    }
    for d in &new.dimensions {
        match old.dimensions.iter().find(|o| o.name == d.name) {
            Some(o) if o.max_values != d.max_values => out.push(Additive(format!(
                "dimension `{}`: max_values {} → {} (for rows written from now on)",
                d.name, o.max_values, d.max_values
            ))),
            Some(_) => {}
            None => out.push(Additive(format!("new dimension `{}`: no DDL", d.name))),
        }
    }
    for o in old
        .dimensions
        .iter()
        .filter(|o| !new.dimensions.iter().any(|d| d.name == o.name))
    {
        out.push(Additive(format!(
            "dimension `{}` removed: its rows stay in the table, no longer written",
            o.name
        )));
    }
    out.sort_by_key(|c| matches!(c, Additive(_)));
    out
}

/// Decides the migration of `t` against `state` (see the module docs).
///
/// Errors: [`SinkError::TopologyConflict`] when a table to be used exists with other key
/// columns or a column of another type and Tally has no record of it, or a record is
/// unreadable.
pub(super) fn decide(
    config: &ClickHouseConfig,
    t: &Topology,
    state: &ServerState,
    online: bool,
) -> Result<TopologyMigration, SinkError> {
    let mut m = TopologyMigration {
        topology: t.name.clone(),
        version: 1,
        tables: Vec::new(),
        steps: Vec::new(),
        records: Vec::new(),
        notes: Vec::new(),
        online,
    };
    if !state.ledger {
        m.steps.push(Step {
            sql: format!("CREATE DATABASE IF NOT EXISTS {}", config.database),
            why: format!("create database {} (if missing)", config.database),
        });
        m.steps.push(Step {
            sql: topology_tables_sql(config),
            why: format!("create {TOPOLOGY_TABLES} (the record of applied topology tables)"),
        });
    }
    let latest = latest(&state.records);
    let current_version = state.records.iter().map(|r| r.version).max();
    let mut breaking = Vec::new();
    let mut diffs: BTreeMap<&str, Vec<Change>> = BTreeMap::new();
    for kind in kinds(t) {
        let Some(r) = latest.get(kind_name(kind)) else {
            continue;
        };
        let desired = TableDefinition::of(t, kind);
        let mut found = changes(&recorded(t, r)?, &desired);
        // The table's real column types count too (a column added by hand, say).
        if let Some(actual) = state.columns.get(&r.table_name) {
            for c in &desired.columns {
                if let Some((_, ty)) = actual
                    .iter()
                    .find(|(n, ty)| *n == c.name && ty != c.kind.sql())
                {
                    found.push(Change::Breaking(format!(
                        "column `{}` of {} is {ty}, the topology writes {}",
                        c.name,
                        r.table_name,
                        c.kind.sql()
                    )));
                }
            }
        }
        breaking.extend(found.iter().filter_map(|c| match c {
            Change::Breaking(text) => Some(text.clone()),
            Change::Additive(_) => None,
        }));
        diffs.insert(kind_name(kind), found);
    }
    breaking.dedup();
    let fresh = current_version.is_none() || !breaking.is_empty();
    m.version = match current_version {
        None => 1,
        Some(v) if fresh => v + 1,
        Some(v) => v,
    };
    for kind in kinds(t) {
        let name = versioned_table(t, kind, m.version);
        let record = (!fresh).then(|| latest.get(kind_name(kind))).flatten();
        let created = table_steps(config, t, kind, &name, state, record.is_some(), &mut m)?;
        if !fresh {
            if let Some(changes) = diffs.get(kind_name(kind)) {
                m.notes.extend(changes.iter().map(|c| match c {
                    Change::Breaking(text) | Change::Additive(text) => {
                        format!("{name}: {text}")
                    }
                }));
            }
        }
        let desired = TableDefinition::of(t, kind);
        let same = record.is_some_and(|r| recorded(t, r).is_ok_and(|d| d == desired));
        if !same {
            let revision = record.map_or(0, |r| r.revision + 1);
            m.records.push(record_sql(
                config, t, kind, m.version, revision, &name, &desired,
            ));
        }
        if kind == RowTable::Windows && m.version == 1 && record.is_none() {
            copy_old_rollups(config, t, &name, state, created, &mut m);
        }
        m.tables.push((kind, name));
    }
    for (kind, r) in &latest {
        if !m.tables.iter().any(|(k, _)| kind_name(*k) == *kind) {
            m.notes.push(format!(
                "{} kept: the topology writes no {kind} metrics any more (nothing is dropped)",
                r.table_name
            ));
        }
    }
    if !breaking.is_empty() {
        let old: Vec<&str> = latest.values().map(|r| r.table_name.as_str()).collect();
        let new: Vec<&str> = m.tables.iter().map(|(_, n)| n.as_str()).collect();
        m.notes.insert(
            0,
            format!(
                "breaking change ({}): version {} of the tables is created empty ({}); the old \
                 tables ({}) are kept and no longer written. Run `tally rebuild --from <day> \
                 --to <day>` to refill the new tables from the raw events.",
                breaking.join("; "),
                m.version,
                new.join(", "),
                old.join(", ")
            ),
        );
    }
    Ok(m)
}

/// Creates `name` or brings it up to date. Returns whether it is created by this migration
/// (or exists empty without a record: a migration that stopped half-way).
fn table_steps(
    config: &ClickHouseConfig,
    t: &Topology,
    kind: RowTable,
    name: &str,
    state: &ServerState,
    recorded: bool,
    m: &mut TopologyMigration,
) -> Result<bool, SinkError> {
    let what = match kind {
        RowTable::Windows => "window metrics",
        RowTable::Sessions => "session metrics",
    };
    let Some(actual) = state.columns.get(name) else {
        if recorded {
            m.notes
                .push(format!("{name} was missing: created again, empty"));
        }
        m.steps.push(Step {
            sql: topology_table_sql(config, t, kind, name),
            why: format!("create {name} ({what})"),
        });
        return Ok(true);
    };
    let conflict = |reason: String| SinkError::TopologyConflict {
        topology: t.name.clone(),
        table: format!("{}.{name}", config.database),
        reason,
    };
    for (col, ty) in LEADING_COLUMNS.iter().chain(TRAILING_COLUMNS.iter()) {
        if !actual.iter().any(|(n, t)| n == col && t == ty) {
            return Err(conflict(format!(
                "exists without the column `{col} {ty}`: it is not a topology table"
            )));
        }
    }
    if !recorded {
        m.notes.push(format!(
            "{name} exists but was not recorded (a migration stopped half-way?): taken over"
        ));
    }
    let mut after = actual
        .iter()
        .take_while(|(n, _)| n != "is_final")
        .last()
        .map(|(n, _)| n.clone());
    for c in t.columns(kind) {
        match actual.iter().find(|(n, _)| *n == c.name) {
            Some((_, ty)) if ty != c.kind.sql() => {
                return Err(conflict(format!(
                    "column `{}` is {ty}, the topology writes {}",
                    c.name,
                    c.kind.sql()
                )))
            }
            Some(_) => {}
            None => {
                let position = after
                    .as_ref()
                    .map(|a| format!(" AFTER {a}"))
                    .unwrap_or_default();
                m.steps.push(Step {
                    sql: format!(
                        "ALTER TABLE {}.{name} ADD COLUMN {} {}{position}",
                        config.database,
                        c.name,
                        c.kind.sql()
                    ),
                    why: format!(
                        "add column {} {} to {name} (existing rows read 0)",
                        c.name,
                        c.kind.sql()
                    ),
                });
                after = Some(c.name.clone());
            }
        }
    }
    let empty = state.rows.get(name).copied().unwrap_or(0) == 0;
    Ok(!recorded && empty)
}

fn record_sql(
    config: &ClickHouseConfig,
    t: &Topology,
    kind: RowTable,
    version: u32,
    revision: u32,
    name: &str,
    definition: &TableDefinition,
) -> String {
    let json = serde_json::to_string(definition).unwrap_or_default();
    format!(
        "INSERT INTO {}.{TOPOLOGY_TABLES} (topology, table_kind, version, revision, table_name, \
         definition, applied_at) VALUES ({}, '{}', {version}, {revision}, {}, {}, now())",
        config.database,
        quote(&t.name),
        kind_name(kind),
        quote(name),
        quote(&json)
    )
}

/// `product_analytics`'s first table gets the rows of the pre-topology `rollups` table, for
/// the windows, columns and dimension it still has.
fn copy_old_rollups(
    config: &ClickHouseConfig,
    t: &Topology,
    name: &str,
    state: &ServerState,
    created: bool,
    m: &mut TopologyMigration,
) {
    let db = &config.database;
    if t.name != "product_analytics" {
        return;
    }
    let old_rows = state.rows.get("rollups").copied().unwrap_or(0);
    if m.online && (!created || old_rows == 0 || !state.columns.contains_key("rollups")) {
        return;
    }
    if !t.filters.is_empty() || t.distinct != tally_core::DistinctMode::Exact {
        m.notes.push(format!(
            "{db}.rollups is not copied into {name}: it counted every event exactly, and this \
             topology has filters or approximate distinct counts (`tally rebuild` fills it)"
        ));
        return;
    }
    let windows: Vec<String> = OLD_WINDOWS
        .iter()
        .filter(|(n, size)| {
            t.window(n)
                .is_some_and(|w| w.size_ms == *size && !w.is_hopping())
        })
        .map(|(n, _)| format!("'{n}'"))
        .collect();
    let columns: Vec<String> = t
        .columns(RowTable::Windows)
        .into_iter()
        .map(|c| c.name)
        .filter(|c| OLD_COLUMNS.contains(&c.as_str()))
        .collect();
    if windows.is_empty() || columns.is_empty() {
        return;
    }
    let per_type = if t.dimension("event_type").is_some() {
        ""
    } else {
        " AND event_type = ''"
    };
    let cols = columns.join(", ");
    let sql = format!(
        "INSERT INTO {db}.{name} (window_name, window_start, dimension, value, {cols}, is_final, \
         version) SELECT granularity, window_start, if(event_type = '', '', 'event_type'), \
         event_type, {cols}, is_final, version FROM {db}.rollups WHERE granularity IN ({})\
         {per_type}",
        windows.join(", ")
    );
    if m.online {
        m.steps.push(Step {
            sql,
            why: format!(
                "copy the {old_rows} rows of {db}.rollups into {name} (windows {}; {db}.rollups \
                 is kept)",
                windows.join(", ")
            ),
        });
    } else {
        m.notes.push(format!(
            "if {db}.rollups (the table before topologies) has rows when {name} is created, \
             they are copied into it ({db}.rollups is kept): {sql}"
        ));
    }
}
