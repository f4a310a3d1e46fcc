//! Tally's vocabulary, shared by every crate: window kinds ([`WindowSpec`]: tumbling and
//! hopping), sessions ([`SessionSpec`]), dimensions, filters, metrics and the [`Topology`] that
//! combines them (built with [`Topology::builder`]), and the [`RollupRow`] a topology produces.
//!
//! The event contract ([`event`]: parsing, validation, limits, canonical JSON, stable ids) and
//! the pipeline's [`Health`] also live here, so the API depends on this crate and `sinks` only.
//!
//! No I/O, no timely, no HTTP: everyone may depend on this crate. Times are milliseconds since
//! the Unix epoch (UTC) unless a name says otherwise.

pub mod event;
mod health;
mod metric;
mod rows;
mod session;
mod topology;
mod window;

pub use health::{Health, HealthSnapshot, PipelineState};
pub use metric::{Column, ColumnKind, Component, FieldPath, Metric};
pub use rows::{RollupRow, RowTable, Value};
pub use session::{sessionize, SessionSpec, SessionSummary};
pub use topology::{
    Dimension, DimensionSource, DistinctMode, Filter, Topology, TopologyBuilder, TopologyError,
    NOT_SET, OTHER,
};
pub use window::WindowSpec;
