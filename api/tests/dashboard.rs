//! `GET /dashboard` (the placeholder page) and `GET /dashboard/data`: validation and
//! unavailability through the router without services, then (with `TALLY_E2E=1` and the local
//! stack up) the answer over raw events and rollup rows on the real ClickHouse and PostgreSQL,
//! against values worked out from the rows the test writes.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use common::{get, state};
use serde_json::{json, Value};
use tally_api::AppState;
use tally_core::{RowTable, Topology};
use tally_sinks::clickhouse::{ClickHouseConfig, EventRow};
use tower::ServiceExt;

#[tokio::test]
async fn the_placeholder_page_is_public_html() {
    for uri in ["/dashboard", "/dashboard/"] {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let (status, headers, body) = common::call_as_is(state(), request).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let html = String::from_utf8(body).expect("utf-8");
        assert!(
            html.contains("href=\"/docs\"") && html.contains("dashboard issue"),
            "{html}"
        );
    }
    // Not part of the API description; /dashboard/data is.
    let (_, spec) = get("/openapi.json").await;
    assert!(spec["paths"].get("/dashboard").is_none());
    assert!(spec["paths"]["/dashboard/data"]["get"].is_object());
    assert!(spec["paths"]["/users"]["get"].is_object());
}

#[tokio::test]
async fn invalid_parameters_are_400_with_reasons() {
    let cases = [
        ("window=5m", "unknown window `5m`: use 1m, 1h, 1d"),
        ("metric=events", "unknown parameter `metric`"),
        ("from=yesterday", "`from` must be an RFC 3339 time"),
        (
            "from=2024-03-14T00:00:00Z&to=2024-03-13T00:00:00Z",
            "`from` must be before `to`",
        ),
        // 30 days of minutes is more windows than a report may hold.
        (
            "from=2024-02-01T00:00:00Z&to=2024-03-02T00:00:00Z&window=1m",
            "the range spans 43200 windows",
        ),
    ];
    for (query, want) in cases {
        let (status, body) = get(&format!("/dashboard/data?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(want), "{query}: {error}");
    }
}

#[tokio::test]
async fn clickhouse_unreachable_is_503() {
    let (status, body) = get("/dashboard/data").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["error"],
        "the analytics store is unavailable; retry later"
    );
}

// ---------------------------------------------------------------------------------------------

const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;

fn create_table(t: &Topology) -> String {
    let columns: Vec<String> = t
        .columns(RowTable::Windows)
        .iter()
        .map(|c| format!("{} {}", c.name, c.kind.sql()))
        .collect();
    format!(
        "CREATE TABLE {} (window_name String, window_start DateTime, dimension String, \
         value String, {}, is_final UInt8, version UInt64) \
         ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(window_start) \
         ORDER BY (window_name, dimension, value, window_start)",
        t.table_name(RowTable::Windows),
        columns.join(", ")
    )
}

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// `(id, type, user, session, ms)`.
type Ev = (&'static str, &'static str, &'static str, &'static str, u64);

fn raw_events(b: u64) -> Vec<Ev> {
    vec![
        // The previous period [b - 2h, b): 2 events, 2 users, 1 session.
        ("p1", "click", "u1", "s1", b - HOUR),
        ("p2", "view", "u2", "", b - 1),
        // The range [b, b + 2h): 6 events, 3 users, 3 sessions; view 3, click 2, buy 1.
        ("c1", "view", "u1", "s1", b),
        ("c2", "view", "u1", "s1", b + MIN),
        ("c3", "click", "u2", "s2", b + 10 * MIN),
        ("c4", "view", "u3", "", b + HOUR),
        ("c5", "click", "u3", "s3", b + HOUR + 1),
        ("c6", "buy", "u1", "s1", b + 2 * HOUR - 1),
        // Outside both.
        ("n1", "view", "u9", "s9", b + 2 * HOUR),
    ]
}

#[tokio::test]
async fn dashboard_data_on_clickhouse() {
    if std::env::var("TALLY_E2E").as_deref() != Ok("1") {
        eprintln!("skipping dashboard_data_on_clickhouse: set TALLY_E2E=1 with the stack up");
        return;
    }
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let config = ClickHouseConfig {
        url: std::env::var("TALLY_CLICKHOUSE__URL")
            .unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: format!("tally_api_dashboard_{tag}"),
        ..Default::default()
    };
    let admin = tally_sinks::clickhouse::connect(&config, false);
    let ch = tally_sinks::clickhouse::connect(&config, true);
    let pg_url = std::env::var("TALLY_POSTGRES__URL")
        .unwrap_or_else(|_| "postgres://tally@127.0.0.1:5432/tally".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg_url)
        .await
        .expect("postgres");
    let pipeline = format!("api_dashboard_{tag}");
    let outcome = {
        let (ch, pool, pipeline, config) = (ch.clone(), pool.clone(), pipeline.clone(), &config);
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async move {
            checks(config, ch, pool, pipeline).await
        }))
        .await
    };
    admin
        .query(&format!("DROP DATABASE IF EXISTS {}", config.database))
        .execute()
        .await
        .expect("drop");
    sqlx::query("DELETE FROM pipeline_frontiers WHERE pipeline = $1")
        .bind(&pipeline)
        .execute(&pool)
        .await
        .expect("cleanup");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn checks(
    config: &ClickHouseConfig,
    ch: clickhouse::Client,
    pool: sqlx::PgPool,
    pipeline: String,
) {
    tally_sinks::clickhouse::migrate(config)
        .await
        .expect("migrate");
    tally_sinks::postgres::migrate(&pool).await.expect("pg");
    let now = Utc::now().timestamp_millis() as u64;
    let b = now - now % HOUR - 3 * HOUR;
    let topology = common::product_analytics();
    ch.query(&create_table(&topology))
        .execute()
        .await
        .expect("table");
    // Rollups: 1h at b (a provisional version, then the final), 1h at b + 1h.
    let (s0, s1) = (b / 1000, (b + HOUR) / 1000);
    ch.query(&format!(
        "INSERT INTO rollups_product_analytics (window_name, window_start, dimension, value, \
         events, unique_users, unique_sessions, unique_event_types, is_final, version) VALUES \
         ('1h', toDateTime({s0}), '', '', 9, 9, 9, 9, 0, 1), \
         ('1h', toDateTime({s0}), '', '', 3, 2, 2, 2, 1, 2), \
         ('1h', toDateTime({s1}), '', '', 3, 2, 1, 3, 1, 1), \
         ('1h', toDateTime({s0}), 'event_type', 'view', 2, 1, 1, 1, 1, 1), \
         ('1h', toDateTime({s0}), 'event_type', '=x', 1, 1, 1, 1, 1, 1)"
    ))
    .execute()
    .await
    .expect("rollups");
    let mut insert = ch.insert::<EventRow>("events").await.expect("insert");
    let evs = raw_events(b);
    // Every event, and a second copy of c1 (an at-least-once write).
    for (i, (id, t, u, s, ms)) in evs.iter().chain(&evs[2..3]).enumerate() {
        let row = EventRow {
            event_id: (*id).into(),
            event_type: (*t).into(),
            user_id: (*u).into(),
            session_id: (*s).into(),
            timestamp: (ms / 1000) as u32,
            timestamp_ms: *ms as i64,
            metadata: "{}".into(),
            ingested_at: (ms / 1000) as u32,
            kafka_partition: 0,
            kafka_offset: i as i64,
        };
        insert.write(&row).await.expect("write");
    }
    insert.end().await.expect("end");
    let frontier = now - 10_000;
    sqlx::query("INSERT INTO pipeline_frontiers (pipeline, acked_frontier_ms) VALUES ($1, $2)")
        .bind(&pipeline)
        .bind(frontier as i64)
        .execute(&pool)
        .await
        .expect("frontier");
    let state = common::store_state(ch, pool, pipeline, 5_000, vec![topology]);
    let uri = format!(
        "/dashboard/data?from={}&to={}&window=1h",
        iso(b),
        iso(b + 2 * HOUR)
    );
    let body = fetch(&state, &uri).await;
    let total = |v: u64, p: u64, c: Value| json!({"value": v, "previous": p, "change": c});
    assert_eq!(
        body["totals"],
        json!({
            "events": total(6, 2, json!(2.0)),
            "unique_users": total(3, 2, json!(0.5)),
            "unique_sessions": total(3, 1, json!(2.0)),
        }),
        "{body}"
    );
    // The same totals as the oracle over the rows (each id once).
    let sel: Vec<&Ev> = evs
        .iter()
        .filter(|e| e.4 >= b && e.4 < b + 2 * HOUR)
        .collect();
    let users: BTreeSet<&str> = sel.iter().map(|e| e.2).collect();
    assert_eq!(body["totals"]["events"]["value"], sel.len());
    assert_eq!(body["totals"]["unique_users"]["value"], users.len());
    let mut types: BTreeMap<&str, (u64, BTreeSet<&str>)> = BTreeMap::new();
    for e in &sel {
        let t = types.entry(e.1).or_default();
        t.0 += 1;
        t.1.insert(e.2);
    }
    let mut want_types: Vec<Value> = types
        .iter()
        .map(|(t, (n, u))| json!({"event_type": t, "events": n, "unique_users": u.len()}))
        .collect();
    want_types.sort_by_key(|v| -(v["events"].as_i64().unwrap_or(0)));
    assert_eq!(body["top_event_types"], json!(want_types), "{body}");
    assert_eq!(
        body["series"],
        json!([
            {"window_start": iso(b), "events": 3, "unique_users": 2, "unique_sessions": 2},
            {"window_start": iso(b + HOUR), "events": 3, "unique_users": 2, "unique_sessions": 1},
        ]),
        "{body}"
    );
    assert_eq!(body["window"], "1h");
    assert_eq!(body["previous_from"], iso(b - 2 * HOUR));
    // The frontier is 10 s behind: windows ending by then are complete.
    let lag = body["lag_s"].as_f64().unwrap_or(-1.0);
    assert!((9.0..120.0).contains(&lag), "{body}");
    let cu = body["complete_until"].as_str().unwrap_or("");
    let cu = DateTime::parse_from_rfc3339(cu).map(|t| t.timestamp_millis() as u64);
    let hour = now - now % HOUR; // (the hour before, within 15 s of the hour)
    assert!(cu.is_ok_and(|c| c == hour || c == hour - HOUR), "{body}");

    csv_reports(&state, b).await;

    // Defaults: the last 24 hours in 1h windows (1m would give 1440 points).
    let body = fetch(&state, "/dashboard/data").await;
    assert_eq!(body["window"], "1h");
    let points = body["series"].as_array().map_or(0, Vec::len);
    assert!(points == 25 || points == 24, "{body}"); // 24 on the hour exactly
    assert_eq!(body["totals"]["events"]["value"], evs.len(), "{body}");
    // Two hours: minutes (120 points).
    let uri = format!("/dashboard/data?from={}&to={}", iso(b), iso(b + 2 * HOUR));
    let body = fetch(&state, &uri).await;
    assert_eq!(body["window"], "1m");
    assert_eq!(body["series"].as_array().map(Vec::len), Some(120));
}

/// `/reports?format=csv`, plain and grouped (a group that looks like a formula is guarded).
async fn csv_reports(state: &AppState, b: u64) {
    let range = format!(
        "metric=events&window=1h&from={}&to={}",
        iso(b),
        iso(b + 2 * HOUR)
    );
    let cases = [
        (
            format!("/reports?{range}&format=csv"),
            format!(
                "window_start,value\r\n{},3\r\n{},3\r\n",
                iso(b),
                iso(b + HOUR)
            ),
        ),
        (
            format!("/reports?{range}&group_by=event_type&limit=5&format=csv"),
            format!(
                "group,window_start,value\r\nview,{b0},2\r\nview,{b1},0\r\n'=x,{b0},1\r\n\
                 '=x,{b1},0\r\n",
                b0 = iso(b),
                b1 = iso(b + HOUR)
            ),
        ),
    ];
    for (uri, want) in cases {
        let request = common::with_key(
            common::Who::Admin,
            Request::get(&uri).body(Body::empty()).expect("request"),
        );
        let response = tally_api::router(state.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert_eq!(
            response.headers()["content-type"],
            "text/csv; charset=utf-8"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(String::from_utf8_lossy(&body), want, "{uri}");
    }
}

async fn fetch(state: &AppState, uri: &str) -> Value {
    let request = common::with_key(
        common::Who::Admin,
        Request::get(uri).body(Body::empty()).expect("request"),
    );
    let response = tally_api::router(state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    body
}
