//! One record of an input file from raw bytes to a Kafka-ready event or a rejection, with the
//! same validation as `POST /events` ([`Event::from_value`], then
//! [`Event::to_json_within`] `kafka.max_message_bytes`).
//!
//! A record without `event_id` gets a stable id: `stable_id("import/{position}/{raw record}")`
//! (128-bit xxh3 formatted as a UUID), from the record's line (element index in a JSON array)
//! and its bytes. Importing the same file again (from another path, or with lines appended)
//! gives the same ids, and the pipeline counts an id once.

use serde_json::{Map, Value};
use tally_pipeline::event::{stable_id, Clock, Event, Invalid};

use super::args::Mapping;
use super::split::{Piece, MAX_RECORD_BYTES};

/// Longest `input` kept in the rejects file, in bytes.
pub const MAX_REJECT_INPUT_BYTES: usize = 1024;

/// Where a record is: its file (index into the import's paths) and its position there (1-based
/// line for JSON lines and CSV, 0-based element index for a JSON array).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// Index of the file in the command line's paths.
    pub file: usize,
    /// Line, or element index.
    pub position: u64,
}

/// A record as read, before validation.
#[derive(Debug)]
pub struct RawRecord {
    /// Where it is.
    pub at: At,
    /// Its bytes, without line ending.
    pub raw: Piece,
    /// What it holds.
    pub body: Body,
}

/// What a [`RawRecord`] holds.
#[derive(Debug)]
pub enum Body {
    /// JSON text (a line, an array element): parsed, then mapped with `--map`.
    Json,
    /// An event object already built (a CSV row), or why the record is not one.
    Built(Result<Value, String>),
}

/// A valid event, ready for Kafka.
#[derive(Debug)]
pub struct Valid {
    /// Where it came from.
    pub at: At,
    /// The Kafka key: `user_id`, as `POST /events` keys it.
    pub key: String,
    /// The canonical JSON ([`Event::to_json`]), within `kafka.max_message_bytes`.
    pub payload: Vec<u8>,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The record's bytes, for the rejects file should Kafka refuse it.
    pub raw: Vec<u8>,
}

/// A rejected record.
#[derive(Debug, PartialEq, Eq)]
pub struct Reject {
    /// Where it came from.
    pub at: At,
    /// Why, for people: [`Invalid`]'s text, or what is wrong with the record's shape.
    pub reason: String,
    /// The record as in the file, cut to [`MAX_REJECT_INPUT_BYTES`] (invalid UTF-8 replaced).
    pub input: String,
}

impl Reject {
    /// A rejection of the record `raw` at `at`.
    pub fn new(at: At, reason: impl Into<String>, raw: &[u8]) -> Reject {
        let cut = &raw[..raw.len().min(MAX_REJECT_INPUT_BYTES)];
        let mut input = String::from_utf8_lossy(cut).into_owned();
        if cut.len() < raw.len() {
            // A cut through a multi-byte character leaves a replacement character: drop it.
            if input.ends_with(char::REPLACEMENT_CHARACTER) && std::str::from_utf8(cut).is_err() {
                input.pop();
            }
        }
        Reject {
            at,
            reason: reason.into(),
            input,
        }
    }
}

/// The settings a record is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `clickhouse.retention_days`: older timestamps are refused.
    pub retention_days: u32,
    /// `kafka.max_message_bytes`.
    pub max_message_bytes: usize,
}

/// Validates one record as `POST /events` does, giving events without an id their stable id.
pub fn check(record: RawRecord, mapping: &Mapping, limits: Limits) -> Result<Valid, Reject> {
    let RawRecord { at, raw, body } = record;
    let reject = |reason: String| Reject::new(at, reason, &raw.bytes);
    if raw.is_cut() {
        return Err(reject(format!(
            "the record is {} bytes; at most {MAX_RECORD_BYTES} bytes are read",
            raw.len
        )));
    }
    let value = match body {
        Body::Json => match serde_json::from_slice(&raw.bytes) {
            Ok(value) => map_json(value, mapping),
            Err(e) => return Err(reject(Invalid::NotJson(e.to_string()).to_string())),
        },
        Body::Built(Ok(value)) => value,
        Body::Built(Err(reason)) => return Err(reject(reason)),
    };
    let clock = Clock::wall(limits.retention_days);
    let id = || {
        let text = String::from_utf8_lossy(&raw.bytes);
        stable_id(&format!("import/{}/{text}", at.position))
    };
    let checked = Event::from_value(&value, clock, id)
        .and_then(|e| Ok((e.to_json_within(limits.max_message_bytes)?, e)));
    match checked {
        Ok((payload, event)) => Ok(Valid {
            at,
            key: event.user_id,
            payload,
            ts_ms: event.ts_ms,
            raw: raw.bytes,
        }),
        Err(invalid) => Err(reject(invalid.to_string())),
    }
}

/// A JSON record with `--map` applied: each field from its source key, every other key into
/// `metadata` (a key already in `metadata` wins). Not an object: unchanged (validation refuses
/// it).
pub fn map_json(value: Value, mapping: &Mapping) -> Value {
    let Value::Object(mut obj) = value else {
        return value;
    };
    let plain = mapping.mapped().next().is_none();
    if plain && obj.keys().all(|k| mapping.is_source(k)) {
        return Value::Object(obj); // the common case: nothing to move
    }
    let mut out = Map::new();
    for (field, source) in mapping.fields() {
        if let Some(v) = obj.get(source) {
            out.insert(field.to_owned(), v.clone());
        }
    }
    obj.retain(|k, _| !mapping.is_source(k));
    if obj.is_empty() {
        return Value::Object(out);
    }
    match out.get_mut("metadata") {
        Some(Value::Object(m)) => {
            for (k, v) in obj {
                m.entry(k).or_insert(v);
            }
        }
        Some(Value::Null) | None => {
            out.insert("metadata".to_owned(), Value::Object(obj));
        }
        Some(_) => {} // validation says `metadata` must be an object
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits {
            retention_days: 365,
            max_message_bytes: 1_000_000,
        }
    }

    fn record(position: u64, text: &str) -> RawRecord {
        RawRecord {
            at: At { file: 0, position },
            raw: Piece {
                bytes: text.as_bytes().to_vec(),
                len: text.len(),
            },
            body: Body::Json,
        }
    }

    fn now_ms() -> u64 {
        chrono::Utc::now().timestamp_millis() as u64
    }

    fn event_id(payload: &[u8]) -> String {
        let v: Value = serde_json::from_slice(payload).expect("json");
        v["event_id"].as_str().unwrap_or_default().to_owned()
    }

    #[test]
    fn ids_are_stable_per_position_and_content() {
        let line = format!(
            r#"{{"event_type":"x","user_id":"u","timestamp":{}}}"#,
            now_ms()
        );
        let id = |pos: u64, text: &str| {
            check(record(pos, text), &Mapping::default(), limits())
                .map(|v| event_id(&v.payload))
                .expect("valid")
        };
        assert_eq!(id(3, &line), id(3, &line), "the same record twice");
        assert_ne!(
            id(3, &line),
            id(4, &line),
            "the same content on another line"
        );
        assert_ne!(id(3, &line), id(3, &line.replace("\"u\"", "\"v\"")));
        let given = line.replacen('{', r#"{"event_id":"mine","#, 1);
        assert_eq!(id(3, &given), "mine");
        let uuid = uuid::Uuid::parse_str(&id(3, &line)).expect("a uuid");
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn valid_records_are_keyed_by_user_and_canonical() {
        let ts = now_ms() - 86_400_000;
        let text = format!(r#"{{"event_type":"x","user_id":"u7","timestamp":{ts},"page":"/a"}}"#);
        let v = check(record(1, &text), &Mapping::default(), limits()).expect("valid");
        assert_eq!((v.key.as_str(), v.ts_ms), ("u7", ts));
        let sent: Value = serde_json::from_slice(&v.payload).expect("json");
        assert_eq!(sent["metadata"], json!({"page": "/a"}));
        assert_eq!(sent["timestamp"], json!(ts));
    }

    #[test]
    fn rejections_carry_the_validation_text_and_a_cut_input() {
        let reason = |text: &str| {
            check(record(9, text), &Mapping::default(), limits())
                .map(|_| ())
                .map_err(|r| r.reason)
        };
        assert_eq!(
            reason(r#"{"user_id":"u","timestamp":1}"#),
            Err("`event_type` is required".to_owned())
        );
        assert!(reason("{nope").is_err_and(|r| r.starts_with("not valid JSON")));
        let old = r#"{"event_type":"x","user_id":"u","timestamp":1000}"#;
        assert_eq!(
            reason(old),
            Err("`timestamp` is older than the retention period (365 days)".to_owned())
        );
        let long = format!("\"{}é\"", "a".repeat(MAX_REJECT_INPUT_BYTES - 2));
        let r = Reject::new(
            At {
                file: 0,
                position: 1,
            },
            "why",
            long.as_bytes(),
        );
        assert_eq!(
            r.input.len(),
            MAX_REJECT_INPUT_BYTES - 1,
            "no half character"
        );
        let cut = RawRecord {
            raw: Piece {
                bytes: b"{".to_vec(),
                len: MAX_RECORD_BYTES + 1,
            },
            ..record(2, "")
        };
        let r = check(cut, &Mapping::default(), limits()).expect_err("too long");
        assert!(r.reason.contains("bytes are read"), "{}", r.reason);
    }

    #[test]
    fn json_keys_are_mapped_and_the_rest_goes_to_metadata() {
        let mapping =
            Mapping::parse(&["event_type=kind".into(), "user_id=who".into()]).expect("map");
        let v = json!({"kind": "k", "who": "w", "timestamp": 5, "x": [1], "metadata": {"x": 0}});
        assert_eq!(
            map_json(v, &mapping),
            json!({"event_type": "k", "user_id": "w", "timestamp": 5, "metadata": {"x": 0}})
        );
        let v = json!({"event_type": "e", "user_id": "u", "timestamp": 5, "n": 1.5});
        assert_eq!(
            map_json(v, &Mapping::default()),
            json!({"event_type": "e", "user_id": "u", "timestamp": 5, "metadata": {"n": 1.5}})
        );
        assert_eq!(map_json(json!([1]), &mapping), json!([1]));
    }
}
