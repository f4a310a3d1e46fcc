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
    tally_api::metrics::Metrics::get().ingest_accepted.inc();
    let get = |uri: &str| {
        tally_api::metrics_router().oneshot(Request::get(uri).body(Body::empty()).expect("request"))
    };
    let response = get("/metrics").await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    assert!(String::from_utf8_lossy(&body).contains("tally_ingest_events_accepted_total"));
    let response = get("/reports").await.expect("response");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// `GET /reports?...` with the default range and `extra` parameters: (status, `error`).
async fn report_error(extra: &str) -> (StatusCode, String) {
    let uri = format!("/reports?from=2024-03-13T10:00:00Z&to=2024-03-13T11:00:00Z&{extra}");
    let (status, body) = get(&uri).await;
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn reports_refuse_unknown_names_listing_what_exists() {
    let cases = [
        (
            "metric=events&window=1h&topology=shop",
            "unknown topology `shop`: use product_analytics, web_sessions (GET /topologies \
             lists them)",
        ),
        (
            "metric=bounce_rate&window=1h",
            "unknown metric `bounce_rate` in topology product_analytics: use events, \
             unique_users, unique_sessions, unique_event_types",
        ),
        (
            "topology=web_sessions&metric=bounce_rate&window=1m",
            "unknown window `1m` in topology web_sessions: use 1h, 1d, 1h_15m",
        ),
        (
            "topology=web_sessions&metric=sessions&window=1h&group_by=metadata.country",
            "unknown dimension `metadata.country` in topology web_sessions: use \
             metadata.platform",
        ),
        (
            "topology=web_sessions&metric=sessions&window=1h&event_type=click",
            "`event_type` needs an event_type dimension, which topology web_sessions does not \
             declare (its dimensions: metadata.platform)",
        ),
        (
            "metric=events&window=1h&group_by=event_type&limit=101",
            "`limit` must be a whole number from 1 to 100",
        ),
        (
            "metric=events&window=1h&limit=3",
            "`limit` applies to grouped reports only: add `group_by`",
        ),
    ];
    for (query, want) in cases {
        let (status, error) = report_error(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {error}");
        assert_eq!(error, want, "{query}");
    }
}

#[tokio::test]
async fn valid_grouped_and_hopping_reports_reach_the_store() {
    // Valid queries get as far as ClickHouse (a closed port here): 503, not 400.
    for query in [
        "topology=web_sessions&metric=bounce_rate&window=1h_15m&group_by=metadata.platform&limit=3",
        "topology=web_sessions&metric=avg_session_duration_s&window=1d",
        "metric=events&window=1m&event_type=click",
        "metric=unique_users&window=1h&group_by=event_type",
    ] {
        let (status, error) = report_error(query).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{query}: {error}");
    }
}

#[tokio::test]
async fn topologies_list_windows_dimensions_metrics_and_tables() {
    let (status, body) = get("/topologies").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["topologies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["product_analytics", "web_sessions"]);
    let web = &body["topologies"][1];
    let expected = serde_json::json!({
        "name": "web_sessions",
        "description": "sessions by platform",
        "filters": [],
        "windows": [
            {"name": "1h", "kind": "tumbling", "size_s": 3600, "slide_s": 3600},
            {"name": "1d", "kind": "tumbling", "size_s": 86400, "slide_s": 86400},
            {"name": "1h_15m", "kind": "hopping", "size_s": 3600, "slide_s": 900}
        ],
        "dimensions": [{"name": "metadata.platform", "max_values": 50}],
        "metrics": [
            {"name": "events", "unit": "count", "table": "rollups_web_sessions"},
            {"name": "unique_users", "unit": "count", "table": "rollups_web_sessions"},
            {"name": "sessions", "unit": "count", "table": "rollups_web_sessions_sessions"},
            {"name": "bounce_rate", "unit": "ratio in [0, 1]",
             "table": "rollups_web_sessions_sessions"},
            {"name": "avg_session_duration_s", "unit": "seconds",
             "table": "rollups_web_sessions_sessions"},
            {"name": "events_per_session", "unit": "events per session",
             "table": "rollups_web_sessions_sessions"}
        ],
        "sessions": {"gap_s": 1800, "max_duration_s": 86400},
        "distinct": {"mode": "exact", "standard_error": 0.0},
        "tables": ["rollups_web_sessions", "rollups_web_sessions_sessions"]
    });
    assert_eq!(web, &expected);
    let pa = &body["topologies"][0];
    assert_eq!(pa["sessions"], serde_json::Value::Null);
    assert_eq!(
        pa["tables"],
        serde_json::json!(["rollups_product_analytics"])
    );
    // A trailing slash answers too.
    let (status, _) = get("/topologies/").await;
    assert_eq!(status, StatusCode::OK);
}
