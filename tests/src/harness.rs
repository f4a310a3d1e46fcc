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
#[derive(Clone)]
pub struct Stack {
    /// Settings with names unique to the test.
    pub settings: PipelineSettings,
    /// Base URL of the test's API.
    pub api: String,
    /// HTTP client; it sends [`Stack::key`] on every request.
    pub http: reqwest::Client,
    /// An admin API key generated for this test; [`setup`] stores it (named `e2e-<tag>`) in
    /// PostgreSQL, so the test's API (in-process or a spawned `tally all`) accepts it.
    pub key: String,
    /// SHA-256 of `key`.
    pub key_hash: [u8; 32],
    /// `key`'s display prefix.
    pub key_prefix: String,
}

pub fn stack(tag: &str) -> Stack {
    let secret = tally_api::auth::generate()
        .unwrap_or_else(|e| panic!("generating the test's API key: {e}"));
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
            topologies: shipped_topologies(),
        },
        api: String::new(),
        http: client_with_key(&secret.key),
        key: secret.key,
        key_hash: secret.key_hash,
        key_prefix: secret.key_prefix,
    }
}

/// An HTTP client that sends `Authorization: Bearer <key>` on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
        .unwrap_or_else(|e| panic!("a key is a valid header value: {e}"));
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_else(|e| panic!("building the HTTP client: {e}"))
}

/// Stores `st`'s admin key in PostgreSQL as `e2e-<tag>` (its pipeline name), unless stored.
pub async fn store_key(st: &Stack, pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let name = format!(
        "e2e-{}",
        st.settings.pipeline.name.trim_start_matches("e2e_")
    );
    if tally_sinks::postgres::keys::name_exists(pool, &name).await? {
        return Ok(());
    }
    let key = tally_sinks::postgres::keys::NewKey {
        name: &name,
        role: "admin",
        key_hash: &st.key_hash,
        key_prefix: &st.key_prefix,
    };
    let actor = tally_sinks::postgres::audit::Actor::cli();
    tally_sinks::postgres::keys::create(pool, key, &actor).await?;
    Ok(())
}

/// The topologies shipped in `topologies/*.toml` (`product_analytics` and `web_sessions`): every
/// end-to-end test runs both, side by side, as `tally run` does by default.
pub fn shipped_topologies() -> Vec<tally_core::Topology> {
    tally_topologies::file::shipped()
        .map(|files| files.into_iter().map(|f| f.topology).collect())
        .unwrap_or_else(|e| panic!("the shipped topology files do not load: {e}"))
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

/// The job settings matching a test's pipeline settings.
pub fn job_settings(settings: &PipelineSettings) -> tally_jobs::JobSettings {
    tally_jobs::JobSettings {
        clickhouse: settings.clickhouse.clone(),
        pipeline: settings.pipeline.name.clone(),
        topologies: settings.topologies.clone(),
        grace_ms: settings.pipeline.grace_ms,
        retention_check_secs: settings.pipeline.retention_check_secs,
        concurrency: 2,
    }
}

/// Runs a job worker for the test's pipeline on `rt` until the returned flag is set.
pub fn start_worker(
    settings: &PipelineSettings,
    rt: &tokio::runtime::Runtime,
) -> (
    Arc<AtomicBool>,
    tokio::task::JoinHandle<Result<(), tally_jobs::JobsError>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let (job_settings, postgres) = (job_settings(settings), settings.postgres.clone());
    let task = rt.spawn(async move {
        let pool = tally_sinks::postgres::connect(&postgres).await?;
        let until = async move {
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tally_jobs::run_worker(job_settings, pool, until).await
    });
    (stop, task)
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

/// Waits (at most 120 s) until every window of `window` (label, length in ms) ending by
/// `until` is final and acknowledged (`complete_until >= until`), failing early if the
/// pipeline stops.
pub async fn wait_final(
    st: &Stack,
    pipeline: &JoinHandle<Result<(), tally_pipeline::PipelineError>>,
    (window, window_ms): (&str, u64),
    until: u64,
) -> anyhow::Result<()> {
    crate::eventually(
        "windows final",
        std::time::Duration::from_secs(120),
        || async {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            let r = report(st, "events", window, until - window_ms, until, None).await?;
            let cu = r["complete_until"]
                .as_str()
                .ok_or_else(|| anyhow!("complete_until is null"))?;
            let cu = DateTime::parse_from_rfc3339(cu)?.timestamp_millis() as u64;
            ensure!(cu >= until, "complete_until {cu} < {until}");
            Ok(())
        },
    )
    .await
}

/// `/reports/summary` over `[from, to)`, all events and `signup` only, equals the oracle.
pub async fn check_summary(st: &Stack, evs: &[Ev], from: u64, to: u64) -> anyhow::Result<()> {
    check_summary_for(st, evs, from, to, &[None, Some("signup")]).await
}

/// `/reports/summary` over `[from, to)` equals the oracle for each event-type filter.
pub async fn check_summary_for(
    st: &Stack,
    evs: &[Ev],
    from: u64,
    to: u64,
    filters: &[Option<&str>],
) -> anyhow::Result<()> {
    let iso = |ms: u64| {
        DateTime::<Utc>::from_timestamp_millis(ms as i64)
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_default()
    };
    for &filter in filters {
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
        ensure!(
            got == want,
            "summary [{from}, {to}) {filter:?}: got {got}, want {want}"
        );
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
        for t in &s.topologies {
            tally_sinks::clickhouse::topology_schema::migrate_topology(&s.clickhouse, t).await?;
        }
        let pool = tally_sinks::postgres::connect(&s.postgres).await?;
        tally_jobs::migrate(&pool).await?;
        tally_sinks::postgres::migrate(&pool).await?;
        store_key(&st, &pool).await?;
        let state = AppState {
            config: Arc::new(ApiConfig::default()),
            kafka: Arc::new(tally_api::KafkaTarget {
                topic: s.kafka.topic.clone(),
                produce_timeout_ms: s.kafka.produce_timeout_ms,
                max_message_bytes: s.kafka.max_message_bytes,
            }),
            topologies: Arc::new(s.topologies.clone()),
            producer: tally_pipeline::kafka::producer_config(&s.kafka).create()?,
            clickhouse: tally_sinks::clickhouse::connect_reader(&s.clickhouse),
            keys: tally_api::auth::KeyStore::postgres(pool.clone()),
            limiters: Arc::new(tally_api::limits::Limiters::new(&ApiConfig::default())),
            request_log: tally_api::request_log::RequestLog::start(
                pool.clone(),
                &ApiConfig::default(),
            ),
            postgres: pool,
            pipeline_name: s.pipeline.name.clone(),
            grace_ms: s.pipeline.grace_ms,
            retention_days: 365,
            pipeline: None,
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

/// The `tally` binary the workspace built (`cargo build` puts it beside the test binaries), or
/// `TALLY_BIN`.
pub fn tally_binary() -> anyhow::Result<std::path::PathBuf> {
    let path = match std::env::var("TALLY_BIN") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => {
            // target/debug/deps/<test>-<hash> -> target/debug/tally
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(|deps| deps.parent())
                .map(|d| d.join("tally"))
                .ok_or_else(|| anyhow!("no target dir"))?
        }
    };
    ensure!(
        path.exists(),
        "{} not found: run `cargo build` first (or set TALLY_BIN)",
        path.display()
    );
    Ok(path)
}

/// `tally <subcommand>` configured by environment for this test's names (in a work directory
/// without a tally.toml), writing to ClickHouse at `clickhouse_url`. Add `.stderr(...)` etc.
pub fn tally_command(
    st: &Stack,
    subcommand: &str,
    clickhouse_url: &str,
) -> anyhow::Result<std::process::Command> {
    let s = &st.settings;
    let workdir = std::env::temp_dir().join(format!("tally-e2e-{}", s.pipeline.name));
    std::fs::create_dir_all(&workdir)?;
    let mut c = std::process::Command::new(tally_binary()?);
    c.arg(subcommand)
        .current_dir(&workdir)
        .env("TALLY_KAFKA__BROKERS", &s.kafka.brokers)
        .env("TALLY_KAFKA__TOPIC", &s.kafka.topic)
        .env("TALLY_KAFKA__DLQ_TOPIC", &s.kafka.dlq_topic)
        .env("TALLY_CLICKHOUSE__URL", clickhouse_url)
        .env("TALLY_CLICKHOUSE__DATABASE", &s.clickhouse.database)
        .env(
            "TALLY_CLICKHOUSE__BATCH_MS",
            s.clickhouse.batch_ms.to_string(),
        )
        .env("TALLY_POSTGRES__URL", &s.postgres.url)
        .env("TALLY_PIPELINE__NAME", &s.pipeline.name)
        .env(
            "TALLY_PIPELINE__IDLE_TIMEOUT_MS",
            s.pipeline.idle_timeout_ms.to_string(),
        )
        .env(
            "TALLY_PIPELINE__PROVISIONAL_INTERVAL_MS",
            s.pipeline.provisional_interval_ms.to_string(),
        )
        .env(
            "TALLY_PIPELINE__COMMIT_INTERVAL_MS",
            s.pipeline.commit_interval_ms.to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    Ok(c)
}

/// Writes `evs` straight to the test's Kafka topic (key = user), acknowledged by every replica.
pub async fn produce(st: &Stack, evs: &[Ev]) -> anyhow::Result<()> {
    let producer: rdkafka::producer::FutureProducer =
        tally_pipeline::kafka::producer_config(&st.settings.kafka).create()?;
    send_events(&producer, &st.settings.kafka.topic, evs).await
}

/// Sends `evs` to `topic` (key = user) concurrently; fails on the first unacknowledged one.
pub async fn send_events(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    evs: &[Ev],
) -> anyhow::Result<()> {
    let sends = evs.iter().map(|e| {
        let payload = e.json().to_string();
        async move {
            let record = rdkafka::producer::FutureRecord::to(topic)
                .key(&e.user)
                .payload(&payload);
            producer
                .send(record, std::time::Duration::from_secs(10))
                .await
                .map_err(|(e, _)| e)
        }
    });
    for result in futures::future::join_all(sends).await {
        result?;
    }
    Ok(())
}

/// Waits up to `timeout` for `child` to exit; kills it and fails if it does not.
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("process did not exit within {timeout:?} (killed)");
        }
        // Polling a condition (the child's exit) with a deadline, as the lint asks.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// The fault suite's tools (tests/tests/chaos.rs): a private stack it may kill, freeze and
// restart, a steady load with deliberate duplicates, and readings of a running `tally`.

/// A service of a [`PrivateStack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Kafka,
    ClickHouse,
    Postgres,
}

/// A second local stack (`deploy/local/stack.sh` with its own `TALLY_HOME` and ports) that the
/// fault suite may break without disturbing the shared one. Its pids are the ones stack.sh
/// records, checked against the process's command line as stack.sh does.
#[derive(Clone, Debug)]
pub struct PrivateStack {
    /// Its `TALLY_HOME` (`TALLY_CHAOS_HOME`, default `<shared TALLY_HOME>/chaos`).
    pub home: std::path::PathBuf,
    /// The shared stack's `TALLY_HOME`, whose Kafka jars are reused.
    shared_home: std::path::PathBuf,
    repo: std::path::PathBuf,
    /// stack.sh's port variables and their values.
    ports: Vec<(&'static str, u16)>,
}

/// Waits for process `$1` to end, then stops the stack (`$2` is stack.sh) under its lock (`$3`).
const WATCHDOG: &str =
    r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done; exec flock "$3" bash "$2" down"#;

/// stack.sh's port variables, the fault suite's variable for each, and its default.
const PRIVATE_PORTS: [(&str, &str, u16); 6] = [
    ("TALLY_KAFKA_PORT", "TALLY_CHAOS_KAFKA_PORT", 19092),
    (
        "TALLY_KAFKA_CONTROLLER_PORT",
        "TALLY_CHAOS_KAFKA_CONTROLLER_PORT",
        19093,
    ),
    (
        "TALLY_CLICKHOUSE_HTTP_PORT",
        "TALLY_CHAOS_CLICKHOUSE_HTTP_PORT",
        18123,
    ),
    (
        "TALLY_CLICKHOUSE_TCP_PORT",
        "TALLY_CHAOS_CLICKHOUSE_TCP_PORT",
        19000,
    ),
    (
        "TALLY_CLICKHOUSE_INTERSERVER_PORT",
        "TALLY_CHAOS_CLICKHOUSE_INTERSERVER_PORT",
        19009,
    ),
    ("TALLY_PG_PORT", "TALLY_CHAOS_PG_PORT", 15432),
];

impl PrivateStack {
    /// Where the private stack lives and listens, from `TALLY_CHAOS_*` variables.
    pub fn from_env() -> anyhow::Result<PrivateStack> {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or_else(|| anyhow!("no repository root"))?
            .to_path_buf();
        let shared_home = std::env::var("TALLY_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| repo.join(".tally"));
        let home = std::env::var("TALLY_CHAOS_HOME")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| shared_home.join("chaos"));
        ensure!(
            home != shared_home,
            "TALLY_CHAOS_HOME must differ from TALLY_HOME"
        );
        let mut ports = Vec::new();
        for (var, own, default) in PRIVATE_PORTS {
            ports.push((var, env_or(own, &default.to_string()).parse()?));
        }
        Ok(PrivateStack {
            home,
            shared_home,
            repo,
            ports,
        })
    }

    fn port(&self, var: &str) -> u16 {
        self.ports
            .iter()
            .find(|(v, _)| *v == var)
            .map_or(0, |(_, p)| *p)
    }

    /// Kafka bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port("TALLY_KAFKA_PORT"))
    }

    /// ClickHouse HTTP URL.
    pub fn clickhouse_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.port("TALLY_CLICKHOUSE_HTTP_PORT")
        )
    }

    /// PostgreSQL URL.
    pub fn postgres_url(&self) -> String {
        format!(
            "postgres://tally@127.0.0.1:{}/tally",
            self.port("TALLY_PG_PORT")
        )
    }

    /// `program` with this stack's environment (what stack.sh reads).
    fn command(&self, program: &str) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.env("TALLY_HOME", &self.home)
            .env("TALLY_STOP_TIMEOUT", "10")
            .stdin(std::process::Stdio::null());
        for (var, port) in &self.ports {
            c.env(var, port.to_string());
        }
        c
    }

    fn stack_sh(&self) -> std::path::PathBuf {
        self.repo.join("deploy/local/stack.sh")
    }

    /// Runs `stack.sh <command>` to its end.
    pub fn run(&self, command: &str) -> anyhow::Result<()> {
        let out = self
            .command("bash")
            .arg(self.stack_sh())
            .arg(command)
            .output()?;
        ensure!(
            out.status.success(),
            "stack.sh {command} ({}): {}\n{}",
            self.home.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts the stack from empty data (`reset`, then `up`), reusing the shared stack's Kafka
    /// jars, and leaves a watchdog that runs `stack.sh down` once this process has exited
    /// (passed, failed or killed), so the stack never outlives the suite.
    ///
    /// The returned file holds an exclusive lock on `<home>.lock` (the watchdog takes it too):
    /// keep it for as long as the stack is used, so that two suites (two `cargo test` runs)
    /// take turns instead of breaking each other's services.
    pub fn start(&self) -> anyhow::Result<std::fs::File> {
        let lock_path = self.home.with_extension("lock");
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        if lock.try_lock().is_err() {
            eprintln!(
                "waiting for another fault suite to finish with {}",
                self.home.display()
            );
            lock.lock()?;
        }
        let jars = self.shared_home.join("kafka/libs");
        let own = self.home.join("kafka/libs");
        std::fs::create_dir_all(self.home.join("kafka"))?;
        if jars.join(".tally-kafka").exists() && std::fs::symlink_metadata(&own).is_err() {
            std::os::unix::fs::symlink(&jars, &own)?;
        }
        self.run("reset")?;
        self.run("up")?;
        // Its own session, so the end of this process (or a Ctrl-C to it) does not take it down.
        let log = std::fs::File::create(self.home.join("log/watchdog.log"))?;
        self.command("setsid")
            .args(["bash", "-c", WATCHDOG, "watchdog"])
            .arg(std::process::id().to_string())
            .arg(self.stack_sh())
            .arg(&lock_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(lock)
    }

    /// `stack.sh up`: starts whatever is down, waits until it answers.
    pub fn up(&self) -> anyhow::Result<()> {
        self.run("up")
    }

    /// The pid stack.sh recorded for `service`, if that process still runs.
    pub fn pid(&self, service: Service) -> anyhow::Result<u32> {
        let (pidfile, marker) = match service {
            Service::Kafka => (
                self.home.join("run/kafka.pid"),
                self.home
                    .join("kafka/server.properties")
                    .display()
                    .to_string(),
            ),
            Service::ClickHouse => (
                self.home.join("run/clickhouse.pid"),
                format!("--path={}/", self.home.join("clickhouse/data").display()),
            ),
            Service::Postgres => (
                self.home.join("pg/postmaster.pid"),
                self.home.join("pg").display().to_string(),
            ),
        };
        let text = std::fs::read_to_string(&pidfile)?;
        let pid: u32 = text.lines().next().unwrap_or("").trim().parse()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        ensure!(
            cmdline.contains(&marker) && process_alive(pid),
            "{service:?}: pid {pid} is not ours"
        );
        Ok(pid)
    }

    /// Sends `signal` (e.g. `KILL`, `STOP`, `CONT`, `QUIT`) to `service`; returns its pid.
    pub fn signal(&self, service: Service, signal: &str) -> anyhow::Result<u32> {
        let pid = self.pid(service)?;
        send_signal(pid, signal)?;
        Ok(pid)
    }

    /// Sends `signal` to `service` and waits (at most 30 s) until the process is gone.
    pub fn kill(&self, service: Service, signal: &str) -> anyhow::Result<()> {
        let pid = self.signal(service, signal)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while process_alive(pid) {
            ensure!(
                std::time::Instant::now() < deadline,
                "{service:?} (pid {pid}) still runs 30 s after SIG{signal}"
            );
            // Polling a condition (the process gone) with a deadline, as the lint asks.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }
}

/// `kill -s <signal> <pid>`.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -s {signal} {pid}: {status}");
    Ok(())
}

/// Whether `pid` runs. A zombie does not, unless other threads of it are still exiting: a killed
/// multi-threaded process (a JVM) shows its leader as a zombie while they still hold its sockets.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie || std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| tasks.count() > 1)
}

/// Resident memory of `pid`, in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kib * 1024)
}

/// The sum over all label sets of metric `name` at `base/metrics`.
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await?;
    let mut sum = 0.0;
    for line in text.lines().filter(|l| l.starts_with(name)) {
        let rest = &line[name.len()..];
        if rest.starts_with(' ') || rest.starts_with('{') {
            let value = rest.rsplit(' ').next().unwrap_or("");
            sum += value.parse::<f64>()?;
        }
    }
    Ok(sum)
}

/// Every event once: the first copy of each `event_id` (copies are identical); events without
/// one are distinct (the pipeline derives their id from their Kafka position).
pub fn distinct(evs: &[Ev]) -> Vec<Ev> {
    let mut seen = BTreeSet::new();
    evs.iter()
        .filter(|e| e.id.as_ref().is_none_or(|id| seen.insert(id.clone())))
        .cloned()
        .collect()
}

/// A steady load written straight to the test's topic: about `per_sec` events a second stamped
/// up to 2 s before their send, a tenth of them re-sends of an earlier event with an id (what a
/// retrying client does). Kafka must stay up while it runs: a failed send ends it with an error.
pub struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<Ev>>>,
}

impl Load {
    /// Starts the load on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime, st: &Stack, per_sec: u64, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kafka = st.settings.kafka.clone();
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&acked));
        let task = rt.spawn(async move {
            use rdkafka::producer::FutureProducer;
            use std::sync::atomic::Ordering;
            let producer: FutureProducer =
                tally_pipeline::kafka::producer_config(&kafka).create()?;
            let mut rng = Rng(seed | 1);
            let mut sent: Vec<Ev> = Vec::new();
            let mut with_id: Vec<usize> = Vec::new();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            let per_tick = per_sec.div_ceil(10).max(1);
            while !flag.load(Ordering::SeqCst) {
                tick.tick().await;
                let now = Utc::now().timestamp_millis() as u64;
                let mut batch: Vec<Ev> = Vec::new();
                for i in 0..per_tick {
                    batch.push(match with_id.len() {
                        n if n > 0 && rng.next(10) == 0 => {
                            sent[with_id[rng.next(n as u64) as usize]].clone()
                        }
                        // Unique: one id per position in the whole load.
                        _ => load_event(&mut rng, seed, sent.len() as u64 + i, now),
                    });
                }
                send_events(&producer, &kafka.topic, &batch).await?;
                for e in batch {
                    if e.id.is_some() {
                        with_id.push(sent.len());
                    }
                    sent.push(e);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(sent)
        });
        Load { stop, acked, task }
    }

    /// Events Kafka acknowledged so far (copies included).
    pub fn acked(&self) -> usize {
        self.acked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the load; every copy Kafka acknowledged, in send order.
    pub fn finish(self, rt: &tokio::runtime::Runtime) -> anyhow::Result<Vec<Ev>> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        rt.block_on(self.task)?
    }
}

/// One new event of a [`Load`], stamped up to 2 s before `now_ms`.
fn load_event(rng: &mut Rng, seed: u64, n: u64, now_ms: u64) -> Ev {
    let types = ["page_view", "click", "signup", "purchase", "search"];
    let user = rng.next(40);
    Ev {
        id: (rng.next(4) != 0).then(|| format!("load-{seed}-{n}")),
        event_type: types[rng.next(types.len() as u64) as usize].to_owned(),
        user: format!("user-{user}"),
        session: (rng.next(5) != 0).then(|| format!("s-{user}-{}", rng.next(3))),
        ts_ms: now_ms - rng.next(2_000),
    }
}
