//! The rdkafka side of `tally produce`: [`run`] paces the generator, keeps a bounded window of
//! in-flight deliveries, logs progress and returns a [`ProduceReport`].

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::time::MissedTickBehavior;
use tracing::info;

use super::args::ProduceArgs;
use super::generator::{EventGenerator, GeneratedEvent, GeneratorConfig};
use crate::delivery::{check_topic, Deliveries};

/// What a run of [`run`] did. `Display` gives the one-line summary.
#[derive(Debug, Clone, PartialEq)]
pub struct ProduceReport {
    /// Events acknowledged by Kafka (valid and malformed).
    pub sent: u64,
    /// Of `sent`, the deliberately malformed ones.
    pub invalid: u64,
    pub elapsed: Duration,
    /// The seed used, to reproduce the run with `--seed`.
    pub seed: u64,
    /// True when Ctrl-C stopped the run before `--count` was reached.
    pub interrupted: bool,
}

impl ProduceReport {
    pub fn events_per_sec(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for ProduceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, secs, rate) = (self.sent, self.elapsed.as_secs_f64(), self.events_per_sec());
        write!(f, "produced {n} events in {secs:.2} s ({rate:.0} events/s)")
    }
}

const MAX_IN_FLIGHT: usize = 10_000;
const TICK: Duration = Duration::from_millis(10);
/// Events per loop iteration with `--rate 0`, between Ctrl-C checks.
const UNLIMITED_BATCH: u64 = 1_000;
/// Most events per loop iteration when catching up with `--rate` (keeps Ctrl-C responsive).
const MAX_BATCH: u64 = 10_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Sends `args.count` generated events (or until Ctrl-C) to `topic`, then waits for every
/// delivery. Fails on the first event Kafka did not acknowledge.
pub async fn run(args: &ProduceArgs, brokers: &str, topic: &str) -> anyhow::Result<ProduceReport> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = GeneratorConfig::from_args(args, Utc::now().timestamp_millis(), seed);
    let mut generator = EventGenerator::new(&config)?;
    let producer = build_producer(brokers)?;
    check_topic(&producer, brokers, topic).await?;
    let (count, rate) = (args.count, args.rate);
    info!(brokers, topic, count, rate, seed, "producing events");

    let mut sender = Sender {
        producer,
        topic,
        in_flight: Deliveries::new(MAX_IN_FLIGHT),
        delivered: 0,
        invalid: 0,
    };
    let started = Instant::now();
    let interrupted = send_until_done(args, &mut generator, &mut sender, started).await?;
    sender.drain().await?;
    let (sent, invalid) = (sender.delivered, sender.invalid);
    let report = ProduceReport {
        sent,
        invalid,
        elapsed: started.elapsed(),
        seed,
        interrupted,
    };
    info!(sent, invalid, seed, "{report}");
    Ok(report)
}

/// The paced send loop; returns true when Ctrl-C ended it before `--count`.
async fn send_until_done(
    args: &ProduceArgs,
    generator: &mut EventGenerator,
    sender: &mut Sender<'_>,
    started: Instant,
) -> anyhow::Result<bool> {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut progress = Progress {
        since: started,
        sent: 0,
    };
    while args.count == 0 || sender.queued() < args.count {
        tokio::select! {
            biased;
            res = &mut ctrl_c => {
                res.context("listening for ctrl-c")?;
                info!("ctrl-c: stopping after in-flight events are delivered");
                return Ok(true);
            }
            _ = pace(&mut ticker, args.rate) => {}
        }
        if args.start.is_none() {
            generator.advance_clock_to(Utc::now().timestamp_millis());
        }
        for _ in 0..batch_size(args, sender.queued(), started.elapsed()) {
            sender.send(&generator.next_event()).await?;
        }
        sender.reap()?;
        progress.log_every(PROGRESS_EVERY, sender);
    }
    Ok(false)
}

struct Progress {
    since: Instant,
    sent: u64,
}

impl Progress {
    fn log_every(&mut self, period: Duration, sender: &Sender<'_>) {
        let elapsed = self.since.elapsed();
        if elapsed >= period {
            let (sent, in_flight) = (sender.delivered, sender.in_flight.in_flight());
            let rate = ((sent - self.sent) as f64 / elapsed.as_secs_f64()).round();
            info!(sent, in_flight, rate, "progress");
            (self.since, self.sent) = (Instant::now(), sent);
        }
    }
}

async fn pace(ticker: &mut tokio::time::Interval, rate: u64) {
    if rate == 0 {
        tokio::task::yield_now().await;
    } else {
        ticker.tick().await;
    }
}

/// Events to send now so that `queued` keeps up with `rate` (never past `count`).
fn batch_size(args: &ProduceArgs, queued: u64, elapsed: Duration) -> u64 {
    let due = match args.rate {
        0 => queued + UNLIMITED_BATCH,
        rate => (rate as f64 * elapsed.as_secs_f64()) as u64,
    };
    let due = if args.count == 0 {
        due
    } else {
        due.min(args.count)
    };
    due.saturating_sub(queued).min(MAX_BATCH)
}

fn build_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "tally-produce")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "30000")
        .create()
        .with_context(|| format!("creating Kafka producer for brokers {brokers}"))
}

/// The producer side of the send loop: the window of deliveries in flight and the counts.
struct Sender<'a> {
    producer: FutureProducer,
    topic: &'a str,
    in_flight: Deliveries<()>,
    /// Events Kafka acknowledged.
    delivered: u64,
    /// Deliberately malformed events enqueued.
    invalid: u64,
}

impl Sender<'_> {
    fn queued(&self) -> u64 {
        self.delivered + self.in_flight.in_flight() as u64
    }

    /// Enqueues one event without waiting for its delivery (beyond the in-flight bound).
    async fn send(&mut self, event: &GeneratedEvent) -> anyhow::Result<()> {
        let payload = event.payload();
        // No record timestamp: Kafka uses send time, so broker retention never deletes
        // backfilled events early. Event time travels in the JSON.
        let record = FutureRecord::to(self.topic)
            .key(event.key())
            .payload(&payload);
        if let Err((e, ())) = self.in_flight.send(&self.producer, record, ()).await {
            return Err(e).with_context(|| format!("enqueueing event for {}", self.topic));
        }
        self.invalid += u64::from(event.defect.is_some());
        self.record_done()
    }

    /// Counts the deliveries that finished; fails on the first Kafka did not acknowledge.
    fn record_done(&mut self) -> anyhow::Result<()> {
        for ((), result) in self.in_flight.take_done() {
            if let Err(err) = result {
                return Err(anyhow!(
                    "kafka did not acknowledge an event (topic {}): {err}",
                    self.topic
                ))
                .with_context(|| format!("after {} events were acknowledged", self.delivered));
            }
            self.delivered += 1;
        }
        Ok(())
    }

    /// Records deliveries that already completed, without waiting.
    fn reap(&mut self) -> anyhow::Result<()> {
        self.in_flight.reap();
        self.record_done()
    }

    /// Waits for every delivery in flight.
    async fn drain(&mut self) -> anyhow::Result<()> {
        self.in_flight.drain().await;
        self.record_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::produce::args::tests::args;

    #[test]
    fn batch_size_keeps_pace_and_stops_at_count() {
        let a = args(&["--rate", "1000", "--count", "1500"]).expect("ok");
        assert_eq!(batch_size(&a, 0, Duration::from_millis(10)), 10);
        assert_eq!(batch_size(&a, 10, Duration::from_millis(10)), 0);
        assert_eq!(batch_size(&a, 900, Duration::from_secs(1)), 100);
        assert_eq!(batch_size(&a, 1_400, Duration::from_secs(5)), 100);
        let unlimited = args(&["--rate", "0", "--count", "0"]).expect("ok");
        assert_eq!(batch_size(&unlimited, 5, Duration::ZERO), UNLIMITED_BATCH);
        let behind = args(&["--rate", "1000000", "--count", "0"]).expect("ok");
        assert_eq!(batch_size(&behind, 0, Duration::from_secs(1)), MAX_BATCH);
    }
}
