//! Reading what the server holds, and running a migration.

use clickhouse::Client;
use serde::Deserialize;
use tally_core::{RowTable, Topology};

use super::decide::{changes, decide, kinds, latest, recorded, Change, ServerState};
use super::{kind_name, versioned_table, TableDefinition, TopologyMigration, TOPOLOGY_TABLES};
use crate::clickhouse::client::connect;
use crate::clickhouse::config::ClickHouseConfig;
use crate::SinkError;

#[derive(clickhouse::Row, Deserialize)]
struct ColumnRow {
    table: String,
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(clickhouse::Row, Deserialize)]
struct RowsRow {
    table: String,
    rows: u64,
}

/// Reads the ledger records of `topology` (all of them when `None`), the columns of every
/// table of the database and their row counts. A missing database reads as empty.
async fn server_state(
    client: &Client,
    config: &ClickHouseConfig,
    topology: Option<&str>,
) -> Result<ServerState, SinkError> {
    let db = config.database.as_str();
    let err = |what: &'static str| move |e| SinkError::clickhouse(what, e);
    let columns: Vec<ColumnRow> = client
        .query("SELECT table, name, type FROM system.columns WHERE database = ?")
        .bind(db)
        .fetch_all()
        .await
        .map_err(err("reading the tables' columns"))?;
    let mut state = ServerState::default();
    for c in columns {
        state
            .columns
            .entry(c.table)
            .or_default()
            .push((c.name, c.ty));
    }
    let rows: Vec<RowsRow> = client
        .query(
            "SELECT table, sum(rows) AS rows FROM system.parts WHERE database = ? AND active \
             GROUP BY table",
        )
        .bind(db)
        .fetch_all()
        .await
        .map_err(err("counting the tables' rows"))?;
    state.rows = rows.into_iter().map(|r| (r.table, r.rows)).collect();
    state.ledger = state.columns.contains_key(TOPOLOGY_TABLES);
    if state.ledger {
        let sql = format!(
            "SELECT table_kind, version, revision, table_name, definition FROM \
             {db}.{TOPOLOGY_TABLES} WHERE topology = ?"
        );
        state.records = client
            .query(&sql)
            .bind(topology.unwrap_or_default())
            .fetch_all()
            .await
            .map_err(err("reading the applied topology tables"))?;
    }
    Ok(state)
}

/// Creates or updates `topology`'s tables (see the module docs) and records what was
/// applied. Idempotent: run again, it does nothing (`is_up_to_date()`). Creates the database
/// and `tally_topology_tables` when missing.
///
/// Errors: [`SinkError::ClickHouse`] for a failed request (statements before it stay
/// applied; running it again finishes the job), [`SinkError::TopologyConflict`] when a table
/// it must use exists and is not one of its tables.
pub async fn migrate_topology(
    config: &ClickHouseConfig,
    topology: &Topology,
) -> Result<TopologyMigration, SinkError> {
    let client = connect(config, false);
    let state = server_state(&client, config, Some(&topology.name)).await?;
    let migration = decide(config, topology, &state, true)?;
    for step in &migration.steps {
        exec(&client, &step.sql, &step.why).await?;
    }
    for record in &migration.records {
        exec(&client, record, "recording a topology table").await?;
    }
    Ok(migration)
}

/// What [`migrate_topology`] would do now, without doing it. Errors: as [`migrate_topology`]
/// (a server that cannot be reached is [`SinkError::ClickHouse`] with a retryable class:
/// fall back to [`plan_topology_offline`]).
pub async fn plan_topology(
    config: &ClickHouseConfig,
    topology: &Topology,
) -> Result<TopologyMigration, SinkError> {
    let client = connect(config, false);
    let state = server_state(&client, config, Some(&topology.name)).await?;
    decide(config, topology, &state, true)
}

/// What [`migrate_topology`] would do against an empty database (no server needed): the
/// `CREATE` statements, and the copy of `rollups` for `product_analytics` as a note.
pub fn plan_topology_offline(config: &ClickHouseConfig, topology: &Topology) -> TopologyMigration {
    // An empty state has no records to read and no tables to conflict with.
    decide(config, topology, &ServerState::default(), false).unwrap_or_else(|_| TopologyMigration {
        topology: topology.name.clone(),
        version: 1,
        tables: Vec::new(),
        steps: Vec::new(),
        records: Vec::new(),
        notes: Vec::new(),
        online: false,
    })
}

/// The topologies with `table` set to their current tables (`<table>_v<N>` after a breaking
/// change), checking that `tally migrate` applied exactly their definitions.
///
/// Errors: [`SinkError::TopologyNotMigrated`] (which says to run `tally migrate`) when a
/// topology has no recorded tables, a table of it is missing, or it differs from what was
/// applied (the message names the differences); [`SinkError::ClickHouse`] when reading fails.
pub async fn current_tables(
    config: &ClickHouseConfig,
    topologies: &[Topology],
) -> Result<Vec<Topology>, SinkError> {
    let client = connect(config, false);
    let mut out = Vec::new();
    for t in topologies {
        let state = server_state(&client, config, Some(&t.name)).await?;
        let not_migrated = |reason: String| SinkError::TopologyNotMigrated {
            topology: t.name.clone(),
            reason,
        };
        let Some(version) = state.records.iter().map(|r| r.version).max() else {
            return Err(not_migrated("its tables were never created".to_owned()));
        };
        let latest = latest(&state.records);
        let mut current = t.clone();
        current.table = versioned_table(t, RowTable::Windows, version);
        for kind in kinds(t) {
            let name = versioned_table(t, kind, version);
            let desired = TableDefinition::of(t, kind);
            let record = latest
                .get(kind_name(kind))
                .filter(|r| r.version == version && r.table_name == name);
            let Some(record) = record else {
                return Err(not_migrated(format!("table {name} was never created")));
            };
            let differences: Vec<String> = changes(&recorded(t, record)?, &desired)
                .into_iter()
                .map(|c| match c {
                    Change::Breaking(text) | Change::Additive(text) => text,
                })
                .collect();
            if !differences.is_empty() {
                return Err(not_migrated(format!(
                    "it differs from what was applied to {name}: {}",
                    differences.join("; ")
                )));
            }
            if !state.columns.contains_key(&name) {
                return Err(not_migrated(format!(
                    "table {}.{name} is missing",
                    config.database
                )));
            }
        }
        out.push(current);
    }
    Ok(out)
}

async fn exec(client: &Client, sql: &str, context: &str) -> Result<(), SinkError> {
    client
        .query(sql)
        .execute()
        .await
        .map_err(|e| SinkError::clickhouse(context.to_owned(), e))
}
