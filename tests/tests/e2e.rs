//! End to end on the real stack: events posted over HTTP and written straight to Kafka flow
//! through the pipeline into ClickHouse; every report point and summary must equal an
//! independent computation over the input; invalid input is rejected or dead-lettered with a
//! reason; a restart of the pipeline neither loses nor double-counts anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tally_api::{ApiConfig, AppState};
use tally_pipeline::kafka::KafkaConfig;
use tally_pipeline::{PipelineConfig, PipelineSettings};
use tally_sinks::clickhouse::ClickHouseConfig;
use tally_sinks::postgres::PostgresConfig;
use tally_tests::{enabled, env_or, eventually};

/// One test event, as the oracle sees it.
#[derive(Clone, Debug)]
struct Ev {
    id: Option<String>,
    event_type: String,
    user: String,
    session: Option<String>,
    ts_ms: u64,
}

impl Ev {
    fn json(&self) -> Value {
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
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `count` events spread over `[start, start + span)`, shuffled within 3 s (less than the
/// 5 s out-of-orderness bound, so none is late), users and sessions heavily repeated.
fn events(rng: &mut Rng, start: u64, span: u64, count: usize) -> Vec<Ev> {
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
fn oracle(evs: &[Ev], window_ms: u64, event_type: Option<&str>) -> BTreeMap<u64, [u64; 4]> {
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

struct Stack {
    settings: PipelineSettings,
    api: String,
    http: reqwest::Client,
}

fn stack(tag: &str) -> Stack {
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

fn start_pipeline(
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

async fn report(
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
async fn check_reports(st: &Stack, evs: &[Ev], from: u64, to: u64) -> anyhow::Result<()> {
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

async fn check_summary(st: &Stack, evs: &[Ev], from: u64, to: u64) -> anyhow::Result<()> {
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

async fn post(st: &Stack, body: &Value) -> anyhow::Result<(u16, Value)> {
    let resp = st
        .http
        .post(format!("{}/events", st.api))
        .json(body)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.json().await?))
}

#[test]
fn events_flow_to_exact_reports_across_a_restart() -> anyhow::Result<()> {
    if !enabled("events_flow_to_exact_reports_across_a_restart") {
        return Ok(());
    }
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut st = stack(&tag);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let s = st.settings.clone();
    rt.block_on(async {
        tally_pipeline::kafka::ensure_topics(&s.kafka).await?;
        tally_sinks::clickhouse::migrate(&s.clickhouse).await?;
        let pool = tally_sinks::postgres::connect(&s.postgres).await?;
        tally_sinks::postgres::migrate(&pool).await?;
        anyhow::Ok(())
    })?;
    // The API, on an ephemeral port.
    let api_addr = rt.block_on(async {
        let state = AppState {
            config: Arc::new(ApiConfig::default()),
            kafka: Arc::new(s.kafka.clone()),
            producer: tally_pipeline::kafka::producer_config(&s.kafka).create()?,
            clickhouse: tally_sinks::clickhouse::connect(&s.clickhouse, true),
            postgres: tally_sinks::postgres::connect(&s.postgres).await?,
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
    st.api = format!("http://{api_addr}");
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);

    let now = Utc::now().timestamp_millis() as u64;
    let start = now - now % 3_600_000 - 2 * 3_600_000; // two hours before this hour began
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ start);
    let mut all = events(&mut rng, start, 90 * 60_000, 1_500);

    rt.block_on(async {
        // Over HTTP in batches, with invalid entries mixed in.
        for chunk in all[..1_000].chunks(250) {
            let mut body: Vec<Value> = chunk.iter().map(Ev::json).collect();
            body.push(json!({"event_type": "click", "timestamp": now}));
            body.push(
                json!({"event_type": "click", "user_id": "u", "timestamp": now + 2 * 86_400_000}),
            );
            let (status, resp) = post(&st, &Value::Array(body)).await?;
            ensure!(status == 400, "mixed batch: status {status}");
            ensure!(resp["accepted"] == json!(chunk.len()), "accepted: {resp}");
            let reasons: Vec<&str> = resp["rejected"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["reason"].as_str())
                .collect();
            ensure!(
                reasons
                    == [
                        "`user_id` is required",
                        "`timestamp` is more than 1 day in the future"
                    ],
                "{reasons:?}"
            );
        }
        let (status, _) = post(&st, &json!(vec![all[0].json(); 1_001])).await?;
        ensure!(status == 413, "1001 events: status {status}");
        // Straight to Kafka, with malformed messages among them.
        let producer: FutureProducer =
            tally_pipeline::kafka::producer_config(&st.settings.kafka).create()?;
        let topic = st.settings.kafka.topic.clone();
        for e in &all[1_000..] {
            let payload = e.json().to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&e.user).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        for bad in [
            "{not json",
            r#"{"event_type":"x","user_id":"u","timestamp":1,"extra":true}"#,
        ] {
            producer
                .send(
                    FutureRecord::<str, str>::to(&topic).payload(bad),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)?;
        }
        anyhow::Ok(())
    })?;

    let (from, to) = (start - 60_000, start + 3 * 3_600_000);
    rt.block_on(eventually(
        "reports match the oracle",
        Duration::from_secs(90),
        || async {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            check_reports(&st, &all, from, to).await
        },
    ))?;
    rt.block_on(eventually(
        "summary matches the oracle",
        Duration::from_secs(30),
        || check_summary(&st, &all, start, start + 90 * 60_000),
    ))?;

    // Dead letters carry their reason.
    let dlq: BaseConsumer = tally_pipeline::kafka::client_config(&st.settings.kafka)
        .set("group.id", format!("e2e-dlq-{tag}"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    dlq.subscribe(&[&st.settings.kafka.dlq_topic])?;
    let mut reasons = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reasons.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(500)) {
            let headers = m.headers().context("dead letter without headers")?;
            let reason = headers
                .iter()
                .find(|h| h.key == "tally.dlq.reason")
                .and_then(|h| h.value)
                .context("no reason header")?;
            reasons.push(String::from_utf8_lossy(reason).into_owned());
        }
    }
    reasons.sort();
    ensure!(reasons.len() == 2, "dead letters: {reasons:?}");
    ensure!(
        reasons[0].starts_with("not valid JSON") && reasons[1].contains("unknown field `extra`"),
        "{reasons:?}"
    );

    // Restart: stop (drain and save progress), start again, add events, and everything must
    // still match: nothing lost, nothing counted twice.
    stop.store(true, Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    let more = events(&mut rng, start + 95 * 60_000, 20 * 60_000, 300);
    rt.block_on(async {
        for chunk in more.chunks(300) {
            let (status, resp) = post(&st, &Value::Array(chunk.iter().map(Ev::json).collect())).await?;
            ensure!(status == 202, "{status} {resp}");
        }
        // A current event moves the watermark past every window above, so they close.
        let (status, _) = post(&st, &json!({"event_type": "page_view", "user_id": "late-user", "timestamp": now, "event_id": format!("pusher-{tag}")})).await?;
        ensure!(status == 202);
        anyhow::Ok(())
    })?;
    all.extend(more);
    all.push(Ev {
        id: None,
        event_type: "page_view".into(),
        user: "late-user".into(),
        session: None,
        ts_ms: now,
    });
    let to = now + 60_000;
    rt.block_on(eventually(
        "reports match after restart",
        Duration::from_secs(90),
        || async {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            check_reports(&st, &all, from, to).await
        },
    ))?;
    rt.block_on(eventually(
        "summary matches after restart",
        Duration::from_secs(30),
        || check_summary(&st, &all, from, to),
    ))?;
    // Every event was within the out-of-orderness bound, and replay after the restart is not
    // lateness: no event may have been counted late.
    rt.block_on(async {
        let text = st
            .http
            .get(format!("{}/metrics", st.api))
            .send()
            .await?
            .text()
            .await?;
        let late: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tally_late_events_total"))
            .collect();
        ensure!(!late.is_empty(), "no tally_late_events_total in /metrics");
        ensure!(
            late.iter().all(|l| l.ends_with(" 0")),
            "late events counted: {late:?}"
        );
        anyhow::Ok(())
    })?;
    // Every window of the generated range is final.
    let window_end = start + 115 * 60_000;
    rt.block_on(eventually(
        "windows before the last event are final",
        Duration::from_secs(60),
        || async {
            let r = report(&st, "events", "1m", from, to, None).await?;
            let cu = r["complete_until"]
                .as_str()
                .ok_or_else(|| anyhow!("complete_until is null"))?;
            let cu = DateTime::parse_from_rfc3339(cu)?.timestamp_millis() as u64;
            ensure!(cu >= window_end, "complete_until {cu} < {window_end}");
            Ok(())
        },
    ))?;
    // An event that does not move the watermark (older than the newest, but its window is still
    // open) must still reach the rollups: provisional output cannot wait for the watermark.
    let quiet = Ev {
        id: Some(format!("quiet-{tag}")),
        event_type: "click".into(),
        user: "quiet-user".into(),
        session: None,
        ts_ms: now - 1_000,
    };
    rt.block_on(async {
        let (status, _) = post(&st, &quiet.json()).await?;
        ensure!(status == 202);
        anyhow::Ok(())
    })?;
    all.push(quiet);
    rt.block_on(eventually(
        "an event that keeps the watermark still is reported",
        Duration::from_secs(30),
        || async {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            check_reports(&st, &all, from, to).await
        },
    ))?;
    stop.store(true, Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;
    // Clean up what the test created in ClickHouse.
    rt.block_on(async {
        let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, false);
        ch.query(&format!(
            "DROP DATABASE IF EXISTS {}",
            st.settings.clickhouse.database
        ))
        .execute()
        .await
    })?;
    Ok(())
}
