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
    let methods = headers["access-control-allow-methods"]
        .to_str()
        .expect("ascii")
        .to_ascii_uppercase();
    for method in ["GET", "POST", "PUT", "DELETE"] {
        assert!(methods.contains(method), "{methods}");
    }
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

/// `api.ingest_per_second`: off by default; when set, both spellings of `POST /events` share
/// one GCRA limit per key or client.
#[tokio::test]
async fn ingest_limit_is_off_by_default_and_shared_by_both_spellings() {
    let post = |path: &str| {
        Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from("[{}]"))
            .expect("request")
    };
    let state = common::state();
    for _ in 0..150 {
        let (status, _, _) = common::call_with(state.clone(), post("/events")).await;
        assert_ne!(status, StatusCode::TOO_MANY_REQUESTS);
    }
    let config = ApiConfig {
        ingest_per_second: 1,
        ingest_burst: 2,
        ..ApiConfig::default()
    };
    let state = common::state_with(config, common::unreachable_kafka());
    let (first, _, _) = common::call_with(state.clone(), post("/events")).await;
    let (second, _, _) = common::call_with(state.clone(), post("/events/")).await;
    assert_ne!(first, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(second, StatusCode::TOO_MANY_REQUESTS);
    let (third, headers, body) = common::call_with(state, post("/events")).await;
    assert_eq!(
        third,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds");
    assert!(retry >= 1);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert!(
        json["error"].as_str().is_some_and(|e| e.contains("ingest")),
        "{json}"
    );
}

/// A client that starts a request and never finishes it is disconnected after the read
/// timeout (slowloris); a complete request on another connection is served meanwhile.
#[tokio::test]
async fn half_sent_requests_are_cut_off_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(tally_api::serve_with_read_timeout(
        listener,
        tally_api::router(common::state()),
        std::future::pending(),
        std::time::Duration::from_millis(300),
    ));
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Partial: a")
        .await
        .expect("write");
    let mut ok = tokio::net::TcpStream::connect(addr).await.expect("connect");
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    ok.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        slow.read_to_end(&mut rest),
    )
    .await
    .expect("the half-sent request was not cut off within 10 s");
    drop(read); // closed (EOF) or reset: either way the server let go
    assert!(
        !String::from_utf8_lossy(&rest).contains("200 OK"),
        "a half-sent request was answered"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    server.abort();
}

/// A repeated parameter is a 400 naming it, on every route.
#[tokio::test]
async fn repeated_parameters_are_refused() {
    for uri in [
        "/reports?metric=events&metric=unique_users",
        "/users?limit=1&limit=2",
        "/resources?limit=1&limit=2",
    ] {
        let (status, body) = common::get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("more than once")),
            "{uri}: {body}"
        );
    }
}

#[test]
fn cors_origins_may_be_one_comma_separated_string() {
    let config: ApiConfig =
        toml::from_str("cors_origins = \"https://a.example, https://b.example\"").expect("valid");
    assert_eq!(
        config.cors_origins,
        vec![
            "https://a.example".to_owned(),
            "https://b.example".to_owned()
        ]
    );
    let config: ApiConfig =
        toml::from_str("cors_origins = '[\"https://a.example\"]'").expect("a list in a string");
    assert_eq!(config.cors_origins, vec!["https://a.example".to_owned()]);
    let config: ApiConfig = toml::from_str("cors_origins = [\"*\"]").expect("valid");
    assert_eq!(config.cors_origins, vec!["*".to_owned()]);
}

/// Unknown parameters are refused on routes that take none, as on the others.
#[tokio::test]
async fn routes_without_parameters_refuse_them() {
    for uri in ["/topologies?foo=1", "/admin/keys?foo=1"] {
        let (status, body) = common::get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains("`foo`")),
            "{uri}: {body}"
        );
    }
}

/// A refused request whose body was not read is answered with `Connection: close`, so a
/// keep-alive client does not send its next request into a socket the server closes.
#[tokio::test]
async fn refusals_of_unread_bodies_close_the_connection() {
    let request = Request::post("/events")
        .header("content-type", "application/json")
        .header("content-length", "2")
        .body(Body::from("[]"))
        .expect("request");
    let (status, headers, _) = common::call_as_is(common::state(), request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["connection"], "close");
    let (status, headers, _) = common::call_as_is(
        common::state(),
        Request::get("/topologies").body(Body::empty()).expect("r"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers.get("connection").is_none(),
        "no body, nothing to close for"
    );
}
