//! `tally topology validate|plan|list`, and the topology part of `tally migrate`.

mod text;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tally_core::{DistinctMode, RowTable, Topology, WindowSpec};
use tally_sinks::clickhouse::topology_schema::{
    migrate_topology, plan_topology, plan_topology_offline, TopologyMigration,
};
use tally_topologies::file::{
    is_manifest, load_file, load_files, topology_paths, FileError, TopologyFile,
};

use crate::config::TallyConfig;

/// `tally topology ...`.
#[derive(clap::Args, Debug)]
pub struct TopologyArgs {
    #[command(subcommand)]
    command: TopologyCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TopologyCommand {
    /// Check topology files without running anything (no server, no tally.toml). Exit codes:
    /// 0 every file is valid, 65 a file is invalid (the error, with file, line and key, on
    /// stderr), 66 a file cannot be read.
    Validate {
        /// Topology files (`topologies/web_sessions.toml`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what a topology does: its dataflow, how long state lives, and the ClickHouse
    /// tables and DDL `tally migrate` will create or alter (compared with the server when it
    /// answers, else offline).
    Plan {
        /// A topology file, or the name of a configured topology.
        topology: String,
        /// Do not contact ClickHouse: show the statements for an empty database.
        #[arg(long)]
        offline: bool,
    },
    /// List the configured topologies: name, windows, dimensions, metrics, tables.
    List {
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `tally topology validate`: needs no configuration, so it runs before tally.toml is read.
/// A folder stands for its topology files; `Cargo.toml` is skipped (the shipped folder is
/// also a crate). Every file is checked, then the set (no name or table twice).
pub fn validate(args: &TopologyArgs) -> Option<ExitCode> {
    let TopologyCommand::Validate { files } = &args.command else {
        return None;
    };
    Some(ExitCode::from(check_files(files)))
}

/// Validates files and folders, printing each result; returns the exit code.
fn check_files(files: &[PathBuf]) -> u8 {
    let mut code = 0;
    let mut paths = Vec::new();
    for path in files {
        if path.is_dir() {
            match topology_paths(path) {
                Ok(found) => paths.extend(found),
                Err(e) => {
                    eprintln!("error: {e}");
                    code = code.max(e.exit_code());
                }
            }
        } else if is_manifest(path) {
            eprintln!(
                "skipped {}: a Cargo manifest, not a topology",
                path.display()
            );
        } else {
            paths.push(path.clone());
        }
    }
    for path in &paths {
        match load_file(path) {
            Ok(f) => println!("ok: {}: {}", f.path, summary(&f.topology)),
            Err(e) => {
                eprintln!("error: {e}");
                code = code.max(e.exit_code());
            }
        }
    }
    if code == 0 {
        if let Err(e) = load_files(&paths) {
            eprintln!("error: {e}");
            code = e.exit_code();
        }
    }
    code
}

/// `tally topology plan|list`.
pub async fn run(config: &TallyConfig, args: &TopologyArgs) -> anyhow::Result<()> {
    match &args.command {
        TopologyCommand::Validate { .. } => Ok(()),
        TopologyCommand::Plan { topology, offline } => plan(config, topology, *offline).await,
        TopologyCommand::List { json } => list(config, *json),
    }
}

/// Part of `tally migrate`: loads the enabled topologies (before anything is changed, so a
/// bad file changes nothing), then creates or updates their tables, printing what it did.
pub async fn migrate(config: &TallyConfig, topologies: &[Topology]) -> anyhow::Result<()> {
    for t in topologies {
        let m = migrate_topology(&config.clickhouse, t)
            .await
            .with_context(|| format!("migrating the tables of topology {}", t.name))?;
        println!("clickhouse: {m}");
    }
    Ok(())
}

/// One line: windows, dimensions, metrics.
fn summary(t: &Topology) -> String {
    let names = |v: Vec<String>| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    format!(
        "windows {}; dimensions {}; metrics {}",
        names(t.windows.iter().map(|w| w.name.clone()).collect()),
        names(t.dimensions.iter().map(|d| d.name.clone()).collect()),
        names(t.metrics.iter().map(|m| m.name()).collect()),
    )
}

fn tables(t: &Topology) -> Vec<String> {
    [RowTable::Windows, RowTable::Sessions]
        .into_iter()
        .filter(|k| t.has(*k))
        .map(|k| t.table_name(k))
        .collect()
}

fn list(config: &TallyConfig, as_json: bool) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let available = config.topologies.available()?;
    let enabled: Vec<String> = config
        .topologies
        .load()?
        .into_iter()
        .map(|t| t.name)
        .collect();
    if as_json {
        let out: Vec<serde_json::Value> = available
            .iter()
            .map(|f| describe(f, enabled.contains(&f.topology.name)))
            .collect();
        emit(&(serde_json::to_string_pretty(&out)? + "\n"));
        return Ok(());
    }
    let mut out = String::new();
    for f in &available {
        let t = &f.topology;
        let on = if enabled.contains(&t.name) {
            "enabled"
        } else {
            "disabled"
        };
        let windows: Vec<String> = t.windows.iter().map(window_text).collect();
        let dims: Vec<String> = t
            .dimensions
            .iter()
            .map(|d| format!("{} (max {})", d.name, d.max_values))
            .collect();
        let metrics: Vec<String> = t.metrics.iter().map(|m| m.name()).collect();
        let _ = writeln!(out, "{} ({on}, {})", t.name, f.path);
        let _ = writeln!(out, "  windows:    {}", windows.join(", "));
        let dims = if dims.is_empty() {
            "none".to_owned()
        } else {
            dims.join(", ")
        };
        let _ = writeln!(out, "  dimensions: {dims}");
        let _ = writeln!(
            out,
            "  metrics:    {} ({})",
            metrics.join(", "),
            distinct_text(t.distinct)
        );
        if !t.filters.is_empty() {
            let _ = writeln!(out, "  filters:    {}", text::filters_list(t).join(" and "));
        }
        let _ = writeln!(out, "  tables:     {}", tables(t).join(", "));
    }
    emit(&out);
    Ok(())
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn window_text(w: &WindowSpec) -> String {
    if w.is_hopping() {
        format!(
            "{} (hopping {} every {})",
            w.name,
            WindowSpec::format_duration(w.size_ms),
            WindowSpec::format_duration(w.slide_ms)
        )
    } else {
        format!(
            "{} (tumbling {})",
            w.name,
            WindowSpec::format_duration(w.size_ms)
        )
    }
}

fn distinct_text(mode: DistinctMode) -> &'static str {
    match mode {
        DistinctMode::Exact => "distinct counts exact",
        DistinctMode::Approx => "distinct counts approximate, ±1.6 %",
    }
}

/// `tally topology list --json` of one topology.
fn describe(f: &TopologyFile, enabled: bool) -> serde_json::Value {
    let t = &f.topology;
    json!({
        "name": t.name,
        "file": f.path,
        "enabled": enabled,
        "description": t.description,
        "windows": t.windows.iter().map(|w| json!({
            "name": w.name, "kind": w.kind(), "size_ms": w.size_ms, "slide_ms": w.slide_ms,
        })).collect::<Vec<_>>(),
        "sessions": t.sessions.map(|s| json!({
            "gap_ms": s.gap_ms, "max_duration_ms": s.max_duration_ms,
        })),
        "dimensions": t.dimensions.iter().map(|d| json!({
            "name": d.name, "max_values": d.max_values,
        })).collect::<Vec<_>>(),
        "filters": text::filters_list(t),
        "metrics": t.metrics.iter().map(|m| json!({"name": m.name(), "unit": m.unit()})).collect::<Vec<_>>(),
        "distinct": match t.distinct { DistinctMode::Exact => "exact", DistinctMode::Approx => "approx" },
        "tables": {
            "windows": t.has(RowTable::Windows).then(|| t.table_name(RowTable::Windows)),
            "sessions": t.has(RowTable::Sessions).then(|| t.sessions_table()),
        },
    })
}

/// The topology to plan: a file, else a configured topology of that name.
fn find(config: &TallyConfig, arg: &str) -> anyhow::Result<TopologyFile> {
    let path = Path::new(arg);
    if path.exists() || arg.ends_with(".toml") {
        return Ok(load_file(path)?);
    }
    let available = config.topologies.available()?;
    let names: Vec<&str> = available.iter().map(|f| f.topology.name.as_str()).collect();
    available
        .iter()
        .find(|f| f.topology.name == arg)
        .cloned()
        .ok_or_else(|| {
            FileError::Io {
                path: arg.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "no such file, nor a configured topology ({})",
                        names.join(", ")
                    ),
                ),
            }
            .into()
        })
}

async fn plan(config: &TallyConfig, arg: &str, offline: bool) -> anyhow::Result<()> {
    let file = find(config, arg)?;
    let t = &file.topology;
    // The dedup horizon depends on every topology running beside this one.
    let others = config.topologies.load().unwrap_or_default();
    let longest = others
        .iter()
        .filter(|o| o.name != t.name)
        .map(Topology::longest_window_ms)
        .chain([t.longest_window_ms()])
        .max()
        .unwrap_or(0);
    let mut out = format!("topology {} ({})\n", t.name, file.path);
    if !t.description.is_empty() {
        out += &format!("  {}\n", t.description);
    }
    out += &format!("\n{}\n", text::dataflow(t, &config.kafka.topic));
    out += &format!("{}\n", text::bounds(t, config.pipeline.grace_ms, longest));
    let migration = if offline {
        plan_topology_offline(&config.clickhouse, t)
    } else {
        let online =
            tokio::time::timeout(Duration::from_secs(5), plan_topology(&config.clickhouse, t))
                .await;
        match online {
            Ok(Ok(m)) => m,
            Ok(Err(e)) if !e.is_auth_error() && e.class() == tally_sinks::ErrorClass::Fatal => {
                return Err(e.into())
            }
            Ok(Err(e)) => offline_because(config, t, &e.to_string()),
            Err(_) => offline_because(config, t, "no answer within 5 s"),
        }
    };
    out += &tables_text(config, &migration);
    emit(&out);
    Ok(())
}

fn offline_because(config: &TallyConfig, t: &Topology, why: &str) -> TopologyMigration {
    let mut m = plan_topology_offline(&config.clickhouse, t);
    m.notes.insert(
        0,
        format!(
            "ClickHouse at {} did not answer ({why}): this plan assumes an empty database",
            config.clickhouse.url
        ),
    );
    m
}

fn tables_text(config: &TallyConfig, m: &TopologyMigration) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let source = if m.online {
        format!("compared with ClickHouse at {}", config.clickhouse.url)
    } else {
        "offline".to_owned()
    };
    let names: Vec<&str> = m.tables.iter().map(|(_, n)| n.as_str()).collect();
    let _ = writeln!(
        out,
        "tables ({source}, database {}): version {}: {}",
        config.clickhouse.database,
        m.version,
        names.join(", ")
    );
    if m.is_up_to_date() {
        let _ = writeln!(out, "  up to date: `tally migrate` has nothing to do");
    }
    for note in &m.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    if !m.steps.is_empty() {
        let _ = writeln!(out, "  `tally migrate` will:");
        for step in &m.steps {
            let _ = writeln!(
                out,
                "  - {}:\n    {};",
                step.why,
                step.sql.replace('\n', "\n    ")
            );
        }
    }
    if !m.records.is_empty() {
        let _ = writeln!(
            out,
            "  and record the definitions in {}.tally_topology_tables ({} row{})",
            config.clickhouse.database,
            m.records.len(),
            if m.records.len() == 1 { "" } else { "s" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_exit_codes() {
        let dir = std::env::temp_dir().join(format!("tally-topology-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let shipped = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/topologies"));
        // The shipped folder (its Cargo.toml skipped) and its files one by one.
        assert_eq!(check_files(std::slice::from_ref(&shipped)), 0);
        assert_eq!(
            check_files(&[
                shipped.join("Cargo.toml"),
                shipped.join("web_sessions.toml")
            ]),
            0
        );
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "name = \"bad\"\nwindows = 1\n").expect("write");
        assert_eq!(
            check_files(&[shipped.join("web_sessions.toml"), bad.clone()]),
            65
        );
        assert_eq!(check_files(&[bad, dir.join("missing.toml")]), 66);
        // Valid one by one, not together: one name twice.
        let other = dir.join("other");
        std::fs::create_dir_all(&other).expect("mkdir");
        let copy = other.join("web_sessions.toml");
        std::fs::copy(shipped.join("web_sessions.toml"), &copy).expect("copy");
        assert_eq!(check_files(&[shipped.join("web_sessions.toml"), copy]), 65);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
