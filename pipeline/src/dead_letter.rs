//! The dead-letter queue (DLQ): messages of the events topic that are not valid events go to
//! `kafka.dlq_topic`, with why in headers, without ever stopping or stalling the pipeline.
//!
//! - Writes are asynchronous: the worker hands a message over and goes on; delivery reports
//!   arrive through [`DeadLetters::service`]. Until Kafka acknowledged a dead letter, its source
//!   offset is held back from the committed progress, so a crash re-reads and re-sends it.
//! - A message that cannot be dead-lettered whole (its value, plus key and headers, exceeds
//!   `kafka.max_message_bytes` or the DLQ topic's `max.message.bytes`) is dead-lettered
//!   truncated, with `tally.dlq.original.size` and `tally.dlq.truncated: true`; when the broker
//!   still refuses it as too large, the budget is halved and it is sent again.
//! - Other failures (broker down, topic missing) are retried with back-off (1 s doubling to
//!   30 s) for as long as it takes; meanwhile reading goes on, only the offset waits.
//!
//! Headers: `tally.dlq.reason` (the validation error, at most 1 KiB), `tally.dlq.source.partition`,
//! `tally.dlq.source.offset`, `tally.dlq.original.size` (value bytes as read), `tally.dlq.truncated`
//! (`true`, only when the value was cut) and `tally.dlq.original.key.size` (only when a key over
//! 1 KiB was dropped).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::kafka::{producer_config, record_bytes, KafkaConfig};
use crate::metrics::Metrics;
use crate::PipelineError;

/// Longest reason header, in bytes (a hostile message can make a validation error long, e.g.
/// an unknown field name of a megabyte).
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest key kept on a dead letter, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Reading pauses while dead letters of more than this many bytes wait for Kafka.
pub const MAX_PENDING_BYTES: usize = 64 << 20;
/// Framing bytes counted per header on top of its key and value (varints, generous).
const HEADER_OVERHEAD_BYTES: usize = 16;

/// (source partition, source offset): the identity of a dead letter.
type Source = (i32, i64);

/// Collects delivery reports (librdkafka calls it from `poll`).
#[derive(Default)]
pub struct DlqContext {
    reports: Mutex<Vec<(Source, Result<(), KafkaError>)>>,
}

impl ClientContext for DlqContext {}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = Box<Source>;

    fn delivery(&self, result: &DeliveryResult<'_>, source: Self::DeliveryOpaque) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(e.clone()),
        };
        if let Ok(mut reports) = self.reports.lock() {
            reports.push((*source, outcome));
        }
    }
}

/// One message waiting for its dead-letter write.
struct DeadLetter {
    payload: Vec<u8>,
    key: Option<Vec<u8>>,
    reason: String,
    /// Most value bytes to send (shrinks when the broker says "too large").
    budget: usize,
    /// When to send (again); `None` while a write is in flight.
    send_at: Option<Instant>,
    backoff: Duration,
}

/// A worker's dead-letter writer.
pub struct DeadLetters {
    producer: BaseProducer<DlqContext>,
    topic: String,
    max_message_bytes: usize,
    pending: BTreeMap<Source, DeadLetter>,
    pending_bytes: usize,
    /// This writer's share of the `tally_dlq_pending` gauge (every worker adds its own).
    reported: i64,
}

impl DeadLetters {
    /// A writer to `config.dlq_topic`.
    pub fn new(config: &KafkaConfig) -> Result<Self, PipelineError> {
        let producer = producer_config(config)
            .create_with_context(DlqContext::default())
            .map_err(|e| PipelineError::kafka("creating the dead-letter producer", e))?;
        Ok(DeadLetters {
            producer,
            topic: config.dlq_topic.clone(),
            max_message_bytes: config.max_message_bytes,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            reported: 0,
        })
    }

    /// Queues message `source` (its value and key) for the DLQ with `reason`, and sends it.
    pub fn push(&mut self, source: Source, payload: &[u8], key: Option<&[u8]>, reason: &str) {
        let reason = truncate_str(reason, MAX_REASON_BYTES).to_owned();
        self.pending_bytes += payload.len();
        self.pending.insert(
            source,
            DeadLetter {
                payload: payload.to_vec(),
                key: key.map(<[u8]>::to_vec),
                reason,
                budget: usize::MAX,
                send_at: Some(Instant::now()),
                backoff: Duration::from_secs(1),
            },
        );
        self.send_due();
    }

    /// Serves delivery reports, settles what Kafka acknowledged, re-sends what failed, and
    /// returns the sources now safely dead-lettered. Never blocks.
    ///
    /// Errors: [`PipelineError::Kafka`] only when even an empty dead letter is refused as too
    /// large (the DLQ topic's limit is unusable: a configuration problem).
    pub fn service(&mut self) -> Result<Vec<Source>, PipelineError> {
        self.producer.poll(Duration::ZERO);
        let reports = self
            .producer
            .context()
            .reports
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let mut settled = Vec::new();
        for (source, outcome) in reports {
            match outcome {
                Ok(()) => {
                    if let Some(dl) = self.pending.remove(&source) {
                        self.pending_bytes -= dl.payload.len();
                        settled.push(source);
                    }
                }
                Err(e) => self.failed(source, &e)?,
            }
        }
        self.send_due();
        let pending = i64::try_from(self.pending.len()).unwrap_or(i64::MAX);
        Metrics::get().dlq_pending.add(pending - self.reported);
        self.reported = pending;
        Ok(settled)
    }

    /// The smallest offset of `partition` whose dead letter is not acknowledged yet.
    pub fn first_pending(&self, partition: i32) -> Option<i64> {
        self.pending
            .range((partition, i64::MIN)..=(partition, i64::MAX))
            .next()
            .map(|(&(_, o), _)| o)
    }

    /// Whether reading should pause until more dead letters are acknowledged.
    pub fn is_full(&self) -> bool {
        self.pending_bytes > MAX_PENDING_BYTES
    }

    /// Dead letters not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// At shutdown: waits up to `timeout` for outstanding writes; returns what settled.
    pub fn flush(&mut self, timeout: Duration) -> Vec<Source> {
        let deadline = Instant::now() + timeout;
        let mut settled = Vec::new();
        while !self.pending.is_empty() && Instant::now() < deadline {
            let _ = self.producer.flush(Duration::from_millis(100));
            match self.service() {
                Ok(s) => settled.extend(s),
                Err(e) => {
                    tracing::warn!(error = %e, "dead-letter flush stopped");
                    break;
                }
            }
        }
        settled
    }

    fn failed(&mut self, source: Source, e: &KafkaError) -> Result<(), PipelineError> {
        let Some(dl) = self.pending.get_mut(&source) else {
            return Ok(());
        };
        if is_too_large(e) {
            if dl.budget == 0 {
                return Err(PipelineError::kafka(
                    format!(
                        "dead-lettering partition {} offset {}: even an empty message is too \
                         large for topic {} (check its max.message.bytes)",
                        source.0, source.1, self.topic
                    ),
                    e.clone(),
                ));
            }
            dl.budget = dl.budget.min(dl.payload.len()) / 2;
            dl.send_at = Some(Instant::now());
        } else {
            tracing::warn!(partition = source.0, offset = source.1, error = %e, retry_in = ?dl.backoff, "dead-letter write failed; retrying");
            dl.send_at = Some(Instant::now() + dl.backoff);
            dl.backoff = (dl.backoff * 2).min(Duration::from_secs(30));
        }
        Ok(())
    }

    fn send_due(&mut self) {
        let now = Instant::now();
        let due: Vec<Source> = self
            .pending
            .iter()
            .filter(|(_, dl)| dl.send_at.is_some_and(|t| t <= now))
            .map(|(&s, _)| s)
            .collect();
        for source in due {
            self.send(source);
        }
    }

    fn send(&mut self, source: Source) {
        let (topic, limit) = (self.topic.clone(), self.max_message_bytes);
        let Some(dl) = self.pending.get_mut(&source) else {
            return;
        };
        loop {
            let letter = Letter::new(source, dl, limit);
            let headers = letter.headers();
            let mut record = BaseRecord::with_opaque_to(&topic, Box::new(source))
                .payload(letter.value)
                .headers(headers);
            if let Some(key) = letter.key {
                record = record.key(key);
            }
            match self.producer.send(record) {
                Ok(()) => {
                    dl.send_at = None;
                    return;
                }
                Err((e, _)) if is_too_large(&e) && dl.budget > 0 => {
                    dl.budget = dl.budget.min(dl.payload.len()) / 2;
                }
                Err((e, _)) => {
                    // Queue full, or anything else: try again after a pause (service() sends).
                    if !matches!(
                        e,
                        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                    ) {
                        tracing::warn!(partition = source.0, offset = source.1, error = %e, "dead-letter write refused; retrying");
                    }
                    dl.send_at = Some(Instant::now() + Duration::from_millis(100));
                    return;
                }
            }
        }
    }
}

/// What one send of a dead letter carries.
struct Letter<'a> {
    value: &'a [u8],
    key: Option<&'a [u8]>,
    reason: &'a str,
    source: Source,
    original_size: usize,
    original_key_size: Option<usize>,
    truncated: bool,
}

impl<'a> Letter<'a> {
    /// Fits `dl` into `limit` bytes: drops a key over [`MAX_KEY_BYTES`], then cuts the value.
    fn new(source: Source, dl: &'a DeadLetter, limit: usize) -> Self {
        let (key, original_key_size) = match dl.key.as_deref() {
            Some(k) if k.len() > MAX_KEY_BYTES => (None, Some(k.len())),
            k => (k, None),
        };
        let mut letter = Letter {
            value: &dl.payload,
            key,
            reason: &dl.reason,
            source,
            original_size: dl.payload.len(),
            original_key_size,
            truncated: false,
        };
        // Budget with the "truncated" headers present, so that adding them cannot overflow.
        letter.truncated = true;
        let overhead = record_bytes(key.map_or(0, <[u8]>::len), 0) + letter.header_bytes();
        let room = limit.saturating_sub(overhead).min(dl.budget);
        // `truncated` speaks of the value; a dropped key has its own header.
        letter.truncated = dl.payload.len() > room;
        letter.value = &dl.payload[..dl.payload.len().min(room)];
        letter
    }

    fn header_values(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("tally.dlq.reason", self.reason.to_owned()),
            ("tally.dlq.source.partition", self.source.0.to_string()),
            ("tally.dlq.source.offset", self.source.1.to_string()),
            ("tally.dlq.original.size", self.original_size.to_string()),
        ];
        if self.truncated {
            h.push(("tally.dlq.truncated", "true".to_owned()));
        }
        if let Some(n) = self.original_key_size {
            h.push(("tally.dlq.original.key.size", n.to_string()));
        }
        h
    }

    fn header_bytes(&self) -> usize {
        self.header_values()
            .iter()
            .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD_BYTES)
            .sum()
    }

    fn headers(&self) -> OwnedHeaders {
        self.header_values()
            .into_iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            })
    }
}

fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(payload: usize, key: Option<usize>, budget: usize) -> DeadLetter {
        DeadLetter {
            payload: vec![b'x'; payload],
            key: key.map(|n| vec![b'k'; n]),
            reason: "not valid JSON: expected value at line 1 column 1".to_owned(),
            budget,
            send_at: None,
            backoff: Duration::from_secs(1),
        }
    }

    /// The bytes a letter counts against the limit, computed independently of `Letter::new`.
    fn size(l: &Letter<'_>) -> usize {
        let headers: usize = l
            .header_values()
            .iter()
            .map(|(k, v)| k.len() + v.len() + HEADER_OVERHEAD_BYTES)
            .sum();
        l.key.map_or(0, <[u8]>::len) + l.value.len() + headers + crate::kafka::RECORD_OVERHEAD_BYTES
    }

    #[test]
    fn a_small_message_is_dead_lettered_whole() {
        let dl = letter(500, Some(10), usize::MAX);
        let l = Letter::new((3, 42), &dl, 1_000_000);
        assert_eq!(l.value.len(), 500);
        assert!(!l.truncated);
        assert!(l
            .header_values()
            .iter()
            .all(|(k, _)| *k != "tally.dlq.truncated"));
    }

    #[test]
    fn an_oversized_message_is_cut_to_fit_with_its_original_size() {
        for payload in [999_800, 1_000_000, 1_040_000, 5_000_000] {
            let dl = letter(payload, Some(36), usize::MAX);
            let l = Letter::new((0, 7), &dl, 1_000_000);
            assert!(size(&l) <= 1_000_000, "{payload}: {} bytes", size(&l));
            assert!(l.value.len() > 990_000);
            let h = l.header_values();
            assert!(h.contains(&("tally.dlq.original.size", payload.to_string())));
            assert!(h.contains(&("tally.dlq.truncated", "true".to_owned())));
        }
    }

    #[test]
    fn a_huge_key_is_dropped_and_its_size_kept() {
        let dl = letter(10, Some(2_000_000), usize::MAX);
        let l = Letter::new((0, 1), &dl, 1_000_000);
        assert!(l.key.is_none());
        assert!(!l.truncated, "the value is whole");
        assert!(size(&l) <= 1_000_000);
        assert!(l
            .header_values()
            .contains(&("tally.dlq.original.key.size", "2000000".to_owned())));
    }

    #[test]
    fn the_budget_shrinks_the_value() {
        let dl = letter(10_000, None, 1_000);
        let l = Letter::new((0, 1), &dl, 1_000_000);
        assert_eq!(l.value.len(), 1_000);
        assert!(l.truncated);
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        let long = "é".repeat(2_000);
        let cut = truncate_str(&long, MAX_REASON_BYTES);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.len() >= MAX_REASON_BYTES - 1);
        assert_eq!(truncate_str("short", 10), "short");
    }
}
