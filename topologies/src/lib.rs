//! Topologies: which events, grouped how, over which windows, computing which metrics
//! ([`tally_core::Topology`]), and the timely dataflow that runs any set of them over one read
//! of the events ([`build`]: one dedup, then per topology its window rollup and, with
//! sessions, its session rollup).
//!
//! [`product_analytics`] is the topology Tally always ran: exact events, unique users, unique
//! sessions and unique event types per minute, hour and day, overall and per event type.
//! [`kit`] runs scripted events through the real dataflow, for golden and property tests.

mod dataflow;
pub mod file;
pub mod kit;

pub use dataflow::{build, Outputs};

use tally_core::{Dimension, DimensionSource, DistinctMode, Metric, Topology, WindowSpec};

/// The product-analytics topology, as Tally computed it before topologies were data: tumbling
/// windows `1m`, `1h`, `1d`; the dimension `event_type` (up to 100,000 values per window);
/// metrics `events`, `unique_users`, `unique_sessions`, `unique_event_types`, exact; table
/// `rollups_product_analytics`. `topologies/product_analytics.toml` declares the same.
pub fn product_analytics() -> Topology {
    let built = Topology::builder("product_analytics")
        .description(
            "Events, unique users, unique sessions and unique event types per minute, hour and \
             day, overall and per event type.",
        )
        .table("rollups_product_analytics")
        .window(WindowSpec::tumbling("1m", 60_000))
        .window(WindowSpec::tumbling("1h", 3_600_000))
        .window(WindowSpec::tumbling("1d", 86_400_000))
        .dimension(Dimension {
            name: "event_type".to_owned(),
            source: DimensionSource::EventType,
            max_values: Dimension::MAX_MAX_VALUES,
        })
        .metric(Metric::Events)
        .metric(Metric::UniqueUsers)
        .metric(Metric::UniqueSessions)
        .metric(Metric::UniqueEventTypes)
        .distinct(DistinctMode::Exact)
        .build();
    // The declaration above is constant and valid (a test builds it); a failure would be a
    // programming error caught by that test, not a runtime condition.
    built.unwrap_or_else(|e| panic!("product_analytics is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::RowTable;

    #[test]
    fn product_analytics_is_todays_topology() {
        let t = product_analytics();
        let windows: Vec<(&str, u64, u64)> = t
            .windows
            .iter()
            .map(|w| (w.name.as_str(), w.size_ms, w.slide_ms))
            .collect();
        assert_eq!(
            windows,
            [
                ("1m", 60_000, 60_000),
                ("1h", 3_600_000, 3_600_000),
                ("1d", 86_400_000, 86_400_000)
            ]
        );
        let columns: Vec<String> = t
            .columns(RowTable::Windows)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            columns,
            [
                "events",
                "unique_users",
                "unique_sessions",
                "unique_event_types"
            ]
        );
        assert!(!t.has(RowTable::Sessions));
        assert_eq!(t.table, "rollups_product_analytics");
        assert_eq!(t.dimensions.len(), 1);
        assert_eq!(t.dimensions[0].name, "event_type");
        assert_eq!(t.dimensions[0].max_values, 100_000);
        assert!(t.filters.is_empty());
        assert_eq!(t.distinct, DistinctMode::Exact);
    }
}
