//! Pure timely operators for Tally: event-id de-duplication (first copy seen wins, see
//! [`Dedup`]), and a topology's rollups over event-time windows ([`WindowRollup`]) with
//! accumulators chosen from the topology's columns at run time ([`Accumulator`]).
//!
//! Nothing here does I/O, reads a clock or a config file. Time is the dataflow's `u64` timestamp,
//! which the source sets to the event-time watermark (milliseconds since the Unix epoch). A window
//! closes when the watermark reaches its end plus the grace period; a record whose timestamp is at
//! or past its window's close time is *late* for that window and is counted, not aggregated: the
//! window is then corrected from the raw events (see [`late_windows`] and
//! [`aggregate::window_rows`]).

mod accumulate;
pub mod aggregate;
mod dedup;
mod groups;
mod hashing;
mod observation;
mod point;
mod rollup;
mod session;
mod window;

pub use accumulate::{accumulator, Accumulator, Layout};
pub use dedup::{Dedup, DedupHorizon, Identified};
pub use hashing::{hash128, hash64, IdSet};
pub use observation::{Observation, OperatorCounters};
pub use point::Point;
pub use rollup::WindowRollup;
pub use session::{session_rows, SessionRollup};
pub use window::{late_windows, settled_after, LateRule};
