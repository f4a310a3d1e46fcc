//! The event contract (see `docs/events.md`): parsing, validation, limits, canonical JSON and
//! stable ids.
//!
//! The HTTP API, `tally import` and the Kafka source share this code, so an event is valid on
//! one path exactly when it is valid on the other.

use std::sync::Arc;

use chrono::DateTime;
use serde_json::{Map, Value};

/// Longest `event_type`.
pub const MAX_EVENT_TYPE_LEN: usize = 128;
/// Longest `user_id`, `session_id` and `event_id`.
pub const MAX_ID_LEN: usize = 256;
/// How far in the future a timestamp may be.
pub const MAX_FUTURE_MS: u64 = 86_400_000;

/// Bytes a Kafka record needs beyond its key and value: the v2 record-batch header (61 bytes)
/// plus librdkafka's worst-case record framing (36 bytes), rounded up for headroom.
pub const RECORD_OVERHEAD_BYTES: usize = 128;

/// What a record with this key and value (and no headers) counts against
/// `kafka.max_message_bytes`: `key + value + RECORD_OVERHEAD_BYTES`. A record within the limit
/// passes both the producer's `message.max.bytes` check and the topic's `max.message.bytes`.
pub fn record_bytes(key_len: usize, value_len: usize) -> usize {
    key_len
        .saturating_add(value_len)
        .saturating_add(RECORD_OVERHEAD_BYTES)
}

/// 128-bit stable hash of a string id (xxh3-128): the same string gives the same hash in every
/// process and release. Ids derived from it ([`stable_id`]) are stored, so it must never change.
pub fn hash128(s: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(s.as_bytes())
}

/// The fields of the event contract; any other top-level key is refused.
pub const FIELDS: [&str; 6] = [
    "event_id",
    "event_type",
    "user_id",
    "session_id",
    "timestamp",
    "metadata",
];

/// A valid event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The producer's id, or one assigned at ingest.
    pub event_id: String,
    /// Non-empty, at most 128 characters.
    pub event_type: String,
    /// Non-empty, at most 256 characters.
    pub user_id: String,
    /// `None` when absent or empty.
    pub session_id: Option<String>,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// The metadata object (empty when absent), shared with what is derived from the event
    /// (the operators' observation) rather than copied.
    pub metadata: Arc<Map<String, Value>>,
}

/// Why an event was rejected. The text is what producers see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("an event must be a JSON object")]
    NotObject,
    /// A field outside the contract.
    #[error("unknown field `{0}` (put extra attributes in `metadata`)")]
    UnknownField(String),
    /// A required field is missing or null.
    #[error("`{0}` is required")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("`{0}` must be {1}")]
    WrongType(&'static str, &'static str),
    /// A string field is empty.
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    /// A string field is too long.
    #[error("`{0}` must be at most {1} characters")]
    TooLong(&'static str, usize),
    /// The timestamp does not parse.
    #[error("`timestamp` must be an RFC 3339 string (e.g. 2024-03-13T10:00:00Z) or integer epoch milliseconds")]
    BadTimestamp,
    /// The timestamp is too far ahead.
    #[error("`timestamp` is more than 1 day in the future")]
    Future,
    /// The timestamp is older than the retention period.
    #[error("`timestamp` is older than the retention period ({0} days)")]
    TooOld(u32),
    /// The event's Kafka record would exceed `kafka.max_message_bytes`.
    #[error("the event is {bytes} bytes as a Kafka record; the limit is {limit} bytes (shorten `metadata`)")]
    TooLarge {
        /// The record's size, counted as [`record_bytes`] does.
        bytes: usize,
        /// `kafka.max_message_bytes`.
        limit: usize,
    },
}

impl Invalid {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Invalid::NotJson(_) => "not_json",
            Invalid::NotObject => "not_object",
            Invalid::UnknownField(_) => "unknown_field",
            Invalid::Missing(_) => "missing_field",
            Invalid::WrongType(..) => "wrong_type",
            Invalid::Empty(_) => "empty_field",
            Invalid::TooLong(..) => "too_long",
            Invalid::BadTimestamp => "bad_timestamp",
            Invalid::Future => "future_timestamp",
            Invalid::TooOld(_) => "expired_timestamp",
            Invalid::TooLarge { .. } => "too_large",
        }
    }
}

/// The time bounds an event must fall in.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Now, milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// Retention, days.
    pub retention_days: u32,
}

impl Clock {
    /// The wall clock, with `retention_days`.
    pub fn wall(retention_days: u32) -> Clock {
        let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
        Clock {
            now_ms,
            retention_days,
        }
    }
}

impl Event {
    /// Parses one event from JSON bytes; `default_id` supplies the id when the event has none.
    pub fn parse(
        bytes: &[u8],
        clock: Clock,
        default_id: impl FnOnce() -> String,
    ) -> Result<Event, Invalid> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| Invalid::NotJson(e.to_string()))?;
        Event::from_value(&value, clock, default_id)
    }

    /// Validates one event given as a JSON value.
    pub fn from_value(
        value: &Value,
        clock: Clock,
        default_id: impl FnOnce() -> String,
    ) -> Result<Event, Invalid> {
        let obj = value.as_object().ok_or(Invalid::NotObject)?;
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(Invalid::UnknownField(unknown.clone()));
        }
        let event_type = required_str(obj, "event_type", MAX_EVENT_TYPE_LEN)?;
        let user_id = required_str(obj, "user_id", MAX_ID_LEN)?;
        let session_id = optional_str(obj, "session_id", MAX_ID_LEN)?.filter(|s| !s.is_empty());
        let event_id = match optional_str(obj, "event_id", MAX_ID_LEN)? {
            Some(id) if !id.is_empty() => id,
            Some(_) => return Err(Invalid::Empty("event_id")),
            None => default_id(),
        };
        let ts_ms = timestamp(obj.get("timestamp"))?;
        if ts_ms > clock.now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(Invalid::Future);
        }
        let oldest = clock
            .now_ms
            .saturating_sub(u64::from(clock.retention_days) * 86_400_000);
        if ts_ms < oldest {
            return Err(Invalid::TooOld(clock.retention_days));
        }
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Arc::new(Map::new()),
            Some(Value::Object(m)) => Arc::new(m.clone()),
            Some(_) => return Err(Invalid::WrongType("metadata", "a JSON object")),
        };
        Ok(Event {
            event_id,
            event_type,
            user_id,
            session_id,
            ts_ms,
            metadata,
        })
    }

    /// The canonical JSON written to Kafka: every field present, timestamp in epoch ms.
    pub fn to_json(&self) -> Vec<u8> {
        let mut obj = Map::new();
        obj.insert("event_id".into(), Value::from(self.event_id.clone()));
        obj.insert("event_type".into(), Value::from(self.event_type.clone()));
        obj.insert("user_id".into(), Value::from(self.user_id.clone()));
        if let Some(s) = &self.session_id {
            obj.insert("session_id".into(), Value::from(s.clone()));
        }
        obj.insert("timestamp".into(), Value::from(self.ts_ms));
        obj.insert("metadata".into(), Value::Object((*self.metadata).clone()));
        Value::Object(obj).to_string().into_bytes()
    }

    /// [`Event::to_json`], refused when the record it makes (value plus the `user_id` key, see
    /// [`record_bytes`]) would exceed `max_message_bytes`.
    pub fn to_json_within(&self, max_message_bytes: usize) -> Result<Vec<u8>, Invalid> {
        let json = self.to_json();
        let bytes = record_bytes(self.user_id.len(), json.len());
        if bytes > max_message_bytes {
            return Err(Invalid::TooLarge {
                bytes,
                limit: max_message_bytes,
            });
        }
        Ok(json)
    }
}

fn required_str(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<String, Invalid> {
    let s = optional_str(obj, field, max)?.ok_or(Invalid::Missing(field))?;
    if s.is_empty() {
        return Err(Invalid::Empty(field));
    }
    Ok(s)
}

fn optional_str(
    obj: &Map<String, Value>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() > max => Err(Invalid::TooLong(field, max)),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Invalid::WrongType(field, "a string")),
    }
}

fn timestamp(value: Option<&Value>) -> Result<u64, Invalid> {
    match value {
        None | Some(Value::Null) => Err(Invalid::Missing("timestamp")),
        Some(Value::Number(n)) => n.as_u64().ok_or(Invalid::BadTimestamp),
        Some(Value::String(s)) => {
            let t = DateTime::parse_from_rfc3339(s).map_err(|_| Invalid::BadTimestamp)?;
            u64::try_from(t.timestamp_millis()).map_err(|_| Invalid::BadTimestamp)
        }
        Some(_) => Err(Invalid::BadTimestamp),
    }
}

/// A deterministic id for an event read from Kafka without one, so a replay yields the same id.
pub fn id_from_position(topic: &str, partition: i32, offset: i64) -> String {
    stable_id(&format!("{topic}/{partition}/{offset}"))
}

/// A UUID-formatted id derived from `key` alone (128-bit xxh3, RFC 4122 variant, custom
/// version): the same key always gives the same id. Used for events that arrive without one.
pub fn stable_id(key: &str) -> String {
    let h = hash128(key);
    uuid::Builder::from_u128(h)
        .with_variant(uuid::Variant::RFC4122)
        .with_version(uuid::Version::Custom)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_710_324_000_000; // 2024-03-13T10:00:00Z
    fn clock() -> Clock {
        Clock {
            now_ms: NOW,
            retention_days: 365,
        }
    }
    fn parse(json: &str) -> Result<Event, Invalid> {
        Event::parse(json.as_bytes(), clock(), || "assigned".to_owned())
    }

    #[test]
    fn accepts_both_timestamp_forms() {
        let a = parse(
            r#"{"event_type":"click","user_id":"u1","timestamp":"2024-03-13T09:00:00.250Z"}"#,
        );
        let b = parse(r#"{"event_type":"click","user_id":"u1","timestamp":1710320400250}"#);
        assert_eq!(a.as_ref().map(|e| e.ts_ms), Ok(1_710_320_400_250));
        assert_eq!(a, b);
        assert_eq!(a.map(|e| e.event_id), Ok("assigned".to_owned()));
    }

    #[test]
    fn offsets_in_rfc3339_are_honoured() {
        let e =
            parse(r#"{"event_type":"x","user_id":"u","timestamp":"2024-03-13T11:00:00+02:00"}"#);
        assert_eq!(e.map(|e| e.ts_ms), Ok(1_710_320_400_000));
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (r#"[1]"#, Invalid::NotObject),
            (
                r#"{"user_id":"u","timestamp":1710320400000}"#,
                Invalid::Missing("event_type"),
            ),
            (
                r#"{"event_type":"","user_id":"u","timestamp":1710320400000}"#,
                Invalid::Empty("event_type"),
            ),
            (
                r#"{"event_type":"x","user_id":7,"timestamp":1710320400000}"#,
                Invalid::WrongType("user_id", "a string"),
            ),
            (
                r#"{"event_type":"x","user_id":"u","timestamp":"yesterday"}"#,
                Invalid::BadTimestamp,
            ),
            (
                r#"{"event_type":"x","user_id":"u","timestamp":-5}"#,
                Invalid::BadTimestamp,
            ),
            (
                r#"{"event_type":"x","user_id":"u"}"#,
                Invalid::Missing("timestamp"),
            ),
            (
                r#"{"event_type":"x","user_id":"u","timestamp":1710320400000,"extra":1}"#,
                Invalid::UnknownField("extra".into()),
            ),
            (
                r#"{"event_type":"x","user_id":"u","timestamp":1710320400000,"metadata":[1]}"#,
                Invalid::WrongType("metadata", "a JSON object"),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(parse(json), Err(want), "{json}");
        }
        let long = "x".repeat(129);
        let json = format!(r#"{{"event_type":"{long}","user_id":"u","timestamp":1710320400000}}"#);
        assert_eq!(parse(&json), Err(Invalid::TooLong("event_type", 128)));
        assert!(matches!(parse("{nope"), Err(Invalid::NotJson(_))));
    }

    #[test]
    fn time_bounds() {
        let day = 86_400_000;
        let at = |ts: u64| format!(r#"{{"event_type":"x","user_id":"u","timestamp":{ts}}}"#);
        assert!(parse(&at(NOW + day)).is_ok());
        assert_eq!(parse(&at(NOW + day + 1)), Err(Invalid::Future));
        assert!(parse(&at(NOW - 365 * day)).is_ok());
        assert_eq!(parse(&at(NOW - 365 * day - 1)), Err(Invalid::TooOld(365)));
    }

    #[test]
    fn canonical_json_round_trips() {
        let e = parse(r#"{"event_id":"e1","event_type":"click","user_id":"u1","session_id":"","timestamp":1710320400000,"metadata":{"a":1}}"#)
            .expect("valid");
        assert_eq!(e.session_id, None);
        let again = Event::parse(&e.to_json(), clock(), || unreachable!()).expect("valid");
        assert_eq!(again, e);
    }

    #[test]
    fn records_over_the_size_limit_are_refused() {
        let e = parse(
            r#"{"event_id":"e1","event_type":"click","user_id":"u1","timestamp":1710320400000}"#,
        )
        .expect("valid");
        let exact = record_bytes(2, e.to_json().len());
        assert_eq!(e.to_json_within(exact), Ok(e.to_json()));
        assert_eq!(
            e.to_json_within(exact - 1),
            Err(Invalid::TooLarge {
                bytes: exact,
                limit: exact - 1
            })
        );
    }

    #[test]
    fn ids_from_position_are_stable_and_distinct() {
        assert_eq!(
            id_from_position("events", 0, 1),
            id_from_position("events", 0, 1)
        );
        assert_ne!(
            id_from_position("events", 0, 1),
            id_from_position("events", 0, 2)
        );
        assert_ne!(
            id_from_position("events", 0, 1),
            id_from_position("events", 1, 1)
        );
    }
}
