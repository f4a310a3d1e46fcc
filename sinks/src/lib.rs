//! Tally's writers and schemas: ClickHouse (raw events, rollups) and PostgreSQL (the platform's
//! own records: applied migrations, pipeline progress).

pub mod clickhouse;
mod error;
pub mod postgres;

pub use error::{ErrorClass, SinkError};
