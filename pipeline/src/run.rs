//! The pipeline: one timely worker per thread, each reading its share of the topic's partitions.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tally_operators::{settled_after, OperatorCounters, RollupSpec, Window};
use tally_sinks::clickhouse::{ClickHouseConfig, ClickHouseWriter};
use tally_sinks::postgres::{self, PostgresConfig, Progress};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::event::{id_from_position, Clock, Event};
use crate::kafka::{client_config, producer_config, KafkaConfig};
use crate::metrics::Metrics;
use crate::offsets::PendingOffsets;
use crate::sink::{clickhouse_sink, SinkContext, SinkRecord};
use crate::watermark::{combine, Summary, Watermarks};
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
    /// Each worker's watermark summary, combined into one source watermark.
    marks: Mutex<Vec<Summary>>,
    /// Operator counters, shared by every worker so the exported totals are sums.
    counters: OperatorCounters,
    /// Each worker's input time once it starts draining (`u64::MAX` before).
    drained_at: Mutex<Vec<u64>>,
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
        marks: Mutex::new(vec![Summary::default(); workers]),
        counters: OperatorCounters::default(),
        drained_at: Mutex::new(vec![u64::MAX; workers]),
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

/// The per-worker loop. See the module docs of `crate` for the drain order.
fn run_worker(worker: &mut Worker, shared: &Shared) -> Result<(), PipelineError> {
    let s = &shared.settings;
    let (index, peers) = (worker.index(), worker.peers());
    let mine: Vec<i32> = shared
        .partitions
        .iter()
        .copied()
        .filter(|p| *p as usize % peers == index)
        .collect();
    let consumer = assign_consumer(&s.kafka, &mine, &shared.progress)?;
    let dlq: BaseProducer = producer_config(&s.kafka)
        .create()
        .map_err(|e| PipelineError::kafka("creating the dead-letter producer", e))?;

    let spec = RollupSpec {
        windows: Window::ALL.to_vec(),
        grace_ms: s.pipeline.grace_ms,
        per_event_type: true,
    };
    let counters = shared.counters.clone();
    let ctx = SinkContext {
        writer: ClickHouseWriter::new(&s.clickhouse),
        runtime: shared.runtime.clone(),
        batch_rows: s.clickhouse.batch_rows,
        batch_wait: Duration::from_millis(s.clickhouse.batch_ms),
        flush_all: Rc::new(Cell::new(false)),
        backlog: Arc::new(AtomicUsize::new(0)),
        fatal: Arc::clone(&shared.fatal),
        activator: Rc::new(RefCell::new(None)),
    };
    let mut events_in = InputHandle::new();
    let mut ticks_in = InputHandle::new();
    let probe = ProbeHandle::new();
    let dataflow = worker.next_dataflow_index();
    let sink_ctx = ctx.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        // The input feeds pipeline (worker-local) operators only. `InputHandle::flush` hands data
        // on without ending the epoch, which activates a pipeline consumer but leaves records
        // parked in an exchange channel's buffers until time advances; the first exchange must
        // therefore sit behind an operator, which flushes its channels after every activation.
        let reads = events_in.to_stream(scope);
        let observations = reads.clone().map(|r: Read| r.event.observation());
        let raw =
            reads.map(|r: Read| SinkRecord::Event(r.event.row(r.ingested, r.partition, r.offset)));
        let ticks = ticks_in.to_stream(scope);
        let rollups = tally_topologies::product_analytics(observations, ticks, &spec, &counters)
            .map(SinkRecord::Rollup);
        clickhouse_sink(raw.concat(rollups), sink_ctx).probe_with(&probe);
    });

    // Resume one tick before the saved frontier: windows closing exactly at it are not yet
    // acknowledged as final, so they must still be open.
    let resume = shared
        .progress
        .acked_frontier_ms
        .unwrap_or(0)
        .saturating_sub(1);
    events_in.advance_to(resume);
    ticks_in.advance_to(resume);

    let origin = Instant::now();
    let mut source = Source {
        watermarks: Watermarks::new(
            &mine,
            s.pipeline.max_out_of_orderness_ms,
            s.pipeline.idle_timeout_ms,
            0,
        ),
        owed: PendingOffsets::default(),
        next_offsets: BTreeMap::new(),
        dlq_written: Vec::new(),
    };
    let mut last_tick = Instant::now();
    let mut last_commit = Instant::now();
    let mut last_lag = Instant::now();
    let mut saved_frontier = 0u64;
    let metrics = Metrics::get();

    while !shared.shutdown.load(Ordering::SeqCst) {
        check_fatal(shared)?;
        let mut read = 0usize;
        if ctx.backlog.load(Ordering::Relaxed) < s.pipeline.max_pending_rows {
            while read < s.pipeline.max_poll_records {
                match consumer.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(KafkaError::PartitionEOF(p))) => source.watermarks.end_of_partition(p),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consumer error");
                        break;
                    }
                    Some(Ok(msg)) => {
                        read += 1;
                        let read_time = *events_in.time();
                        let (p, o) = (msg.partition(), msg.offset());
                        source.next_offsets.insert(p, o + 1);
                        let now = mono_ms(origin);
                        match parse(&s.kafka.topic, &msg, s.clickhouse.retention_days) {
                            Ok(event) => {
                                let settle = settled_after(
                                    &spec.windows,
                                    event.ts_ms,
                                    read_time,
                                    spec.grace_ms,
                                );
                                let ingested =
                                    u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
                                source.owed.read(p, o, Some(settle));
                                source.watermarks.observe(p, event.ts_ms, now);
                                events_in.send(Read {
                                    event,
                                    partition: p,
                                    offset: o,
                                    ingested,
                                });
                            }
                            Err(reason) => {
                                send_to_dlq(&dlq, &s.kafka, &msg, &reason)?;
                                metrics.dlq.with_label_values(&[reason.label()]).inc();
                                source.dlq_written.push((p, o));
                                source.watermarks.touch(p, now);
                            }
                        }
                    }
                }
            }
            metrics.events_read.inc_by(read as u64);
            if read > 0 {
                // Input handles buffer until flushed; without this, data waits for the watermark.
                events_in.flush();
            }
        }
        if !source.dlq_written.is_empty() {
            // Offsets of dead-lettered messages are settled once the DLQ write is acknowledged.
            dlq.flush(Duration::from_millis(s.kafka.produce_timeout_ms))
                .map_err(|e| PipelineError::kafka("writing to the dead-letter topic", e))?;
            for (p, o) in source.dlq_written.drain(..) {
                source.owed.read(p, o, None);
            }
        }
        if let Some(wm) =
            global_watermark(shared, index, source.watermarks.summary(mono_ms(origin)))
        {
            if wm > *events_in.time() {
                events_in.advance_to(wm);
                ticks_in.advance_to(wm);
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(s.pipeline.provisional_interval_ms) {
            ticks_in.send(());
            ticks_in.flush();
            last_tick = Instant::now();
        }
        worker.step_or_park(Some(if read == 0 {
            Duration::from_millis(10)
        } else {
            Duration::ZERO
        }));
        if last_commit.elapsed() >= Duration::from_millis(s.pipeline.commit_interval_ms) {
            let frontier = acked_frontier(&probe, *events_in.time());
            if frontier > saved_frontier || index == 0 {
                save_progress(shared, &mut source, &consumer, frontier)?;
                saved_frontier = frontier;
            }
            last_commit = Instant::now();
            export_counters(&counters, ctx.backlog.load(Ordering::Relaxed), frontier);
        }
        if last_lag.elapsed() >= Duration::from_secs(5) {
            export_lag(&consumer, &s.kafka.topic, &source);
            last_lag = Instant::now();
        }
    }

    // Drain: no more reads; write everything buffered; wait for ClickHouse; save progress.
    ctx.flush_all.set(true);
    events_in.flush();
    if let Ok(mut d) = shared.drained_at.lock() {
        d[index] = *events_in.time();
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
        let caught_up = acked_frontier(&probe, *events_in.time()) >= slowest.min(*events_in.time());
        if caught_up && ctx.backlog.load(Ordering::Relaxed) == 0 {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!("clickhouse did not acknowledge everything within 120 s; progress saved up to what it did");
            break;
        }
    }
    let frontier = acked_frontier(&probe, *events_in.time());
    save_progress(shared, &mut source, &consumer, frontier)?;
    // Open windows must not be closed by shutting the inputs: drop the dataflow instead.
    worker.drop_dataflow(dataflow);
    tracing::info!(worker = index, frontier_ms = frontier, "worker stopped");
    Ok(())
}

/// One valid event as read, with where it came from.
#[derive(Clone)]
struct Read {
    event: Event,
    partition: i32,
    offset: i64,
    ingested: u32,
}

struct Source {
    watermarks: Watermarks,
    owed: PendingOffsets,
    next_offsets: BTreeMap<i32, i64>,
    dlq_written: Vec<(i32, i64)>,
}

/// Publishes this worker's summary and combines every worker's (in-process workers share them).
fn global_watermark(shared: &Shared, index: usize, mine: Summary) -> Option<u64> {
    let mut marks = shared.marks.lock().ok()?;
    marks[index] = mine;
    combine(&marks)
}

fn check_fatal(shared: &Shared) -> Result<(), PipelineError> {
    let fatal = shared.fatal.lock().ok().and_then(|mut f| f.take());
    match fatal {
        Some(reason) => Err(PipelineError::Dataflow(format!("sink failed: {reason}"))),
        None => Ok(()),
    }
}

/// Routes librdkafka's own reports to tracing; end-of-partition is expected (it drives
/// idleness), not an error.
struct SourceContext;

impl rdkafka::ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SourceContext {}

type SourceConsumer = BaseConsumer<SourceContext>;

fn assign_consumer(
    config: &KafkaConfig,
    mine: &[i32],
    progress: &Progress,
) -> Result<SourceConsumer, PipelineError> {
    let consumer: SourceConsumer = client_config(config)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(SourceContext)
        .map_err(|e| PipelineError::kafka("creating the consumer", e))?;
    let mut tpl = TopicPartitionList::new();
    for &p in mine {
        // Progress saved in PostgreSQL is the source of truth; without it, start from the
        // beginning (Kafka's committed offsets lag behind and carry no frontier).
        let offset = progress
            .offsets
            .get(&(config.topic.clone(), p))
            .map_or(Offset::Beginning, |&o| Offset::Offset(o));
        tpl.add_partition_offset(&config.topic, p, offset)
            .map_err(|e| PipelineError::kafka("building the assignment", e))?;
    }
    consumer
        .assign(&tpl)
        .map_err(|e| PipelineError::kafka("assigning partitions", e))?;
    Ok(consumer)
}

fn parse(
    topic: &str,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    retention_days: u32,
) -> Result<Event, crate::event::Invalid> {
    let bytes = msg.payload().unwrap_or_default();
    Event::parse(bytes, Clock::wall(retention_days), || {
        id_from_position(topic, msg.partition(), msg.offset())
    })
}

fn send_to_dlq(
    dlq: &BaseProducer,
    config: &KafkaConfig,
    msg: &rdkafka::message::BorrowedMessage<'_>,
    reason: &crate::event::Invalid,
) -> Result<(), PipelineError> {
    let reason = reason.to_string();
    let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "tally.dlq.reason",
            value: Some(reason.as_bytes()),
        })
        .insert(Header {
            key: "tally.dlq.source.partition",
            value: Some(partition.as_bytes()),
        })
        .insert(Header {
            key: "tally.dlq.source.offset",
            value: Some(offset.as_bytes()),
        });
    let payload = msg.payload().unwrap_or_default();
    let mut record = BaseRecord::<[u8], [u8]>::to(&config.dlq_topic)
        .payload(payload)
        .headers(headers);
    if let Some(key) = msg.key() {
        record = record.key(key);
    }
    loop {
        match dlq.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                dlq.poll(Duration::from_millis(100));
            }
            Err((e, _)) => return Err(PipelineError::kafka("writing to the dead-letter topic", e)),
        }
    }
}

/// The earliest time not yet acknowledged by ClickHouse; `current` when nothing is pending.
fn acked_frontier(probe: &ProbeHandle<u64>, current: u64) -> u64 {
    probe.with_frontier(|f| f.first().copied().unwrap_or(current))
}

fn save_progress(
    shared: &Shared,
    source: &mut Source,
    consumer: &SourceConsumer,
    frontier: u64,
) -> Result<(), PipelineError> {
    let s = &shared.settings;
    let offsets = source.owed.committable(frontier);
    if frontier == 0 && offsets.is_empty() {
        return Ok(());
    }
    let save = postgres::save_progress(
        &shared.pool,
        &s.pipeline.name,
        &s.kafka.topic,
        &offsets,
        frontier,
    );
    if let Err(e) = shared.runtime.block_on(save) {
        // Progress is only a resume point: failing to save it loses nothing, it means more
        // replay after a restart. Keep running and try again at the next interval.
        tracing::warn!(error = %e, "saving progress failed");
        return Ok(());
    }
    // Kafka's committed offsets follow PostgreSQL's, for lag tools; they are never read back.
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in &offsets {
        let _ = tpl.add_partition_offset(&s.kafka.topic, p, Offset::Offset(o));
    }
    if tpl.count() > 0 {
        if let Err(e) = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
            tracing::debug!(error = %e, "kafka offset commit failed");
        }
    }
    Metrics::get()
        .acked_frontier
        .set(i64::try_from(frontier).unwrap_or(i64::MAX));
    Ok(())
}

fn export_counters(counters: &OperatorCounters, backlog: usize, _frontier: u64) {
    let m = Metrics::get();
    for w in Window::ALL {
        m.late
            .with_label_values(&[w.label()])
            .set(i64::try_from(counters.late(w)).unwrap_or(i64::MAX));
    }
    m.duplicates
        .set(i64::try_from(counters.duplicates()).unwrap_or(i64::MAX));
    m.sink_backlog
        .set(i64::try_from(backlog).unwrap_or(i64::MAX));
}

fn export_lag(consumer: &SourceConsumer, topic: &str, source: &Source) {
    let m = Metrics::get();
    for (&p, &next) in &source.next_offsets {
        if let Ok((_, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(1)) {
            m.lag
                .with_label_values(&[&p.to_string()])
                .set((high - next).max(0));
        }
        if let Some(wm) = source.watermarks.partition(p) {
            m.watermark
                .with_label_values(&[&p.to_string()])
                .set(i64::try_from(wm).unwrap_or(i64::MAX));
        }
    }
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
