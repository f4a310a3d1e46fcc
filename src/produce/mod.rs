//! `tally produce`: a load generator that writes synthetic user events straight to Kafka.
//!
//! [`EventGenerator`](generator::EventGenerator) is pure and seedable: it owns the RNG and the
//! event clock and does no I/O. [`run`] drives it from a rate-limited loop and sends through an
//! idempotent rdkafka producer, keeping a bounded window of in-flight deliveries and failing on
//! the first delivery error. The event contract the generator follows is `docs/events.md`.
//!
//! `args` holds the clap flags and their validation, `generator` the pure event generator, and
//! `sender` the Kafka send loop (pacing, in-flight deliveries, progress) and the
//! `ProduceReport` that [`run`] returns.

mod args;
mod generator;
mod sender;

pub use args::ProduceArgs;
pub use sender::run;
