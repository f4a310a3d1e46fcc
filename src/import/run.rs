//! The sending side of `tally import`: checks every input and the topic, runs the reader
//! thread, writes valid events to Kafka (key = `user_id`, the API's idempotent `acks=all`
//! producer) with a bounded window of deliveries in flight, writes rejects, and ends with the
//! summary and an exit code.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_api::ProduceFailure;
use tokio::sync::mpsc;

use super::args::{ImportArgs, Mapping};
use super::progress::{Counts, Ending, Progress, Summary};
use super::reader::{read_all, Checked, ReadCount, ReadPlan, Source};
use super::record::{At, Limits, Reject, Valid};
use super::rejects::RejectsFile;
use super::{settle, ImportError};
use crate::config::TallyConfig;
use crate::delivery::{check_topic, Deliveries};

/// Records sent to Kafka and not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 10_000;
/// Batches of checked records between the reader thread and the sender, at most.
const CHANNEL_BATCHES: usize = 16;
/// How often progress is refreshed (and finished deliveries counted) while waiting.
const TICK: Duration = Duration::from_millis(200);

/// Exit code when records were rejected (without `--allow-rejects`): `EX_DATAERR`.
const EXIT_REJECTS: u8 = 65;
/// Exit code after Ctrl-C or SIGTERM: 128 + SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// Imports `args.paths` into `config.kafka.topic`; reading stops when `stop` is set (Ctrl-C).
/// Prints the summary (stderr, and one line on stdout) whatever happens once sending started.
///
/// Returns the exit code: 0, 65 when records were rejected (unless `--allow-rejects`), 130
/// when interrupted.
///
/// # Errors
/// [`ImportError`] (its exit code says which), and the `PipelineError`s of the topic check:
/// `NotMigrated` (78, run `tally migrate`) or `Unavailable` (69).
pub async fn run(
    args: &ImportArgs,
    config: &TallyConfig,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ExitCode> {
    let mapping = Mapping::parse(&args.map)?;
    let sources = args
        .paths
        .iter()
        .map(|p| Source::check(p, args.format, &mapping))
        .collect::<Result<Vec<_>, _>>()?;
    let producer: FutureProducer = tally_pipeline::kafka::producer_config(&config.kafka)
        .create()
        .context("creating the kafka producer")?;
    let kafka = &config.kafka;
    check_topic(&producer, &kafka.brokers, &kafka.topic).await?;

    let started = Instant::now();
    let read = Arc::new(ReadCount::default());
    let mut progress = Progress::new(sources.iter().map(|s| s.len).sum(), Arc::clone(&read));
    let plan = ReadPlan {
        sources,
        mapping,
        limits: Limits {
            retention_days: config.clickhouse.retention_days,
            max_message_bytes: kafka.max_message_bytes,
        },
    };
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let reader = {
        let (stop, read) = (Arc::clone(&stop), Arc::clone(&read));
        tokio::task::spawn_blocking(move || read_all(&plan, &read, &stop, &tx))
    };
    let mut sender = Sender {
        producer,
        topic: &kafka.topic,
        args,
        deliveries: Deliveries::new(MAX_IN_FLIGHT),
        rejects: RejectsFile::new(&args.rejects, &args.paths),
        counts: Counts::default(),
        range: None,
        failure: None,
    };
    sender.pump(rx, &stop, &mut progress).await;
    sender.deliveries.drain().await;
    sender.count_done();
    progress.finish();
    if let Err(e) = reader.await.context("the reader thread failed")? {
        sender.fail(e);
    }
    let rejects = match sender.rejects.finish() {
        Ok(path) => path.map(ToOwned::to_owned),
        Err(e) => {
            sender.fail(e);
            None
        }
    };
    let ending = match (&sender.failure, stop.load(Ordering::SeqCst)) {
        (Some(_), _) => Ending::Failed,
        (None, true) => Ending::Interrupted,
        (None, false) => Ending::Finished,
    };
    let summary = Summary {
        files: read.files.load(Ordering::SeqCst),
        counts: sender.counts,
        elapsed: started.elapsed(),
        rejects,
        ending,
    };
    eprintln!("{}", summary.long());
    println!("{summary}");
    if let Some(failure) = sender.failure {
        return Err(failure.into());
    }
    if ending == Ending::Interrupted {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if let (true, Some((min, max))) = (args.wait, sender.range) {
        let timeout = std::time::Duration::from_secs(args.wait_timeout);
        if !settle::wait_until_settled(config, min, max, &stop, timeout).await? {
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
    }
    Ok(if summary.counts.rejected > 0 && !args.allow_rejects {
        ExitCode::from(EXIT_REJECTS)
    } else {
        ExitCode::SUCCESS
    })
}

/// What a delivery carries, to count it or to reject it.
struct Tag {
    at: At,
    ts_ms: u64,
    raw: Vec<u8>,
}

struct Sender<'a> {
    producer: FutureProducer,
    topic: &'a str,
    args: &'a ImportArgs,
    deliveries: Deliveries<Tag>,
    rejects: RejectsFile,
    counts: Counts,
    /// Smallest and largest timestamp acknowledged, ms since the epoch.
    range: Option<(u64, u64)>,
    /// The first error that stops the import.
    failure: Option<ImportError>,
}

impl Sender<'_> {
    /// Sends what the reader hands over until it is done, `stop` is set or an error stops the
    /// import. Dropping `rx` on return stops the reader.
    async fn pump(
        &mut self,
        mut rx: mpsc::Receiver<Vec<Checked>>,
        stop: &AtomicBool,
        progress: &mut Progress,
    ) {
        let mut tick = tokio::time::interval(TICK);
        let halted = |s: &Self| stop.load(Ordering::SeqCst) || s.failure.is_some();
        while !halted(self) {
            tokio::select! {
                batch = rx.recv() => {
                    let Some(batch) = batch else { break };
                    for checked in batch {
                        if halted(self) {
                            break;
                        }
                        self.handle(checked).await;
                    }
                }
                _ = tick.tick() => {
                    self.deliveries.reap();
                    self.count_done();
                    progress.show(&self.counts);
                }
            }
        }
    }

    async fn handle(&mut self, checked: Checked) {
        self.counts.read += 1;
        let Valid {
            at,
            key,
            payload,
            ts_ms,
            raw,
        } = match checked {
            Ok(valid) => valid,
            Err(reject) => return self.reject(&reject),
        };
        // No record timestamp: Kafka uses the send time, so broker retention never deletes
        // imported events early. Event time travels in the JSON.
        let record = FutureRecord::to(self.topic).key(&key).payload(&payload);
        let tag = Tag { at, ts_ms, raw };
        if let Err((error, tag)) = self.deliveries.send(&self.producer, record, tag).await {
            self.refused(error, &tag);
        }
        self.count_done();
    }

    /// Counts the finished deliveries.
    fn count_done(&mut self) {
        let done: Vec<_> = self.deliveries.take_done().collect();
        for (tag, result) in done {
            match result {
                Ok(()) => {
                    self.counts.accepted += 1;
                    let (lo, hi) = self.range.unwrap_or((tag.ts_ms, tag.ts_ms));
                    self.range = Some((lo.min(tag.ts_ms), hi.max(tag.ts_ms)));
                }
                Err(error) => self.refused(error, &tag),
            }
        }
    }

    /// A record Kafka did not take: too large is a reject, anything else stops the import.
    fn refused(&mut self, error: KafkaError, tag: &Tag) {
        if ProduceFailure::of(&error) == ProduceFailure::TooLarge {
            let reason = "the event is larger than the Kafka topic accepts (max.message.bytes)";
            return self.reject(&Reject::new(tag.at, reason, &tag.raw));
        }
        self.fail(ImportError::Kafka {
            path: self
                .args
                .paths
                .get(tag.at.file)
                .cloned()
                .unwrap_or_default(),
            position: tag.at.position,
            source: error,
        });
    }

    fn reject(&mut self, reject: &Reject) {
        self.counts.rejected += 1;
        if let Err(e) = self.rejects.write(reject) {
            self.fail(e);
        }
    }

    /// Records the first error; later ones are consequences.
    fn fail(&mut self, error: ImportError) {
        self.failure.get_or_insert(error);
    }
}
