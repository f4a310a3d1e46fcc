//! Saved resources, their rate limits and the request log.
//!
//! Router tests (no sockets, services at closed ports): validation refusals word for word,
//! 429s exactly past the burst on a hand-driven clock, aliases sharing a limit, the request
//! log serving requests while its PostgreSQL is down. End-to-end tests (`TALLY_E2E=1`, the
//! local stack up): resources round trip on the real PostgreSQL and ClickHouse with their audit
//! rows, request rows landing in `request_log`, partition maintenance on a table of their own.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use governor::clock::FakeRelativeClock;
use serde_json::{json, Value};
use tally_api::limits::{LimitClock, Limiters};
use tally_api::{ApiConfig, AppState};

fn report() -> Value {
    json!({"metric": "events", "window": "1m",
           "from": "2024-03-13T10:00:00Z", "to": "2024-03-13T11:00:00Z"})
}

/// A state whose limiters run on `clock` with these limits.
fn limited(create: (u32, u32), get: (u32, u32), clock: &FakeRelativeClock) -> AppState {
    let config = ApiConfig {
        create_resource_per_second: create.0,
        create_resource_burst: create.1,
        get_resource_per_second: get.0,
        get_resource_burst: get.1,
        ..ApiConfig::default()
    };
    let mut state = common::state_with(config.clone(), common::unreachable_kafka());
    state.limiters = Arc::new(Limiters::with_clock(
        &config,
        LimitClock::Fake(clock.clone()),
    ));
    state
}

fn json_request(method: &str, uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn from_peer(mut request: Request<Body>, peer: &str) -> Request<Body> {
    let addr: SocketAddr = peer.parse().expect("addr");
    request.extensions_mut().insert(ConnectInfo(addr));
    request
}

async fn send(state: &AppState, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = common::call_with(state.clone(), request).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// As [`send`], without a key (anonymous callers are limited per client IP, before the
/// handler refuses them with 401).
async fn send_anonymous(
    state: &AppState,
    request: Request<Body>,
) -> (StatusCode, HeaderMap, Value) {
    let (status, headers, body) = common::call_as_is(state.clone(), request).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn create_refuses_invalid_bodies_naming_the_field() {
    let clock = FakeRelativeClock::default();
    let state = limited((1000, 1000), (1000, 1000), &clock);
    let mut bad_third = vec![report(), report(), report()];
    bad_third[2]["window"] = json!("5m");
    let metrics = "events, unique_users, unique_sessions, unique_event_types";
    let fields = "topology, metric, window, from, to, event_type, group_by, limit";
    let cases: Vec<(Value, String)> = vec![
        (
            json!([1]),
            "the body must be a JSON object with `name`, `description` and `report` or `reports`"
                .into(),
        ),
        (
            json!({"name": "a", "report": report(), "owner": 1}),
            "unknown field `owner` (expected name, description, report, reports)".into(),
        ),
        (json!({"report": report()}), "`name` is required".into()),
        (
            json!({"name": "a\u{0}b", "report": report()}),
            "name: text must not contain the NUL character (\\u0000)".into(),
        ),
        (
            json!({"name": "a", "reports": [report(), {"metric": "events", "window": "1m",
                "from": "2024-03-13T10:00:00Z", "to": "2024-03-13T11:00:00Z", "event_type": "x\u{0}"}]}),
            "reports[1].event_type: text must not contain the NUL character (\\u0000)".into(),
        ),
        (
            // 20 grouped reports of 1000 one-minute windows x 11 groups: 220,000 points.
            json!({"name": "a", "reports": vec![json!({"metric": "events", "window": "1m",
                "from": "2024-03-13T00:00:00Z", "to": "2024-03-13T16:40:00Z",
                "group_by": "event_type", "limit": 10}); 20]}),
            "reports: the data would hold 220000 points (windows × groups, all reports \
             together); at most 100000: shorten the ranges, use a larger window or fewer groups"
                .into(),
        ),
        (
            json!({"name": " ", "report": report()}),
            "`name` must be 1 to 200 characters, not blank".into(),
        ),
        (
            json!({"name": "x".repeat(201), "report": report()}),
            "`name` must be 1 to 200 characters, not blank".into(),
        ),
        (
            json!({"name": "a", "description": "d".repeat(2001), "report": report()}),
            "`description` must be at most 2000 characters".into(),
        ),
        (
            json!({"name": "a"}),
            "`report` (or `reports`, for a dashboard) is required".into(),
        ),
        (
            json!({"name": "a", "report": report(), "reports": [report()]}),
            "send either `report` (a saved report) or `reports` (a dashboard), not both".into(),
        ),
        (
            json!({"name": "a", "reports": []}),
            "`reports` must be an array of 1 to 20 reports".into(),
        ),
        (
            json!({"name": "a", "reports": vec![report(); 21]}),
            "`reports` must be an array of 1 to 20 reports".into(),
        ),
        (
            json!({"name": "a", "report": {"metric": "nope", "window": "1m", "from": "2024-03-13T10:00:00Z", "to": "2024-03-13T11:00:00Z"}}),
            format!(
                "report.metric: unknown metric `nope` in topology product_analytics: use {metrics}"
            ),
        ),
        (
            json!({"name": "a", "reports": bad_third}),
            "reports[2].window: unknown window `5m` in topology product_analytics: use 1m, 1h, 1d"
                .into(),
        ),
        (
            json!({"name": "a", "report": {"metric": "events", "window": "1m", "to": "2024-03-13T11:00:00Z"}}),
            "report.from: `from` is required (RFC 3339, e.g. 2024-03-13T10:00:00Z)".into(),
        ),
        (
            json!({"name": "a", "report": {"metric": 3}}),
            "report.metric: must be a string".into(),
        ),
        (
            json!({"name": "a", "report": {"metric": "events", "colour": "red"}}),
            format!("report.colour: unknown field (expected {fields})"),
        ),
        (
            json!({"name": "a", "report": {"metric": "events", "window": "1m", "from": "2024-03-13T10:00:00Z", "to": "2024-03-13T11:00:00Z", "limit": 5}}),
            "report.limit: `limit` applies to grouped reports only: add `group_by`".into(),
        ),
        (
            json!({"name": "a", "report": "events"}),
            "report: must be an object with metric, window, from, to (as GET /reports takes them)"
                .into(),
        ),
    ];
    for (body, want) in cases {
        for uri in ["/create_resource", "/resources"] {
            let (status, _, answer) = send(&state, json_request("POST", uri, &body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {answer}");
            assert_eq!(answer["error"], want.as_str(), "{uri} {body}");
        }
    }
    // A valid body gets past validation to the (unreachable) database.
    let body = json!({"name": "a", "reports": [report(), report()]});
    let (status, _, answer) = send(&state, json_request("POST", "/resources", &body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(
        answer["error"],
        "the platform database is unavailable; retry later"
    );
}

#[tokio::test]
async fn ids_and_parameters_are_checked() {
    let clock = FakeRelativeClock::default();
    let state = limited((1000, 1000), (1000, 1000), &clock);
    let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("request");
    let cases = [
        ("/get_resource", "`id` is required"),
        (
            "/get_resource?id=abc",
            "`id` must be a positive whole number, got `abc`",
        ),
        (
            "/get_resource?id=0",
            "`id` must be a positive whole number, got `0`",
        ),
        (
            "/get_resource?id=1&with_data=yes",
            "`with_data` must be true or false",
        ),
        (
            "/get_resource?id=1&x=1",
            "unknown parameter `x` (expected id, with_data)",
        ),
        (
            "/resources/-4",
            "`id` must be a positive whole number, got `-4`",
        ),
        (
            "/resources/1?data=1",
            "unknown parameter `data` (expected with_data)",
        ),
        (
            "/resources?limit=0",
            "`limit` must be a whole number from 1 to 100, got `0`",
        ),
        (
            "/resources?before=x",
            "`before` must be a positive whole number (the previous page's `next`), got `x`",
        ),
    ];
    for (uri, want) in cases {
        let (status, _, answer) = send(&state, get(uri)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {answer}");
        assert_eq!(answer["error"], want, "{uri}");
    }
    let request = json_request("PUT", "/resources/x", &json!({}));
    let (status, _, answer) = send(&state, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let request = Request::delete("/resources/1.5")
        .body(Body::empty())
        .expect("request");
    let (status, _, answer) = send(&state, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

/// The create limit: exactly `burst` at once over both spellings and PUT/DELETE, then 429 with
/// Retry-After and RateLimit headers; one request more after 1/rate s.
#[tokio::test]
async fn create_limit_is_shared_by_every_spelling() {
    let clock = FakeRelativeClock::default();
    let state = limited((2, 4), (1000, 1000), &clock);
    let body = json!({"name": ""});
    let requests = [
        json_request("POST", "/create_resource", &body),
        json_request("POST", "/resources", &body),
        json_request("PUT", "/resources/1", &body),
        Request::delete("/resources/x")
            .body(Body::empty())
            .expect("request"),
    ];
    for (i, request) in requests.into_iter().enumerate() {
        let (status, headers, answer) = send(&state, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "request {i}: {answer}");
        assert_eq!(headers["ratelimit-limit"], "4");
        assert_eq!(headers["ratelimit-remaining"], (3 - i).to_string().as_str());
    }
    for uri in ["/create_resource", "/resources"] {
        let (status, headers, answer) = send(&state, json_request("POST", uri, &body)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{uri}: {answer}");
        assert_eq!(
            answer["error"],
            "rate limit of create_resource: 2 requests/s with a burst of 4 exceeded; retry in 1 s"
        );
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["ratelimit-limit"], "4");
        assert_eq!(headers["ratelimit-remaining"], "0");
        assert_eq!(headers["ratelimit-reset"], "2");
    }
    // Reads have their own limit.
    let (status, _, _) = send(
        &state,
        Request::get("/resources/x").body(Body::empty()).expect("r"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    clock.advance(Duration::from_millis(499));
    let (status, _, _) = send(&state, json_request("POST", "/resources", &body)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "before 1/rate s");
    clock.advance(Duration::from_millis(1));
    let (status, _, _) = send(&state, json_request("POST", "/resources", &body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "one request came back");
    let (status, _, _) = send(&state, json_request("POST", "/create_resource", &body)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "only one");
}

/// The get limit over its three routes, per client IP without a key; `/reports` and `/events`
/// are not limited by it.
#[tokio::test]
async fn get_limit_is_per_client_and_shared_by_every_spelling() {
    let clock = FakeRelativeClock::default();
    let state = limited((1000, 1000), (1, 3), &clock);
    let get = |uri: &str, peer: &str| {
        from_peer(
            Request::get(uri).body(Body::empty()).expect("request"),
            peer,
        )
    };
    for uri in ["/get_resource?id=x", "/resources/x", "/resources?limit=0"] {
        let (status, _, _) = send_anonymous(&state, get(uri, "10.0.0.1:1000")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    for uri in ["/get_resource?id=x", "/resources/x", "/resources"] {
        let (status, headers, answer) = send_anonymous(&state, get(uri, "10.0.0.1:2000")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{uri}: {answer}");
        assert_eq!(headers["retry-after"], "1");
    }
    // Another client IP has its own bucket; so do anonymous callers without an address.
    let (status, headers, _) = send_anonymous(&state, get("/resources/x", "10.0.0.2:1000")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["ratelimit-remaining"], "2");
    let (status, _, _) = send_anonymous(
        &state,
        Request::get("/resources/x").body(Body::empty()).expect("r"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Reports are not rate-limited by these classes.
    for _ in 0..10 {
        let (status, headers, _) =
            send_anonymous(&state, get("/reports?metric=events", "10.0.0.1:1")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(headers.get("ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let spec = serde_json::to_value(tally_api::openapi_spec(&common::state())).expect("json");
    let paths = &spec["paths"];
    for (path, methods) in [
        ("/create_resource", &["post"][..]),
        ("/get_resource", &["get"]),
        ("/resources", &["get", "post"]),
        ("/resources/{id}", &["get", "put", "delete"]),
        ("/admin/requests", &["get"]),
    ] {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} undocumented"
            );
        }
    }
    assert!(spec["components"]["schemas"]["ResourceBody"].is_object());
    assert!(spec["components"]["schemas"]["RequestPage"].is_object());
}

/// PostgreSQL down: the request log drops (and counts) what it cannot write, and requests are
/// answered promptly all the same.
#[tokio::test]
async fn requests_are_served_while_the_request_log_database_is_down() {
    let mut state = common::state();
    let down = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&format!(
            "postgres://tally@127.0.0.1:{}/tally",
            common::closed_port()
        ))
        .expect("lazy pool");
    let config = ApiConfig {
        request_log_queue: 1000,
        ..ApiConfig::default()
    };
    state.request_log = tally_api::request_log::RequestLog::start(down, &config);
    let log = state.request_log.clone();
    let metric = || {
        tally_api::metrics::Metrics::get()
            .request_log_dropped
            .with_label_values(&["postgres"])
            .get()
    };
    let before = metric();
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _, _) = send(
            &state,
            Request::get("/healthz").body(Body::empty()).expect("r"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while log
        .counts()
        .dropped_postgres
        .load(std::sync::atomic::Ordering::Relaxed)
        < 20
    {
        assert!(
            Instant::now() < deadline,
            "the failed batch was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        log.counts()
            .written
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(metric() >= before + 20, "metric {} -> {}", before, metric());
}

// ---- end to end (TALLY_E2E=1) ----

fn e2e(name: &str) -> bool {
    let on = std::env::var("TALLY_E2E").as_deref() == Ok("1");
    if !on {
        eprintln!(
            "skipping {name}: set TALLY_E2E=1 with the local stack up (deploy/local/stack.sh up)"
        );
    }
    on
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn real_pool() -> sqlx::PgPool {
    let url = env_or(
        "TALLY_POSTGRES__URL",
        "postgres://tally@127.0.0.1:5432/tally",
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("postgres");
    tally_sinks::postgres::migrate(&pool)
        .await
        .expect("migrate");
    pool
}

/// A state on the real PostgreSQL and a ClickHouse database of its own holding an empty
/// `product_analytics` rollup table. Returns it and the database name.
async fn real_state(pool: sqlx::PgPool) -> (AppState, String) {
    use tally_core::RowTable;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let database = format!("tally_api_resources_{}", &tag[..12]);
    let config = tally_sinks::clickhouse::ClickHouseConfig {
        url: env_or("TALLY_CLICKHOUSE__URL", "http://127.0.0.1:8123"),
        database: database.clone(),
        ..Default::default()
    };
    let admin = tally_sinks::clickhouse::connect(&config, false);
    admin
        .query(&format!("CREATE DATABASE {database}"))
        .execute()
        .await
        .expect("create db");
    let ch = tally_sinks::clickhouse::connect(&config, true);
    let t = common::product_analytics();
    let columns: Vec<String> = t
        .columns(RowTable::Windows)
        .iter()
        .map(|c| format!("{} {}", c.name, c.kind.sql()))
        .collect();
    ch.query(&format!(
        "CREATE TABLE {} (window_name String, window_start DateTime, dimension String, \
         value String, {}, is_final UInt8, version UInt64) \
         ENGINE = ReplacingMergeTree(version) ORDER BY (window_name, dimension, value, window_start)",
        t.table_name(RowTable::Windows),
        columns.join(", ")
    ))
    .execute()
    .await
    .expect("create table");
    let mut state = common::state();
    state.clickhouse = ch;
    state.keys = tally_api::auth::KeyStore::postgres(pool.clone());
    state.postgres = pool;
    state.pipeline_name = format!("api_resources_{}", &tag[..12]);
    (state, database)
}

async fn drop_database(state: &AppState, database: &str) {
    let _ = state
        .clickhouse
        .query(&format!("DROP DATABASE IF EXISTS {database}"))
        .execute()
        .await;
}

async fn audit_actions(pool: &sqlx::PgPool, id: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT action FROM audit_log WHERE target = $1 ORDER BY id")
        .bind(format!("resource:{id}"))
        .fetch_all(pool)
        .await
        .expect("audit")
}

#[tokio::test]
async fn resources_round_trip_on_postgres_and_clickhouse() {
    if !e2e("resources_round_trip_on_postgres_and_clickhouse") {
        return;
    }
    let pool = real_pool().await;
    let (state, database) = real_state(pool.clone()).await;
    // Rows reference `api_keys.id`: send a key stored in this PostgreSQL.
    let (key, _) = common::stored_key(&pool, tally_api::auth::Role::Read).await;
    let keyed = |request: Request<Body>| common::with_key_value(&key, request);
    let name = format!("e2e {}", uuid::Uuid::new_v4());
    let body = json!({"name": name, "description": "hourly events", "report": report()});
    let (status, _, created) = send(
        &state,
        keyed(keyed(json_request("POST", "/create_resource", &body))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["kind"], "report");
    assert_eq!(created["name"], name.as_str());
    assert_eq!(created["report"], report());
    let get = |uri: String| Request::get(uri).body(Body::empty()).expect("request");
    let (status, _, got) = send(&state, keyed(get(format!("/get_resource?id={id}")))).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got, created, "stored as answered");
    let (status, _, with) = send(
        &state,
        keyed(keyed(get(format!("/resources/{id}?with_data=true")))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{with}");
    assert_eq!(with["data"]["metric"], "events");
    assert_eq!(with["data"]["window"], "1m");
    assert_eq!(
        with["data"]["points"].as_array().map(Vec::len),
        Some(60),
        "{with}"
    );
    // A dashboard replaces it.
    let update = json!({"name": "renamed", "reports": [report(), {"metric": "unique_users", "window": "1h",
        "from": "2024-03-13T10:00:00Z", "to": "2024-03-13T12:00:00Z", "event_type": "click"}]});
    let (status, _, updated) = send(
        &state,
        keyed(json_request("PUT", &format!("/resources/{id}"), &update)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["kind"], "dashboard");
    assert_eq!(updated["created_at"], created["created_at"]);
    assert!(updated.get("report").is_none());
    let (status, _, with) = send(
        &state,
        keyed(keyed(get(format!("/get_resource?id={id}&with_data=true")))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{with}");
    assert_eq!(with["data"][1]["event_type"], "click");
    assert_eq!(with["data"][1]["points"].as_array().map(Vec::len), Some(2));
    let (status, _, page) = send(
        &state,
        keyed(keyed(get(format!("/resources?before={}&limit=1", id + 1)))),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["resources"][0]["id"], id);
    assert_eq!(page["next"], id);
    let request = Request::delete(format!("/resources/{id}"))
        .body(Body::empty())
        .expect("r");
    let (status, _, _) = send(&state, keyed(request)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, gone) = send(&state, keyed(get(format!("/resources/{id}")))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    assert_eq!(gone["error"], format!("no resource {id}"));
    assert_eq!(
        audit_actions(&pool, id).await,
        ["resource.created", "resource.updated", "resource.deleted"]
    );
    drop_database(&state, &database).await;
}

/// Only the owner (or an admin) changes a resource; a refused change writes nothing.
#[tokio::test]
async fn only_the_owner_changes_a_resource() {
    if !e2e("only_the_owner_changes_a_resource") {
        return;
    }
    use tally_sinks::postgres::audit::Actor;
    use tally_sinks::postgres::resources::{self as store, Change, ResourceInput};
    let pool = real_pool().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let owner: i64 = sqlx::query_scalar(
        "INSERT INTO api_keys (name, role, key_hash, key_prefix) VALUES ($1, 'read', $2, 'test') RETURNING id",
    )
    .bind(format!("resources-test-{tag}"))
    .bind(tag.as_bytes())
    .fetch_one(&pool)
    .await
    .expect("key");
    let actor = Actor {
        key_id: Some(owner),
        name: "owner".into(),
    };
    let definition = json!({"report": report()});
    let input = ResourceInput {
        kind: "report",
        name: "mine",
        description: "",
        definition: &definition,
    };
    let r = store::create(&pool, &actor, Some(owner), &input)
        .await
        .expect("create");
    assert_eq!(r.owner_key_id, Some(owner));
    let other = Actor {
        key_id: None,
        name: "other".into(),
    };
    let renamed = ResourceInput {
        name: "theirs",
        ..input
    };
    let refused = store::update(&pool, &other, r.id, Some(owner + 1_000_000), &renamed)
        .await
        .expect("update");
    assert_eq!(refused, Change::NotOwner);
    let refused = store::delete(&pool, &other, r.id, Some(owner + 1_000_000))
        .await
        .expect("delete");
    assert_eq!(refused, Change::NotOwner);
    assert_eq!(
        store::update(&pool, &other, i64::MAX, None, &renamed)
            .await
            .expect("u"),
        Change::NotFound
    );
    let Change::Done(by_admin) = store::update(&pool, &other, r.id, None, &renamed)
        .await
        .expect("u")
    else {
        panic!("an admin may change it");
    };
    assert_eq!(by_admin.name, "theirs");
    assert_eq!(
        store::delete(&pool, &actor, r.id, Some(owner))
            .await
            .expect("d"),
        Change::Done(())
    );
    assert_eq!(
        audit_actions(&pool, r.id).await,
        ["resource.created", "resource.updated", "resource.deleted"]
    );
    sqlx::query("DELETE FROM api_keys WHERE id = $1")
        .bind(owner)
        .execute(&pool)
        .await
        .expect("cleanup");
}

/// A request appears in `request_log` (and `GET /admin/requests`) within a few seconds.
#[tokio::test]
async fn requests_land_in_postgres() {
    if !e2e("requests_land_in_postgres") {
        return;
    }
    let pool = real_pool().await;
    let mut state = common::state();
    state.postgres = pool.clone();
    state.request_log =
        tally_api::request_log::RequestLog::start(pool.clone(), &ApiConfig::default());
    let agent = format!("tally-e2e/{}", uuid::Uuid::new_v4());
    let body = json!({"name": ""});
    let request = Request::post("/resources")
        .header("content-type", "application/json")
        .header("user-agent", &agent)
        .body(Body::from(body.to_string()))
        .expect("request");
    let (status, _, _) = send(&state, from_peer(request, "10.9.8.7:4321")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let deadline = Instant::now() + Duration::from_secs(5);
    let row: (String, String, i16, i64, i64, Option<String>, f64) = loop {
        let found = sqlx::query_as(
            "SELECT method, route, status, request_bytes, response_bytes, client_ip, latency_ms \
             FROM request_log WHERE user_agent = $1",
        )
        .bind(&agent)
        .fetch_optional(&pool)
        .await
        .expect("query");
        if let Some(row) = found {
            break row;
        }
        assert!(Instant::now() < deadline, "no request row within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (row.0.as_str(), row.1.as_str(), row.2),
        ("POST", "/resources", 400)
    );
    assert_eq!(row.3, body.to_string().len() as i64);
    assert!(row.4 > 0, "response bytes {}", row.4);
    assert_eq!(row.5.as_deref(), Some("10.9.8.7"));
    assert!(row.6 >= 0.0);
    let request = Request::get("/admin/requests?limit=1000")
        .body(Body::empty())
        .expect("r");
    let (status, _, page) = send(&state, request).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let entries = page["requests"].as_array().expect("requests");
    assert!(
        entries.iter().any(|e| e["user_agent"] == agent.as_str()),
        "not listed"
    );
    // Newest first in the order they were logged (ids increase as the writer inserts; a
    // request's `at` is when it arrived, so a slow one may be logged after a later arrival).
    let ids: Vec<i64> = entries.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids.len(), entries.len());
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );
}

/// Partitions ahead are created, rows waiting in the default partition move into theirs, and
/// expired partitions go; on a table of the test's own.
#[tokio::test]
async fn request_log_partitions_are_maintained() {
    if !e2e("request_log_partitions_are_maintained") {
        return;
    }
    use chrono::{Datelike, Months, TimeZone, Utc};
    use tally_sinks::postgres::request_log as store;
    let pool = real_pool().await;
    let table = format!(
        "rl_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (LIKE request_log INCLUDING DEFAULTS) PARTITION BY RANGE (at);
         CREATE TABLE {table}_default PARTITION OF {table} DEFAULT;"
    )))
    .execute(&pool)
    .await
    .expect("create");
    let now = Utc
        .with_ymd_and_hms(2031, 5, 17, 12, 0, 0)
        .single()
        .expect("time");
    let name = |t: chrono::DateTime<Utc>| format!("{table}_{:04}{:02}", t.year(), t.month());
    let months = |n: u32| now.checked_sub_months(Months::new(n)).expect("month");
    let ahead = |n: u32| now.checked_add_months(Months::new(n)).expect("month");
    let early = store::maintain_table(&pool, &table, months(6), 3)
        .await
        .expect("maintain");
    assert_eq!(
        early.created,
        [name(months(6)), name(months(5)), name(months(4))]
    );
    let row = |at| store::RequestRow {
        id: 0,
        at,
        method: "GET".into(),
        route: "/x".into(),
        status: 200,
        latency_ms: 1.5,
        key_id: Some(3),
        request_bytes: 0,
        response_bytes: 10,
        client_ip: None,
        user_agent: Some("t".into()),
    };
    let rows = [row(now), row(now), row(ahead(1)), row(months(10))];
    assert_eq!(
        store::insert_batch_into(&pool, &table, &rows)
            .await
            .expect("insert"),
        4
    );
    let done = store::maintain_table(&pool, &table, now, 3)
        .await
        .expect("maintain");
    assert_eq!(done.created, [name(now), name(ahead(1)), name(ahead(2))]);
    assert_eq!(done.moved_rows, 3);
    assert_eq!(
        done.dropped,
        [name(months(6)), name(months(5)), name(months(4))]
    );
    let placed: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1 ORDER BY 1"
    )))
    .fetch_all(&pool)
    .await
    .expect("count");
    assert_eq!(
        placed,
        [(name(now), 2), (name(ahead(1)), 1)],
        "the expired row is gone too"
    );
    let again = store::maintain_table(&pool, &table, now, 3)
        .await
        .expect("maintain");
    assert_eq!(again, store::Maintenance::default(), "idempotent");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .expect("drop");
}

/// One HTTP/1.1 request over a fresh connection: (status, raw head, body).
async fn http(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
         authorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Over a socket on the real PostgreSQL: creates succeed exactly `burst` times, the next one
/// is refused with Retry-After, counted per key (a key stored in PostgreSQL).
#[tokio::test]
async fn creates_past_the_burst_get_429_over_a_socket() {
    if !e2e("creates_past_the_burst_get_429_over_a_socket") {
        return;
    }
    let pool = real_pool().await;
    let config = ApiConfig {
        create_resource_per_second: 1,
        create_resource_burst: 3,
        ..ApiConfig::default()
    };
    let mut state = common::state_with(config.clone(), common::unreachable_kafka());
    state.postgres = pool.clone();
    state.keys = tally_api::auth::KeyStore::postgres(pool.clone());
    let (key, _) = common::stored_key(&pool, tally_api::auth::Role::Read).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tally_api::serve(
        listener,
        tally_api::router(state),
        async move {
            let _ = stopped.await;
        },
    ));
    let body = json!({"name": format!("burst {}", uuid::Uuid::new_v4()), "report": report()});
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, head, answer) =
            http(addr, &key, "POST", "/resources", &body.to_string()).await;
        assert_eq!(status, 201, "request {i}: {answer}");
        assert!(
            head.contains(&format!("ratelimit-remaining: {}", 2 - i)),
            "{head}"
        );
        let created: Value = serde_json::from_str(&answer).expect("json");
        ids.push(created["id"].as_i64().expect("id"));
    }
    let (status, head, answer) =
        http(addr, &key, "POST", "/create_resource", &body.to_string()).await;
    assert_eq!(status, 429, "{answer}");
    assert!(head.contains("retry-after: 1\r\n"), "{head}");
    assert!(head.contains("ratelimit-limit: 3"), "{head}");
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
    for id in ids {
        sqlx::query("DELETE FROM resources WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await
            .expect("cleanup");
    }
}
