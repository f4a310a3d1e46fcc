//! Helpers shared by the socket-free router tests: every dependency points at a closed port.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::Value;
use tally_api::{router, ApiConfig, AppState};
use tally_pipeline::kafka::KafkaConfig;
use tower::ServiceExt;

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Kafka settings pointing at a closed port; a produce fails after 500 ms.
pub fn unreachable_kafka() -> KafkaConfig {
    KafkaConfig {
        brokers: format!("127.0.0.1:{}", closed_port()),
        produce_timeout_ms: 500,
        ..KafkaConfig::default()
    }
}

/// State with these settings and unreachable services.
pub fn state_with(config: ApiConfig, kafka: KafkaConfig) -> AppState {
    let clickhouse = tally_sinks::clickhouse::ClickHouseConfig {
        url: format!("http://127.0.0.1:{}", closed_port()),
        ..Default::default()
    };
    let pg_url = format!("postgres://tally@127.0.0.1:{}/tally", closed_port());
    AppState {
        config: Arc::new(config),
        producer: tally_pipeline::kafka::producer_config(&kafka)
            .create()
            .expect("producer"),
        kafka: Arc::new(kafka),
        clickhouse: tally_sinks::clickhouse::connect(&clickhouse, true),
        postgres: sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(300))
            .connect_lazy(&pg_url)
            .expect("lazy pool"),
        pipeline_name: "test".into(),
        grace_ms: 5_000,
        retention_days: 365,
        pipeline: None,
    }
}

/// Default settings, unreachable services.
pub fn state() -> AppState {
    state_with(ApiConfig::default(), unreachable_kafka())
}

/// Runs `request` through the router of `state`.
pub async fn call_with(
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
