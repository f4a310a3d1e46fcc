//! The shared harness of the end-to-end tests: a deterministic event generator independent of
//! the product's, an oracle that computes every aggregate by brute force, and helpers to set up
//! a test's own topic, database and API and to compare reports with the oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, ensure};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tally_api::{ApiConfig, AppState};
use tally_pipeline::kafka::KafkaConfig;
use tally_pipeline::{PipelineConfig, PipelineSettings};
use tally_sinks::clickhouse::ClickHouseConfig;
use tally_sinks::postgres::PostgresConfig;

use crate::env_or;

/// One test event, as the oracle sees it.
#[derive(Clone, Debug)]
pub struct Ev {
    pub id: Option<String>,
    pub event_type: String,
    pub user: String,
    pub session: Option<String>,
    pub ts_ms: u64,
}

impl Ev {
    /// The event as producers send it.
    pub fn json(&self) -> Value {
        let mut v = json!({
            "event_type": self.event_type,
            "user_id": self.user,
            "timestamp": DateTime::<Utc>::from_timestamp_millis(self.ts_ms as i64).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
            "metadata": {"path": "/p"},
        });
        if let Some(id) = &self.id {
            v["event_id"] = json!(id);
        }
        if let Some(s) = &self.session {
            v["session_id"] = json!(s);
        }
        v
    }
}

/// A small deterministic generator (xorshift), independent of the product's load generator.
pub struct Rng(pub u64);
impl Rng {
    /// A number in `0..n`.
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `count` events spread over `[start, start + span)`, shuffled within 3 s (less than the
/// 5 s out-of-orderness bound, so none is late), users and sessions heavily repeated.
pub fn events(rng: &mut Rng, start: u64, span: u64, count: usize) -> Vec<Ev> {
    let types = ["page_view", "click", "signup", "purchase", "search"];
    let mut out: Vec<Ev> = (0..count)
        .map(|i| {
            let user = rng.next(40);
            let ts_ms = start + (span * i as u64) / count as u64;
            Ev {
                id: (rng.next(4) != 0).then(|| format!("e2e-{start}-{i}")),
                event_type: types[rng.next(types.len() as u64) as usize].to_owned(),
                user: format!("user-{user}"),
                session: (rng.next(5) != 0).then(|| format!("s-{user}-{}", rng.next(3))),
                ts_ms,
            }
        })
        .collect();
    // Disorder: swap neighbours less than 3 s apart.
    for i in 1..out.len() {
        if rng.next(3) == 0 && out[i].ts_ms - out[i - 1].ts_ms < 3_000 {
            out.swap(i, i - 1);
        }
    }
    out
}

/// The oracle: values per (window, start, event type filter).
pub fn oracle(evs: &[Ev], window_ms: u64, event_type: Option<&str>) -> BTreeMap<u64, [u64; 4]> {
    let mut groups: BTreeMap<u64, Vec<&Ev>> = BTreeMap::new();
    for e in evs
        .iter()
        .filter(|e| event_type.is_none_or(|t| t == e.event_type))
    {
        groups
            .entry(e.ts_ms - e.ts_ms % window_ms)
            .or_default()
            .push(e);
    }
    groups
        .into_iter()
        .map(|(start, es)| {
            let users: BTreeSet<&str> = es.iter().map(|e| e.user.as_str()).collect();
            let sessions: BTreeSet<&str> = es.iter().filter_map(|e| e.session.as_deref()).collect();
            let types: BTreeSet<&str> = es.iter().map(|e| e.event_type.as_str()).collect();
            (
                start,
                [
                    es.len() as u64,
                    users.len() as u64,
                    sessions.len() as u64,
                    types.len() as u64,
                ],
            )
        })
        .collect()
}

/// One test's pipeline settings (unique topic, database, pipeline name) and its API.
pub struct Stack {
    /// Settings with names unique to the test.
    pub settings: PipelineSettings,
    /// Base URL of the test's API.
    pub api: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

pub fn stack(tag: &str) -> Stack {
    let kafka = KafkaConfig {
        brokers: env_or("TALLY_KAFKA__BROKERS", "127.0.0.1:9092"),
        topic: format!("e2e_{tag}"),
        dlq_topic: format!("e2e_{tag}.dlq"),
        ..KafkaConfig::default()
    };
    let clickhouse = ClickHouseConfig {
        url: env_or("TALLY_CLICKHOUSE__URL", "http://127.0.0.1:8123"),
        database: format!("tally_e2e_{tag}"),
        batch_ms: 300,
        ..ClickHouseConfig::default()
    };
    let postgres = PostgresConfig {
        url: env_or(
            "TALLY_POSTGRES__URL",
            "postgres://tally@127.0.0.1:5432/tally",
        ),
        ..PostgresConfig::default()
    };
    let pipeline = PipelineConfig {
        name: format!("e2e_{tag}"),
        workers: 2,
        idle_timeout_ms: 2_000,
        provisional_interval_ms: 500,
        commit_interval_ms: 300,
        ..PipelineConfig::default()
    };
    Stack {
        settings: PipelineSettings {
            kafka,
            clickhouse,
            postgres,
            pipeline,
        },
        api: String::new(),
        http: reqwest::Client::new(),
    }
}

pub fn start_pipeline(
    settings: &PipelineSettings,
    rt: &tokio::runtime::Runtime,
) -> (
    Arc<AtomicBool>,
    JoinHandle<Result<(), tally_pipeline::PipelineError>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, h, flag) = (settings.clone(), rt.handle().clone(), Arc::clone(&stop));
    (
        stop,
        std::thread::spawn(move || tally_pipeline::run(s, h, flag)),
    )
}

pub async fn report(
    st: &Stack,
    metric: &str,
    window: &str,
    from: u64,
    to: u64,
    event_type: Option<&str>,
) -> anyhow::Result<Value> {
    let iso = |ms: u64| {
        DateTime::<Utc>::from_timestamp_millis(ms as i64)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    let mut url = format!(
        "{}/reports?metric={metric}&window={window}&from={}&to={}",
        st.api,
        iso(from),
        iso(to)
    );
    if let Some(t) = event_type {
        url.push_str(&format!("&event_type={t}"));
    }
    let resp = st.http.get(&url).send().await?;
    ensure!(resp.status() == 200, "{url}: {}", resp.status());
    Ok(resp.json().await?)
}

/// Every point of every metric, window and filter equals the oracle.
pub async fn check_reports(st: &Stack, evs: &[Ev], from: u64, to: u64) -> anyhow::Result<()> {
    let metrics = [
        "events",
        "unique_users",
        "unique_sessions",
        "unique_event_types",
    ];
    for (window, ms) in [("1m", 60_000u64), ("1h", 3_600_000), ("1d", 86_400_000)] {
        for filter in [None, Some("click"), Some("purchase")] {
            let want = oracle(evs, ms, filter);
            for (mi, metric) in metrics.iter().enumerate() {
                if filter.is_some() && *metric == "unique_event_types" {
                    continue;
                }
                let got = report(st, metric, window, from, to, filter).await?;
                let points = got["points"]
                    .as_array()
                    .ok_or_else(|| anyhow!("no points"))?;
                let first = from - from % ms;
                ensure!(
                    points.len() as u64 == (to - first).div_ceil(ms),
                    "{window}: {} points",
                    points.len()
                );
                for p in points {
                    let start =
                        DateTime::parse_from_rfc3339(p["window_start"].as_str().unwrap_or(""))?
                            .timestamp_millis() as u64;
                    let expected = want.get(&start).map_or(0, |v| v[mi]);
                    let value = p["value"].as_u64().unwrap_or(u64::MAX);
                    ensure!(
                        value == expected,
                        "{metric} {window} {filter:?} at {start}: got {value}, want {expected}"
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn check_summary(st: &Stack, evs: &[Ev], from: u64, to: u64) -> anyhow::Result<()> {
    let iso = |ms: u64| {
        DateTime::<Utc>::from_timestamp_millis(ms as i64)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    for filter in [None, Some("signup")] {
        let sel: Vec<&Ev> = evs
            .iter()
            .filter(|e| e.ts_ms >= from && e.ts_ms < to && filter.is_none_or(|t| t == e.event_type))
            .collect();
        let want = json!({
            "events": sel.len(),
            "unique_users": sel.iter().map(|e| &e.user).collect::<BTreeSet<_>>().len(),
            "unique_sessions": sel.iter().filter_map(|e| e.session.as_ref()).collect::<BTreeSet<_>>().len(),
            "unique_event_types": sel.iter().map(|e| &e.event_type).collect::<BTreeSet<_>>().len(),
        });
        let mut url = format!(
            "{}/reports/summary?from={}&to={}",
            st.api,
            iso(from),
            iso(to)
        );
        if let Some(t) = filter {
            url.push_str(&format!("&event_type={t}"));
        }
        let got: Value = st.http.get(&url).send().await?.json().await?;
        ensure!(got == want, "summary {filter:?}: got {got}, want {want}");
    }
    Ok(())
}

pub async fn post(st: &Stack, body: &Value) -> anyhow::Result<(u16, Value)> {
    let resp = st
        .http
        .post(format!("{}/events", st.api))
        .json(body)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

/// Creates the test's topics, ClickHouse database and PostgreSQL tables, and starts its API on an
/// ephemeral port; returns the runtime everything runs on and the stack.
pub fn setup(tag: &str) -> anyhow::Result<(tokio::runtime::Runtime, Stack)> {
    let mut st = stack(tag);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let s = st.settings.clone();
    let addr = rt.block_on(async {
        tally_pipeline::kafka::ensure_topics(&s.kafka).await?;
        tally_sinks::clickhouse::migrate(&s.clickhouse).await?;
        let pool = tally_sinks::postgres::connect(&s.postgres).await?;
        tally_sinks::postgres::migrate(&pool).await?;
        let state = AppState {
            config: Arc::new(ApiConfig::default()),
            kafka: Arc::new(s.kafka.clone()),
            producer: tally_pipeline::kafka::producer_config(&s.kafka).create()?,
            clickhouse: tally_sinks::clickhouse::connect(&s.clickhouse, true),
            postgres: pool,
            pipeline_name: s.pipeline.name.clone(),
            grace_ms: s.pipeline.grace_ms,
            retention_days: 365,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(tally_api::serve(
            listener,
            tally_api::router(state),
            std::future::pending(),
        ));
        anyhow::Ok(addr)
    })?;
    st.api = format!("http://{addr}");
    Ok((rt, st))
}

/// Drops the test's ClickHouse database.
pub fn teardown(rt: &tokio::runtime::Runtime, st: &Stack) -> anyhow::Result<()> {
    rt.block_on(async {
        let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, false);
        let sql = format!(
            "DROP DATABASE IF EXISTS {}",
            st.settings.clickhouse.database
        );
        ch.query(&sql).execute().await
    })?;
    Ok(())
}

/// A tag unique to one test run, for topic, database and pipeline names.
pub fn unique_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
