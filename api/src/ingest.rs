//! `POST /events`: validate, write to Kafka, answer once Kafka acknowledged.

use std::io::Read;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use serde_json::Value;
use tally_pipeline::event::{Clock, Event};
use tally_pipeline::metrics::Metrics;

use crate::{ApiError, AppState};

#[derive(Serialize)]
struct Rejected {
    index: usize,
    reason: String,
}

#[derive(Serialize)]
struct IngestResponse {
    accepted: usize,
    rejected: Vec<Rejected>,
}

/// Accepts one event or an array of events. 202 when all were accepted; 400 when some were
/// invalid (the valid ones are still written, and the body lists the rejected ones by index).
pub async fn post_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = decode(&headers, body, state.config.max_decompressed_bytes)?;
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
    if items.len() > state.config.max_batch_events {
        return Err(ApiError::TooLarge(format!(
            "{} events in one request; the limit is {}",
            items.len(),
            state.config.max_batch_events
        )));
    }
    let clock = Clock::wall(state.retention_days);
    let metrics = Metrics::get();
    let mut valid = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match Event::from_value(item, clock, || uuid::Uuid::new_v4().to_string()) {
            Ok(event) => valid.push(event),
            Err(reason) => {
                metrics
                    .ingest_rejected
                    .with_label_values(&[reason.label()])
                    .inc();
                rejected.push(Rejected {
                    index,
                    reason: reason.to_string(),
                });
            }
        }
    }
    let accepted = produce(&state, &valid).await?;
    metrics.ingest_accepted.inc_by(accepted as u64);
    let status = if rejected.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, Json(IngestResponse { accepted, rejected })).into_response())
}

/// Writes every event and waits for each acknowledgement. Any failure is a 503 that says how
/// many of the batch Kafka did acknowledge (events carry ids, so a retry of the whole batch is
/// counted once).
async fn produce(state: &AppState, events: &[Event]) -> Result<usize, ApiError> {
    let payloads: Vec<(Vec<u8>, &str)> = events
        .iter()
        .map(|e| (e.to_json(), e.user_id.as_str()))
        .collect();
    let timeout = Duration::from_millis(state.kafka.produce_timeout_ms);
    let sends = payloads.iter().map(|(payload, key)| {
        let record = FutureRecord::to(&state.kafka.topic)
            .payload(payload)
            .key(*key);
        state.producer.send(record, timeout)
    });
    let results = join_all(sends).await;
    let acked = results.iter().filter(|r| r.is_ok()).count();
    if let Some(Err((e, _))) = results.into_iter().find(|r| r.is_err()) {
        tracing::warn!(error = %e, acked, "kafka did not acknowledge events");
        return Err(ApiError::Unavailable(format!(
            "kafka did not acknowledge the events ({e}); {acked} of {} were written; retry the request",
            events.len()
        )));
    }
    Ok(acked)
}

/// Undoes `Content-Encoding: gzip`, refusing output beyond `limit` bytes.
fn decode(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "gzip" => {
            let mut out = Vec::new();
            let mut reader = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
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
        other => Err(ApiError::BadRequest(format!(
            "unsupported Content-Encoding `{other}` (use gzip or none)"
        ))),
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
            Err(ApiError::BadRequest(_))
        ));
    }
}
