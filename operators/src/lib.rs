//! Pure timely operators for Tally: event-time windows, per-window exact distinct counts and
//! event-id de-duplication (first copy seen wins, see [`Dedup`]).
//!
//! Nothing here does I/O, reads a clock or a config file. Time is the dataflow's `u64` timestamp,
//! which the source sets to the event-time watermark (milliseconds since the Unix epoch). A window
//! closes when the watermark reaches its end plus the grace period; a record whose timestamp is at
//! or past its window's close time is *late* for that window and is counted, not aggregated: the
//! window is then corrected from the raw events (see [`late_windows`]).

mod dedup;
mod hashing;
mod observation;
mod point;
pub mod reference;
mod rollup;
mod session;
mod window;

pub use dedup::{Dedup, DedupHorizon, Identified};
pub use hashing::{hash128, hash64, IdSet};
pub use observation::{Observation, OperatorCounters};
pub use point::Point;
pub use rollup::{Rollup, RollupRow, RollupSpec, WindowKey};
pub use session::{session_rows, SessionRollup};
pub use window::{late_windows, settled_after, Window};
