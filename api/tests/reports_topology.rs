//! `/reports` over topology tables on the real ClickHouse (18.16 in the local stack) and
//! PostgreSQL: hand-made rows in the storage layout every topology uses (several versions,
//! provisional and final, hopping windows, groups, the stored `__other__` group, a group folded
//! after it was written, session components, field aggregates), and answers checked against
//! values worked out by hand in the comments. Runs with `TALLY_E2E=1` and the local stack up
//! (`deploy/local/stack.sh up`); uses its own ClickHouse database and pipeline name.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tally_api::{router, AppState};
use tally_core::{Dimension, Metric, RowTable, Topology, WindowSpec};
use tower::ServiceExt;

/// 2024-03-13T10:00:00Z.
const T0: u64 = 1_710_324_000_000;
const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const GRACE_MS: u64 = 5_000;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// `shop`: field aggregates per event type, one hourly window.
fn shop() -> Topology {
    Topology::builder("shop")
        .window(WindowSpec::tumbling("1h", HOUR))
        .dimension(Dimension::parse("event_type").expect("dimension"))
        .metric(Metric::parse("max(metadata.price)").expect("metric"))
        .metric(Metric::parse("avg(metadata.price)").expect("metric"))
        .build()
        .expect("valid")
}

/// The DDL of one table in the storage layout of every topology.
fn create_table(t: &Topology, table: RowTable) -> String {
    let columns: Vec<String> = t
        .columns(table)
        .iter()
        .map(|c| format!("{} {}", c.name, c.kind.sql()))
        .collect();
    format!(
        "CREATE TABLE {} (window_name String, window_start DateTime, dimension String, \
         value String, {}, is_final UInt8, version UInt64) \
         ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(window_start) \
         ORDER BY (window_name, dimension, value, window_start)",
        t.table_name(table),
        columns.join(", ")
    )
}

/// One stored row: window, start (ms), dimension, value, the columns' values as SQL literals,
/// is_final, version.
type Row<'a> = (&'a str, u64, &'a str, &'a str, &'a str, u8, u64);

fn insert(table: &str, columns: &str, rows: &[Row<'_>]) -> String {
    let values: Vec<String> = rows
        .iter()
        .map(|(w, start, d, v, vals, fin, ver)| {
            format!(
                "('{w}', toDateTime({}), '{d}', '{v}', {vals}, {fin}, {ver})",
                start / 1000
            )
        })
        .collect();
    format!(
        "INSERT INTO {table} (window_name, window_start, dimension, value, {columns}, is_final, \
         version) VALUES {}",
        values.join(", ")
    )
}

/// The rows of the test, with what each stands for.
fn rows() -> Vec<String> {
    let p = "metadata.platform";
    let sessions = insert(
        "rollups_web_sessions_sessions",
        "sessions, bounced_sessions, session_duration_ms, session_events",
        &[
            // All sessions, 1h_15m. 10:00: a provisional version, then the final one (4
            // sessions, 1 bounce, 600 s, 9 events). 10:15: a first version with MORE sessions,
            // replaced by a later, smaller one (argMax by version, not max). 10:30: nothing.
            // 10:45: a zero row. 11:00: outside the range. A 1h row: another window kind.
            ("1h_15m", T0, "", "", "2, 1, 60000, 3", 0, 1),
            ("1h_15m", T0, "", "", "4, 1, 600000, 9", 1, 2),
            ("1h_15m", T0 + 15 * MIN, "", "", "5, 0, 99000, 50", 0, 1),
            ("1h_15m", T0 + 15 * MIN, "", "", "3, 2, 1000, 4", 1, 3),
            ("1h_15m", T0 + 45 * MIN, "", "", "0, 0, 0, 0", 0, 1),
            ("1h_15m", T0 + HOUR, "", "", "7, 7, 0, 7", 0, 1),
            ("1h", T0, "", "", "8, 0, 0, 80", 1, 1),
            // Per platform. ios at 10:00: 9 provisional sessions, then 2 (1 bounce, 90 s).
            ("1h_15m", T0, p, "ios", "9, 0, 0, 9", 0, 1),
            ("1h_15m", T0, p, "ios", "2, 1, 90000, 3", 1, 2),
            ("1h_15m", T0, p, "android", "1, 1, 0, 1", 1, 1),
            ("1h_15m", T0, p, "web", "1, 0, 120000, 5", 1, 1),
            // Values past the cap, folded by the pipeline.
            ("1h_15m", T0, p, "__other__", "1, 0, 60000, 2", 1, 1),
            // tv had a provisional row, then was folded: its latest row is all zeros.
            ("1h_15m", T0, p, "tv", "3, 3, 0, 3", 0, 1),
            ("1h_15m", T0, p, "tv", "0, 0, 0, 0", 1, 2),
            ("1h_15m", T0 + 15 * MIN, p, "ios", "1, 1, 0, 1", 1, 1),
            ("1h_15m", T0 + 15 * MIN, p, "web", "2, 0, 30000, 4", 1, 1),
            (
                "1h_15m",
                T0 + 15 * MIN,
                p,
                "android",
                "1, 0, 10000, 2",
                1,
                1,
            ),
        ],
    );
    let windows = insert(
        "rollups_web_sessions",
        "events, unique_users",
        &[
            ("1h", T0, "", "", "5, 2", 0, 1),
            ("1h", T0, "", "", "10, 4", 1, 2),
            ("1h", T0 + HOUR, "", "", "4, 3", 1, 1),
            ("1h", T0, p, "ios", "6, 2", 1, 1),
            ("1h", T0 + HOUR, p, "ios", "1, 1", 1, 1),
            ("1h", T0, p, "web", "3, 1", 1, 1),
            ("1h", T0 + HOUR, p, "web", "3, 2", 1, 1),
            ("1h", T0, p, "android", "1, 1", 1, 1),
        ],
    );
    let product = insert(
        "rollups_product_analytics",
        "events, unique_users, unique_sessions, unique_event_types",
        &[
            ("1m", T0, "", "", "5, 3, 2, 2", 1, 1),
            ("1m", T0 + MIN, "", "", "7, 4, 3, 3", 1, 1),
            ("1m", T0, "event_type", "click", "1, 1, 1, 1", 0, 1),
            ("1m", T0, "event_type", "click", "2, 2, 1, 1", 1, 2),
        ],
    );
    let shop = insert(
        "rollups_shop",
        "max_metadata_price, count_metadata_price, sum_metadata_price",
        &[
            ("1h", T0, "event_type", "buy", "50.5, 2, 70.5", 1, 1),
            ("1h", T0, "event_type", "refund", "-3.0, 1, -3.0", 1, 1),
            ("1h", T0, "event_type", "view", "0, 0, 0", 1, 1),
            ("1h", T0, "event_type", "gift", "-1.0, 4, -10.0", 1, 1),
        ],
    );
    vec![sessions, windows, product, shop]
}

struct Setup {
    state: AppState,
    admin: clickhouse::Client,
    database: String,
    pipeline: String,
}

async fn setup() -> Setup {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("tally_api_reports_{}", &tag[..12]);
    let pipeline = format!("api_reports_{}", &tag[..12]);
    let url = env_or("TALLY_CLICKHOUSE__URL", "http://127.0.0.1:8123");
    let config = tally_sinks::clickhouse::ClickHouseConfig {
        url,
        database: database.clone(),
        ..Default::default()
    };
    let admin = tally_sinks::clickhouse::connect(&config, false);
    admin
        .query(&format!("CREATE DATABASE {database}"))
        .execute()
        .await
        .expect("create database");
    let ch = tally_sinks::clickhouse::connect(&config, true);
    let topologies = vec![common::product_analytics(), common::web_sessions(), shop()];
    for t in &topologies {
        for table in [RowTable::Windows, RowTable::Sessions] {
            if t.has(table) {
                ch.query(&create_table(t, table))
                    .execute()
                    .await
                    .expect("create table");
            }
        }
    }
    for sql in rows() {
        ch.query(&sql).execute().await.expect("insert");
    }
    let pg_url = env_or(
        "TALLY_POSTGRES__URL",
        "postgres://tally@127.0.0.1:5432/tally",
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg_url)
        .await
        .expect("postgres");
    tally_sinks::postgres::migrate(&pool)
        .await
        .expect("migrate postgres");
    // Frontier: 25 h 5 s + 1 ms after 11:20 of the first day: hourly window rows are final
    // until 2024-03-14T12:00 (grace 5 s); session rows (delay 24 h + 2 × 30 min + 5 s) until
    // 11:20 of the first day, i.e. hopping windows starting before 10:30.
    let frontier = T0 + 80 * MIN + 25 * HOUR + GRACE_MS + 1;
    sqlx::query("INSERT INTO pipeline_frontiers (pipeline, acked_frontier_ms) VALUES ($1, $2)")
        .bind(&pipeline)
        .bind(frontier as i64)
        .execute(&pool)
        .await
        .expect("frontier");
    // One window waits for its correction: the session metrics of 1h_15m at 10:15 of
    // web_sessions (its window metrics do not).
    sqlx::query(
        "INSERT INTO late_windows (pipeline, topology, table_kind, window_name, \
         window_start_ms, late_events, pending_since) \
         VALUES ($1, 'web_sessions', 'sessions', '1h_15m', $2, 1, now())",
    )
    .bind(&pipeline)
    .bind((T0 + 15 * MIN) as i64)
    .execute(&pool)
    .await
    .expect("late window");
    let state = common::store_state(ch, pool, pipeline.clone(), GRACE_MS, topologies);
    Setup {
        state,
        admin,
        database,
        pipeline,
    }
}

async fn teardown(s: &Setup) {
    for sql in [
        "DELETE FROM pipeline_frontiers WHERE pipeline = $1",
        "DELETE FROM late_windows WHERE pipeline = $1",
    ] {
        sqlx::query(sql)
            .bind(&s.pipeline)
            .execute(&s.state.postgres)
            .await
            .expect("cleanup");
    }
    s.admin
        .query(&format!("DROP DATABASE IF EXISTS {}", s.database))
        .execute()
        .await
        .expect("drop database");
}

async fn report(state: &AppState, query: &str) -> Value {
    let uri = format!("/reports?{query}");
    let response = router(state.clone())
        .oneshot(common::with_key(
            common::Who::Read,
            Request::get(&uri).body(Body::empty()).expect("request"),
        ))
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    body
}

/// `(window_start, value)` of each point.
fn points(points: &Value) -> Vec<(String, Value)> {
    points
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["window_start"].as_str().unwrap_or_default().to_owned(),
                p["value"].clone(),
            )
        })
        .collect()
}

/// `(group, total, values)` of each series.
fn series(body: &Value) -> Vec<(String, Value, Vec<Value>)> {
    body["series"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["group"].as_str().unwrap_or_default().to_owned(),
                s["total"].clone(),
                points(&s["points"]).into_iter().map(|(_, v)| v).collect(),
            )
        })
        .collect()
}

const HOP: &str =
    "topology=web_sessions&window=1h_15m&from=2024-03-13T10:00:00Z&to=2024-03-13T11:00:00Z";

#[tokio::test]
async fn reports_read_topology_tables_on_clickhouse() {
    if std::env::var("TALLY_E2E").as_deref() != Ok("1") {
        eprintln!(
            "skipping reports_read_topology_tables_on_clickhouse: set TALLY_E2E=1 with the \
             local stack up (deploy/local/stack.sh up)"
        );
        return;
    }
    let s = setup().await;
    let result = std::panic::AssertUnwindSafe(checks(&s.state));
    let outcome = futures::FutureExt::catch_unwind(result).await;
    teardown(&s).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn checks(state: &AppState) {
    hopping_ratios(state).await;
    grouped_ratios(state).await;
    grouped_counts_and_event_types(state).await;
    field_aggregates(state).await;
}

async fn hopping_ratios(state: &AppState) {
    let body = report(state, &format!("{HOP}&metric=bounce_rate")).await;
    let null = Value::Null;
    // 10:00: 1 of 4 (the final version); 10:15: 2 of 3 (the later version, not the larger);
    // 10:30: no row; 10:45: no sessions.
    assert_eq!(
        points(&body["points"]),
        vec![
            ("2024-03-13T10:00:00Z".to_owned(), json!(0.25)),
            ("2024-03-13T10:15:00Z".to_owned(), json!(2.0 / 3.0)),
            ("2024-03-13T10:30:00Z".to_owned(), null.clone()),
            ("2024-03-13T10:45:00Z".to_owned(), null.clone()),
        ]
    );
    assert_eq!(body["window_size_s"], 3600);
    assert_eq!(body["slide_s"], 900);
    assert_eq!(body["unit"], "ratio in [0, 1]");
    assert!(body.get("series").is_none(), "{body}");
    // Session rows settle a day after the window: hopping windows starting before 10:30.
    assert_eq!(body["complete_until"], "2024-03-13T10:30:00Z");
    assert_eq!(body["pending_corrections"], 1);
    // Unrounded: 2/3 in full double precision.
    let text = body["points"][1]["value"].to_string();
    assert_eq!(text, "0.6666666666666666");
    // The window metrics of the same windows owe no correction.
    let events = report(state, &format!("{HOP}&metric=events")).await;
    assert_eq!(events["pending_corrections"], 0, "{events}");

    let body = report(state, &format!("{HOP}&metric=avg_session_duration_s")).await;
    // 600 s over 4 sessions; 1 s over 3.
    let values: Vec<Value> = points(&body["points"]).into_iter().map(|p| p.1).collect();
    assert_eq!(
        values,
        vec![json!(150.0), json!(1.0 / 3.0), null.clone(), null.clone()]
    );
    let body = report(state, &format!("{HOP}&metric=events_per_session")).await;
    let values: Vec<Value> = points(&body["points"]).into_iter().map(|p| p.1).collect();
    assert_eq!(
        values,
        vec![json!(2.25), json!(4.0 / 3.0), null.clone(), null]
    );
    let body = report(state, &format!("{HOP}&metric=sessions")).await;
    let values: Vec<Value> = points(&body["points"]).into_iter().map(|p| p.1).collect();
    assert_eq!(values, vec![json!(4), json!(3), json!(0), json!(0)]);
    assert_eq!(body["points"][0]["value"].to_string(), "4");
    // Outside the range and other window kinds are not read: the 1h row holds 8 sessions.
    let body = report(
        state,
        "topology=web_sessions&window=1h&metric=sessions&from=2024-03-13T10:00:00Z\
         &to=2024-03-13T11:00:00Z",
    )
    .await;
    assert_eq!(points(&body["points"])[0].1, json!(8));
}

async fn grouped_ratios(state: &AppState) {
    let g = "group_by=metadata.platform";
    let body = report(state, &format!("{HOP}&metric=bounce_rate&{g}&limit=2")).await;
    let null = Value::Null;
    // Ranked by sessions over the range: ios 2 + 1 = 3 (its provisional 9 was replaced), web
    // 1 + 2 = 3 (a tie: ios first by name), android 1 + 1 = 2; tv's latest row is zeros.
    // __other__ = android + the stored __other__ + tv: 10:00 2 sessions, 1 bounce; 10:15 1, 0.
    assert_eq!(
        series(&body),
        vec![
            (
                "ios".to_owned(),
                json!(3),
                vec![json!(0.5), json!(1.0), null.clone(), null.clone()]
            ),
            (
                "web".to_owned(),
                json!(3),
                vec![json!(0.0), json!(0.0), null.clone(), null.clone()]
            ),
            (
                "__other__".to_owned(),
                json!(3),
                vec![json!(0.5), json!(0.0), null.clone(), null.clone()]
            ),
        ]
    );
    assert!(body.get("points").is_none(), "{body}");
    assert_eq!(body["group_by"], "metadata.platform");
    assert_eq!(body["limit"], 2);

    // Every group fits: android joins; __other__ is the stored fold alone (10:00: 1 session,
    // no bounce; tv's zeros add nothing).
    let body = report(state, &format!("{HOP}&metric=bounce_rate&{g}&limit=5")).await;
    let groups: Vec<(String, Value)> = series(&body).into_iter().map(|(g, t, _)| (g, t)).collect();
    assert_eq!(
        groups,
        vec![
            ("ios".to_owned(), json!(3)),
            ("web".to_owned(), json!(3)),
            ("android".to_owned(), json!(2)),
            ("__other__".to_owned(), json!(1)),
        ]
    );
    assert_eq!(
        series(&body)[3].2,
        vec![json!(0.0), null.clone(), null.clone(), null.clone()]
    );

    // Averages fold by their components: __other__ at 10:00 is (120 + 0 + 60) s over 3
    // sessions of web, android and the stored fold; at 10:15 (30 + 10) s over 3.
    let body = report(
        state,
        &format!("{HOP}&metric=avg_session_duration_s&{g}&limit=1"),
    )
    .await;
    assert_eq!(
        series(&body),
        vec![
            (
                "ios".to_owned(),
                json!(3),
                vec![json!(45.0), json!(0.0), null.clone(), null.clone()]
            ),
            (
                "__other__".to_owned(),
                json!(6),
                vec![json!(60.0), json!(40.0 / 3.0), null.clone(), null]
            ),
        ]
    );
}

async fn grouped_counts_and_event_types(state: &AppState) {
    // Events per platform over two hours, top 1: ios 6 + 1 = 7 beats web 3 + 3 = 6.
    let body = report(
        state,
        "topology=web_sessions&window=1h&metric=events&group_by=metadata.platform&limit=1\
         &from=2024-03-13T10:00:00Z&to=2024-03-13T12:00:00Z",
    )
    .await;
    assert_eq!(
        series(&body),
        vec![
            ("ios".to_owned(), json!(7), vec![json!(6), json!(1)]),
            ("__other__".to_owned(), json!(7), vec![json!(4), json!(3)]),
        ]
    );
    // Window rows are final once the frontier passed end + grace: until 2024-03-14T12:00.
    assert_eq!(body["complete_until"], "2024-03-14T12:00:00Z");
    assert_eq!(body["pending_corrections"], 0);
    // The default topology; `event_type` reads the event_type dimension's rows.
    let range = "from=2024-03-13T10:00:00Z&to=2024-03-13T10:02:00Z";
    let body = report(state, &format!("metric=events&window=1m&{range}")).await;
    assert_eq!(body["topology"], "product_analytics");
    let values: Vec<Value> = points(&body["points"]).into_iter().map(|p| p.1).collect();
    assert_eq!(values, vec![json!(5), json!(7)]);
    let body = report(
        state,
        &format!("metric=events&window=1m&event_type=click&{range}"),
    )
    .await;
    let values: Vec<Value> = points(&body["points"]).into_iter().map(|p| p.1).collect();
    assert_eq!(values, vec![json!(2), json!(0)]);
    assert_eq!(body["event_type"], "click");
}

async fn field_aggregates(state: &AppState) {
    let q = "topology=shop&window=1h&group_by=event_type&limit=2\
             &from=2024-03-13T10:00:00Z&to=2024-03-13T11:00:00Z";
    // Ranked by events carrying the price: gift 4, buy 2; refund (1) and view (0, no price)
    // fold: the largest price of groups that have one is refund's -3 (not view's stored 0).
    let body = report(state, &format!("{q}&metric=max%28metadata.price%29")).await;
    assert_eq!(
        series(&body),
        vec![
            ("gift".to_owned(), json!(4), vec![json!(-1.0)]),
            ("buy".to_owned(), json!(2), vec![json!(50.5)]),
            ("__other__".to_owned(), json!(1), vec![json!(-3.0)]),
        ]
    );
    let body = report(state, &format!("{q}&metric=avg%28metadata.price%29")).await;
    assert_eq!(
        series(&body),
        vec![
            ("gift".to_owned(), json!(4), vec![json!(-2.5)]),
            ("buy".to_owned(), json!(2), vec![json!(35.25)]),
            ("__other__".to_owned(), json!(1), vec![json!(-3.0)]),
        ]
    );
    assert_eq!(body["metric"], "avg(metadata.price)");
}

fn chdb_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import chdb"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The same read SQL on a *current* ClickHouse (26.x, in-process through
/// `tests/current_clickhouse.py` and PyPI `chdb-core`) over the same rows: 18.16 and current
/// releases must agree.
#[test]
fn report_sql_runs_on_current_clickhouse() {
    use tally_core::{Component, FieldPath};
    use tally_sinks::clickhouse::read::{self, WindowRange};
    if !chdb_available() {
        assert!(
            std::env::var("TALLY_E2E").as_deref() != Ok("1"),
            "python3 cannot import chdb: `pip install chdb-core` (deploy/local/test.sh does)"
        );
        eprintln!("skipping report_sql_runs_on_current_clickhouse: python3 cannot import chdb");
        return;
    }
    let client = clickhouse::Client::default();
    let mut setup = vec![
        "CREATE DATABASE IF NOT EXISTS t".to_owned(),
        "USE t".to_owned(),
    ];
    for t in [common::product_analytics(), common::web_sessions(), shop()] {
        for table in [RowTable::Windows, RowTable::Sessions] {
            if t.has(table) {
                setup.push(create_table(&t, table));
            }
        }
    }
    setup.extend(rows());
    let s0 = T0 / 1000;
    let hop = WindowRange {
        table: "rollups_web_sessions_sessions",
        window: "1h_15m",
        from_s: s0,
        to_s: s0 + 3_600,
    };
    let bounce = [Component::Sessions, Component::BouncedSessions];
    let sql = |q: Result<clickhouse::query::Query, tally_sinks::SinkError>| {
        q.expect("valid").sql_display().to_string()
    };
    let p = "metadata.platform";
    let price = FieldPath::parse("metadata.price").expect("path");
    let max = [
        Component::FieldMax(price.clone()),
        Component::FieldCount(price),
    ];
    let shop_range = WindowRange {
        table: "rollups_shop",
        window: "1h",
        from_s: s0,
        to_s: s0 + 3_600,
    };
    let groups = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Worked out as in `reports_read_topology_tables_on_clickhouse`.
    let (m15, m45) = (s0 + 900, s0 + 2_700);
    let checks = json!([
        {"sql": sql(read::series(&client, &hop, &bounce, "", "")),
         "expect": format!("{s0},\"[4,1]\"\n{m15},\"[3,2]\"\n{m45},\"[0,0]\"\n")},
        {"sql": sql(read::top_groups(&client, &hop, &bounce, p, 0, 2)),
         "expect": "\"ios\",3\n\"web\",3\n"},
        {"sql": sql(read::grouped_series(&client, &hop, &bounce, p, &groups(&["ios", "web"]))),
         "expect": format!(
             "{s0},\"__other__\",\"[2,1]\"\n{s0},\"ios\",\"[2,1]\"\n{s0},\"web\",\"[1,0]\"\n\
              {m15},\"__other__\",\"[1,0]\"\n{m15},\"ios\",\"[1,1]\"\n{m15},\"web\",\"[2,0]\"\n")},
        {"sql": sql(read::grouped_series(&client, &hop, &bounce, p, &[])),
         "expect": format!("{s0},\"__other__\",\"[5,2]\"\n{m15},\"__other__\",\"[4,1]\"\n")},
        {"sql": sql(read::top_groups(&client, &shop_range, &max, "event_type", 1, 2)),
         "expect": "\"gift\",4\n\"buy\",2\n"},
        {"sql": sql(read::grouped_series(&client, &shop_range, &max, "event_type",
                    &groups(&["gift", "buy"]))),
         "expect": format!(
             "{s0},\"__other__\",\"[-3,1]\"\n{s0},\"buy\",\"[50.5,2]\"\n{s0},\"gift\",\"[-1,4]\"\n")},
    ]);
    common::run_on_current_clickhouse(&json!({"setup": setup, "checks": checks}));
}
