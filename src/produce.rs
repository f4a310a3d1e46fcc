//! `tally produce`: a load generator that writes synthetic user events straight to Kafka.
//!
//! [`EventGenerator`] is pure and seedable: it owns the RNG and the event clock and does no I/O.
//! [`run`] drives it from a rate-limited loop and sends through an idempotent rdkafka producer,
//! keeping a bounded window of in-flight deliveries and failing on the first delivery error.
//! The event contract the generator follows is `docs/events.md`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use chrono::{DateTime, FixedOffset, Utc};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Message as _};
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tracing::info;
use uuid::Uuid;

/// Send synthetic user events to Kafka (load generator; see docs/events.md).
#[derive(clap::Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Total number of events to send; 0 sends until Ctrl-C.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Events per second; 0 sends as fast as the brokers accept.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Number of distinct users (ids u1..uN); popularity is Zipf-distributed, u1 most active.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub users: u64,
    /// Zipf exponent of user popularity: 0 is uniform, larger is more skewed.
    #[arg(long, default_value_t = 1.1)]
    pub zipf_s: f64,
    /// Out-of-orderness: each timestamp is moved back by a uniform random 0..=D ms.
    #[arg(long, default_value_t = 2000)]
    pub disorder_ms: u64,
    /// Event-time start (RFC 3339) for backfills. Event time then advances 1000/rate ms per
    /// event (1 ms with --rate 0) instead of following the wall clock.
    #[arg(long, value_parser = DateTime::parse_from_rfc3339)]
    pub start: Option<DateTime<FixedOffset>>,
    /// Seed for deterministic event content (timestamps too when --start is given).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fraction (0..=1) of deliberately malformed messages (truncated JSON, missing
    /// event_type, bad timestamp, empty user_id), for dead-letter testing.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub invalid_fraction: f64,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not in 0..=1"))
    }
}

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

/// Event types with relative frequencies (per mille).
pub const EVENT_TYPES: [(&str, u32); 12] = [
    ("page_view", 430),
    ("click", 200),
    ("search", 80),
    ("video_play", 60),
    ("add_to_cart", 60),
    ("login", 50),
    ("logout", 30),
    ("remove_from_cart", 25),
    ("share", 25),
    ("checkout", 20),
    ("purchase", 12),
    ("signup", 8),
];
const DEVICES: [(&str, u32); 3] = [("mobile", 55), ("desktop", 35), ("tablet", 10)];
const PAGES: [&str; 6] = ["/", "/home", "/products", "/deals", "/blog/launch", "/help"];
const REFERRERS: [&str; 3] = [
    "https://www.google.com/",
    "https://t.co/",
    "https://news.ycombinator.com/",
];
const QUERIES: [&str; 5] = [
    "shoes",
    "rain jacket",
    "usb-c cable",
    "coffee grinder",
    "tent",
];
/// Fraction of events outside any session (no `session_id`).
const SESSIONLESS_FRACTION: f64 = 0.05;
const MIN_SESSION_LEN: u32 = 2;
const MAX_SESSION_LEN: u32 = 20;
const NANOS_PER_MS: i64 = 1_000_000;

/// Everything [`EventGenerator`] needs; pure data.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub users: u64,
    pub zipf_s: f64,
    pub disorder_ms: u64,
    pub invalid_fraction: f64,
    /// Initial event clock, epoch milliseconds.
    pub start_ms: i64,
    /// Event-clock advance per event in nanoseconds; 0 = moved only by `advance_clock_to`.
    pub step_ns: i64,
    pub seed: u64,
}

impl GeneratorConfig {
    /// Backfill mode (`--start`) steps the clock per event; live mode follows `now_ms`.
    pub fn from_args(args: &ProduceArgs, now_ms: i64, seed: u64) -> Self {
        let step_ns = match (args.start, args.rate) {
            (None, _) => 0,
            (Some(_), 0) => NANOS_PER_MS,
            (Some(_), rate) => i64::try_from(1_000_000_000 / rate).unwrap_or(0),
        };
        Self {
            users: args.users,
            zipf_s: args.zipf_s,
            disorder_ms: args.disorder_ms,
            invalid_fraction: args.invalid_fraction,
            start_ms: args.start.map_or(now_ms, |t| t.timestamp_millis()),
            step_ns,
            seed,
        }
    }
}

/// How a deliberately malformed message is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defect {
    TruncatedJson,
    MissingEventType,
    BadTimestamp,
    EmptyUserId,
}
const DEFECTS: [Defect; 4] = [
    Defect::TruncatedJson,
    Defect::MissingEventType,
    Defect::BadTimestamp,
    Defect::EmptyUserId,
];

/// A well-formed event per `docs/events.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub user_id: String,
    pub session_id: Option<Uuid>,
    pub timestamp_ms: i64,
    pub metadata: Value,
}

impl Event {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "event_id": self.event_id.to_string(),
            "event_type": self.event_type,
            "user_id": self.user_id,
            "timestamp": self.timestamp_ms,
            "metadata": self.metadata,
        });
        if let Some(id) = self.session_id {
            v["session_id"] = json!(id.to_string());
        }
        v
    }
}

/// One message to send: the event, the clock it was made at, and an optional defect.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedEvent {
    pub event: Event,
    /// The event clock (epoch ms) when generated; `timestamp_ms` is at most disorder_ms behind.
    pub clock_ms: i64,
    /// `Some` when the payload is deliberately malformed.
    pub defect: Option<Defect>,
}

impl GeneratedEvent {
    /// The Kafka key: the user id.
    pub fn key(&self) -> &str {
        &self.event.user_id
    }

    /// The Kafka value: the event JSON, broken as `defect` says.
    pub fn payload(&self) -> Vec<u8> {
        let mut v = self.event.to_json();
        match self.defect {
            None => {}
            Some(Defect::TruncatedJson) => {
                let bytes = v.to_string().into_bytes();
                return bytes[..bytes.len() / 2].to_vec();
            }
            Some(Defect::MissingEventType) => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("event_type");
                }
            }
            Some(Defect::BadTimestamp) => v["timestamp"] = json!("2024-13-45T99:00:00Z"),
            Some(Defect::EmptyUserId) => v["user_id"] = json!(""),
        }
        v.to_string().into_bytes()
    }
}

#[derive(Debug)]
struct Session {
    id: Uuid,
    remaining: u32,
    device: &'static str,
}

/// Seedable generator of realistic user events. Owns its RNG and event clock; no I/O.
#[derive(Debug)]
pub struct EventGenerator {
    rng: StdRng,
    users: Zipf<f64>,
    event_types: WeightedIndex<u32>,
    devices: WeightedIndex<u32>,
    disorder_ms: u64,
    invalid_fraction: f64,
    clock_ns: i64,
    step_ns: i64,
    /// Open sessions by user number; an entry is removed when its session ends.
    sessions: HashMap<u64, Session>,
}

impl EventGenerator {
    pub fn new(config: &GeneratorConfig) -> anyhow::Result<Self> {
        let f = config.invalid_fraction;
        ensure!(
            (0.0..=1.0).contains(&f),
            "invalid fraction {f} is not in 0..=1"
        );
        ensure!(config.users >= 1, "users must be at least 1");
        let users = Zipf::new(config.users as f64, config.zipf_s)
            .with_context(|| format!("zipf exponent {}", config.zipf_s))?;
        Ok(Self {
            rng: StdRng::seed_from_u64(config.seed),
            users,
            event_types: WeightedIndex::new(EVENT_TYPES.map(|(_, w)| w))?,
            devices: WeightedIndex::new(DEVICES.map(|(_, w)| w))?,
            disorder_ms: config.disorder_ms,
            invalid_fraction: f,
            clock_ns: config.start_ms.saturating_mul(NANOS_PER_MS),
            step_ns: config.step_ns,
            sessions: HashMap::new(),
        })
    }

    /// The event clock in epoch milliseconds.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ns.div_euclid(NANOS_PER_MS)
    }

    /// Moves the event clock forward to `ms`; never backwards.
    pub fn advance_clock_to(&mut self, ms: i64) {
        self.clock_ns = self.clock_ns.max(ms.saturating_mul(NANOS_PER_MS));
    }

    pub fn next_event(&mut self) -> GeneratedEvent {
        let clock_ms = self.clock_ms();
        self.clock_ns = self.clock_ns.saturating_add(self.step_ns);
        let jitter = self.rng.random_range(0..=self.disorder_ms);
        let user = self.users.sample(&mut self.rng) as u64;
        let (session_id, device) = self.session_for(user);
        let event_type = EVENT_TYPES[self.event_types.sample(&mut self.rng)].0;
        let event = Event {
            event_id: self.uuid(),
            event_type,
            user_id: format!("u{user}"),
            session_id,
            timestamp_ms: clock_ms.saturating_sub_unsigned(jitter),
            metadata: self.metadata(event_type, device),
        };
        let defect = self
            .rng
            .random_bool(self.invalid_fraction)
            .then(|| DEFECTS[self.rng.random_range(0..DEFECTS.len())]);
        GeneratedEvent {
            event,
            clock_ms,
            defect,
        }
    }

    fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    fn device(&mut self) -> &'static str {
        DEVICES[self.devices.sample(&mut self.rng)].0
    }

    /// The user's session for one more event (starting one if needed), or none for a
    /// sessionless event. A session keeps its device.
    fn session_for(&mut self, user: u64) -> (Option<Uuid>, &'static str) {
        if self.rng.random_bool(SESSIONLESS_FRACTION) {
            return (None, self.device());
        }
        let mut session = match self.sessions.remove(&user) {
            Some(session) => session,
            None => Session {
                id: self.uuid(),
                remaining: self.rng.random_range(MIN_SESSION_LEN..=MAX_SESSION_LEN),
                device: self.device(),
            },
        };
        session.remaining -= 1;
        let out = (Some(session.id), session.device);
        if session.remaining > 0 {
            self.sessions.insert(user, session);
        }
        out
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    /// Small, type-specific metadata; always `device` and `path`.
    fn metadata(&mut self, event_type: &str, device: &str) -> Value {
        let mut m = Map::new();
        m.insert("device".into(), json!(device));
        let page = self.pick(&PAGES).to_string();
        let n = self.rng.random_range(1..=500u32);
        let mut put = |k: &str, v: Value| m.insert(k.into(), v);
        let path = match event_type {
            "page_view" => {
                let referrer = self.rng.random_bool(0.4).then(|| self.pick(&REFERRERS));
                put("referrer", json!(referrer));
                page
            }
            "click" => {
                put(
                    "element",
                    json!(["nav", "banner", "card", "footer"][n as usize % 4]),
                );
                page
            }
            "share" => {
                put("channel", json!(["email", "x", "whatsapp"][n as usize % 3]));
                page
            }
            "search" => {
                put("query", json!(self.pick(&QUERIES)));
                "/search".into()
            }
            "add_to_cart" | "remove_from_cart" => {
                put("product_id", json!(format!("p{n}")));
                format!("/product/p{n}")
            }
            "purchase" => {
                put(
                    "amount_cents",
                    json!(self.rng.random_range(199..=49_999u32)),
                );
                put("currency", json!("EUR"));
                "/checkout/complete".into()
            }
            "video_play" => {
                put("video_id", json!(format!("v{}", n % 50)));
                format!("/video/v{}", n % 50)
            }
            other => format!("/{other}"),
        };
        m.insert("path".into(), json!(path));
        Value::Object(m)
    }
}

const MAX_IN_FLIGHT: usize = 10_000;
const TICK: Duration = Duration::from_millis(10);
/// Events per loop iteration with `--rate 0`, between Ctrl-C checks.
const UNLIMITED_BATCH: u64 = 1_000;
/// Most events per loop iteration when catching up with `--rate` (keeps Ctrl-C responsive).
const MAX_BATCH: u64 = 10_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `args.count` generated events (or until Ctrl-C) to `topic`, then waits for every
/// delivery. Fails on the first event Kafka did not acknowledge.
pub async fn run(args: &ProduceArgs, brokers: &str, topic: &str) -> anyhow::Result<ProduceReport> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = GeneratorConfig::from_args(args, Utc::now().timestamp_millis(), seed);
    let mut generator = EventGenerator::new(&config)?;
    let producer = build_producer(brokers)?;
    check_topic(&producer, topic).await?;
    let (count, rate) = (args.count, args.rate);
    info!(brokers, topic, count, rate, seed, "producing events");

    let mut sender = Sender {
        producer,
        topic,
        in_flight: InFlight::default(),
        invalid: 0,
    };
    let started = Instant::now();
    let interrupted = send_until_done(args, &mut generator, &mut sender, started).await?;
    sender.in_flight.drain().await?;
    let (sent, invalid) = (sender.in_flight.delivered, sender.invalid);
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
        sender.in_flight.reap()?;
        progress.log_every(PROGRESS_EVERY, &sender.in_flight);
    }
    Ok(false)
}

struct Progress {
    since: Instant,
    sent: u64,
}

impl Progress {
    fn log_every(&mut self, period: Duration, in_flight: &InFlight) {
        let elapsed = self.since.elapsed();
        if elapsed >= period {
            let sent = in_flight.delivered;
            let rate = ((sent - self.sent) as f64 / elapsed.as_secs_f64()).round();
            info!(sent, in_flight = in_flight.set.len(), rate, "progress");
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

/// Fails fast with a clear message when the brokers are unreachable or the topic is missing
/// (the local stack does not auto-create topics).
async fn check_topic(producer: &FutureProducer, topic: &str) -> anyhow::Result<()> {
    let (client, name) = (producer.clone(), topic.to_owned());
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .client()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await?
    .with_context(|| format!("fetching metadata for topic {topic}"))?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        Some(t) => match t.error() {
            Some(err) => bail!(
                "topic {topic} is not usable: {}",
                RDKafkaErrorCode::from(err)
            ),
            None => bail!("topic {topic} has no partitions"),
        },
        None => bail!("topic {topic} not found in broker metadata"),
    }
}

struct Sender<'a> {
    producer: FutureProducer,
    topic: &'a str,
    in_flight: InFlight,
    /// Deliberately malformed events enqueued.
    invalid: u64,
}

impl Sender<'_> {
    fn queued(&self) -> u64 {
        self.in_flight.delivered + self.in_flight.set.len() as u64
    }

    /// Enqueues one event without waiting for its delivery (beyond the in-flight bound).
    async fn send(&mut self, event: &GeneratedEvent) -> anyhow::Result<()> {
        while self.in_flight.set.len() >= MAX_IN_FLIGHT {
            self.in_flight.await_one().await?;
        }
        let payload = event.payload();
        // No record timestamp: Kafka uses send time, so broker retention never deletes
        // backfilled events early. Event time travels in the JSON.
        let mut record = FutureRecord::to(self.topic)
            .key(event.key())
            .payload(&payload);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.set.spawn(confirm(delivery));
                    self.invalid += u64::from(event.defect.is_some());
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    if self.in_flight.set.is_empty() {
                        tokio::time::sleep(TICK).await; // back off; nothing to wait for
                    } else {
                        self.in_flight.await_one().await?;
                    }
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| format!("enqueueing event for {}", self.topic))
                }
            }
        }
    }
}

async fn confirm(delivery: DeliveryFuture) -> anyhow::Result<()> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, msg))) => {
            let key = String::from_utf8_lossy(msg.key().unwrap_or_default()).into_owned();
            Err(anyhow!(
                "kafka did not acknowledge event (topic {}, key {key}): {err}",
                msg.topic()
            ))
        }
        Err(_) => Err(anyhow!(
            "producer closed before kafka acknowledged an event"
        )),
    }
}

/// Delivery confirmations not yet awaited.
#[derive(Default)]
struct InFlight {
    set: JoinSet<anyhow::Result<()>>,
    delivered: u64,
}

impl InFlight {
    fn record(
        &mut self,
        joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        joined
            .context("delivery task failed")?
            .with_context(|| format!("after {} events were acknowledged", self.delivered))?;
        self.delivered += 1;
        Ok(())
    }

    async fn await_one(&mut self) -> anyhow::Result<()> {
        match self.set.join_next().await {
            Some(joined) => self.record(joined),
            None => Ok(()),
        }
    }

    /// Records deliveries that already completed, without waiting.
    fn reap(&mut self) -> anyhow::Result<()> {
        while let Some(joined) = self.set.try_join_next() {
            self.record(joined)?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> anyhow::Result<()> {
        while !self.set.is_empty() {
            self.await_one().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const START_MS: i64 = 1_710_324_000_000; // 2024-03-13T10:00:00Z

    fn config(seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            users: 1_000,
            zipf_s: 1.1,
            disorder_ms: 2_000,
            invalid_fraction: 0.0,
            start_ms: START_MS,
            step_ns: 1_000_000, // 1000 events/s
            seed,
        }
    }

    fn generate(config: &GeneratorConfig, n: usize) -> Vec<GeneratedEvent> {
        let mut generator = EventGenerator::new(config).expect("valid config");
        (0..n).map(|_| generator.next_event()).collect()
    }

    /// A naive check of the contract in docs/events.md (the parts the defects break).
    fn follows_contract(payload: &[u8]) -> bool {
        let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(payload) else {
            return false;
        };
        let non_empty = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        };
        non_empty("event_type")
            && non_empty("user_id")
            && o.get("timestamp").is_some_and(Value::is_i64)
    }

    #[test]
    fn same_seed_same_events_different_seed_different_events() {
        let cfg = GeneratorConfig {
            invalid_fraction: 0.1,
            ..config(7)
        };
        let payloads = |c: &GeneratorConfig| -> Vec<Vec<u8>> {
            generate(c, 2_000)
                .iter()
                .map(GeneratedEvent::payload)
                .collect()
        };
        assert_eq!(generate(&cfg, 2_000), generate(&cfg, 2_000));
        assert_eq!(payloads(&cfg), payloads(&cfg));
        assert_ne!(
            payloads(&cfg),
            payloads(&GeneratorConfig {
                seed: 8,
                ..cfg.clone()
            })
        );
    }

    #[test]
    fn valid_events_follow_the_contract() {
        let cfg = config(1);
        let mut last_clock = i64::MIN;
        for (i, e) in generate(&cfg, 5_000).iter().enumerate() {
            assert_eq!(e.defect, None);
            assert!(follows_contract(&e.payload()), "event {i}: {e:?}");
            let v: Value = serde_json::from_slice(&e.payload()).expect("json");
            let event_type = v["event_type"].as_str().expect("event_type");
            assert!(
                EVENT_TYPES.iter().any(|(t, _)| *t == event_type),
                "{event_type}"
            );
            let user: u64 = v["user_id"]
                .as_str()
                .and_then(|u| u.strip_prefix('u'))
                .and_then(|n| n.parse().ok())
                .expect("u<n>");
            assert!((1..=cfg.users).contains(&user), "user {user}");
            let id = Uuid::parse_str(v["event_id"].as_str().expect("event_id")).expect("uuid");
            assert_eq!(id.get_version_num(), 4);
            assert!(v
                .get("session_id")
                .is_none_or(|s| s.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok())));
            assert!(["mobile", "desktop", "tablet"]
                .contains(&v["metadata"]["device"].as_str().expect("device")));
            assert!(v["metadata"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with('/')));
            let ts = v["timestamp"].as_i64().expect("epoch millis");
            assert!(e.clock_ms >= last_clock, "clock went back at event {i}");
            assert!(
                (e.clock_ms - 2_000..=e.clock_ms).contains(&ts),
                "event {i}: {ts} vs clock {}",
                e.clock_ms
            );
            last_clock = e.clock_ms;
        }
        // 1 ms per event: the clock covers the run.
        assert_eq!(last_clock, START_MS + 4_999);
    }

    #[test]
    fn live_clock_never_goes_back() {
        let mut generator = EventGenerator::new(&GeneratorConfig {
            step_ns: 0,
            ..config(2)
        })
        .expect("valid");
        assert_eq!(generator.next_event().clock_ms, START_MS);
        generator.advance_clock_to(START_MS + 500);
        assert_eq!(generator.next_event().clock_ms, START_MS + 500);
        generator.advance_clock_to(START_MS + 100);
        let e = generator.next_event();
        assert_eq!(e.clock_ms, START_MS + 500);
        assert!(e.event.timestamp_ms <= START_MS + 500);
    }

    #[test]
    fn sessions_last_2_to_20_events_and_some_events_have_none() {
        let mut generator = EventGenerator::new(&GeneratorConfig {
            users: 50,
            ..config(3)
        })
        .expect("valid");
        let events: Vec<_> = (0..10_000).map(|_| generator.next_event()).collect();
        let mut counts: HashMap<Uuid, u32> = HashMap::new();
        for id in events.iter().filter_map(|e| e.event.session_id) {
            *counts.entry(id).or_default() += 1;
        }
        let open: Vec<Uuid> = generator.sessions.values().map(|s| s.id).collect();
        let closed = counts.iter().filter(|(id, _)| !open.contains(id));
        assert!(
            closed.clone().count() > 500,
            "too few sessions: {}",
            counts.len()
        );
        for (id, n) in closed {
            assert!((2..=20).contains(n), "session {id} had {n} events");
        }
        assert!(counts.values().all(|n| *n <= 20));
        assert!(counts.values().any(|n| *n == 20) && counts.values().any(|n| *n == 2));
        let none = events
            .iter()
            .filter(|e| e.event.session_id.is_none())
            .count();
        assert!(
            (300..=700).contains(&none),
            "{none} of 10000 events without session"
        );
    }

    #[test]
    fn user_popularity_is_skewed() {
        let per_user = |zipf_s: f64| {
            let mut counts = vec![0u32; 1_000];
            for e in generate(
                &GeneratorConfig {
                    zipf_s,
                    ..config(4)
                },
                10_000,
            ) {
                let n: usize = e.event.user_id[1..].parse().expect("u<n>");
                counts[n - 1] += 1;
            }
            counts.sort_unstable();
            (counts[counts.len() - 1], counts[counts.len() / 2])
        };
        let (top, median) = per_user(1.1);
        assert!(
            top > 1_000 && top > 20 * median.max(1),
            "top {top}, median {median}"
        );
        let (top, median) = per_user(0.0);
        assert!(
            top < 40 && median >= 5,
            "uniform: top {top}, median {median}"
        );
    }

    #[test]
    fn invalid_fraction_is_honoured_and_defects_break_the_contract() {
        let events = generate(
            &GeneratorConfig {
                invalid_fraction: 0.2,
                ..config(5)
            },
            5_000,
        );
        let invalid = events.iter().filter(|e| e.defect.is_some()).count();
        assert!(
            (750..=1_250).contains(&invalid),
            "{invalid} of 5000 invalid"
        );
        for e in &events {
            assert_eq!(follows_contract(&e.payload()), e.defect.is_none(), "{e:?}");
        }
        for d in DEFECTS {
            assert!(events.iter().any(|e| e.defect == Some(d)), "no {d:?}");
        }
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(EventGenerator::new(&GeneratorConfig {
            invalid_fraction: 1.5,
            ..config(6)
        })
        .is_err());
        assert!(EventGenerator::new(&GeneratorConfig {
            zipf_s: -1.0,
            ..config(6)
        })
        .is_err());
        assert!(EventGenerator::new(&GeneratorConfig {
            users: 0,
            ..config(6)
        })
        .is_err());
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn args(flags: &[&str]) -> Result<ProduceArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("produce").chain(flags.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_parse_with_defaults_and_backfill_start() {
        let a = args(&[]).expect("defaults");
        assert_eq!(
            (a.count, a.rate, a.users, a.disorder_ms),
            (10_000, 1_000, 10_000, 2_000)
        );
        assert_eq!(
            (a.zipf_s, a.invalid_fraction, a.start, a.seed),
            (1.1, 0.0, None, None)
        );
        let cfg = GeneratorConfig::from_args(&a, 42, 0);
        assert_eq!((cfg.start_ms, cfg.step_ns), (42, 0));

        let a = args(&[
            "--start",
            "2024-03-13T10:00:00Z",
            "--rate",
            "250",
            "--seed",
            "9",
        ])
        .expect("ok");
        let cfg = GeneratorConfig::from_args(&a, 42, 9);
        assert_eq!((cfg.start_ms, cfg.step_ns), (START_MS, 4_000_000));
        assert!(args(&["--invalid-fraction", "1.5"]).is_err());
        assert!(args(&["--users", "0"]).is_err());
        assert!(args(&["--start", "yesterday"]).is_err());
    }

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
