//! The Kafka source of one worker: its partitions, their watermarks, what is still owed to
//! ClickHouse, and the dead-letter topic for messages that are not valid events.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tally_operators::settled_after;
use tally_sinks::postgres::{PartitionProgress, Progress};

use crate::event::{id_from_position, Clock, Event, Invalid};
use crate::kafka::{client_config, producer_config, KafkaConfig};
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
    /// Window kinds the rollups keep.
    pub windows: &'a [tally_operators::Window],
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
    dlq: BaseProducer,
    /// Per-partition event-time watermarks.
    pub watermarks: Watermarks,
    owed: PendingOffsets,
    next_offsets: BTreeMap<i32, i64>,
    replay_until: HashMap<i32, i64>,
    start_offsets: HashMap<i32, i64>,
    dlq_written: Vec<(i32, i64)>,
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
        let mut start_offsets = HashMap::new();
        for &p in partitions {
            let saved = progress.offsets.get(&(config.topic.clone(), p));
            let offset = saved.map_or(Offset::Beginning, |s| Offset::Offset(s.next_offset));
            replay_until.insert(p, saved.map_or(0, |s| s.read_until));
            if let Some(s) = saved {
                start_offsets.insert(p, s.next_offset);
            }
            tpl.add_partition_offset(&config.topic, p, offset)
                .map_err(|e| PipelineError::kafka("building the assignment", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| PipelineError::kafka("assigning partitions", e))?;
        let dlq = producer_config(config)
            .create()
            .map_err(|e| PipelineError::kafka("creating the dead-letter producer", e))?;
        Ok(KafkaSource {
            config: config.clone(),
            consumer,
            dlq,
            watermarks,
            owed: PendingOffsets::default(),
            next_offsets: BTreeMap::new(),
            replay_until,
            start_offsets,
            dlq_written: Vec::new(),
        })
    }

    /// Reads up to `max` messages at dataflow time `read_time` (the current watermark), hands
    /// each valid event to `emit` and dead-letters the rest, then waits for the dead-letter
    /// writes to be acknowledged. `now_ms` is the monotonic clock for idleness. Returns how many
    /// messages were read.
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
                    let settle = settled_after(w.windows, event.ts_ms, read_time, w.grace_ms);
                    self.owed.read(p, o, Some(settle));
                    self.watermarks.observe(p, event.ts_ms, now_ms);
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
                    self.send_to_dlq(&msg, &reason)?;
                    Metrics::get()
                        .dlq
                        .with_label_values(&[reason.label()])
                        .inc();
                    self.dlq_written.push((p, o));
                    self.watermarks.touch(p, now_ms);
                }
            }
        }
        Metrics::get().events_read.inc_by(read as u64);
        if !self.dlq_written.is_empty() {
            // A dead-lettered offset is settled once the dead-letter write is acknowledged.
            let timeout = Duration::from_millis(self.config.produce_timeout_ms);
            self.dlq
                .flush(timeout)
                .map_err(|e| PipelineError::kafka("writing to the dead-letter topic", e))?;
            for (p, o) in self.dlq_written.drain(..) {
                self.owed.read(p, o, None);
            }
        }
        Ok(read)
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

    /// The position to save once the acknowledged `frontier` is durable, per partition read.
    pub fn committable(&mut self, frontier: u64) -> Vec<PartitionProgress> {
        self.owed
            .committable(frontier)
            .into_iter()
            .map(|(partition, next_offset)| PartitionProgress {
                partition,
                next_offset,
                read_until: self
                    .next_offsets
                    .get(&partition)
                    .copied()
                    .unwrap_or(next_offset),
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

    /// Exports consumer lag and watermark per partition.
    pub fn export_lag(&self) {
        let m = Metrics::get();
        for (&p, &next) in &self.next_offsets {
            let label = p.to_string();
            let watermarks =
                self.consumer
                    .fetch_watermarks(&self.config.topic, p, Duration::from_secs(1));
            if let Ok((_, high)) = watermarks {
                m.lag.with_label_values(&[&label]).set((high - next).max(0));
            }
            if let Some(wm) = self.watermarks.partition(p) {
                m.watermark
                    .with_label_values(&[&label])
                    .set(i64::try_from(wm).unwrap_or(i64::MAX));
            }
        }
    }

    fn send_to_dlq(
        &self,
        msg: &BorrowedMessage<'_>,
        reason: &Invalid,
    ) -> Result<(), PipelineError> {
        let reason = reason.to_string();
        let (partition, offset) = (msg.partition().to_string(), msg.offset().to_string());
        fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a [u8]> {
            Header {
                key,
                value: Some(value.as_bytes()),
            }
        }
        let headers = OwnedHeaders::new()
            .insert(header("tally.dlq.reason", &reason))
            .insert(header("tally.dlq.source.partition", &partition))
            .insert(header("tally.dlq.source.offset", &offset));
        let payload = msg.payload().unwrap_or_default();
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.config.dlq_topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        loop {
            match self.dlq.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.dlq.poll(Duration::from_millis(100));
                }
                Err((e, _)) => {
                    return Err(PipelineError::kafka("writing to the dead-letter topic", e))
                }
            }
        }
    }
}

fn parse(topic: &str, msg: &BorrowedMessage<'_>, retention_days: u32) -> Result<Event, Invalid> {
    let bytes = msg.payload().unwrap_or_default();
    Event::parse(bytes, Clock::wall(retention_days), || {
        id_from_position(topic, msg.partition(), msg.offset())
    })
}
