//! The event contract lives in `tally_core::event` (shared with the API and `tally import`);
//! this module re-exports it and adds what needs the operators' and sinks' types: the
//! observation the dataflow aggregates and the raw row ClickHouse stores.

use std::sync::Arc;

use serde_json::Value;
pub use tally_core::event::*;
use tally_operators::Observation;
use tally_sinks::clickhouse::EventRow;

/// What the pipeline derives from a valid [`Event`].
pub trait EventExt {
    /// What the operators need; `replayed` marks an event read again after a restart. The
    /// metadata is shared with the event, not copied.
    fn observation(&self, replayed: bool) -> Observation;

    /// The raw row for ClickHouse.
    fn row(&self, ingested_at_secs: u32, partition: i32, offset: i64) -> EventRow;
}

impl EventExt for Event {
    fn observation(&self, replayed: bool) -> Observation {
        Observation {
            event_id: hash128(&self.event_id),
            ts_ms: self.ts_ms,
            event_type: self.event_type.clone(),
            user: hash128(&self.user_id),
            session: self.session_id.as_deref().map(hash128),
            metadata: Arc::clone(&self.metadata),
            replayed,
        }
    }

    fn row(&self, ingested_at_secs: u32, partition: i32, offset: i64) -> EventRow {
        EventRow {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            user_id: self.user_id.clone(),
            session_id: self.session_id.clone().unwrap_or_default(),
            timestamp: u32::try_from(self.ts_ms / 1000).unwrap_or(u32::MAX),
            timestamp_ms: i64::try_from(self.ts_ms).unwrap_or(i64::MAX),
            metadata: Value::Object((*self.metadata).clone()).to_string(),
            ingested_at: ingested_at_secs,
            kafka_partition: partition,
            kafka_offset: offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_and_row_carry_the_event() {
        let clock = Clock {
            now_ms: 1_710_324_000_000,
            retention_days: 365,
        };
        let e = Event::parse(
            br#"{"event_id":"e1","event_type":"click","user_id":"u1","session_id":"s1","timestamp":1710320400250,"metadata":{"platform":"ios"}}"#,
            clock,
            || unreachable!(),
        )
        .expect("valid");
        let o = e.observation(true);
        assert_eq!(o.event_id, tally_operators::hash128("e1"));
        assert_eq!(o.user, tally_operators::hash128("u1"));
        assert_eq!(o.session, Some(tally_operators::hash128("s1")));
        assert!(Arc::ptr_eq(&o.metadata, &e.metadata));
        assert_eq!(o.metadata["platform"], "ios");
        assert!(o.replayed);
        let r = e.row(7, 2, 9);
        assert_eq!(
            (r.timestamp, r.timestamp_ms),
            (1_710_320_400, 1_710_320_400_250)
        );
        assert_eq!(r.metadata, r#"{"platform":"ios"}"#);
        assert_eq!((r.kafka_partition, r.kafka_offset), (2, 9));
    }
}
