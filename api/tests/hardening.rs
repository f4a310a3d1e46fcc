//! CORS (`api.cors_origins`), `api.metrics_listen` and config checks, socket-free.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tally_api::ApiConfig;

fn preflight(origin: &str) -> Request<Body> {
    Request::options("/reports")
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn listed_origins_get_cors_headers_others_do_not() {
    let config = ApiConfig {
        cors_origins: vec!["https://dash.example.com".into()],
        ..ApiConfig::default()
    };
    let state = common::state_with(config, common::unreachable_kafka());
    let (status, headers, _) =
        common::call_with(state.clone(), preflight("https://dash.example.com")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("x-api-key"),
        "{allowed}"
    );
    let (_, headers, _) = common::call_with(state, preflight("https://evil.example.com")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn no_origins_configured_means_no_cors_headers() {
    let (_, headers, _) = common::call_with(common::state(), preflight("https://a.example")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn any_origin_with_a_star() {
    let config = ApiConfig {
        cors_origins: vec!["*".into()],
        ..ApiConfig::default()
    };
    let state = common::state_with(config, common::unreachable_kafka());
    let (_, headers, _) = common::call_with(state, preflight("https://a.example")).await;
    assert_eq!(headers["access-control-allow-origin"], "*");
}

#[test]
fn bad_origins_and_limits_are_config_errors_naming_the_key() {
    let cases: [(ApiConfig, &str); 4] = [
        (
            ApiConfig {
                cors_origins: vec!["dash.example.com".into()],
                ..ApiConfig::default()
            },
            "api.cors_origins",
        ),
        (
            ApiConfig {
                get_resource_burst: 0,
                ..ApiConfig::default()
            },
            "api.get_resource_burst",
        ),
        (
            ApiConfig {
                metrics_listen: "nowhere".into(),
                ..ApiConfig::default()
            },
            "api.metrics_listen",
        ),
        (
            ApiConfig {
                request_timeout_ms: 0,
                ..ApiConfig::default()
            },
            "api.request_timeout_ms",
        ),
    ];
    for (config, field) in cases {
        let (got, reason) = config.validate().expect_err(field);
        assert_eq!(got, field, "{reason}");
        assert!(!reason.is_empty());
    }
    ApiConfig::default().validate().expect("defaults are valid");
}

#[tokio::test]
async fn metrics_leave_the_api_listener_when_they_have_their_own() {
    let config = ApiConfig {
        metrics_listen: "127.0.0.1:9464".into(),
        ..ApiConfig::default()
    };
    let state = common::state_with(config, common::unreachable_kafka());
    let request = Request::get("/metrics")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = common::call_with(state.clone(), request).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let spec = tally_api::openapi_spec(&state);
    assert!(!spec.paths.paths.contains_key("/metrics"));
    let (status, _) = common::get("/metrics").await;
    assert_eq!(status, StatusCode::OK, "served on api.listen by default");
}
