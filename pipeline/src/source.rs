//! The Kafka source of one worker: its partitions, their watermarks, what is still owed to
//! ClickHouse, and the dead-letter topic for messages that are not valid events.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tally_operators::settled_after;
use tally_sinks::postgres::{PartitionProgress, Progress};

use crate::dead_letter::DeadLetters;
use crate::event::{id_from_position, Clock, Event, Invalid};
use crate::kafka::{client_config, KafkaConfig};
use crate::metrics::Metrics;
use crate::offsets::PendingOffsets;
use crate::watermark::{Mark, Watermarks};
use crate::PipelineError;

/// One valid event as read, with where it came from.
#[derive(Clone)]
pub struct Read {
    /// The event.
    pub event: Event,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
    /// When it was read, seconds since the epoch.
    pub ingested: u32,
    /// Whether it was read before a restart too.
    pub replayed: bool,
}

/// What decides an event's settle time (see `tally_operators::settled_after`).
pub struct Windowing<'a> {
    /// The topologies the pipeline runs (their windows and sessions decide how long an event
    /// is owed).
    pub topologies: &'a [tally_core::Topology],
    /// Grace period.
    pub grace_ms: u64,
    /// Retention, days (older events are dead-lettered).
    pub retention_days: u32,
}

/// Routes librdkafka's own reports to tracing; end-of-partition is expected (it drives
/// idleness), not an error.
pub struct SourceContext;

impl rdkafka::ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(%error, reason, "kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SourceContext {}

/// A worker's share of the topic.
pub struct KafkaSource {
    config: KafkaConfig,
    consumer: BaseConsumer<SourceContext>,
    dlq: DeadLetters,
    /// Per-partition event-time watermarks.
    pub watermarks: Watermarks,
    owed: PendingOffsets,
    next_offsets: BTreeMap<i32, i64>,
    replay_until: HashMap<i32, i64>,
    /// Per partition: invalid messages below this offset were dead-lettered before a stop.
    dlq_until: HashMap<i32, i64>,
    start_offsets: HashMap<i32, i64>,
}

impl KafkaSource {
    /// Assigns `partitions` at the offsets saved in `progress` (the beginning where none are:
    /// Kafka's committed offsets carry no frontier, so they are never resumed from).
    pub fn open(
        config: &KafkaConfig,
        partitions: &[i32],
        progress: &Progress,
        watermarks: Watermarks,
    ) -> Result<Self, PipelineError> {
        let consumer: BaseConsumer<SourceContext> = client_config(config)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(SourceContext)
            .map_err(|e| PipelineError::kafka("creating the consumer", e))?;
        let mut tpl = TopicPartitionList::new();
        let mut replay_until = HashMap::new();
        let mut dlq_until = HashMap::new();
        let mut start_offsets = HashMap::new();
        for &p in partitions {
            let saved = progress.offsets.get(&(config.topic.clone(), p));
            let offset = saved.map_or(Offset::Beginning, |s| Offset::Offset(s.next_offset));
            replay_until.insert(p, saved.map_or(0, |s| s.read_until));
            dlq_until.insert(p, saved.map_or(0, |s| s.dlq_until));
            if let Some(s) = saved {
                start_offsets.insert(p, s.next_offset);
            }
            tpl.add_partition_offset(&config.topic, p, offset)
                .map_err(|e| PipelineError::kafka("building the assignment", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| PipelineError::kafka("assigning partitions", e))?;
        let dlq = DeadLetters::new(config)?;
        Ok(KafkaSource {
            config: config.clone(),
            consumer,
            dlq,
            watermarks,
            owed: PendingOffsets::default(),
            next_offsets: BTreeMap::new(),
            replay_until,
            dlq_until,
            start_offsets,
        })
    }

    /// Reads up to `max` messages at dataflow time `read_time` (the current watermark), hands
    /// each valid event to `emit` and queues the rest for the dead-letter topic (see
    /// [`crate::dead_letter`]; never blocks on it). `now_ms` is the monotonic clock for
    /// idleness. Returns how many messages were read.
    ///
    /// Errors: only what [`DeadLetters::service`] returns (an unusable DLQ topic limit).
    pub fn poll(
        &mut self,
        max: usize,
        read_time: u64,
        now_ms: u64,
        w: &Windowing<'_>,
        mut emit: impl FnMut(Read),
    ) -> Result<usize, PipelineError> {
        let mut read = 0;
        while read < max {
            let msg = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.watermarks.end_of_partition(p);
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                Some(Ok(msg)) => msg,
            };
            read += 1;
            let (p, o) = (msg.partition(), msg.offset());
            self.next_offsets.insert(p, o + 1);
            match parse(&self.config.topic, &msg, w.retention_days) {
                Ok(event) => {
                    let settle = settled_after(w.topologies, event.ts_ms, read_time, w.grace_ms);
                    self.owed.read(p, o, Some(settle));
                    let arrival = arrival_ms(&msg);
                    self.watermarks.observe(p, event.ts_ms, arrival, now_ms);
                    let replayed = self.replay_until.get(&p).is_some_and(|&r| o < r);
                    let ingested = u32::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
                    emit(Read {
                        event,
                        partition: p,
                        offset: o,
                        ingested,
                        replayed,
                    });
                }
                Err(reason) => {
                    // Owed nothing to ClickHouse; held back by the DLQ until acknowledged
                    // (see `committable`). A replay skips what was dead-lettered before.
                    self.owed.read(p, o, None);
                    if self.dlq_until.get(&p).is_none_or(|&d| o >= d) {
                        let payload = msg.payload().unwrap_or_default();
                        self.dlq
                            .push((p, o), payload, msg.key(), &reason.to_string());
                        Metrics::get()
                            .dlq
                            .with_label_values(&[reason.label()])
                            .inc();
                    }
                    self.watermarks.touch(p, now_ms);
                }
            }
        }
        Metrics::get().events_read.inc_by(read as u64);
        self.dlq.service()?;
        Ok(read)
    }

    /// Serves dead-letter delivery reports (call every loop, also when not reading).
    pub fn service_dead_letters(&mut self) -> Result<(), PipelineError> {
        self.dlq.service().map(|_| ())
    }

    /// Whether reading should pause because too many dead letters wait for Kafka.
    pub fn dead_letters_full(&self) -> bool {
        self.dlq.is_full()
    }

    /// At shutdown: waits up to `timeout` for outstanding dead-letter writes.
    pub fn flush_dead_letters(&mut self, timeout: Duration) {
        self.dlq.flush(timeout);
        if self.dlq.pending() > 0 {
            tracing::warn!(
                pending = self.dlq.pending(),
                "dead letters not acknowledged at shutdown; their messages are read again after a restart"
            );
        }
    }

    /// Every partition's watermark mark at `now_ms`, with its read position (`None`: reading
    /// from the beginning and nothing read yet).
    pub fn marks(&self, now_ms: u64) -> Vec<(i32, Mark, Option<i64>)> {
        self.watermarks
            .marks(now_ms)
            .map(|(p, mark)| {
                let position = self
                    .next_offsets
                    .get(&p)
                    .or(self.start_offsets.get(&p))
                    .copied();
                (p, mark, position)
            })
            .collect()
    }

    /// Whether the broker holds messages of `partition` (any partition of the topic, not only
    /// this worker's) at or after `position`. An unanswered query counts as yes: holding the
    /// watermark a little longer is safe, passing unread data is not.
    pub fn has_unread(&self, partition: i32, position: Option<i64>) -> bool {
        // Short: the worker waits for the answer (at most every 100 ms, only while partitions
        // are idle); no answer counts as "unread", which only holds the watermark.
        let timeout = Duration::from_secs(1);
        match self
            .consumer
            .fetch_watermarks(&self.config.topic, partition, timeout)
        {
            Ok((low, high)) => high > position.unwrap_or(low),
            Err(e) => {
                tracing::debug!(partition, error = %e, "high watermark query failed");
                true
            }
        }
    }

    /// The position to save once the acknowledged `frontier` is durable, per partition read:
    /// never past an event ClickHouse does not hold yet, nor past a message whose dead letter
    /// Kafka has not acknowledged.
    pub fn committable(&mut self, frontier: u64) -> Vec<PartitionProgress> {
        self.owed
            .committable(frontier)
            .into_iter()
            .map(|(partition, next_offset)| {
                let read_until = self
                    .next_offsets
                    .get(&partition)
                    .copied()
                    .unwrap_or(next_offset);
                // Every invalid message read so far was handed to the DLQ: those below the
                // first unacknowledged one are done.
                let dlq_until = self
                    .dlq
                    .first_pending(partition)
                    .map_or(read_until, |o| o.min(read_until));
                PartitionProgress {
                    partition,
                    next_offset: next_offset.min(dlq_until),
                    read_until,
                    dlq_until,
                }
            })
            .collect()
    }

    /// Mirrors saved offsets to Kafka's group offsets, for lag tools; never read back.
    pub fn commit_to_kafka(&self, offsets: &[PartitionProgress]) {
        let mut tpl = TopicPartitionList::new();
        for o in offsets {
            let _ = tpl.add_partition_offset(
                &self.config.topic,
                o.partition,
                Offset::Offset(o.next_offset),
            );
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "kafka offset commit failed");
            }
        }
    }

    /// Exports the watermark per partition (no broker round trip; lag is exported by
    /// [`export_lag`] on its own thread).
    pub fn export_watermarks(&self) {
        let m = Metrics::get();
        for &p in self.next_offsets.keys() {
            if let Some(wm) = self.watermarks.partition(p) {
                m.watermark
                    .with_label_values(&[&p.to_string()])
                    .set(i64::try_from(wm).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Exports consumer lag (high watermark − read position) for `positions`, asking the broker
/// with its own client; runs off the workers, since a slow broker makes each query take up to
/// its timeout.
pub fn export_lag(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    positions: &[(i32, i64)],
) {
    let m = Metrics::get();
    for &(p, next) in positions {
        if let Ok((_, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(2)) {
            m.lag
                .with_label_values(&[&p.to_string()])
                .set((high - next).max(0));
        }
    }
}

fn parse(topic: &str, msg: &BorrowedMessage<'_>, retention_days: u32) -> Result<Event, Invalid> {
    let bytes = msg.payload().unwrap_or_default();
    Event::parse(bytes, Clock::wall(retention_days), || {
        id_from_position(topic, msg.partition(), msg.offset())
    })
}

/// When `msg` arrived, for the watermark's clock-skew cap: its Kafka timestamp (CreateTime or
/// LogAppendTime), never later than the wall clock now (see [`crate::watermark::arrival_ms`]).
fn arrival_ms(msg: &BorrowedMessage<'_>) -> u64 {
    let wall_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    crate::watermark::arrival_ms(msg.timestamp().to_millis(), wall_ms)
}
