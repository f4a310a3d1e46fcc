//! Recomputing a topology's rollup rows from the raw events: what corrections and rebuilds do.
//!
//! For one window kind of one table, a set of windows (by start) is recomputed: the raw events
//! they need are read from ClickHouse (`tally_sinks::clickhouse::recompute::fetch_events`, the
//! first copy of each id), projected for the topology like the dataflow does
//! (`tally_operators::Point::project`) and aggregated by the dataflow's own code
//! (`tally_operators::aggregate::window_rows`, `tally_operators::session_rows`). Rows are
//! written final, with a version above every stored version of those windows; groups stored
//! before but absent now (a value folded into `__other__`, a session now starting in another
//! window) get zeros, so no stale group survives.
//!
//! Window metrics of a window need the events of the window itself. Session metrics need more:
//! every session starting in the window, so the events from `max_duration + gap` before its
//! start (the session in progress at its start) to `max_duration + gap` after its end (the end
//! of its last session). A user active without a `gap`-long pause for longer than that span
//! (sessions cut by `max_duration` back to back) may be cut differently than the dataflow cut
//! it; `docs/architecture.md` states this bound.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use tally_core::{RollupRow, RowTable, Topology, Value, WindowSpec};
use tally_operators::{hash128, Observation, Point};
use tally_sinks::clickhouse::recompute::{
    fetch_events, max_version, stored_groups, RawEvent, BLOCKS_PER_STATEMENT,
};
use tally_sinks::clickhouse::rollup_rows::insert_rows;
use tally_sinks::SinkError;

/// What a recompute did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecomputeStats {
    /// Rollup rows written (zero rows for vanished groups included).
    pub rows_written: u64,
    /// Raw-event reads (`SELECT`s) run.
    pub statements: u64,
    /// Raw events read.
    pub events_read: u64,
}

impl std::ops::AddAssign for RecomputeStats {
    fn add_assign(&mut self, o: Self) {
        self.rows_written += o.rows_written;
        self.statements += o.statements;
        self.events_read += o.events_read;
    }
}

/// Most raw-event time read into memory at once, unless one window needs more.
const MAX_CHUNK_MS: u64 = 7 * 86_400_000;

/// Which blocks (of `block_s` seconds) the raw events of the window starting at `start_ms`
/// must be read from, for `table`: `(block_s, first block, last block)`.
pub fn blocks_for(
    topology: &Topology,
    table: RowTable,
    window: &WindowSpec,
    start_ms: u64,
) -> (u64, u64, u64) {
    match (table, topology.sessions) {
        (RowTable::Sessions, Some(s)) => {
            let block_s = 3_600;
            let reach = s.max_duration_ms + s.gap_ms;
            let from = start_ms.saturating_sub(reach) / 1000;
            let to = (start_ms + window.size_ms + reach) / 1000;
            (block_s, from / block_s, to / block_s)
        }
        _ => {
            let block_s = (window.slide_ms / 1000).max(1);
            let from = start_ms / 1000;
            let to = (start_ms + window.size_ms) / 1000;
            (block_s, from / block_s, to.saturating_sub(1) / block_s)
        }
    }
}

/// Recomputes the windows of kind `window` starting at `starts` (ms, sorted, deduplicated) in
/// `topology`'s `table`, and writes their rows (see the module docs). `now_version` is the
/// caller's clock in ns.
///
/// Errors: [`SinkError::ClickHouse`]; the whole call can be retried (same values, newer
/// version).
pub async fn recompute(
    client: &clickhouse::Client,
    topology: &Topology,
    table: RowTable,
    window: &WindowSpec,
    starts: &[u64],
    now_version: u64,
) -> Result<RecomputeStats, SinkError> {
    let mut stats = RecomputeStats::default();
    let columns = topology.columns(table);
    if columns.is_empty() || starts.is_empty() {
        return Ok(stats);
    }
    for chunk in chunks(topology, table, window, starts) {
        stats += recompute_chunk(client, topology, table, window, &chunk, now_version).await?;
    }
    Ok(stats)
}

/// Splits `starts` into runs whose blocks fit one statement and [`MAX_CHUNK_MS`] of events.
fn chunks(
    topology: &Topology,
    table: RowTable,
    window: &WindowSpec,
    starts: &[u64],
) -> Vec<Vec<u64>> {
    let mut out: Vec<Vec<u64>> = Vec::new();
    let mut blocks: BTreeSet<u64> = BTreeSet::new();
    let mut current: Vec<u64> = Vec::new();
    for &s in starts {
        let (block_s, from, to) = blocks_for(topology, table, window, s);
        let mut next = blocks.clone();
        next.extend(from..=to);
        let span_ms = match (next.first(), next.last()) {
            (Some(a), Some(b)) => (b + 1 - a) * block_s * 1000,
            _ => 0,
        };
        if !current.is_empty() && (next.len() > BLOCKS_PER_STATEMENT || span_ms > MAX_CHUNK_MS) {
            out.push(std::mem::take(&mut current));
            blocks = (from..=to).collect();
        } else {
            blocks = next;
        }
        current.push(s);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

async fn recompute_chunk(
    client: &clickhouse::Client,
    topology: &Topology,
    table: RowTable,
    window: &WindowSpec,
    starts: &[u64],
    now_version: u64,
) -> Result<RecomputeStats, SinkError> {
    let mut blocks: BTreeSet<u64> = BTreeSet::new();
    let mut block_s = 1;
    for &s in starts {
        let (b, from, to) = blocks_for(topology, table, window, s);
        block_s = b;
        blocks.extend(from..=to);
    }
    let blocks: Vec<u64> = blocks.into_iter().collect();
    let raw = fetch_events(client, block_s, &blocks, needs_metadata(topology)).await?;
    let mut stats = RecomputeStats {
        statements: blocks.len().div_ceil(BLOCKS_PER_STATEMENT) as u64,
        events_read: raw.len() as u64,
        ..RecomputeStats::default()
    };
    let points: Vec<Point> = raw
        .iter()
        .filter_map(|e| Point::project(topology, &observation(e)))
        .collect();
    let wanted: HashSet<u64> = starts.iter().copied().collect();
    let computed = match table {
        RowTable::Windows => tally_operators::aggregate::window_rows(topology, &points),
        RowTable::Sessions => tally_operators::session_rows(topology, &points),
    };
    let mut rows: Vec<RollupRow> = computed
        .into_iter()
        .filter(|r| r.table == table && *r.window == *window.name && wanted.contains(&r.start_ms))
        .map(|mut r| {
            r.is_final = true;
            r
        })
        .collect();
    let table_name = topology.table_name(table);
    let have: HashSet<(u64, String, String)> = rows
        .iter()
        .map(|r| (r.start_ms, r.dimension.to_string(), r.value.clone()))
        .collect();
    let zeros: Vec<Value> = topology
        .columns(table)
        .iter()
        .map(|c| match c.kind {
            tally_core::ColumnKind::UInt64 => Value::U64(0),
            tally_core::ColumnKind::Float64 => Value::F64(0.0),
        })
        .collect();
    for (start_ms, dimension, value) in
        stored_groups(client, &table_name, &window.name, starts).await?
    {
        if !have.contains(&(start_ms, dimension.clone(), value.clone())) {
            rows.push(RollupRow {
                topology: Arc::from(topology.name.as_str()),
                table,
                window: Arc::from(window.name.as_str()),
                start_ms,
                dimension: Arc::from(dimension.as_str()),
                value,
                values: zeros.clone(),
                is_final: true,
            });
        }
    }
    let (first, last) = (
        starts.first().copied().unwrap_or(0),
        starts.last().copied().unwrap_or(0),
    );
    let stored = max_version(
        client,
        &table_name,
        &window.name,
        first,
        last + window.size_ms,
    )
    .await?;
    let version = now_version.max(stored + 1);
    let rows: Vec<(RollupRow, u64)> = rows.into_iter().map(|r| (r, version)).collect();
    insert_rows(client, &table_name, &topology.columns(table), &rows).await?;
    stats.rows_written = rows.len() as u64;
    Ok(stats)
}

/// Whether projecting an event for `topology` reads its metadata.
fn needs_metadata(topology: &Topology) -> bool {
    let by_dimension = topology
        .dimensions
        .iter()
        .any(|d| matches!(d.source, tally_core::DimensionSource::Metadata(_)));
    let by_filter = topology
        .filters
        .iter()
        .any(|f| matches!(f, tally_core::Filter::MetadataEquals(..)));
    by_dimension || by_filter || !topology.fields().is_empty()
}

/// The observation the dataflow would have made of a raw event (ids hashed the same way).
fn observation(e: &RawEvent) -> Observation {
    let metadata: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&e.metadata).unwrap_or_default();
    Observation {
        event_id: 0,
        ts_ms: u64::try_from(e.timestamp_ms).unwrap_or(0),
        event_type: e.event_type.clone(),
        user: hash128(&e.user_id),
        session: (!e.session_id.is_empty()).then(|| hash128(&e.session_id)),
        metadata: Arc::new(metadata),
        replayed: false,
    }
}

#[cfg(test)]
mod tests {
    use tally_core::{Metric, SessionSpec};

    use super::*;

    fn topology() -> Topology {
        Topology::builder("t")
            .window(WindowSpec::tumbling("1h", 3_600_000))
            .window(WindowSpec::hopping("1h_15m", 3_600_000, 900_000))
            .sessions(SessionSpec {
                gap_ms: 1_800_000,
                max_duration_ms: 7_200_000,
            })
            .metric(Metric::Events)
            .metric(Metric::Sessions)
            .build()
            .expect("valid")
    }

    #[test]
    fn blocks_cover_exactly_what_a_window_needs() {
        let t = topology();
        let hour = &t.windows[0];
        let hop = &t.windows[1];
        let h = 3_600_000;
        // Window metrics: the window's own blocks (of the slide).
        assert_eq!(
            blocks_for(&t, RowTable::Windows, hour, 10 * h),
            (3_600, 10, 10)
        );
        assert_eq!(
            blocks_for(&t, RowTable::Windows, hop, 10 * h),
            (900, 40, 43)
        );
        // Sessions: 2 h 30 min either side, in hour blocks: 07:30 .. 13:30.
        assert_eq!(
            blocks_for(&t, RowTable::Sessions, hour, 10 * h),
            (3_600, 7, 13)
        );
    }

    #[test]
    fn chunks_respect_the_span_bound() {
        let t = topology();
        let hour = &t.windows[0];
        let h = 3_600_000;
        // Three windows a day apart fit one 7-day chunk; one 30 days later starts another.
        let starts = [0, 24 * h, 48 * h, 30 * 24 * h];
        let c = chunks(&t, RowTable::Windows, hour, &starts);
        assert_eq!(c, vec![vec![0, 24 * h, 48 * h], vec![30 * 24 * h]]);
    }
}
