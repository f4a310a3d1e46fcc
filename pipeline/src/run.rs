//! The pipeline: one timely worker per thread, each reading its share of the topic's partitions.
//!
//! One exit path: every worker, whatever ends its loop (shutdown signal, a fatal error of any
//! worker or sink task, a panic), goes through the same drain (see [`drain`]) and drops its
//! dataflow, so the process always ends; the first fatal error is what [`run`] returns.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use std::{cell::Cell, cell::RefCell, rc::Rc};

use std::collections::HashMap;

use tally_core::Topology;
use tally_operators::OperatorCounters;
use tally_sinks::clickhouse::{ClickHouseConfig, ClickHouseWriter};
use tally_sinks::postgres::{PostgresConfig, Progress};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::event::EventExt as _;
use crate::health::{Failure, Health, PipelineState};
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::progress::ProgressSaver;
use crate::sink::{clickhouse_sink, LateLedger, SinkContext, SinkRecord};
use crate::source::{KafkaSource, Read, Windowing};
use crate::watermark::{combine, past_idle, Mark, Watermarks};
use crate::{PipelineConfig, PipelineError};

/// Everything the pipeline is configured with.
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    /// `[kafka]`.
    pub kafka: KafkaConfig,
    /// `[clickhouse]`.
    pub clickhouse: ClickHouseConfig,
    /// `[postgres]`.
    pub postgres: PostgresConfig,
    /// `[pipeline]`.
    pub pipeline: PipelineConfig,
    /// The topologies to run (from `[topologies]`), their tables resolved to the current
    /// versions (`tally_sinks::clickhouse::topology_schema::current_tables`). All run in one
    /// dataflow over one Kafka read and one dedup.
    pub topologies: Vec<Topology>,
}

/// State every worker shares.
struct Shared {
    settings: PipelineSettings,
    runtime: tokio::runtime::Handle,
    pool: sqlx::PgPool,
    progress: Progress,
    partitions: Vec<i32>,
    /// The lease epoch progress saves are fenced with.
    epoch: i64,
    shutdown: Arc<AtomicBool>,
    /// The first fatal error; raising it stops every worker.
    failure: Arc<Failure>,
    health: Health,
    /// Every partition's watermark mark and read position, published by its worker and combined
    /// by each into one source watermark.
    marks: Mutex<BTreeMap<i32, (Mark, Option<i64>)>>,
    /// Operator counters, shared by every worker so the exported totals are sums.
    counters: OperatorCounters,
    /// Each worker's input time once it starts draining (`u64::MAX` before).
    drained_at: Mutex<Vec<u64>>,
    /// Rows each worker's sink holds (buffered or in flight).
    backlogs: Vec<Arc<AtomicUsize>>,
    /// Operator counts already added to the Prometheus counters (late per topology and window,
    /// duplicates).
    exported: Mutex<Exported>,
}

/// Late counts per (topology, window) and duplicates already exported.
type Exported = (HashMap<(String, String), u64>, u64, u64);

impl Shared {
    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst) || self.failure.is_raised()
    }
}

/// Runs the pipeline until `shutdown` is set or a fatal error occurs. Blocks the calling thread;
/// `runtime` runs the I/O (ClickHouse inserts, PostgreSQL progress). See [`run_with_health`].
pub fn run(
    settings: PipelineSettings,
    runtime: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
) -> Result<(), PipelineError> {
    run_with_health(settings, runtime, shutdown, Health::default())
}

/// [`run`], reporting its state in `health` (what `/healthz` and `/readyz` show).
///
/// Startup checks come first (`crate::startup`): services reachable, schemas migrated, topics
/// present, the pipeline's lease free, no unread messages lost to retention. Then the workers
/// run until `shutdown` is set (`Ok` after the drain) or the first fatal error, which every
/// worker drains for and which is returned. `health` ends in `stopped` or `failed`.
///
/// Errors: see [`PipelineError`]; [`PipelineError::exit_class`] gives the process exit code.
pub fn run_with_health(
    settings: PipelineSettings,
    runtime: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
    health: Health,
) -> Result<(), PipelineError> {
    health.set(PipelineState::Starting);
    let result = run_workers(settings, runtime, shutdown, &health);
    match &result {
        Ok(()) => health.set(PipelineState::Stopped),
        Err(e) => health.fail(e),
    }
    result
}

fn run_workers(
    settings: PipelineSettings,
    runtime: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
    health: &Health,
) -> Result<(), PipelineError> {
    let started = runtime.block_on(crate::startup::check(&settings))?;
    tracing::info!(
        topic = settings.kafka.topic,
        partitions = started.partitions.len(),
        workers = settings.pipeline.workers,
        resume_frontier_ms = started.progress.acked_frontier_ms,
        lease_epoch = started.lease.epoch,
        "pipeline starting"
    );
    let workers = settings.pipeline.workers;
    let failure = Arc::new(Failure::default());
    let shared = Arc::new(Shared {
        settings,
        runtime,
        pool: started.pool.clone(),
        progress: started.progress.clone(),
        partitions: started.partitions.clone(),
        epoch: started.lease.epoch,
        shutdown,
        failure: Arc::clone(&failure),
        health: health.clone(),
        marks: Mutex::new(BTreeMap::new()),
        counters: OperatorCounters::default(),
        drained_at: Mutex::new(vec![u64::MAX; workers]),
        backlogs: (0..workers)
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect(),
        exported: Mutex::new((HashMap::new(), 0, 0)),
    });
    let (stop_lag, lag_stopped) = std::sync::mpsc::channel::<()>();
    let lag = spawn_lag_exporter(Arc::clone(&shared), lag_stopped);
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        worker_main(worker, &shared)
    })
    .map_err(PipelineError::Dataflow)?;
    let mut first_error = None;
    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(panic) => {
                first_error.get_or_insert(PipelineError::Dataflow(panic));
            }
        }
    }
    drop(stop_lag);
    if lag.join().is_err() {
        tracing::warn!("the lag exporter panicked");
    }
    // The lease (and its lock connection) is released here, after the last progress save.
    drop(started);
    match failure.take().or(first_error) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Every 5 s, exports consumer lag from the read positions the workers publish, with its own
/// broker client (broker queries can be slow; they never run on a worker). Ends when `stop`'s
/// sender is dropped.
fn spawn_lag_exporter(
    shared: Arc<Shared>,
    stop: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let consumer: Option<rdkafka::consumer::BaseConsumer> =
            crate::kafka::client_config(&shared.settings.kafka)
                .create()
                .ok();
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            stop.recv_timeout(Duration::from_secs(5))
        {
            let positions: Vec<(i32, i64)> = shared
                .marks
                .lock()
                .map(|m| {
                    m.iter()
                        .filter_map(|(&p, &(_, pos))| Some((p, pos?)))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(c) = &consumer {
                crate::source::export_lag(c, &shared.settings.kafka.topic, &positions);
            }
        }
    })
}

/// One worker thread: [`run_worker`] with panics caught, errors raised for every worker, and
/// the dataflows dropped whatever happened (timely steps a worker until it has none left).
fn worker_main(worker: &mut Worker, shared: &Shared) -> Result<(), PipelineError> {
    let index = worker.index();
    let result =
        catch_unwind(AssertUnwindSafe(|| run_worker(worker, shared))).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(PipelineError::Dataflow(format!(
                "worker {index} panicked (a bug): {message}"
            )))
        });
    for id in worker.installed_dataflows() {
        worker.drop_dataflow(id);
    }
    if let Err(e) = result {
        shared.failure.raise(e);
    }
    Ok(())
}

/// Milliseconds on a monotonic clock (for idleness and intervals).
fn mono_ms(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The dataflow of one worker, and the handles the loop drives it with.
struct Dataflow {
    events: InputHandle<u64, CapacityContainerBuilder<Vec<Read>>>,
    ticks: InputHandle<u64, CapacityContainerBuilder<Vec<()>>>,
    probe: ProbeHandle<u64>,
    id: usize,
}

impl Dataflow {
    /// Builds source → dedup → every topology (raw rows, rollups) → ClickHouse sink → probe.
    fn build(
        worker: &mut Worker,
        topologies: &[Topology],
        grace_ms: u64,
        counters: &OperatorCounters,
        sink: SinkContext,
    ) -> Self {
        let mut events = InputHandle::new();
        let mut ticks = InputHandle::new();
        let probe = ProbeHandle::new();
        let id = worker.next_dataflow_index();
        worker.dataflow::<u64, _, _>(|scope| {
            // The input feeds pipeline (worker-local) operators only. `InputHandle::flush` hands
            // data on without ending the epoch, which activates a pipeline consumer but leaves
            // records parked in an exchange channel's buffers until time advances; the first
            // exchange must therefore sit behind an operator, which flushes after each activation.
            // Each read becomes an observation carrying its raw row; both pass the dedup
            // together, so `events` stores exactly the copies the rollups count.
            let reads = events.to_stream(scope).map(|r: Read| {
                let row = r.event.row(r.ingested, r.partition, r.offset);
                (r.event.observation(r.replayed), (row, r.replayed))
            });
            let out = tally_topologies::build(
                reads,
                ticks.to_stream(scope),
                topologies,
                grace_ms,
                counters,
            );
            let raw = out
                .kept
                .map(|(row, replayed)| SinkRecord::Event(row, replayed));
            let rollups = out.rollups.map(SinkRecord::Rollup);
            clickhouse_sink(raw.concat(rollups), sink).probe_with(&probe);
        });
        Dataflow {
            events,
            ticks,
            probe,
            id,
        }
    }

    fn time(&self) -> u64 {
        *self.events.time()
    }

    /// Moves the inputs to `t` if that is later: data before it can no longer arrive.
    fn advance_to(&mut self, t: u64) {
        if t > self.time() {
            self.events.advance_to(t);
            self.ticks.advance_to(t);
        }
    }

    /// The earliest time not yet acknowledged by ClickHouse; the input time when nothing is
    /// pending.
    fn acked_frontier(&self) -> u64 {
        self.probe
            .with_frontier(|f| f.first().copied().unwrap_or(self.time()))
    }
}

/// Timers of one worker's loop.
struct Cadence {
    tick: Instant,
    commit: Instant,
    lag: Instant,
    /// Last time idle partitions were checked against the broker.
    verified: Option<Instant>,
}

/// What one worker's loop drives.
struct WorkerParts<'a> {
    source: KafkaSource,
    df: Dataflow,
    ctx: SinkContext,
    saver: ProgressSaver,
    windowing: Windowing<'a>,
}

/// One worker: opens its source, builds the dataflow, runs [`read_loop`] until shutdown or a
/// fatal error, then always [`drain`]s, saves progress and drops the dataflow. A fatal error of
/// the loop is raised (stopping the other workers) before the drain.
fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<(), PipelineError> {
    let s = &shared.settings;
    let (index, peers) = (worker.index(), worker.peers());
    let mine: Vec<i32> = shared
        .partitions
        .iter()
        .copied()
        .filter(|p| *p as usize % peers == index)
        .collect();
    let p = &s.pipeline;
    let watermarks = Watermarks::new(&mine, p.max_out_of_orderness_ms, p.idle_timeout_ms, 0)
        .max_clock_skew(p.max_clock_skew_ms);
    let source = KafkaSource::open(&s.kafka, &mine, &shared.progress, watermarks)?;
    let topologies = &s.topologies;
    let ctx = SinkContext {
        writer: ClickHouseWriter::new(&s.clickhouse),
        runtime: shared.runtime.clone(),
        batch_rows: s.clickhouse.batch_rows,
        batch_wait: Duration::from_millis(s.clickhouse.batch_ms),
        flush_all: Rc::new(Cell::new(false)),
        backlog: Arc::clone(&shared.backlogs[index]),
        failure: Arc::clone(&shared.failure),
        activator: Rc::new(RefCell::new(None)),
        ledger: LateLedger {
            pool: shared.pool.clone(),
            pipeline: p.name.clone(),
            grace_ms: p.grace_ms,
        },
        tables: Rc::new(crate::sink::Tables::of(topologies)),
    };
    let mut df = Dataflow::build(
        worker,
        topologies,
        p.grace_ms,
        &shared.counters,
        ctx.clone(),
    );
    // Resume one tick before the saved frontier: windows closing exactly at it are not yet
    // acknowledged as final, so they must still be open.
    df.advance_to(
        shared
            .progress
            .acked_frontier_ms
            .unwrap_or(0)
            .saturating_sub(1),
    );
    let saver = ProgressSaver::new(
        shared.pool.clone(),
        shared.runtime.clone(),
        &p.name,
        &s.kafka.topic,
        shared.epoch,
    );
    let mut parts = WorkerParts {
        source,
        df,
        ctx,
        saver,
        windowing: Windowing {
            topologies,
            grace_ms: p.grace_ms,
            retention_days: s.clickhouse.retention_days,
        },
    };
    shared.health.set(PipelineState::Running);
    if let Err(e) = read_loop(worker, shared, &mut parts) {
        shared.failure.raise(e);
    }
    shared.health.set(PipelineState::Draining);
    let timeout = Duration::from_millis(p.drain_timeout_ms);
    drain(worker, shared, index, &mut parts.df, &parts.ctx, timeout);
    parts
        .source
        .flush_dead_letters(Duration::from_secs(5).min(timeout));
    let frontier = parts.df.acked_frontier();
    let saved = parts.saver.finish(&mut parts.source, frontier, timeout);
    // Open windows must not be closed by shutting the inputs: drop the dataflow instead.
    worker.drop_dataflow(parts.df.id);
    tracing::info!(worker = index, frontier_ms = frontier, "worker stopped");
    saved
}

/// Read, advance the watermark, tick, step, save progress; until shutdown or a fatal error
/// (returned, or raised by another worker or a sink task).
fn read_loop(
    worker: &mut Worker,
    shared: &Shared,
    parts: &mut WorkerParts<'_>,
) -> Result<(), PipelineError> {
    let p = &shared.settings.pipeline;
    let WorkerParts {
        source,
        df,
        ctx,
        saver,
        windowing,
    } = parts;
    let origin = Instant::now();
    let mut cadence = Cadence {
        tick: origin,
        commit: origin,
        lag: origin,
        verified: None,
    };
    while !shared.stopping() {
        let mut read = 0;
        if ctx.backlog.load(Ordering::Relaxed) < p.max_pending_rows && !source.dead_letters_full() {
            let now = mono_ms(origin);
            let time = df.time();
            read = source.poll(p.max_poll_records, time, now, windowing, |r| {
                df.events.send(r)
            })?;
            if read > 0 {
                df.events.flush();
            }
        } else {
            source.service_dead_letters()?;
        }
        let now = mono_ms(origin);
        if let Some(wm) = global_watermark(shared, source, now, df.time(), &mut cadence.verified) {
            df.advance_to(wm);
        }
        if cadence.tick.elapsed() >= Duration::from_millis(p.provisional_interval_ms) {
            df.ticks.send(());
            df.ticks.flush();
            cadence.tick = Instant::now();
        }
        let park = if read == 0 {
            Duration::from_millis(10)
        } else {
            Duration::ZERO
        };
        worker.step_or_park(Some(park));
        saver.poll(source)?;
        if cadence.commit.elapsed() >= Duration::from_millis(p.commit_interval_ms) {
            saver.start(source, df.acked_frontier());
            export_metrics(shared);
            cadence.commit = Instant::now();
        }
        if cadence.lag.elapsed() >= Duration::from_secs(5) {
            source.export_watermarks();
            cadence.lag = Instant::now();
        }
    }
    Ok(())
}

/// No more reads: write whatever the sink buffers and wait until ClickHouse acknowledged it
/// all, for at most `timeout` (`pipeline.drain_timeout_ms`); progress is then saved up to what
/// it did acknowledge and the rest is read again after a restart. After a fatal error the wait
/// ends as soon as this worker's sink holds nothing in flight: the failed rows (and a failed
/// worker's) can never be acknowledged, and the acknowledged frontier stays before them.
fn drain(
    worker: &mut Worker,
    shared: &Shared,
    index: usize,
    df: &mut Dataflow,
    ctx: &SinkContext,
    timeout: Duration,
) {
    ctx.flush_all.set(true);
    df.events.flush();
    if let Ok(mut d) = shared.drained_at.lock() {
        d[index] = df.time();
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(a) = ctx.activator.borrow().as_ref() {
            a.activate();
        }
        worker.step_or_park(Some(Duration::from_millis(10)));
        let idle = ctx.backlog.load(Ordering::Relaxed) == 0;
        if idle && shared.failure.is_raised() {
            return;
        }
        // The acknowledged frontier can reach the slowest worker's input time, not this one's.
        let slowest = shared
            .drained_at
            .lock()
            .ok()
            .and_then(|d| d.iter().min().copied())
            .unwrap_or(0);
        if idle && df.acked_frontier() >= slowest.min(df.time()) {
            return;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "clickhouse did not acknowledge everything within pipeline.drain_timeout_ms; \
                 progress saved up to what it did (the rest is read again after a restart)"
            );
            return;
        }
    }
}

/// How often the watermark may pass idle partitions, each time after asking the broker.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Publishes this worker's marks and combines every partition's into the source watermark.
///
/// When the result passes idle partitions (see [`combine`]) and would advance the input, the
/// broker is asked first whether those partitions really have nothing unread; one that has
/// caps the watermark at its own (or holds it, before its first event). The check runs at most
/// every [`IDLE_CHECK_INTERVAL`]; in between, the watermark waits rather than trusting an old
/// answer, since a burst after a quiet spell is exactly when a stale answer would be wrong.
fn global_watermark(
    shared: &Shared,
    source: &KafkaSource,
    now_ms: u64,
    current: u64,
    last_check: &mut Option<Instant>,
) -> Option<u64> {
    let (combined, marks) = {
        let mut all = shared.marks.lock().ok()?;
        for (p, mark, position) in source.marks(now_ms) {
            all.insert(p, (mark, position));
        }
        let marks: BTreeMap<i32, Mark> = all.iter().map(|(&p, &(m, _))| (p, m)).collect();
        (combine(&marks), all.clone())
    };
    let may_check = last_check.is_none_or(|t| t.elapsed() >= IDLE_CHECK_INTERVAL);
    let (watermark, checked) = past_idle(&combined, &marks, current, may_check, |p, position| {
        source.has_unread(p, position)
    });
    if checked {
        *last_check = Some(Instant::now());
    }
    watermark
}

/// Adds what the operator counters gained since the last export to the Prometheus counters, and
/// sets the backlog gauge to the sum over workers.
fn export_metrics(shared: &Shared) {
    let m = Metrics::get();
    let c = &shared.counters;
    if let Ok(mut exported) = shared.exported.lock() {
        let (late, duplicates, folded) = &mut *exported;
        m.folded.inc_by(c.folded().saturating_sub(*folded));
        *folded = c.folded();
        // Every (topology, window) series exists from the first export, at 0 until an event
        // is late for it (so a rate or an alert has a series to read).
        for t in &shared.settings.topologies {
            let names = t.windows.iter().map(|w| w.name.as_str());
            let sessions = t.sessions.is_some().then_some("sessions");
            for window in names.chain(sessions) {
                m.late.with_label_values(&[t.name.as_str(), window]);
            }
        }
        let sessions = c
            .late_session_counts()
            .into_iter()
            .map(|(topology, n)| ((topology, "sessions".to_owned()), n));
        for ((topology, window), now) in c.late_counts().into_iter().chain(sessions) {
            let before = late.entry((topology.clone(), window.clone())).or_insert(0);
            m.late
                .with_label_values(&[topology.as_str(), window.as_str()])
                .inc_by(now.saturating_sub(*before));
            *before = now;
        }
        m.duplicates.inc_by(c.duplicates() - *duplicates);
        *duplicates = c.duplicates();
    }
    let backlog: usize = shared
        .backlogs
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .sum();
    m.sink_backlog
        .set(i64::try_from(backlog).unwrap_or(i64::MAX));
}
