//! The timely operator that writes to ClickHouse.
//!
//! It buffers rows (bounded by rows and by time), writes a batch on the tokio runtime, and holds
//! a capability for the batch's earliest time until ClickHouse acknowledged it. A probe on its
//! output therefore shows the *acknowledged frontier*: every row with an earlier time is stored.
//! The source commits Kafka offsets only up to what that frontier covers.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::{Column, RollupRow, RowTable, Topology};
use tally_operators::LateRule;
use tally_sinks::clickhouse::{ClickHouseWriter, EventRow};
use tally_sinks::postgres::ledger::{self, LateMark};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;
use timely::scheduling::Activator;

use crate::health::Failure;
use crate::metrics::Metrics;
use crate::PipelineError;

/// A row bound for ClickHouse.
#[derive(Clone, Debug)]
pub enum SinkRecord {
    /// A raw event, and whether it was read again after a restart (replayed).
    Event(EventRow, bool),
    /// A rollup value.
    Rollup(RollupRow),
}

/// Batches in flight at once per worker.
const MAX_IN_FLIGHT: usize = 4;
const PENDING: u8 = 0;
const DONE: u8 = 1;
const FAILED: u8 = 2;

/// What the sink needs from the runtime.
#[derive(Clone)]
pub struct SinkContext {
    /// The writer.
    pub writer: ClickHouseWriter,
    /// Where inserts run.
    pub runtime: tokio::runtime::Handle,
    /// A batch is written when it has this many rows...
    pub batch_rows: usize,
    /// ...or its first row has waited this long.
    pub batch_wait: Duration,
    /// Set at shutdown: write whatever is buffered now.
    pub flush_all: Rc<Cell<bool>>,
    /// Rows buffered or in flight (the source pauses reading above a limit).
    pub backlog: Arc<AtomicUsize>,
    /// Where a non-retryable write error is raised; it stops the pipeline.
    pub failure: Arc<Failure>,
    /// Filled in when the operator is built, so the runtime can wake it (e.g. at shutdown).
    pub activator: Rc<RefCell<Option<Activator>>>,
    /// Where late events are marked for correction.
    pub ledger: LateLedger,
    /// The topologies and their tables.
    pub tables: Rc<Tables>,
}

/// One rollup table of a topology as the sink writes it.
#[derive(Clone, Debug)]
pub struct Table {
    /// Its current name (see `Topology::table_name`).
    pub name: String,
    /// Its metric columns, in the order of `RollupRow::values`.
    pub columns: Vec<Column>,
}

/// One topology as the sink writes it: its tables, and its late rule.
#[derive(Clone, Debug)]
struct Written {
    topology: Topology,
    windows: Option<Table>,
    sessions: Option<Table>,
    late: LateRule,
}

/// The topologies the sink writes for, with their tables.
#[derive(Clone, Debug)]
pub struct Tables(Vec<Written>);

impl Tables {
    /// The tables of `topologies` (a table without columns is not written).
    pub fn of(topologies: &[Topology]) -> Tables {
        let table = |t: &Topology, kind| {
            let columns = t.columns(kind);
            (!columns.is_empty()).then(|| Table {
                name: t.table_name(kind),
                columns,
            })
        };
        Tables(
            topologies
                .iter()
                .map(|t| Written {
                    topology: t.clone(),
                    windows: table(t, RowTable::Windows),
                    sessions: table(t, RowTable::Sessions),
                    late: LateRule::of(t),
                })
                .collect(),
        )
    }

    /// The table `row` goes to.
    fn table(&self, topology: &str, kind: RowTable) -> Option<&Table> {
        let w = self.0.iter().find(|w| w.topology.name == topology)?;
        match kind {
            RowTable::Windows => w.windows.as_ref(),
            RowTable::Sessions => w.sessions.as_ref(),
        }
    }

    /// Counts one event at `row`'s time, read at `read_time`, in `late` for every window of
    /// every topology it is late for (`tally_operators::late_windows`), keyed by (topology
    /// index, table, window-kind index, start). Topologies whose filters reject the event are
    /// skipped (the metadata is parsed only when a filter needs it). Allocates nothing for an
    /// event late for nothing, and only map entries otherwise.
    fn mark_late(
        &self,
        row: &EventRow,
        read_time: u64,
        grace_ms: u64,
        counted: i64,
        late: &mut BTreeMap<LateKey, i64>,
    ) {
        let ts_ms = u64::try_from(row.timestamp_ms).unwrap_or(0);
        let mut metadata: Option<serde_json::Map<String, serde_json::Value>> = None;
        let mut found: Vec<LateKey> = Vec::new();
        for (ti, w) in self.0.iter().enumerate() {
            found.clear();
            let t = &w.topology;
            w.late
                .each(t, ts_ms, read_time, grace_ms, |table, wi, start| {
                    found.push((ti, table, wi, start));
                });
            if found.is_empty() {
                continue;
            }
            if !t.filters.is_empty() {
                let meta = metadata
                    .get_or_insert_with(|| serde_json::from_str(&row.metadata).unwrap_or_default());
                if !t.accepts(&row.event_type, meta) {
                    continue;
                }
            }
            found.sort_unstable();
            found.dedup();
            for key in &found {
                *late.entry(*key).or_default() += counted;
            }
        }
    }

    /// The topology and window names of a [`LateKey`].
    fn names(&self, key: &LateKey) -> Option<(&str, &str)> {
        let w = self.0.get(key.0)?;
        let window = w.topology.windows.get(key.2)?;
        Some((w.topology.name.as_str(), window.name.as_str()))
    }
}

/// The late-event ledger as the sink writes it: the rollups' grace and the PostgreSQL pool
/// (see `tally_sinks::postgres::ledger`).
#[derive(Clone)]
pub struct LateLedger {
    /// PostgreSQL.
    pub pool: sqlx::PgPool,
    /// The pipeline's name (the ledger and its jobs are per pipeline).
    pub pipeline: String,
    /// The rollups' grace, ms.
    pub grace_ms: u64,
}

#[derive(Default)]
struct Batch {
    cap: Option<Capability<u64>>,
    started: Option<Instant>,
    events: Vec<EventRow>,
    /// The newest row per key, with its version.
    rollups: HashMap<RowKey, (RollupRow, u64)>,
    /// Late events per closed window -> events (replays not counted).
    late: BTreeMap<LateKey, i64>,
    last_version: u64,
}

/// A closed window an event was late for: (topology index, table, window-kind index, start ms).
type LateKey = (usize, RowTable, usize, u64);

/// One table's columns and the rows (with versions) a batch writes to it.
type TableRows = (Vec<Column>, Vec<(RollupRow, u64)>);

/// (topology, table, window, start ms, dimension, value): one rollup aggregate.
type RowKey = (Arc<str>, RowTable, Arc<str>, u64, Arc<str>, String);

impl Batch {
    fn len(&self) -> usize {
        self.events.len() + self.rollups.len()
    }

    fn add_rollup(&mut self, row: RollupRow) {
        // Versions come from the wall clock so they keep increasing across restarts.
        let now = u64::try_from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0);
        self.last_version = now.max(self.last_version + 1);
        let key = (
            Arc::clone(&row.topology),
            row.table,
            Arc::clone(&row.window),
            row.start_ms,
            Arc::clone(&row.dimension),
            row.value.clone(),
        );
        self.rollups.insert(key, (row, self.last_version));
    }
}

/// Writes `stream` to ClickHouse; the returned stream carries no data, only the acknowledged
/// frontier (attach a probe to it).
pub fn clickhouse_sink<'scope>(
    stream: StreamVec<'scope, u64, SinkRecord>,
    ctx: SinkContext,
) -> StreamVec<'scope, u64, ()> {
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Pipeline,
        "ClickHouseSink",
        move |_cap, info| {
            let activator = scope.activator_for(Rc::clone(&info.address));
            *ctx.activator.borrow_mut() = Some(activator.clone());
            let waker = scope.worker().sync_activator_for(info.address.to_vec());
            let mut batch = Batch::default();
            let mut in_flight: Vec<(Capability<u64>, Arc<AtomicU8>, usize)> = Vec::new();
            move |(input, _frontier), _output| {
                input.for_each(|cap, data| {
                    let earlier = match (&batch.cap, cap.least()) {
                        (Some(held), Some(t)) => t < held.time(),
                        _ => true,
                    };
                    if earlier {
                        batch.cap = cap.retain_least(0);
                    }
                    let read_time = cap.least().copied().unwrap_or(0);
                    let late = &ctx.ledger;
                    for record in data.drain(..) {
                        match record {
                            SinkRecord::Event(e, replayed) => {
                                ctx.tables.mark_late(
                                    &e,
                                    read_time,
                                    late.grace_ms,
                                    i64::from(!replayed),
                                    &mut batch.late,
                                );
                                batch.events.push(e);
                            }
                            SinkRecord::Rollup(r) => batch.add_rollup(r),
                        }
                    }
                    batch.started.get_or_insert_with(Instant::now);
                });
                // A failed batch keeps its capability: its rows are not acknowledged, so the
                // acknowledged frontier (and the progress saved from it) must stay before them.
                // The failure stops the workers, which drop the dataflow and with it the
                // capability; the rows are read again after a restart.
                in_flight.retain(|(_, status, _)| status.load(Ordering::Acquire) != DONE);
                if let Some(started) = batch.started {
                    let waited = started.elapsed();
                    let due = batch.len() >= ctx.batch_rows
                        || waited >= ctx.batch_wait
                        || ctx.flush_all.get();
                    if due && in_flight.len() < MAX_IN_FLIGHT {
                        let mut taken = std::mem::take(&mut batch);
                        batch.last_version = taken.last_version;
                        // The capability (taken with the batch's first record) is held until
                        // ClickHouse acknowledged the batch.
                        let cap = taken.cap.take();
                        let (status, rows) = spawn_write(taken, &ctx, waker.clone());
                        in_flight.extend(cap.map(|cap| (cap, status, rows)));
                    } else if !due {
                        activator.activate_after(ctx.batch_wait - waited);
                    }
                }
                let flying: usize = in_flight
                    .iter()
                    .filter(|(_, status, _)| status.load(Ordering::Acquire) == PENDING)
                    .map(|(_, _, n)| n)
                    .sum();
                ctx.backlog.store(batch.len() + flying, Ordering::Relaxed);
            }
        },
    )
}

fn spawn_write(
    batch: Batch,
    ctx: &SinkContext,
    waker: timely::scheduling::SyncActivator,
) -> (Arc<AtomicU8>, usize) {
    let Batch {
        events,
        rollups,
        late,
        ..
    } = batch;
    let mut marks: BTreeMap<String, Vec<LateMark>> = BTreeMap::new();
    for (key, late_events) in late {
        let Some((topology, window)) = ctx.tables.names(&key) else {
            continue;
        };
        marks
            .entry(topology.to_owned())
            .or_default()
            .push(LateMark {
                table: key.1,
                window: window.to_owned(),
                start_ms: i64::try_from(key.3).unwrap_or(i64::MAX),
                late_events,
            });
    }
    let ledger = ctx.ledger.clone();
    let rows = events.len() + rollups.len();
    // One insert per table.
    let mut by_table: BTreeMap<String, TableRows> = BTreeMap::new();
    for (row, version) in rollups.into_values() {
        if let Some(table) = ctx.tables.table(&row.topology, row.table) {
            by_table
                .entry(table.name.clone())
                .or_insert_with(|| (table.columns.clone(), Vec::new()))
                .1
                .push((row, version));
        }
    }
    let status = Arc::new(AtomicU8::new(PENDING));
    let (writer, failure, done) = (
        ctx.writer.clone(),
        Arc::clone(&ctx.failure),
        Arc::clone(&status),
    );
    ctx.runtime.spawn(async move {
        let result = async {
            if !events.is_empty() {
                timed("events", events.len(), writer.write_events(&events)).await?;
            }
            for (table, (columns, rows)) in &by_table {
                let insert = writer.write_rollup_rows(table, columns, rows);
                timed("rollups", rows.len(), insert).await?;
            }
            // After the raw rows are stored, before the batch counts as acknowledged: no offset
            // is committed past a late event whose window is not marked for correction.
            for (topology, marks) in &marks {
                mark_late(&ledger, topology, marks).await?;
            }
            Ok::<(), tally_sinks::SinkError>(())
        }
        .await;
        match result {
            Ok(()) => done.store(DONE, Ordering::Release),
            Err(e) => {
                failure.raise(if e.is_missing_schema() {
                    PipelineError::NotMigrated {
                        what: format!("a table or column ({e})"),
                    }
                } else {
                    PipelineError::Sink(e)
                });
                done.store(FAILED, Ordering::Release);
            }
        }
        let _ = waker.activate();
    });
    (status, rows)
}

/// Records late windows in the ledger, retrying while PostgreSQL is unavailable (100 ms doubling
/// to 5 s, without limit: meanwhile the batch stays unacknowledged, so progress is not saved past
/// it and the source pauses once the backlog is full). Other errors are returned.
async fn mark_late(
    ledger: &LateLedger,
    topology: &str,
    marks: &[LateMark],
) -> Result<(), tally_sinks::SinkError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match ledger::mark_late(&ledger.pool, &ledger.pipeline, topology, marks).await {
            Ok(()) => {
                let m = Metrics::get();
                m.late_windows_marked.inc_by(marks.len() as u64);
                return Ok(());
            }
            Err(e) if e.class() == tally_sinks::ErrorClass::Retry => {
                tracing::warn!(error = %e, windows = marks.len(), "marking late windows failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs one insert, recording its size and duration (retries included).
async fn timed(
    table: &str,
    rows: usize,
    insert: impl std::future::Future<Output = Result<(), tally_sinks::SinkError>>,
) -> Result<(), tally_sinks::SinkError> {
    let started = Instant::now();
    insert.await?;
    let m = Metrics::get();
    m.sink_batch_rows
        .with_label_values(&[table])
        .observe(rows as f64);
    m.sink_batch_seconds
        .with_label_values(&[table])
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}
