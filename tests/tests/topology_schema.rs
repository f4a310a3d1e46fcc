//! Topology tables on a real ClickHouse (the local stack's 18.16): created, altered for a new
//! metric with old rows still readable, versioned on a breaking change, untouched when run
//! again; `product_analytics` takes over the rows of the old `rollups` table. Every statement
//! sent is then replayed, in order, on a current ClickHouse (chdb 26, in-process through python3)
//! and the same queries must give the same answers there.
//!
//! Skipped unless `TALLY_E2E=1` (with the local stack up).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context as _};
use serde_json::json;
use tally_core::Topology;
use tally_sinks::clickhouse::topology_schema::{
    current_tables, migrate_topology, TopologyMigration,
};
use tally_sinks::clickhouse::ClickHouseConfig;
use tally_sinks::SinkError;
use tally_tests::{enabled, env_or};

/// A test's own database, and every statement it sent (for the replay on chdb).
struct Db {
    config: ClickHouseConfig,
    http: reqwest::Client,
    /// Every statement sent and every query asked, in order, with the answer (CSV) chdb must
    /// give to the queries.
    script: Vec<(String, Option<String>)>,
}

impl Db {
    async fn new(tag: &str) -> anyhow::Result<Db> {
        let config = ClickHouseConfig {
            url: env_or("TALLY_CLICKHOUSE__URL", "http://127.0.0.1:8123"),
            database: format!("tally_topo_{tag}_{}", std::process::id()),
            ..ClickHouseConfig::default()
        };
        let db = Db {
            config,
            http: reqwest::Client::new(),
            script: Vec::new(),
        };
        let drop = format!("DROP DATABASE IF EXISTS {}", db.config.database);
        db.post(&drop).await?;
        Ok(db)
    }

    async fn post(&self, sql: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .post(&self.config.url)
            .body(sql.to_owned())
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        ensure!(status.is_success(), "{sql}\n{text}");
        Ok(text)
    }

    /// Runs a statement (and logs it for the replay).
    async fn exec(&mut self, sql: &str) -> anyhow::Result<()> {
        self.post(sql).await?;
        self.script.push((sql.to_owned(), None));
        Ok(())
    }

    /// A query's CSV answer (and logs it as a check for the replay).
    async fn csv(&mut self, sql: &str) -> anyhow::Result<String> {
        let answer = self.post(&format!("{sql} FORMAT CSV")).await?;
        self.script.push((sql.to_owned(), Some(answer.clone())));
        Ok(answer)
    }

    /// `name type` of a table's columns, in order.
    async fn columns(&mut self, table: &str) -> anyhow::Result<String> {
        let sql = format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = '{table}'",
            self.config.database
        );
        Ok(self.csv(&sql).await?.replace('"', ""))
    }

    async fn migrate(&mut self, t: &Topology) -> anyhow::Result<TopologyMigration> {
        let m = migrate_topology(&self.config, t).await?;
        let sent = m.steps.iter().map(|s| &s.sql).chain(&m.records);
        self.script.extend(sent.map(|sql| (sql.clone(), None)));
        Ok(m)
    }

    /// Replays every statement on a current ClickHouse and compares the checked answers, then
    /// drops the database on the local server.
    async fn finish(mut self) -> anyhow::Result<()> {
        replay_on_current_clickhouse(&self.config.database, std::mem::take(&mut self.script))?;
        self.post(&format!("DROP DATABASE IF EXISTS {}", self.config.database))
            .await?;
        Ok(())
    }
}

fn chdb_available() -> bool {
    Command::new("python3")
        .args(["-c", "import chdb"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a script of `{"sql", "expect"?}` steps in order on chdb; exits 1 at the first
/// failure or mismatch.
const REPLAY: &str = r#"
import json, sys, tempfile
from chdb import session
steps = json.load(sys.stdin)
# The engine may still be merging parts when the steps end: close it first, and let the scratch
# folder's removal skip what a background merge left.
with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as path:
    s = session.Session(path)
    print("clickhouse", s.query("SELECT version()", "CSV").bytes().decode().strip())
    for step in steps:
        try:
            got = s.query(step["sql"], "CSV").bytes().decode()
        except Exception as e:
            print(f"FAILED:\n{step['sql']}\n{e}")
            sys.exit(1)
        if step.get("expect") is not None and got != step["expect"]:
            print(f"MISMATCH:\n{step['sql']}\n got: {got!r}\nwant: {step['expect']!r}")
            sys.exit(1)
        print("ok")
    s.close()
"#;

fn replay_on_current_clickhouse(
    database: &str,
    mut script: Vec<(String, Option<String>)>,
) -> anyhow::Result<()> {
    ensure!(
        chdb_available(),
        "python3 cannot import chdb: `pip install chdb-core` (deploy/local/test.sh does)"
    );
    // The state queries of topology_schema/server.rs, with the values it binds.
    script.extend(
        [
            format!("SELECT table, name, type FROM system.columns WHERE database = '{database}'"),
            format!(
                "SELECT table, sum(rows) AS rows FROM system.parts WHERE database = '{database}' \
                 AND active GROUP BY table"
            ),
            format!(
                "SELECT table_kind, version, revision, table_name, definition FROM \
                 {database}.tally_topology_tables WHERE topology = 'x'"
            ),
        ]
        .map(|sql| (sql, None)),
    );
    let steps: Vec<serde_json::Value> = script
        .iter()
        .map(|(sql, expect)| json!({"sql": sql, "expect": expect}))
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", REPLAY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(serde_json::Value::Array(steps).to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "current ClickHouse:\n{text}");
    ensure!(
        text.matches("\nok").count() == script.len(),
        "not every step ran:\n{text}"
    );
    Ok(())
}

fn topology(text: &str) -> Topology {
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or("t");
    tally_topologies::file::parse(&format!("{name}.toml"), text)
        .unwrap_or_else(|e| panic!("test topology: {e}"))
}

const SHOP: &str = r#"name = "shop"
metrics = ["events", "unique_users", "sessions"]
[[windows]]
name = "1h"
size = "1h"
[sessions]
gap = "30m"
[[dimensions]]
name = "metadata.platform"
"#;

const KEYS: &str = "window_name,String\nwindow_start,DateTime\ndimension,String\nvalue,String\n";
const TAIL: &str = "is_final,UInt8\nversion,UInt64\n";

fn whys(m: &TopologyMigration) -> Vec<&str> {
    m.steps.iter().map(|s| s.why.as_str()).collect()
}

#[tokio::test]
async fn create_alter_version_and_rerun() -> anyhow::Result<()> {
    if !enabled("create_alter_version_and_rerun") {
        return Ok(());
    }
    let mut db = Db::new("shop").await?;
    let v1 = topology(SHOP);
    let e = current_tables(&db.config, std::slice::from_ref(&v1))
        .await
        .expect_err("nothing migrated yet");
    assert!(matches!(e, SinkError::TopologyNotMigrated { .. }), "{e}");
    assert!(e.is_missing_schema() && e.to_string().contains("run `tally migrate`"));

    // New: the database, the ledger, both tables.
    let m = db.migrate(&v1).await?;
    assert_eq!(m.version, 1);
    assert_eq!(m.steps.len(), 4, "{m}");
    assert_eq!(m.records.len(), 2, "{m}");
    assert_eq!(
        db.columns("rollups_shop").await?,
        format!("{KEYS}events,UInt64\nunique_users,UInt64\n{TAIL}")
    );
    assert_eq!(
        db.columns("rollups_shop_sessions").await?,
        format!("{KEYS}sessions,UInt64\n{TAIL}")
    );
    assert!(db.migrate(&v1).await?.is_up_to_date(), "rerun");
    let current = current_tables(&db.config, std::slice::from_ref(&v1)).await?;
    assert_eq!(current[0].table, "rollups_shop");
    let old_row = "INSERT INTO {db}.rollups_shop (window_name, window_start, dimension, value, \
                   events, unique_users, is_final, version) VALUES ('1h', '2024-03-01 10:00:00', \
                   '', '', 5, 3, 1, 1)";
    db.exec(&old_row.replace("{db}", &db.config.database.clone()))
        .await?;

    // Additive: two metrics → three columns, placed before is_final; old rows read 0.
    let v2 = topology(&SHOP.replace(
        "\"sessions\"]",
        "\"sessions\", \"sum(metadata.price)\", \"bounce_rate\"]",
    ));
    let e = current_tables(&db.config, std::slice::from_ref(&v2))
        .await
        .expect_err("not migrated");
    assert!(
        e.to_string().contains("new column `sum_metadata_price`"),
        "{e}"
    );
    let m = db.migrate(&v2).await?;
    assert_eq!(
        whys(&m),
        [
            "add column sum_metadata_price Float64 to rollups_shop (existing rows read 0)",
            "add column count_metadata_price UInt64 to rollups_shop (existing rows read 0)",
            "add column bounced_sessions UInt64 to rollups_shop_sessions (existing rows read 0)",
        ]
    );
    assert_eq!(m.version, 1);
    assert_eq!(
        db.columns("rollups_shop").await?,
        format!(
            "{KEYS}events,UInt64\nunique_users,UInt64\nsum_metadata_price,Float64\n\
             count_metadata_price,UInt64\n{TAIL}"
        )
    );
    let sql = format!(
        "SELECT window_name, window_start, events, unique_users, sum_metadata_price, \
         count_metadata_price, is_final, version FROM {}.rollups_shop",
        db.config.database
    );
    assert_eq!(
        db.csv(&sql).await?,
        "\"1h\",\"2024-03-01 10:00:00\",5,3,0,0,1,1\n"
    );
    assert!(db.migrate(&v2).await?.is_up_to_date(), "rerun");
    current_tables(&db.config, std::slice::from_ref(&v2)).await?;

    // A metric removed: its column stays, only the record changes.
    let v3 = topology(&SHOP.replace(
        "\"events\", \"unique_users\", \"sessions\"]",
        "\"events\", \"sessions\", \"sum(metadata.price)\", \"bounce_rate\"]",
    ));
    let m = db.migrate(&v3).await?;
    assert!(m.steps.is_empty(), "{m}");
    assert_eq!(m.records.len(), 1);
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("column `unique_users` kept")),
        "{m}"
    );
    assert!(db
        .columns("rollups_shop")
        .await?
        .contains("unique_users,UInt64"));

    // A new window and dimension: no DDL.
    let v4 = topology(
        &(SHOP
            .replace(
                "\"events\", \"unique_users\", \"sessions\"]",
                "\"events\", \"sessions\", \"sum(metadata.price)\", \"bounce_rate\"]",
            )
            .replace(
                "[sessions]",
                "[[windows]]\nname = \"1d\"\nsize = \"1d\"\n[sessions]",
            )
            + "[[dimensions]]\nname = \"event_type\"\n"),
    );
    let m = db.migrate(&v4).await?;
    assert!(m.steps.is_empty(), "{m}");
    assert_eq!(m.records.len(), 2, "{m}");
    assert!(m.notes.iter().any(|n| n.contains("new window `1d`")), "{m}");
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("new dimension `event_type`")),
        "{m}"
    );

    // Breaking: window `1h` is now 2 h long → version 2, both tables new, old ones kept.
    let v5 = topology(
        &SHOP
            .replace(
                "\"events\", \"unique_users\", \"sessions\"]",
                "\"events\", \"sessions\", \"sum(metadata.price)\", \"bounce_rate\"]",
            )
            .replace("size = \"1h\"", "size = \"2h\""),
    );
    let m = db.migrate(&v5).await?;
    assert_eq!(m.version, 2);
    assert_eq!(
        whys(&m),
        [
            "create rollups_shop_v2 (window metrics)",
            "create rollups_shop_v2_sessions (session metrics)"
        ]
    );
    let note = &m.notes[0];
    for part in [
        "breaking change",
        "window `1h` changed from size 1h to size 2h",
        "rollups_shop_v2, rollups_shop_v2_sessions",
        "old tables (rollups_shop_sessions, rollups_shop) are kept",
        "tally rebuild",
    ] {
        assert!(note.contains(part), "{note:?} lacks {part:?}");
    }
    let count = format!("SELECT count() FROM {}.rollups_shop", db.config.database);
    assert_eq!(db.csv(&count).await?, "1\n", "the old table keeps its rows");
    assert_eq!(
        db.columns("rollups_shop_v2").await?,
        format!(
            "{KEYS}events,UInt64\nsum_metadata_price,Float64\ncount_metadata_price,UInt64\n{TAIL}"
        )
    );
    let current = current_tables(&db.config, std::slice::from_ref(&v5)).await?;
    assert_eq!(current[0].table, "rollups_shop_v2");
    assert_eq!(current[0].sessions_table(), "rollups_shop_v2_sessions");
    assert!(db.migrate(&v5).await?.is_up_to_date(), "rerun");

    // Breaking, sessions only: a new gap → version 3.
    let v6 = topology(
        &SHOP
            .replace(
                "\"events\", \"unique_users\", \"sessions\"]",
                "\"events\", \"sessions\", \"sum(metadata.price)\", \"bounce_rate\"]",
            )
            .replace("size = \"1h\"", "size = \"2h\"")
            .replace("gap = \"30m\"", "gap = \"45m\""),
    );
    let m = db.migrate(&v6).await?;
    assert_eq!((m.version, m.steps.len()), (3, 2), "{m}");
    assert!(m.notes[0].contains("sessions changed"), "{m}");
    // The old definition is no longer current.
    let e = current_tables(&db.config, std::slice::from_ref(&v5))
        .await
        .expect_err("v5 is not what was applied");
    assert!(e.to_string().contains("rollups_shop_v3"), "{e}");
    db.finish().await
}

#[tokio::test]
async fn product_analytics_takes_over_the_old_rollups() -> anyhow::Result<()> {
    if !enabled("product_analytics_takes_over_the_old_rollups") {
        return Ok(());
    }
    let mut db = Db::new("pa").await?;
    // The schema before topologies: `events` and `rollups`.
    tally_sinks::clickhouse::migrate(&db.config).await?;
    let ddl = tally_sinks::clickhouse::migrations_sql(
        &db.config,
        &tally_sinks::clickhouse::Features {
            version: "x".into(),
            ttl: false,
        },
    );
    db.script.extend(
        tally_sinks::clickhouse::bootstrap_sql(&db.config)
            .into_iter()
            .chain(ddl.into_iter().map(|(_, _, sql)| sql))
            .map(|sql| (sql, None)),
    );
    let rows = [
        ("1m", "2024-03-01 10:00:00", "", [10, 4, 3, 2], 1, 7),
        ("1m", "2024-03-01 10:00:00", "click", [6, 3, 2, 1], 1, 7),
        ("1h", "2024-03-01 10:00:00", "", [10, 4, 3, 2], 0, 8),
        ("1d", "2024-03-01 00:00:00", "view", [4, 2, 2, 1], 1, 9),
    ];
    for (g, start, ty, [e, u, s, t], fin, v) in rows {
        let sql = format!(
            "INSERT INTO {}.rollups (granularity, window_start, event_type, events, \
             unique_users, unique_sessions, unique_event_types, is_final, version) VALUES \
             ('{g}', '{start}', '{ty}', {e}, {u}, {s}, {t}, {fin}, {v})",
            db.config.database
        );
        db.exec(&sql).await?;
    }
    let shipped = tally_topologies::file::shipped()?;
    let pa = &shipped
        .iter()
        .find(|f| f.topology.name == "product_analytics")
        .context("shipped")?
        .topology;
    let m = db.migrate(pa).await?;
    assert_eq!(
        whys(&m)[2..],
        [
            "create rollups_product_analytics (window metrics)",
            &format!(
                "copy the 4 rows of {db}.rollups into rollups_product_analytics (windows '1m', \
                 '1h', '1d'; {db}.rollups is kept)",
                db = db.config.database
            ),
        ]
    );
    // Worked out by hand: granularity → window_name; event_type '' → the all-events row,
    // else dimension `event_type` with the type as value.
    let sql = format!(
        "SELECT window_name, window_start, dimension, value, events, unique_users, \
         unique_sessions, unique_event_types, is_final, version FROM \
         {}.rollups_product_analytics ORDER BY window_name, dimension, value, window_start",
        db.config.database
    );
    assert_eq!(
        db.csv(&sql).await?,
        "\"1d\",\"2024-03-01 00:00:00\",\"event_type\",\"view\",4,2,2,1,1,9\n\
         \"1h\",\"2024-03-01 10:00:00\",\"\",\"\",10,4,3,2,0,8\n\
         \"1m\",\"2024-03-01 10:00:00\",\"\",\"\",10,4,3,2,1,7\n\
         \"1m\",\"2024-03-01 10:00:00\",\"event_type\",\"click\",6,3,2,1,1,7\n"
    );
    let count = format!("SELECT count() FROM {}.rollups", db.config.database);
    assert_eq!(db.csv(&count).await?, "4\n", "rollups is kept");
    // Again: nothing to do, nothing copied twice.
    assert!(db.migrate(pa).await?.is_up_to_date());
    let count = format!(
        "SELECT count() FROM {}.rollups_product_analytics",
        db.config.database
    );
    assert_eq!(db.csv(&count).await?, "4\n");
    let current = current_tables(&db.config, std::slice::from_ref(pa)).await?;
    assert_eq!(current[0].table, "rollups_product_analytics");
    db.finish().await
}
