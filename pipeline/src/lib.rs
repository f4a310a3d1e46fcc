//! Tally's runtime: the event contract, configuration, the Kafka source with per-partition
//! watermarks, the timely worker loop, the ClickHouse sink operator and progress tracking.
//!
//! The drain order is fixed (see [`run::run`]): stop reading Kafka, flush the sink, wait for
//! ClickHouse to acknowledge, save progress, then drop the dataflow without closing windows.

mod config;
mod dead_letter;
mod error;
pub mod event;
mod health;
pub mod kafka;
pub mod metrics;
mod offsets;
mod progress;
pub mod run;
mod sink;
mod source;
mod startup;
mod watermark;

pub use config::{PipelineConfig, RetentionGapPolicy};

pub use error::{ExitClass, PipelineError};
pub use health::{Health, HealthSnapshot, PipelineState};
pub use offsets::PendingOffsets;
pub use run::{run, run_with_health, PipelineSettings};
pub use startup::resolve_topologies;
pub use watermark::{combine, past_idle, Combined, Mark, Watermarks};
