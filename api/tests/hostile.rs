//! Hostile input through the router, without services (Kafka and ClickHouse are closed ports, so
//! a request that gets as far as writing or querying answers 503; anything refused earlier
//! answers 4xx): oversized events, gzip members, time ranges beyond ClickHouse `DateTime`, and
//! error answers that are always JSON.

mod common;

use std::io::Write;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use common::{call_with, get, now_ms, post, state, state_with, unreachable_kafka};
use serde_json::Value;
use tally_api::ApiConfig;
use tally_api::KafkaTarget;
use tally_core::event::{record_bytes, Clock, Event};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("write");
    enc.finish().expect("finish")
}

/// An event of today whose `metadata.pad` is `pad` bytes.
fn padded_event(pad: usize) -> String {
    format!(
        r#"{{"event_id":"e1","event_type":"x","user_id":"u","timestamp":{},"metadata":{{"pad":"{}"}}}}"#,
        now_ms(),
        "x".repeat(pad)
    )
}

async fn post_with(
    state: tally_api::AppState,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::post("/events");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (status, headers, body) =
        call_with(state, request.body(body.into()).expect("request")).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// The status is `want`, the answer is JSON and its `error` contains `needle`.
fn assert_json_error(got: (StatusCode, HeaderMap, Value), want: StatusCode, needle: &str) {
    let (status, headers, body) = got;
    assert_eq!(status, want, "{body}");
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert_eq!(content_type, "application/json", "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains(needle), "`{error}` lacks `{needle}`");
}

fn rejected(body: &Value) -> Vec<(u64, String)> {
    body["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["index"].as_u64().unwrap_or(99),
                r["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_oversized_event_is_a_400_reason_and_never_produced() {
    // 1,010,150 bytes: inside the 1 MiB body limit, over the 1,000,000-byte Kafka record limit.
    let base = padded_event(0).len();
    let event = padded_event(1_010_150 - base);
    assert_eq!(event.len(), 1_010_150);
    // Kafka is a closed port: had anything been produced, the answer would be 503.
    let (status, body) = post(event).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["accepted"], 0);
    let reasons = rejected(&body);
    assert_eq!(reasons.len(), 1, "{body}");
    assert!(
        reasons[0].1.contains("the limit is 1000000 bytes"),
        "{body}"
    );

    // 3 MB, sent gzipped (about 3 KB on the wire).
    let headers = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let (status, _, body) =
        post_with(state(), &headers, gzip(padded_event(3_000_000).as_bytes())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["accepted"], 0);
    assert!(rejected(&body)[0].1.contains("Kafka record"), "{body}");
}

#[tokio::test]
async fn the_record_limit_counts_json_plus_key_plus_overhead() {
    let limit = 2048;
    let kafka = KafkaTarget {
        max_message_bytes: limit,
        ..unreachable_kafka()
    };
    let clock = Clock::wall(365);
    let canonical = Event::parse(padded_event(0).as_bytes(), clock, || unreachable!())
        .expect("valid")
        .to_json();
    let fits = limit - record_bytes(1, canonical.len());
    let headers = [("content-type", "application/json")];
    // Exactly at the limit it is written (here: 503, Kafka being unreachable)...
    let at = post_with(
        state_with(ApiConfig::default(), kafka.clone()),
        &headers,
        padded_event(fits),
    )
    .await;
    assert_json_error(at, StatusCode::SERVICE_UNAVAILABLE, "kafka unavailable");
    // ...one byte over it is refused before Kafka.
    let (status, _, body) = post_with(
        state_with(ApiConfig::default(), kafka),
        &headers,
        padded_event(fits + 1),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let want = format!(
        "is {} bytes as a Kafka record; the limit is {limit}",
        limit + 1
    );
    assert!(rejected(&body)[0].1.contains(&want), "{body}");
}

#[tokio::test]
async fn concatenated_gzip_members_are_one_body() {
    let ts = now_ms();
    // Both events lack `user_id`, so a fully decoded body answers with two per-event reasons
    // (and nothing reaches the closed Kafka port).
    let mut body = gzip(format!(r#"[{{"event_type":"a","timestamp":{ts}}},"#).as_bytes());
    body.extend(gzip(
        format!(r#"{{"event_type":"b","timestamp":{ts}}}]"#).as_bytes(),
    ));
    let headers = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let (status, _, answer) = post_with(state(), &headers, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let want = vec![
        (0, "`user_id` is required".to_owned()),
        (1, "`user_id` is required".to_owned()),
    ];
    assert_eq!(rejected(&answer), want, "{answer}");

    // The decompressed-size cap counts every member: two members of 3,000 bytes each exceed a
    // 4,096-byte cap that either alone fits.
    let config = ApiConfig {
        max_body_bytes: 1024,
        max_decompressed_bytes: 4096,
        ..ApiConfig::default()
    };
    let member = gzip(format!("[{}", " ".repeat(2_999)).as_bytes());
    let one = post_with(
        state_with(config.clone(), unreachable_kafka()),
        &headers,
        member.clone(),
    )
    .await;
    assert_json_error(one, StatusCode::BAD_REQUEST, "body is not valid JSON");
    let two = post_with(
        state_with(config, unreachable_kafka()),
        &headers,
        [member.clone(), member].concat(),
    )
    .await;
    assert_json_error(
        two,
        StatusCode::PAYLOAD_TOO_LARGE,
        "decompressed body exceeds 4096",
    );
}

#[tokio::test]
async fn time_parameters_outside_datetime_are_refused_by_name() {
    let today = chrono::Utc::now().format("%Y-%m-%dT00:00:00Z").to_string();
    let summary = |from: &str, to: &str| format!("/reports/summary?from={from}&to={to}");
    let report =
        |from: &str, to: &str| format!("/reports?metric=events&window=1d&from={from}&to={to}");
    // The last storable instant (exclusive end) is valid: it reaches the store (503 here).
    for uri in [
        summary(&today, "2106-02-07T06:28:16Z"),
        report("2100-01-01T00:00:00Z", "2106-02-07T06:28:16Z"),
    ] {
        let (status, body) = get(&uri).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
    }
    let refused = [
        (
            summary(&today, "2106-02-07T06:28:17Z"),
            "`to` must be between",
        ),
        (
            summary(&today, "2107-01-01T00:00:00Z"),
            "`to` must be between",
        ),
        (
            summary("1969-12-31T23:59:59Z", &today),
            "`from` must be between",
        ),
        (
            summary("2107-01-01T00:00:00Z", "2108-01-01T00:00:00Z"),
            "`from` must be between",
        ),
        (
            report("2100-01-01T00:00:00Z", "2107-01-01T00:00:00Z"),
            "`to` must be between",
        ),
        (
            report("1960-01-01T00:00:00Z", &today),
            "`from` must be between",
        ),
        // Epoch numbers are refused rather than guessed (seconds would read as 1970).
        (
            summary(&today, "1710324000"),
            "`to` must be an RFC 3339 time",
        ),
        (
            summary("1710324000000", &today),
            "`from` must be an RFC 3339 time",
        ),
        (summary(&today, &today), "`from` must be before `to`"),
        (
            summary("2106-02-07T06:28:16Z", "2106-02-07T06:28:16Z"),
            "`from` must be before `to`",
        ),
        // Huge ranges hit the window-count limit.
        (
            report("1970-01-01T00:00:00Z", "2106-02-07T06:28:16Z"),
            "the limit is 10000",
        ),
    ];
    for (uri, needle) in refused {
        let (status, body) = get(&uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{uri}: `{error}` lacks `{needle}`");
    }
}

async fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Value) {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let (status, headers, body) =
        call_with(state(), builder.body(Body::from(body)).expect("request")).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_error_answer_is_json() {
    let json = [("content-type", "application/json")];
    assert_json_error(
        request("GET", "/nope", &[], vec![]).await,
        StatusCode::NOT_FOUND,
        "no route GET /nope",
    );
    let wrong_method = request("GET", "/events", &[], vec![]).await;
    assert_eq!(
        wrong_method.1.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_json_error(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    );
    assert_json_error(
        request("DELETE", "/reports/summary", &[], vec![]).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
    );
    // axum's body limit (DefaultBodyLimit).
    assert_json_error(
        request("POST", "/events", &json, vec![b' '; (1 << 20) + 1]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body exceeds 1048576 bytes",
    );
    assert_json_error(
        request(
            "POST",
            "/events",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            b"[]".to_vec(),
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported Content-Encoding",
    );
    assert_json_error(
        request(
            "POST",
            "/events",
            &[("content-type", "application/xml")],
            b"<e/>".to_vec(),
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type must be application/json, application/*+json or text/plain",
    );
    assert_json_error(
        request(
            "POST",
            "/events",
            &[("content-type", "multipart/form-data; boundary=x")],
            b"[]".to_vec(),
        )
        .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type must be application/json, application/*+json or text/plain",
    );
    assert_json_error(
        request("POST", "/events", &json, b"{\"a\":".to_vec()).await,
        StatusCode::BAD_REQUEST,
        "body is not valid JSON",
    );
    assert_json_error(
        request(
            "POST",
            "/events",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            vec![0x1f, 0x8b, 8, 0],
        )
        .await,
        StatusCode::BAD_REQUEST,
        "body is not valid gzip",
    );
    // Kafka's own error text stays in the log.
    let event = format!(
        r#"{{"event_type":"x","user_id":"u","timestamp":{}}}"#,
        now_ms()
    );
    let unavailable = request("POST", "/events", &json, event.into_bytes()).await;
    let error = unavailable.2["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !error.contains("Local:") && !error.contains("MessageTimedOut"),
        "{error}"
    );
    assert_json_error(unavailable, StatusCode::SERVICE_UNAVAILABLE, "retry");
}

#[tokio::test]
async fn json_content_types_and_none_are_read() {
    // An event without `user_id` is a per-event 400: the body was read.
    let body = format!(r#"{{"event_type":"x","timestamp":{}}}"#, now_ms());
    for content_type in [
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("application/vnd.api+json"),
        Some("text/plain;charset=UTF-8"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        let (status, _, answer) =
            request("POST", "/events", &headers, body.clone().into_bytes()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{content_type:?}: {answer}"
        );
        assert_eq!(rejected(&answer).len(), 1, "{content_type:?}: {answer}");
    }
}
