//! Helpers shared by the socket-free router tests: every dependency points at a closed port,
//! and API keys come from an in-memory key source ([`MemoryKeys`]) holding one key per role and
//! a revoked one ([`Who`]).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tally_api::auth::{CachePolicy, KeyRecord, KeySource, KeyStore, Role, SourceError};

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tally_api::{router, ApiConfig, AppState, KafkaTarget};
use tally_core::{Dimension, Metric, SessionSpec, Topology, WindowSpec};
use tower::ServiceExt;

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Kafka settings for a producer whose brokers are a closed port; a produce fails after 500 ms.
pub fn unreachable_kafka() -> KafkaTarget {
    KafkaTarget {
        topic: "events".into(),
        produce_timeout_ms: 500,
        max_message_bytes: 1_000_000,
    }
}

/// A producer set up as `tally_pipeline::kafka::producer_config` does, whose brokers are a
/// closed port.
pub fn unreachable_producer(kafka: &KafkaTarget) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", closed_port()))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", kafka.produce_timeout_ms.to_string())
        .set("message.max.bytes", kafka.max_message_bytes.to_string())
        .create()
        .expect("producer")
}

/// `product_analytics` as shipped: 1m, 1h, 1d; per event type; the four counts.
pub fn product_analytics() -> Topology {
    let mut b = Topology::builder("product_analytics")
        .description("events and distinct counts per window, overall and per event type")
        .table("rollups_product_analytics")
        .dimension(Dimension::parse("event_type").expect("dimension"));
    for (name, ms) in [("1m", 60_000), ("1h", 3_600_000), ("1d", 86_400_000)] {
        b = b.window(WindowSpec::tumbling(name, ms));
    }
    for m in [
        "events",
        "unique_users",
        "unique_sessions",
        "unique_event_types",
    ] {
        b = b.metric(Metric::parse(m).expect("metric"));
    }
    b.build().expect("valid")
}

/// `web_sessions` as the issue describes it.
pub fn web_sessions() -> Topology {
    let mut b = Topology::builder("web_sessions")
        .description("sessions by platform")
        .window(WindowSpec::tumbling("1h", 3_600_000))
        .window(WindowSpec::tumbling("1d", 86_400_000))
        .window(WindowSpec::hopping("1h_15m", 3_600_000, 900_000))
        .sessions(SessionSpec::default())
        .dimension(Dimension {
            max_values: 50,
            ..Dimension::parse("metadata.platform").expect("dimension")
        });
    for m in [
        "events",
        "unique_users",
        "sessions",
        "bounce_rate",
        "avg_session_duration_s",
        "events_per_session",
    ] {
        b = b.metric(Metric::parse(m).expect("metric"));
    }
    b.build().expect("valid")
}

/// State with these settings and unreachable services.
pub fn state_with(config: ApiConfig, kafka: KafkaTarget) -> AppState {
    let clickhouse = tally_sinks::clickhouse::ClickHouseConfig {
        url: format!("http://127.0.0.1:{}", closed_port()),
        ..Default::default()
    };
    let pg_url = format!("postgres://tally@127.0.0.1:{}/tally", closed_port());
    let postgres = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(&pg_url)
        .expect("lazy pool");
    AppState {
        keys: memory_keys(),
        limiters: Arc::new(tally_api::limits::Limiters::new(&config)),
        request_log: tally_api::request_log::RequestLog::disabled(),
        config: Arc::new(config),
        producer: unreachable_producer(&kafka),
        kafka: Arc::new(kafka),
        clickhouse: tally_sinks::clickhouse::connect(&clickhouse, true),
        postgres,
        pipeline_name: "test".into(),
        grace_ms: 5_000,
        retention_days: 365,
        pipeline: None,
        topologies: Arc::new(vec![product_analytics(), web_sessions()]),
    }
}

/// Default settings, unreachable services.
pub fn state() -> AppState {
    state_with(ApiConfig::default(), unreachable_kafka())
}

/// Who sends a request: no key, a valid key of each role, a revoked admin key, a well-formed
/// key nobody has, or something that is not a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    None,
    Ingest,
    Read,
    Admin,
    Revoked,
    Unknown,
    Malformed,
}

impl Who {
    /// Every kind of caller.
    pub const ALL: [Who; 7] = [
        Who::None,
        Who::Ingest,
        Who::Read,
        Who::Admin,
        Who::Revoked,
        Who::Unknown,
        Who::Malformed,
    ];

    /// The key this caller sends.
    pub fn key(self) -> Option<String> {
        let tag = match self {
            Who::None => return None,
            Who::Malformed => return Some("tly_not-a-key".into()),
            Who::Ingest => "ingest",
            Who::Read => "read",
            Who::Admin => "admin",
            Who::Revoked => "revoked",
            Who::Unknown => "unknown",
        };
        Some(test_key(tag))
    }
}

/// A well-formed key (`tly_` + 43 characters) made from `tag`.
pub fn test_key(tag: &str) -> String {
    format!("tly_{tag:0<43}")
}

/// Keys in memory, by hash. [`MemoryKeys::standard`] holds the keys of [`Who`].
#[derive(Clone, Default)]
pub struct MemoryKeys(Arc<Mutex<HashMap<[u8; 32], KeyRecord>>>);

impl MemoryKeys {
    /// `ingest` (id 1), `read` (2), `admin` (3) and a revoked admin key `revoked` (4).
    pub fn standard() -> MemoryKeys {
        let keys = MemoryKeys::default();
        for (id, who, role) in [
            (1, Who::Ingest, Role::Ingest),
            (2, Who::Read, Role::Read),
            (3, Who::Admin, Role::Admin),
            (4, Who::Revoked, Role::Admin),
        ] {
            let key = who.key().expect("a key");
            keys.insert(id, &format!("{who:?}").to_lowercase(), role, &key);
        }
        keys.revoke(&Who::Revoked.key().expect("a key"));
        keys
    }

    /// Adds `key` as key `id` named `name`.
    pub fn insert(&self, id: i64, name: &str, role: Role, key: &str) {
        let key_hash = tally_api::auth::hash(key);
        let record = KeyRecord {
            id,
            name: name.to_owned(),
            role,
            key_hash,
            revoked: false,
        };
        self.0.lock().expect("lock").insert(key_hash, record);
    }

    /// Marks `key` revoked.
    pub fn revoke(&self, key: &str) {
        let mut keys = self.0.lock().expect("lock");
        if let Some(r) = keys.get_mut(&tally_api::auth::hash(key)) {
            r.revoked = true;
        }
    }
}

impl KeySource for MemoryKeys {
    fn find(&self, key_hash: [u8; 32]) -> BoxFuture<'_, Result<Option<KeyRecord>, SourceError>> {
        let found = self.0.lock().expect("lock").get(&key_hash).cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// A key store over [`MemoryKeys::standard`].
pub fn memory_keys() -> KeyStore {
    KeyStore::new(MemoryKeys::standard(), CachePolicy::default())
}

/// `request` sent by `who` (its key as `Authorization: Bearer`).
pub fn with_key(who: Who, request: Request<Body>) -> Request<Body> {
    match who.key() {
        Some(key) => with_key_value(&key, request),
        None => request,
    }
}

/// Runs `request` through the router of `state` as it is (no key added).
pub async fn call_as_is(
    state: AppState,
    request: Request<Body>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = router(state).oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, headers, body.to_vec())
}

/// Runs `request` through the router of `state`, sent by `who`.
pub async fn call_as(
    state: AppState,
    who: Who,
    request: Request<Body>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    call_as_is(state, with_key(who, request)).await
}

/// Runs `request` through the router of `state`; a request without a key gets the key of a
/// role that may call its route (`ingest` for `/events`, `admin` elsewhere).
pub async fn call_with(
    state: AppState,
    request: Request<Body>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let has_key = request.headers().contains_key("authorization")
        || request.headers().contains_key("x-api-key");
    let who = if has_key {
        Who::None
    } else if request.uri().path().starts_with("/events") {
        Who::Ingest
    } else {
        Who::Admin
    };
    call_as(state, who, request).await
}

/// Runs `request` through the default router.
pub async fn call(request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let (status, _, body) = call_with(state(), request).await;
    (status, body)
}

/// `POST /events` with a JSON body.
pub async fn post(body: impl Into<Body>) -> (StatusCode, Value) {
    let request = Request::post("/events")
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request");
    let (status, body) = call(request).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `GET uri`.
pub async fn get(uri: &str) -> (StatusCode, Value) {
    let (status, body) = call(Request::get(uri).body(Body::empty()).expect("request")).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Now, epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A key of `role` stored in the real PostgreSQL behind `pool` (a unique name `test-<uuid>`),
/// for end-to-end tests whose state uses `KeyStore::postgres` (e.g. where rows reference
/// `api_keys.id`). Returns `(key, id)`; send the key with [`with_key_value`].
pub async fn stored_key(pool: &sqlx::PgPool, role: Role) -> (String, i64) {
    let secret = tally_api::auth::generate().expect("rng");
    let name = format!("test-{}", uuid::Uuid::new_v4().simple());
    let new = tally_sinks::postgres::keys::NewKey {
        name: &name,
        role: role.as_str(),
        key_hash: &secret.key_hash,
        key_prefix: &secret.key_prefix,
    };
    let actor = tally_sinks::postgres::audit::Actor::cli();
    let row = tally_sinks::postgres::keys::create(pool, new, &actor)
        .await
        .expect("storing a test key (run `tally migrate` on this PostgreSQL)");
    (secret.key, row.id)
}

/// `request` with `key` as `Authorization: Bearer`.
pub fn with_key_value(key: &str, mut request: Request<Body>) -> Request<Body> {
    let value = format!("Bearer {key}").parse().expect("header value");
    request.headers_mut().insert("authorization", value);
    request
}

/// State over a real ClickHouse client `clickhouse` and PostgreSQL `postgres` (keys from
/// [`memory_keys`], Kafka unreachable, no request log): what the store tests query through
/// the router.
pub fn store_state(
    clickhouse: clickhouse::Client,
    postgres: sqlx::PgPool,
    pipeline_name: String,
    grace_ms: u64,
    topologies: Vec<Topology>,
) -> AppState {
    let kafka = unreachable_kafka();
    AppState {
        config: Arc::new(ApiConfig::default()),
        producer: unreachable_producer(&kafka),
        kafka: Arc::new(kafka),
        clickhouse,
        keys: memory_keys(),
        limiters: Arc::new(tally_api::limits::Limiters::new(&ApiConfig::default())),
        request_log: tally_api::request_log::RequestLog::disabled(),
        postgres,
        pipeline_name,
        grace_ms,
        retention_days: 365,
        pipeline: None,
        topologies: Arc::new(topologies),
    }
}

/// Runs `plan` (`{"setup": [sql...], "checks": [{"sql", "expect"}...]}`) on a current
/// ClickHouse in-process (`tests/current_clickhouse.py`, PyPI chdb-core) and asserts that all
/// `checks` ran and gave their expected answers.
pub fn run_on_current_clickhouse(plan: &Value) {
    use std::io::Write;
    let checks = plan["checks"].as_array().map_or(0, Vec::len);
    assert!(checks > 0, "a plan without checks proves nothing");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/current_clickhouse.py"
    );
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(plan.to_string().as_bytes())
        .expect("plan");
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("\nok:").count(),
        checks,
        "not every check ran:\n{text}"
    );
}
