//! Tally's ClickHouse SQL on a *current* ClickHouse (26.x), while the local stack runs 18.16:
//! the schema for both feature sets, the TTL probe, the summary query and the corrections' read
//! of first copies, with their client-side bound values (the per-topology report queries:
//! `api/tests/reports_topology.rs`), run in-process by `tests/current_clickhouse.py` (PyPI
//! `chdb-core`). The expected results are worked out by hand from the rows inserted here.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context as _};
use chrono::{DateTime, Utc};
use serde_json::json;
use tally_sinks::clickhouse::{
    bootstrap_sql, migrations_sql, ttl_probe_sql, ClickHouseConfig, Features, LIST_PARTITIONS_SQL,
};

/// The start of the hour a day ago: recent enough that the 365-day TTL keeps the rows.
fn t0() -> i64 {
    let now = Utc::now().timestamp();
    now - now % 3_600 - 86_400
}

fn chdb_available() -> bool {
    Command::new("python3")
        .args(["-c", "import chdb"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn schema(database: &str, ttl: bool) -> Vec<String> {
    let config = ClickHouseConfig {
        database: database.into(),
        ..ClickHouseConfig::default()
    };
    let features = Features {
        version: "26".into(),
        ttl,
    };
    let mut sql: Vec<String> = bootstrap_sql(&config).into();
    sql.extend(
        migrations_sql(&config, &features)
            .into_iter()
            .map(|(_, _, s)| s),
    );
    sql
}

#[test]
fn sql_runs_on_current_clickhouse() -> anyhow::Result<()> {
    if !chdb_available() {
        ensure!(
            std::env::var("TALLY_E2E").as_deref() != Ok("1"),
            "python3 cannot import chdb: `pip install chdb-core` (deploy/local/test.sh does)"
        );
        eprintln!("skipping sql_runs_on_current_clickhouse: python3 cannot import chdb (pip install chdb-core)");
        return Ok(());
    }
    let client = clickhouse::Client::default();
    let t0 = t0();
    let month = DateTime::<Utc>::from_timestamp(t0, 0)
        .unwrap_or_default()
        .format("%Y%m")
        .to_string();
    let mut setup = schema("tally_nottl", false); // what 18.16 gets must run on 26.x too
    setup.extend(schema("tally", true));
    setup.push(ttl_probe_sql("tally._tally_probe_ttl"));
    setup.push("USE tally".into());
    // Events: e1 twice (a replay), e2, e3; users u1, u2; one session. Then copies the pipeline
    // no longer stores but older rows may hold: e2 re-stamped 1.5 s later, e3 with another
    // type, and e4 in two partitions (the smaller partition wins). Each id counts once, as its
    // first copy (smallest partition, then offset).
    setup.push(format!(
        "INSERT INTO events VALUES
         ('e1','click','u1','s1',{t1},{t1}000,'{{}}',{t1},0,1),
         ('e1','click','u1','s1',{t1},{t1}000,'{{}}',{t1},0,1),
         ('e2','view','u1','s1',{t2},{t2}500,'{{}}',{t2},0,2),
         ('e3','view','u2','',{t3},{t3}000,'{{}}',{t3},1,1),
         ('e2','view','u1','s1',{t4},{t4}000,'{{}}',{t4},0,3),
         ('e3','purchase','u2','',{t3},{t3}900,'{{}}',{t3},1,2),
         ('e4','click','u3','s3',{t5},{t5}000,'{{}}',{t5},3,1),
         ('e4','signup','u3','s3',{t5},{t5}000,'{{}}',{t5},2,5)",
        t1 = t0 + 1,
        t2 = t0 + 2,
        t3 = t0 + 61,
        t4 = t0 + 4,
        t5 = t0 + 70
    ));
    // Rollups: the first minute in two versions (the later wins, though its session count is
    // smaller: argMax, not max), the second minute in one.
    setup.push(format!(
        "INSERT INTO rollups VALUES
         ('1m',{t0},'',1,1,3,1,0,10), ('1m',{t0},'',2,1,1,2,1,20),
         ('1m',{m1},'',1,1,0,1,1,10), ('1m',{t0},'view',1,1,1,1,1,20)",
        m1 = t0 + 60
    ));
    let summary = |from: i64, to: i64, t: Option<&str>| {
        tally_api::queries::summary(&client, from as u64 * 1000, to as u64 * 1000, t)
            .sql_display()
            .to_string()
    };
    // Corrections: the raw events of the two minutes (blocks of 60 s), each id once as its
    // first copy (smallest partition, then offset): e2 at t0+2.5 s as a view, e3 as a view, e4
    // as a signup (partition 2 beats 3).
    let first_copies = format!(
        "SELECT * FROM ({}) ORDER BY timestamp_ms",
        tally_sinks::clickhouse::recompute::events_sql(
            60,
            &[t0 as u64 / 60, t0 as u64 / 60 + 1],
            false
        )
    );
    let checks = json!([
        {"sql": first_copies, "expect": format!(
            "\"click\",\"u1\",\"s1\",{t1}000,\"{{}}\"\n\"view\",\"u1\",\"s1\",{t2}500,\"{{}}\"\n\"view\",\"u2\",\"\",{t3}000,\"{{}}\"\n\"signup\",\"u3\",\"s3\",{t5}000,\"{{}}\"\n",
            t1 = t0 + 1, t2 = t0 + 2, t3 = t0 + 61, t5 = t0 + 70)},
        {"sql": summary(t0, t0 + 120, None), "expect": "4,3,2,3\n"},
        {"sql": summary(t0, t0 + 120, Some("view")), "expect": "2,2,1,1\n"},
        {"sql": summary(t0, t0 + 120, Some("purchase")), "expect": "0,0,0,0\n"},
        {"sql": summary(t0, t0 + 120, Some("click")), "expect": "1,1,1,1\n"},
        // [from, to) at millisecond precision: e2 is at 10:00:02.500.
        {"sql": summary(t0, t0 + 2, None), "expect": "1,1,1,1\n"},
        {"sql": "SHOW CREATE TABLE tally.events", "contains": "TTL"},
        {"sql": "SHOW CREATE TABLE tally_nottl.events", "excludes": "TTL", "contains": "ReplacingMergeTree"},
        {"sql": LIST_PARTITIONS_SQL.replacen('?', "'tally'", 1), "expect": format!("\"{month}\"\n")},
        {"sql": "SELECT count() FROM tally.tally_migrations", "expect": "0\n"},
    ]);
    let plan = json!({"setup": setup, "checks": checks});
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/current_clickhouse.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(plan.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{text}");
    ensure!(
        text.matches("\nok:").count() == 10,
        "not every check ran:\n{text}"
    );
    Ok(())
}
