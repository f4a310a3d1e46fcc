//! Property-based fuzzing (proptest, stable toolchain) of the event parser and the `POST /events`
//! body decoder: arbitrary bytes, arbitrary JSON, event-shaped objects, gzip of arbitrary data,
//! truncated gzip and gzip bombs. Nothing may panic, every valid event must survive its own
//! canonical form, and every refusal must be a 4xx whose body is `{"error": "..."}`. Case counts
//! are bounded so the whole file runs in seconds.

use std::io::Write;

use axum::body::{to_bytes, Bytes};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use proptest::prelude::*;
use serde_json::{Map, Value};
use tally_api::ingest::{parse_body, Batch, BodyLimits};
use tally_api::ApiError;
use tally_core::event::{record_bytes, Clock, Event};

const NOW: u64 = 1_710_324_000_000; // 2024-03-13T10:00:00Z
const CLOCK: Clock = Clock {
    now_ms: NOW,
    retention_days: 365,
};
const LIMITS: BodyLimits = BodyLimits {
    max_decompressed_bytes: 64 * 1024,
    max_batch_events: 50,
    max_message_bytes: 4096,
};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("write");
    enc.finish().expect("finish")
}

fn headers(gzipped: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if gzipped {
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    h
}

fn decode(body: Vec<u8>, gzipped: bool, limits: BodyLimits) -> Result<Batch, ApiError> {
    parse_body(&headers(gzipped), Bytes::from(body), limits, CLOCK, || {
        "assigned".to_owned()
    })
}

/// A refusal is a 4xx with a JSON reason; an accepted body accounts for every event.
fn check(result: Result<Batch, ApiError>, limits: BodyLimits) -> Result<(), TestCaseError> {
    match result {
        Ok(batch) => {
            let mut indexes: Vec<usize> = batch.records.iter().map(|r| r.index).collect();
            indexes.extend(batch.rejected.iter().map(|r| r.index));
            indexes.sort_unstable();
            let expected: Vec<usize> = (0..indexes.len()).collect();
            prop_assert_eq!(indexes, expected);
            for r in &batch.records {
                let bytes = record_bytes(r.key.len(), r.payload.len());
                prop_assert!(bytes <= limits.max_message_bytes);
            }
            for r in &batch.rejected {
                prop_assert!(!r.reason.is_empty() && !r.label.is_empty());
            }
        }
        Err(error) => {
            let status = error.status();
            prop_assert!(status.is_client_error(), "{} for {}", status, error);
            let response = error.into_response();
            prop_assert_eq!(response.status(), status);
            let body = futures::executor::block_on(to_bytes(response.into_body(), usize::MAX))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let json: Value = serde_json::from_slice(&body)
                .map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
            prop_assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
    Ok(())
}

/// A valid event equals the event parsed back from its canonical JSON.
fn round_trips(event: &Event) -> Result<(), TestCaseError> {
    let again = Event::parse(&event.to_json(), CLOCK, || unreachable!("the id is kept"));
    prop_assert_eq!(again.as_ref(), Ok(event));
    Ok(())
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Every finite float: the workspace enables serde_json's `float_roundtrip`, so metadata
        // numbers reach Kafka and ClickHouse bit for bit (without it, subnormals such as
        // -1.869282728368793e-308 came back one ulp off).
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn arb_string() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::from("")),
        6 => "[a-z0-9]{1,12}".prop_map(Value::from),
        2 => "\\PC{0,20}".prop_map(Value::from),
        1 => (120usize..270).prop_map(|n| Value::from("é".repeat(n))),
        1 => Just(Value::from(7)),
        1 => Just(Value::Null),
    ]
}

fn arb_timestamp() -> impl Strategy<Value = Value> {
    let day = 86_400_000i64;
    prop_oneof![
        4 => (-400 * day..2 * day).prop_map(|d| Value::from(NOW as i64 + d)),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => (-1e16f64..1e16).prop_map(Value::from),
        4 => (-400 * day..2 * day).prop_map(|d| {
            let t = chrono::DateTime::from_timestamp_millis(NOW as i64 + d).unwrap_or_default();
            Value::from(t.to_rfc3339())
        }),
        1 => Just(Value::from("2106-02-07T06:28:16Z")),
        1 => Just(Value::from("1969-12-31T23:59:59.999Z")),
        1 => ".{0,30}".prop_map(Value::from),
        1 => Just(Value::Null),
    ]
}

fn arb_metadata() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        arb_json(),
        (0usize..6000).prop_map(|n| serde_json::json!({ "pad": "x".repeat(n) })),
    ]
}

/// Objects shaped like events: each field present or not, with values of every kind.
fn arb_event_like() -> impl Strategy<Value = Value> {
    (
        prop::option::of(arb_string()),
        prop::option::weighted(0.9, arb_string()),
        prop::option::weighted(0.9, arb_string()),
        prop::option::of(arb_string()),
        prop::option::weighted(0.9, arb_timestamp()),
        prop::option::of(arb_metadata()),
        prop::option::weighted(0.05, arb_json()),
    )
        .prop_map(|(id, kind, user, session, ts, metadata, extra)| {
            let mut m = Map::new();
            let fields = [
                ("event_id", id),
                ("event_type", kind),
                ("user_id", user),
                ("session_id", session),
                ("timestamp", ts),
                ("metadata", metadata),
                ("extra", extra),
            ];
            for (name, value) in fields {
                if let Some(v) = value {
                    m.insert(name.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn event_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        match Event::parse(&bytes, CLOCK, || "assigned".to_owned()) {
            Ok(event) => round_trips(&event)?,
            Err(invalid) => prop_assert!(!invalid.to_string().is_empty()),
        }
    }

    #[test]
    fn event_parser_takes_any_json(value in arb_json()) {
        if let Ok(event) = Event::from_value(&value, CLOCK, || "assigned".to_owned()) {
            round_trips(&event)?;
        }
    }

    #[test]
    fn event_shaped_objects_are_accepted_exactly_when_valid(value in arb_event_like()) {
        match Event::from_value(&value, CLOCK, || "assigned".to_owned()) {
            Ok(event) => {
                round_trips(&event)?;
                prop_assert!(event.ts_ms <= NOW + 86_400_000);
                prop_assert!(!event.event_type.is_empty() && !event.user_id.is_empty());
            }
            Err(invalid) => prop_assert!(!invalid.to_string().is_empty()),
        }
    }

    #[test]
    fn body_decoder_takes_any_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..1024),
        gzipped in any::<bool>(),
    ) {
        check(decode(bytes, gzipped, LIMITS), LIMITS)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn body_decoder_takes_event_batches(
        items in prop::collection::vec(arb_event_like(), 0..60),
        gzipped in any::<bool>(),
        single in any::<bool>(),
    ) {
        let value = match (single, items.first()) {
            (true, Some(first)) => first.clone(),
            _ => Value::Array(items),
        };
        let json = value.to_string().into_bytes();
        let body = if gzipped { gzip(&json) } else { json };
        check(decode(body, gzipped, LIMITS), LIMITS)?;
    }

    #[test]
    fn gzip_of_any_data_decodes_or_is_refused_as_a_4xx(
        members in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2048), 1..4),
    ) {
        let body: Vec<u8> = members.iter().flat_map(|m| gzip(m)).collect();
        let result = decode(body, true, LIMITS);
        if let Err(ApiError::BadRequest(reason)) = &result {
            prop_assert!(!reason.contains("gzip"), "valid gzip refused: {}", reason);
        }
        check(result, LIMITS)?;
    }

    #[test]
    fn truncated_gzip_is_a_400(
        items in prop::collection::vec(arb_event_like(), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let full = gzip(Value::Array(items).to_string().as_bytes());
        let body = full[..cut.index(full.len())].to_vec();
        let result = decode(body, true, LIMITS);
        prop_assert!(matches!(result, Err(ApiError::BadRequest(_))), "{:?}", result.err());
        check(result, LIMITS)?;
    }
}

/// Bombs: a small body that inflates far past the cap is a 413 after reading at most cap + 1
/// bytes, whether it is one member or many.
#[test]
fn gzip_bombs_are_413() {
    let limits = BodyLimits {
        max_decompressed_bytes: 10 << 20,
        ..LIMITS
    };
    let member = gzip(&vec![b' '; 1 << 20]);
    assert!(member.len() < 8 << 10, "{} bytes", member.len());
    for body in [
        gzip(&vec![b'['; 12 << 20]),
        member.repeat(11),
        [member.repeat(10), gzip(b" "), member.clone()].concat(),
    ] {
        let result = decode(body, true, limits);
        assert!(
            matches!(result, Err(ApiError::TooLarge(_))),
            "{:?}",
            result.err()
        );
    }
    // Within the cap, many members of whitespace around one event decode whole.
    let event = format!(r#"{{"event_type":"x","user_id":"u","timestamp":{NOW}}}"#);
    let body = [member.repeat(9), gzip(event.as_bytes())].concat();
    let batch = decode(body, true, limits).expect("within the cap");
    assert_eq!(batch.records.len(), 1);
}
