//! Tally's runtime: the event contract, configuration, the Kafka source with per-partition
//! watermarks, the timely worker loop, the ClickHouse sink operator and progress tracking.
//!
//! The drain order is fixed (see [`run::run`]): stop reading Kafka, flush the sink, wait for
//! ClickHouse to acknowledge, save progress, then drop the dataflow without closing windows.

mod config;
mod error;
pub mod event;
pub mod kafka;
pub mod metrics;
mod offsets;
pub mod run;
mod sink;
mod source;
mod watermark;

pub use config::PipelineConfig;
pub use error::PipelineError;
pub use offsets::PendingOffsets;
pub use run::{run, PipelineSettings};
pub use watermark::{combine, past_idle, Combined, Mark, Watermarks};
