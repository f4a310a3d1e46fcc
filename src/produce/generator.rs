//! [`EventGenerator`]: seedable, pure generation of synthetic user events (`docs/events.md`).
//! Owns the RNG and the event clock; no I/O.

use std::collections::HashMap;

use anyhow::{ensure, Context as _};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::args::ProduceArgs;

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

#[cfg(test)]
pub(super) mod tests;
