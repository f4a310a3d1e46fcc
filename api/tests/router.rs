//! The router without a socket and without services: every dependency points at a closed port,
//! so these check validation, limits and how unavailability is reported.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{call, get, now_ms, post};

#[tokio::test]
async fn kafka_unreachable_is_503_with_a_reason() {
    let event = format!(
        r#"{{"event_type":"click","user_id":"u1","timestamp":{}}}"#,
        now_ms()
    );
    let (status, body) = post(event).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("kafka") && error.contains("0 of 1"),
        "{error}"
    );
}

#[tokio::test]
async fn invalid_events_are_400_with_reasons_and_need_no_kafka() {
    let (status, body) =
        post(r#"[{"user_id":"u"},{"event_type":"x","user_id":"u","timestamp":"soon"}]"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["accepted"], 0);
    let reasons: Vec<(u64, &str)> = body["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["index"].as_u64().unwrap_or(99),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0], (0, "`event_type` is required"));
    assert_eq!(reasons[1].0, 1);
    assert!(
        reasons[1]
            .1
            .starts_with("`timestamp` must be an RFC 3339 string"),
        "{}",
        reasons[1].1
    );
    let (status, body) = post("{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .starts_with("body is not valid JSON"));
    let (status, _) = post("[]").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn oversize_is_413() {
    let big = format!(
        r#"{{"event_type":"x","user_id":"u","timestamp":1,"metadata":{{"pad":"{}"}}}}"#,
        "x".repeat(1 << 20)
    );
    let (status, _) = post(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let one = r#"{"event_type":"x","user_id":"u","timestamp":1}"#;
    let (status, body) = post(format!("[{}]", vec![one; 1_001].join(","))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("1001 events"),
        "{body}"
    );
}

#[tokio::test]
async fn reports_validate_before_querying_and_report_an_unavailable_store() {
    let (status, body) =
        get("/reports?metric=revenue&window=1h&from=2024-03-13T10:00:00Z&to=2024-03-13T11:00:00Z")
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown metric"),
        "{body}"
    );
    let (status, body) =
        get("/reports/?metric=events&window=1h&from=2024-03-13T10:00:00Z&to=2024-03-13T11:00:00Z")
            .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["error"],
        "the analytics store is unavailable; retry later"
    );
    let (status, _) =
        get("/reports/summary?from=2024-03-13T11:00:00Z&to=2024-03-13T10:00:00Z").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A trailing slash reaches the summary too, as it does the report.
    let (status, body) =
        get("/reports/summary/?from=2024-03-13T11:00:00Z&to=2024-03-13T10:00:00Z").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) =
        get("/reports/summary/?from=2024-03-13T10:00:00Z&to=2024-03-13T11:00:00Z").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
}

#[tokio::test]
async fn health_metrics_and_unknown_routes() {
    let (status, body) = get("/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, text) = call(
        Request::get("/metrics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("tally_http_requests_total{route=\"/healthz\",status=\"200\"}"),
        "{text}"
    );
    let (status, _) = get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_metrics_router_serves_only_metrics() {
    use tower::ServiceExt as _;
    tally_pipeline::metrics::Metrics::get().events_read.inc();
    let get = |uri: &str| {
        tally_api::metrics_router().oneshot(Request::get(uri).body(Body::empty()).expect("request"))
    };
    let response = get("/metrics").await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    assert!(String::from_utf8_lossy(&body).contains("tally_pipeline_events_read_total"));
    let response = get("/reports").await.expect("response");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
