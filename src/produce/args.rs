//! The `tally produce` flags (clap) and their offline validation.

use chrono::{DateTime, FixedOffset};

/// Send synthetic user events to Kafka (load generator; see docs/events.md).
#[derive(clap::Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Total number of events to send; 0 sends until Ctrl-C.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Events per second; 0 sends as fast as the brokers accept.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Number of distinct users (ids u1..uN); popularity is Zipf-distributed, u1 most active.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,
    /// Zipf exponent of user popularity: 0 is uniform, larger is more skewed.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Out-of-orderness: each timestamp is moved back by a uniform random 0..=D ms.
    #[arg(long, default_value_t = 2000)]
    pub disorder_ms: u64,
    /// Event-time start (RFC 3339) for backfills. Event time then advances 1000/rate ms per
    /// event (1 ms with --rate 0) instead of following the wall clock.
    #[arg(long, value_parser = DateTime::parse_from_rfc3339)]
    pub start: Option<DateTime<FixedOffset>>,
    /// Seed for deterministic event content (timestamps too when --start is given).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction (0..=1) of deliberately malformed messages (truncated JSON, missing
    /// event_type, bad timestamp, empty user_id), for dead-letter testing.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub invalid_fraction: f64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not in 0..=1"))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::produce::generator::tests::START_MS;
    use crate::produce::generator::GeneratorConfig;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    pub(in crate::produce) fn args(flags: &[&str]) -> Result<ProduceArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("produce").chain(flags.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_parse_with_defaults_and_backfill_start() {
        let a = args(&[]).expect("defaults");
        assert_eq!(
            (a.count, a.rate, a.users, a.disorder_ms),
            (10_000, 1_000, 10_000, 2_000)
        );
        assert_eq!(
            (a.zipf_s, a.invalid_fraction, a.start, a.seed),
            (1.1, 0.0, None, None)
        );
        let cfg = GeneratorConfig::from_args(&a, 42, 0);
        assert_eq!((cfg.start_ms, cfg.step_ns), (42, 0));

        let a = args(&[
            "--start",
            "2024-03-13T10:00:00Z",
            "--rate",
            "250",
            "--seed",
            "9",
        ])
        .expect("ok");
        let cfg = GeneratorConfig::from_args(&a, 42, 9);
        assert_eq!((cfg.start_ms, cfg.step_ns), (START_MS, 4_000_000));
        assert!(args(&["--invalid-fraction", "1.5"]).is_err());
        assert!(args(&["--users", "0"]).is_err());
        assert!(args(&["--start", "yesterday"]).is_err());
    }
}
