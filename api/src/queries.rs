//! The ClickHouse reads behind the reports: a thin layer from a validated [`ReportQuery`] to
//! the shared read queries in `tally_sinks::clickhouse::read` (which hold the SQL, run on
//! ClickHouse 18.16 and current releases, and bind every value client-side).

use clickhouse::Client;
use tally_sinks::clickhouse::read::{self, GroupRow, GroupTotal, SeriesRow, WindowRange};
use tally_sinks::SinkError;

pub use tally_sinks::clickhouse::read::summary;

use crate::reports::{rank_component, ReportQuery};

/// The windows `q` covers, in seconds: from its first window start to its end rounded up to a
/// second (window starts are whole seconds).
fn window_range(q: &ReportQuery) -> WindowRange<'_> {
    let to_ms = u64::try_from(q.to.timestamp_millis()).unwrap_or(0);
    WindowRange {
        table: &q.table,
        window: &q.window.name,
        from_s: q.first_start() / 1000,
        to_s: to_ms.div_ceil(1000),
    }
}

fn fetch_error(e: clickhouse::error::Error) -> SinkError {
    SinkError::clickhouse("report query", e)
}

/// The rows of an ungrouped report: one per window with data, components in
/// `q.metric.components()` order.
pub async fn series(client: &Client, q: &ReportQuery) -> Result<Vec<SeriesRow>, SinkError> {
    let (dimension, value) = q.row_filter();
    read::series(
        client,
        &window_range(q),
        &q.metric.components(),
        dimension,
        value,
    )?
    .fetch_all()
    .await
    .map_err(fetch_error)
}

/// The rows of a grouped report: the top `q.limit` groups of `q.group_by` (ranked by
/// [`rank_component`]), then one row per (window, group) of those groups and `__other__`.
pub async fn grouped(
    client: &Client,
    q: &ReportQuery,
) -> Result<(Vec<GroupTotal>, Vec<GroupRow>), SinkError> {
    let range = window_range(q);
    let components = q.metric.components();
    let dimension = q.group_by.as_deref().unwrap_or_default();
    let top: Vec<GroupTotal> = read::top_groups(
        client,
        &range,
        &components,
        dimension,
        rank_component(&q.metric),
        q.limit as u64,
    )?
    .fetch_all()
    .await
    .map_err(fetch_error)?;
    let names: Vec<String> = top.iter().map(|g| g.group.clone()).collect();
    let rows = read::grouped_series(client, &range, &components, dimension, &names)?
        .fetch_all()
        .await
        .map_err(fetch_error)?;
    Ok((top, rows))
}
