//! The pipeline: one timely worker per thread, each reading its share of the topic's partitions.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tally_operators::{OperatorCounters, RollupSpec, Window};
use tally_sinks::clickhouse::{ClickHouseConfig, ClickHouseWriter};
use tally_sinks::postgres::{self, PartitionProgress, PostgresConfig, Progress};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::kafka::{client_config, KafkaConfig};
use crate::metrics::Metrics;
use crate::sink::{clickhouse_sink, SinkContext, SinkRecord};
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
}

/// State every worker shares.
struct Shared {
    settings: PipelineSettings,
    runtime: tokio::runtime::Handle,
    pool: sqlx::PgPool,
    progress: Progress,
    partitions: Vec<i32>,
    shutdown: Arc<AtomicBool>,
    fatal: Arc<Mutex<Option<String>>>,
    /// Every partition's watermark mark and read position, published by its worker and combined
    /// by each into one source watermark.
    marks: Mutex<BTreeMap<i32, (Mark, Option<i64>)>>,
    /// Operator counters, shared by every worker so the exported totals are sums.
    counters: OperatorCounters,
    /// Each worker's input time once it starts draining (`u64::MAX` before).
    drained_at: Mutex<Vec<u64>>,
    /// Rows each worker's sink holds (buffered or in flight).
    backlogs: Vec<Arc<AtomicUsize>>,
    /// Operator counts already added to the Prometheus counters (late per window, duplicates).
    exported: Mutex<([u64; 3], u64)>,
}

/// Runs the pipeline until `shutdown` is set or a fatal error occurs. Blocks the calling thread;
/// `runtime` runs the I/O (ClickHouse inserts, PostgreSQL progress).
pub fn run(
    settings: PipelineSettings,
    runtime: tokio::runtime::Handle,
    shutdown: Arc<AtomicBool>,
) -> Result<(), PipelineError> {
    let pool = runtime.block_on(postgres::connect(&settings.postgres))?;
    let progress = runtime.block_on(postgres::load_progress(&pool, &settings.pipeline.name))?;
    let partitions = topic_partitions(&settings.kafka)?;
    tracing::info!(
        topic = settings.kafka.topic,
        partitions = partitions.len(),
        workers = settings.pipeline.workers,
        resume_frontier_ms = progress.acked_frontier_ms,
        "pipeline starting"
    );
    runtime.spawn(retention_loop(
        settings.clickhouse.clone(),
        settings.pipeline.retention_check_secs,
    ));
    let workers = settings.pipeline.workers;
    let shared = Arc::new(Shared {
        settings,
        runtime,
        pool,
        progress,
        partitions,
        shutdown,
        fatal: Arc::new(Mutex::new(None)),
        marks: Mutex::new(BTreeMap::new()),
        counters: OperatorCounters::default(),
        drained_at: Mutex::new(vec![u64::MAX; workers]),
        backlogs: (0..workers)
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect(),
        exported: Mutex::new(([0; 3], 0)),
    });
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let result = run_worker(worker, &shared);
        if result.is_err() {
            // One worker failing stops them all; the others drain and save what is acknowledged.
            shared.shutdown.store(true, Ordering::SeqCst);
        }
        result
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
    first_error.map_or(Ok(()), Err)
}

fn topic_partitions(config: &KafkaConfig) -> Result<Vec<i32>, PipelineError> {
    let consumer: BaseConsumer = client_config(config)
        .create()
        .map_err(|e| PipelineError::kafka("creating a metadata client", e))?;
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), Duration::from_secs(10))
        .map_err(|e| {
            PipelineError::kafka(format!("reading metadata of topic {}", config.topic), e)
        })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == config.topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(PipelineError::Config {
            field: "kafka.topic",
            reason: format!(
                "topic `{}` does not exist; run `tally migrate` to create it",
                config.topic
            ),
        });
    }
    Ok(partitions)
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
    /// Builds source → (raw rows, dedup → rollups) → ClickHouse sink → probe.
    fn build(
        worker: &mut Worker,
        spec: &RollupSpec,
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
            let reads = events.to_stream(scope);
            let observations = reads.clone().map(|r: Read| r.event.observation(r.replayed));
            let raw = reads
                .map(|r: Read| SinkRecord::Event(r.event.row(r.ingested, r.partition, r.offset)));
            let rollups = tally_topologies::product_analytics(
                observations,
                ticks.to_stream(scope),
                spec,
                counters,
            )
            .map(SinkRecord::Rollup);
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

/// Timers and the last saved position of one worker's loop.
struct Cadence {
    tick: Instant,
    commit: Instant,
    lag: Instant,
    saved: Option<(u64, Vec<PartitionProgress>)>,
    /// Last time idle partitions were checked against the broker.
    verified: Option<Instant>,
}

/// The per-worker loop: read, advance the watermark, tick, step, save progress. On shutdown it
/// drains in a fixed order (see the crate docs).
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
    let watermarks = Watermarks::new(&mine, p.max_out_of_orderness_ms, p.idle_timeout_ms, 0);
    let mut source = KafkaSource::open(&s.kafka, &mine, &shared.progress, watermarks)?;
    let spec = RollupSpec {
        windows: Window::ALL.to_vec(),
        grace_ms: p.grace_ms,
        per_event_type: true,
    };
    let ctx = SinkContext {
        writer: ClickHouseWriter::new(&s.clickhouse),
        runtime: shared.runtime.clone(),
        batch_rows: s.clickhouse.batch_rows,
        batch_wait: Duration::from_millis(s.clickhouse.batch_ms),
        flush_all: Rc::new(Cell::new(false)),
        backlog: Arc::clone(&shared.backlogs[index]),
        fatal: Arc::clone(&shared.fatal),
        activator: Rc::new(RefCell::new(None)),
    };
    let mut df = Dataflow::build(worker, &spec, &shared.counters, ctx.clone());
    // Resume one tick before the saved frontier: windows closing exactly at it are not yet
    // acknowledged as final, so they must still be open.
    df.advance_to(
        shared
            .progress
            .acked_frontier_ms
            .unwrap_or(0)
            .saturating_sub(1),
    );

    let origin = Instant::now();
    let windowing = Windowing {
        windows: &spec.windows,
        grace_ms: p.grace_ms,
        retention_days: s.clickhouse.retention_days,
    };
    let mut cadence = Cadence {
        tick: origin,
        commit: origin,
        lag: origin,
        saved: None,
        verified: None,
    };
    while !shared.shutdown.load(Ordering::SeqCst) {
        check_fatal(shared)?;
        let mut read = 0;
        if ctx.backlog.load(Ordering::Relaxed) < p.max_pending_rows {
            let now = mono_ms(origin);
            let time = df.time();
            read = source.poll(p.max_poll_records, time, now, &windowing, |r| {
                df.events.send(r)
            })?;
            if read > 0 {
                df.events.flush();
            }
        }
        let now = mono_ms(origin);
        if let Some(wm) = global_watermark(shared, &source, now, df.time(), &mut cadence.verified) {
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
        if cadence.commit.elapsed() >= Duration::from_millis(p.commit_interval_ms) {
            save_progress(shared, &mut source, df.acked_frontier(), &mut cadence.saved);
            export_metrics(shared);
            cadence.commit = Instant::now();
        }
        if cadence.lag.elapsed() >= Duration::from_secs(5) {
            source.export_lag();
            cadence.lag = Instant::now();
        }
    }
    drain(worker, shared, index, &mut df, &ctx)?;
    let frontier = df.acked_frontier();
    save_progress(shared, &mut source, frontier, &mut cadence.saved);
    // Open windows must not be closed by shutting the inputs: drop the dataflow instead.
    worker.drop_dataflow(df.id);
    tracing::info!(worker = index, frontier_ms = frontier, "worker stopped");
    Ok(())
}

/// No more reads: write whatever the sink buffers and wait until ClickHouse acknowledged it all
/// (up to 120 s; progress is then saved up to what it did acknowledge).
fn drain(
    worker: &mut Worker,
    shared: &Shared,
    index: usize,
    df: &mut Dataflow,
    ctx: &SinkContext,
) -> Result<(), PipelineError> {
    ctx.flush_all.set(true);
    df.events.flush();
    if let Ok(mut d) = shared.drained_at.lock() {
        d[index] = df.time();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(a) = ctx.activator.borrow().as_ref() {
            a.activate();
        }
        worker.step_or_park(Some(Duration::from_millis(10)));
        check_fatal(shared)?;
        // The acknowledged frontier can reach the slowest worker's input time, not this one's.
        let slowest = shared
            .drained_at
            .lock()
            .ok()
            .and_then(|d| d.iter().min().copied())
            .unwrap_or(0);
        if df.acked_frontier() >= slowest.min(df.time()) && ctx.backlog.load(Ordering::Relaxed) == 0
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            tracing::warn!("clickhouse did not acknowledge everything within 120 s; progress saved up to what it did");
            return Ok(());
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

fn check_fatal(shared: &Shared) -> Result<(), PipelineError> {
    let fatal = shared.fatal.lock().ok().and_then(|mut f| f.take());
    match fatal {
        Some(reason) => Err(PipelineError::Dataflow(format!("sink failed: {reason}"))),
        None => Ok(()),
    }
}

/// Saves offsets and the acknowledged frontier to PostgreSQL (in one transaction), then mirrors
/// the offsets to Kafka. Skipped when nothing changed since the last save. A failed save loses
/// nothing (it only means more replay after a restart): it is logged and tried again later.
fn save_progress(
    shared: &Shared,
    source: &mut KafkaSource,
    frontier: u64,
    saved: &mut Option<(u64, Vec<PartitionProgress>)>,
) {
    let s = &shared.settings;
    let offsets = source.committable(frontier);
    if saved
        .as_ref()
        .is_some_and(|(f, o)| *f == frontier && *o == offsets)
        || (frontier == 0 && offsets.is_empty())
    {
        return;
    }
    let save = postgres::save_progress(
        &shared.pool,
        &s.pipeline.name,
        &s.kafka.topic,
        &offsets,
        frontier,
    );
    if let Err(e) = shared.runtime.block_on(save) {
        tracing::warn!(error = %e, "saving progress failed; retrying at the next interval");
        return;
    }
    source.commit_to_kafka(&offsets);
    Metrics::get()
        .acked_frontier
        .set(i64::try_from(frontier).unwrap_or(i64::MAX));
    *saved = Some((frontier, offsets));
}

/// Adds what the operator counters gained since the last export to the Prometheus counters, and
/// sets the backlog gauge to the sum over workers.
fn export_metrics(shared: &Shared) {
    let m = Metrics::get();
    let c = &shared.counters;
    if let Ok(mut exported) = shared.exported.lock() {
        let (late, duplicates) = &mut *exported;
        for w in Window::ALL {
            let now = c.late(w);
            m.late
                .with_label_values(&[w.label()])
                .inc_by(now - late[w.index()]);
            late[w.index()] = now;
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

/// On servers without TTL, drops monthly partitions past retention every `every_secs`.
async fn retention_loop(config: ClickHouseConfig, every_secs: u64) {
    let client = tally_sinks::clickhouse::connect(&config, false);
    loop {
        let show = format!("SHOW CREATE TABLE {}.events", config.database);
        match client.query(&show).fetch_one::<String>().await {
            Ok(ddl) if ddl.contains("TTL") => return,
            Ok(_) => {
                let now = chrono::Utc::now().timestamp();
                match tally_sinks::clickhouse::drop_expired_partitions(&client, &config, now).await
                {
                    Ok(dropped) if !dropped.is_empty() => {
                        tracing::info!(?dropped, "dropped expired partitions")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention check failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention check could not read the events table"),
        }
        tokio::time::sleep(Duration::from_secs(every_secs)).await;
    }
}
