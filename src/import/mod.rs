//! `tally import`: sends files of historical events through the same validation and Kafka path
//! as `POST /events` (see docs/operations.md, "Importing history").
//!
//! A reader thread ([`reader`]) opens each file (gzip by extension or magic bytes, a UTF-8 BOM
//! dropped), splits it into records ([`split`] for JSON lines and streamed JSON arrays,
//! [`table`] for CSV), maps columns and keys onto event fields and validates each record
//! ([`record`]); the async side ([`run`]) writes the valid ones to Kafka through a bounded
//! window of deliveries, writes the rejected ones to the rejects file ([`rejects`]), shows
//! progress ([`progress`]) and prints the summary. [`settle`] waits for the pipeline to have
//! counted an imported range (`--wait`).

mod args;
mod error;
mod progress;
mod reader;
mod record;
mod rejects;
mod run;
pub mod settle;
mod split;
mod table;

pub use args::ImportArgs;
pub use error::ImportError;
pub use run::run;
