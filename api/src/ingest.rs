//! `POST /events`: decode and validate the body, write to Kafka, answer once Kafka acknowledged.
//!
//! [`parse_body`] does everything but the write and no I/O, so tests (and the fuzz tests in
//! `api/tests/fuzz.rs`) drive it with arbitrary bytes.

use std::io::Read;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use serde_json::Value;
use tally_core::event::{Clock, Event, Invalid};

use crate::metrics::Metrics;
use crate::{ApiConfig, ApiError, AppState, KafkaTarget, ProduceFailure};

/// An event that was not written, with its 0-based index in the request.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Rejected {
    /// Position in the request.
    pub index: usize,
    /// Why, for people.
    pub reason: String,
    /// A short, stable label for metrics.
    #[serde(skip)]
    pub label: &'static str,
}

impl Rejected {
    fn new(index: usize, invalid: &Invalid) -> Rejected {
        Rejected {
            index,
            reason: invalid.to_string(),
            label: invalid.label(),
        }
    }
}

/// A valid event ready to write.
#[derive(Clone, Debug)]
pub struct Record {
    /// Position in the request.
    pub index: usize,
    /// Kafka key (`user_id`).
    pub key: String,
    /// Canonical JSON ([`Event::to_json`]), within `kafka.max_message_bytes`.
    pub payload: Vec<u8>,
}

/// A decoded `POST /events` body.
#[derive(Debug, Default)]
pub struct Batch {
    /// What to write, in request order.
    pub records: Vec<Record>,
    /// What was refused, in request order.
    pub rejected: Vec<Rejected>,
}

/// The limits a body is checked against.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// `api.max_decompressed_bytes`.
    pub max_decompressed_bytes: usize,
    /// `api.max_batch_events`.
    pub max_batch_events: usize,
    /// `kafka.max_message_bytes`.
    pub max_message_bytes: usize,
}

impl BodyLimits {
    /// The limits of these settings.
    pub fn new(api: &ApiConfig, kafka: &KafkaTarget) -> BodyLimits {
        BodyLimits {
            max_decompressed_bytes: api.max_decompressed_bytes,
            max_batch_events: api.max_batch_events,
            max_message_bytes: kafka.max_message_bytes,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct IngestResponse {
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// Accepts one event or an array of events. 202 when all were accepted; 400 when some were
/// invalid (the valid ones are still written, and the body lists the rejected ones by index).
#[utoipa::path(post, path = "/events", tag = "ingest",
    request_body(description = "One event object or a JSON array of events; \
        `Content-Encoding: gzip` accepted. See docs/events.md for the event contract.",
        content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 202, description = "Every event written to Kafka", body = IngestResponse),
        (status = 400, description = "Some or all events invalid (the valid ones were written) or a malformed body", body = IngestResponse),
        (status = 401, description = "No key, or an unknown or revoked key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key's role may not ingest", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body or batch too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Unsupported Content-Type or Content-Encoding", body = crate::openapi::ErrorBody),
        (status = 429, description = "Over `api.ingest_per_second` (when set)", body = crate::openapi::ErrorBody),
        (status = 503, description = "Kafka unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn post_events(
    _caller: crate::auth::Ingest,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| body_rejection(&r, state.config.max_body_bytes))?;
    let limits = BodyLimits::new(&state.config, &state.kafka);
    let clock = Clock::wall(state.retention_days);
    let mut batch = parse_body(&headers, body, limits, clock, || {
        uuid::Uuid::new_v4().to_string()
    })?;
    let (accepted, refused) = produce(&state, &batch.records).await?;
    batch.rejected.extend(refused);
    batch.rejected.sort_by_key(|r| r.index);
    let metrics = Metrics::get();
    for r in &batch.rejected {
        metrics.ingest_rejected.with_label_values(&[r.label]).inc();
    }
    metrics.ingest_accepted.inc_by(accepted as u64);
    let status = if batch.rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    let rejected = batch.rejected;
    Ok((status, Json(IngestResponse { accepted, rejected })).into_response())
}

fn body_rejection(rejection: &BytesRejection, max_body_bytes: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "request body exceeds {max_body_bytes} bytes (api.max_body_bytes)"
        ))
    } else {
        ApiError::BadRequest(format!("reading the body: {}", rejection.body_text()))
    }
}

/// Checks `Content-Type` and `Content-Encoding`, decodes, and validates every event, including
/// the size of its Kafka record. No I/O: an `Err` means nothing is written.
pub fn parse_body(
    headers: &HeaderMap,
    body: Bytes,
    limits: BodyLimits,
    clock: Clock,
    mut new_id: impl FnMut() -> String,
) -> Result<Batch, ApiError> {
    check_content_type(headers)?;
    let body = decode(headers, body, limits.max_decompressed_bytes)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not valid JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        single => vec![single],
    };
    if items.is_empty() {
        return Err(ApiError::BadRequest(
            "empty batch: send one event or an array of events".into(),
        ));
    }
    if items.len() > limits.max_batch_events {
        return Err(ApiError::TooLarge(format!(
            "{} events in one request; the limit is {}",
            items.len(),
            limits.max_batch_events
        )));
    }
    let mut batch = Batch::default();
    for (index, item) in items.iter().enumerate() {
        let checked = Event::from_value(item, clock, &mut new_id).and_then(|e| {
            let payload = e.to_json_within(limits.max_message_bytes)?;
            Ok(Record {
                index,
                key: e.user_id,
                payload,
            })
        });
        match checked {
            Ok(record) => batch.records.push(record),
            Err(invalid) => batch.rejected.push(Rejected::new(index, &invalid)),
        }
    }
    Ok(batch)
}

/// `Content-Type` may be absent, `application/json`, `application/*+json` or `text/plain`
/// (what `navigator.sendBeacon` sends for a string); anything else is a 415.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(raw) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = raw
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = mime == "application/json"
        || mime == "text/plain"
        || (mime.starts_with("application/") && mime.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json, application/*+json or text/plain (or absent)"
                .into(),
        ))
    }
}

/// Writes every record and waits for each acknowledgement. Records Kafka refuses as too large
/// come back as rejections (a retry cannot succeed); unavailability is a 503 that says how many
/// of the batch Kafka did acknowledge (events carry ids, so a retry of the whole batch is
/// counted once); any other failure is a 500. Kafka's own error text is logged, not returned.
async fn produce(state: &AppState, records: &[Record]) -> Result<(usize, Vec<Rejected>), ApiError> {
    let timeout = Duration::from_millis(state.kafka.produce_timeout_ms);
    let sends = records.iter().map(|r| {
        let record = FutureRecord::to(&state.kafka.topic)
            .payload(&r.payload)
            .key(&r.key);
        state.producer.send(record, timeout)
    });
    let results = join_all(sends).await;
    let (mut acked, mut too_large, mut unavailable, mut refused) = (0, Vec::new(), None, None);
    for (record, result) in records.iter().zip(results) {
        let Err((error, _)) = result else {
            acked += 1;
            continue;
        };
        match ProduceFailure::of(&error) {
            ProduceFailure::TooLarge => {
                tracing::warn!(%error, bytes = record.payload.len(), "kafka refused an event as too large");
                too_large.push(Rejected {
                    index: record.index,
                    reason: "the event is larger than the Kafka topic accepts (max.message.bytes)"
                        .into(),
                    label: "too_large",
                });
            }
            ProduceFailure::Unavailable => unavailable = unavailable.or(Some(error)),
            ProduceFailure::Refused => refused = refused.or(Some(error)),
        }
    }
    let total = records.len();
    if let Some(error) = unavailable {
        tracing::warn!(%error, acked, total, "kafka did not acknowledge events");
        return Err(ApiError::Unavailable(format!(
            "kafka unavailable; {acked} of {total} events were written; retry the request"
        )));
    }
    if let Some(error) = refused {
        return Err(ApiError::Internal(format!(
            "kafka refused events ({error}); {acked} of {total} were written"
        )));
    }
    Ok((acked, too_large))
}

/// Undoes `Content-Encoding: gzip` (all members), refusing output beyond `limit` bytes.
fn decode(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let Some(raw) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let encoding = raw.to_str().unwrap_or("?").trim().to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "gzip" | "x-gzip" => {
            // Every member, as `cat a.gz b.gz` makes; the cap counts the total output.
            let mut out = Vec::new();
            let mut reader = flate2::read::MultiGzDecoder::new(&body[..]).take(limit as u64 + 1);
            reader
                .read_to_end(&mut out)
                .map_err(|e| ApiError::BadRequest(format!("body is not valid gzip: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::TooLarge(format!(
                    "decompressed body exceeds {limit} bytes"
                )));
            }
            Ok(Bytes::from(out))
        }
        _ => Err(ApiError::UnsupportedMediaType(
            "unsupported Content-Encoding (use gzip or none)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).expect("write");
        Bytes::from(enc.finish().expect("finish"))
    }

    #[test]
    fn gzip_bodies_are_decoded_within_the_cap() {
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", "gzip".parse().expect("header"));
        let plain = b"[1,2,3]".repeat(100);
        let decoded = decode(&headers, gzip(&plain), plain.len()).expect("fits");
        assert_eq!(&decoded[..], &plain[..]);
        assert!(matches!(
            decode(&headers, gzip(&plain), plain.len() - 1),
            Err(ApiError::TooLarge(_))
        ));
        assert!(matches!(
            decode(&headers, Bytes::from_static(b"nope"), 100),
            Err(ApiError::BadRequest(_))
        ));
        headers.insert("content-encoding", "br".parse().expect("header"));
        assert!(matches!(
            decode(&headers, Bytes::new(), 100),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }
}
