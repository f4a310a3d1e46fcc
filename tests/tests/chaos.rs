//! The fault suite (issue 5), on a private stack this binary starts and breaks: its own Kafka,
//! ClickHouse and PostgreSQL (`deploy/local/stack.sh` with another `TALLY_HOME` and ports), so
//! the shared stack other tests use is never touched. Each scenario runs `tally` as a real
//! process under a steady load, breaks one thing, and then requires every report point and the
//! summary to equal an independent computation over what was acknowledged (`check_reports`,
//! `check_summary`): nothing lost, nothing counted twice.
//!
//! Scenarios (one test each; they share the stack and run one at a time):
//! - `tally run` killed with SIGKILL at random moments, `TALLY_CHAOS_KILL_LOOPS` times, with a
//!   negative control: the same comparison refuses an expectation that counts the load's
//!   duplicates twice, and one that misses an event;
//! - the Kafka broker killed (SIGKILL) and restarted during HTTP ingest
//!   (`TALLY_CHAOS_KAFKA_DOWN_SECS` plus its restart);
//! - ClickHouse killed for `TALLY_CHAOS_CH_STOP_SECS`, and frozen (SIGSTOP) for
//!   `TALLY_CHAOS_CH_FREEZE_SECS`: memory bounded, reading paused;
//! - PostgreSQL killed in the middle of a progress save, down for `TALLY_CHAOS_PG_DOWN_SECS`;
//! - a process that lost its lock connection is fenced out by the one that took over;
//! - Kafka deleting messages the pipeline still owed while it was stopped is reported.
//!
//! Test names start with `chaos_` (`cargo test -- --skip chaos` leaves the suite out); a lock
//! file beside the private stack makes two suites on one machine take turns.
//!
//! The defaults are the short version `cargo test` runs; `deploy/local/chaos.sh` runs the full
//! matrix and prints the rows each scenario appends to `TALLY_CHAOS_RESULTS`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tally_tests::harness::{
    check_reports, check_summary, distinct, events, metric, post, produce, rss_bytes, send_signal,
    setup, tally_command, teardown, unique_tag, wait_exit, Ev, Load, PrivateStack, Rng, Service,
    Stack,
};
use tally_tests::{enabled, env_or, eventually};

/// The knobs of a run: the short version by default, the full matrix from chaos.sh.
struct Knobs {
    kill_loops: u64,
    ch_stop_secs: u64,
    ch_freeze_secs: u64,
    kafka_down_secs: u64,
    pg_down_secs: u64,
    /// Events per second of the load.
    rate: u64,
    seed: u64,
    /// RSS bound of `tally` during a ClickHouse outage, MiB.
    rss_limit_mib: u64,
}

fn knobs() -> anyhow::Result<Knobs> {
    let num = |name: &str, default: u64| -> anyhow::Result<u64> {
        env_or(name, &default.to_string())
            .parse()
            .map_err(|e| anyhow!("{name}: {e}"))
    };
    let clock = Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64;
    Ok(Knobs {
        kill_loops: num("TALLY_CHAOS_KILL_LOOPS", 5)?,
        ch_stop_secs: num("TALLY_CHAOS_CH_STOP_SECS", 10)?,
        ch_freeze_secs: num("TALLY_CHAOS_CH_FREEZE_SECS", 5)?,
        kafka_down_secs: num("TALLY_CHAOS_KAFKA_DOWN_SECS", 5)?,
        pg_down_secs: num("TALLY_CHAOS_PG_DOWN_SECS", 5)?,
        rate: num("TALLY_CHAOS_RATE", 200)?,
        seed: num("TALLY_CHAOS_SEED", clock)?,
        rss_limit_mib: num("TALLY_CHAOS_RSS_LIMIT_MIB", 1024)?,
    })
}

static SERIAL: Mutex<()> = Mutex::new(());
static STACK: OnceLock<Result<(PrivateStack, std::fs::File), String>> = OnceLock::new();

/// The private stack, started by the first test that asks; the guard keeps scenarios (which
/// kill its services) from running at the same time.
fn private_stack() -> anyhow::Result<(MutexGuard<'static, ()>, &'static PrivateStack)> {
    let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let stack = STACK.get_or_init(|| {
        let start = || -> anyhow::Result<(PrivateStack, std::fs::File)> {
            let ps = PrivateStack::from_env()?;
            eprintln!("chaos: starting a private stack in {}", ps.home.display());
            let lock = ps.start()?;
            // `harness::setup` reads these. Set once, before any client exists, while every
            // other test of this binary waits on SERIAL.
            std::env::set_var("TALLY_KAFKA__BROKERS", ps.brokers());
            std::env::set_var("TALLY_CLICKHOUSE__URL", ps.clickhouse_url());
            std::env::set_var("TALLY_POSTGRES__URL", ps.postgres_url());
            Ok((ps, lock))
        };
        start().map_err(|e| format!("{e:#}"))
    });
    match stack {
        Ok((ps, _lock)) => Ok((serial, ps)),
        Err(e) => Err(anyhow!("the private stack did not start: {e}")),
    }
}

/// What a scenario reports for the results table.
#[derive(Default)]
struct Outcome {
    /// Distinct events acknowledged (by Kafka, or a 202).
    acked: usize,
    /// Events the summary counts at the end.
    counted: u64,
    /// Copies written beyond the first (re-sends, retried partial batches).
    duplicates: usize,
    detail: String,
}

/// Runs `body` and records its row (also when it fails).
fn scenario(
    name: &str,
    body: impl FnOnce(&Knobs) -> anyhow::Result<Outcome>,
) -> anyhow::Result<()> {
    let k = knobs()?;
    eprintln!(
        "chaos: {name}: seed {} (TALLY_CHAOS_SEED replays it)",
        k.seed
    );
    let started = Instant::now();
    let result = body(&k);
    record(name, started, &result);
    result.map(|_| ())
}

/// Prints one results row and appends it to `TALLY_CHAOS_RESULTS` (tab-separated: scenario,
/// acknowledged, counted, duplicates, outcome, seconds, detail).
fn record(name: &str, started: Instant, result: &anyhow::Result<Outcome>) {
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let none = Outcome::default();
    let (o, outcome) = match result {
        Ok(o) => (o, "pass".to_owned()),
        Err(e) => (&none, format!("FAIL: {}", clean(&format!("{e:#}")))),
    };
    let row = format!(
        "{name}\t{}\t{}\t{}\t{}\t{:.0}\t{}",
        o.acked,
        o.counted,
        o.duplicates,
        outcome.chars().take(400).collect::<String>(),
        started.elapsed().as_secs_f64(),
        clean(&o.detail)
    );
    eprintln!("chaos result: {row}");
    if let Ok(path) = std::env::var("TALLY_CHAOS_RESULTS") {
        use std::io::Write as _;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut f) = file {
            let _ = writeln!(f, "{row}");
        }
    }
}

/// A `tally` process; killed when dropped.
struct Tally {
    child: Child,
    log: PathBuf,
    /// The API's base URL (`tally all`).
    api: Option<String>,
}

impl Tally {
    /// `tally run` or `tally all` (on a free port) for `st`, stderr appended to `log`.
    fn start(st: &Stack, sub: &str, env: &[(&str, &str)], log: &Path) -> anyhow::Result<Tally> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut cmd = tally_command(st, sub, &st.settings.clickhouse.url)?;
        cmd.stderr(file).env("RUST_LOG", "warn,tally_pipeline=info");
        let mut api = None;
        if sub == "all" {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            cmd.env("TALLY_API__LISTEN", format!("127.0.0.1:{port}"));
            api = Some(format!("http://127.0.0.1:{port}"));
        }
        cmd.envs(env.iter().copied());
        Ok(Tally {
            child: cmd.spawn()?,
            log: log.to_owned(),
            api,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    fn alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "tally exited by itself ({status}); log {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// SIGKILL: no drain, no last progress save.
    fn kill9(&mut self) -> anyhow::Result<()> {
        self.alive()?;
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_path(scenario: &str, tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tally-chaos-{scenario}-{tag}.log"))
}

fn now_ms() -> u64 {
    Utc::now().timestamp_millis() as u64
}

/// A fault's duration or a random moment (not a synchronisation).
fn pause(rt: &tokio::runtime::Runtime, ms: u64) {
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(ms)).await });
}

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Waits until every report point and the summary equal the oracle over `evs`; returns the
/// number of events the summary counts.
fn settle(rt: &tokio::runtime::Runtime, st: &Stack, evs: &[Ev], from: u64) -> anyhow::Result<u64> {
    let to = now_ms() + 60_000;
    rt.block_on(async {
        eventually("reports equal the oracle", Duration::from_secs(180), || {
            check_reports(st, evs, from, to)
        })
        .await?;
        eventually("summary equals the oracle", Duration::from_secs(60), || {
            check_summary(st, evs, from, to)
        })
        .await?;
        let url = format!(
            "{}/reports/summary?from={}&to={}",
            st.api,
            iso(from),
            iso(to)
        );
        let got: Value = st.http.get(&url).send().await?.json().await?;
        got["events"]
            .as_u64()
            .ok_or_else(|| anyhow!("summary without events: {got}"))
    })
}

/// Waits until `tally all` answers `/readyz` with 200.
fn ready(rt: &tokio::runtime::Runtime, st: &Stack, tally: &Tally) -> anyhow::Result<String> {
    let api = tally
        .api
        .clone()
        .ok_or_else(|| anyhow!("not `tally all`"))?;
    rt.block_on(eventually(
        "tally all ready",
        Duration::from_secs(60),
        || async {
            let status = st.http.get(format!("{api}/readyz")).send().await?.status();
            ensure!(status == 200, "readyz {status}");
            Ok(())
        },
    ))?;
    Ok(api)
}

/// Per partition, the largest Kafka offset stored in ClickHouse.
async fn stored_offsets(st: &Stack) -> anyhow::Result<BTreeMap<i32, i64>> {
    let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, true);
    let rows: Vec<(i32, i64)> = ch
        .query("SELECT kafka_partition, max(kafka_offset) FROM events GROUP BY kafka_partition")
        .fetch_all()
        .await?;
    Ok(rows.into_iter().collect())
}

/// Per partition, the saved offset a restart resumes from.
async fn saved_offsets(pool: &sqlx::PgPool, pipeline: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM pipeline_offsets WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

async fn saved_frontier(pool: &sqlx::PgPool, pipeline: &str) -> anyhow::Result<i64> {
    let f: Option<i64> =
        sqlx::query_scalar("SELECT acked_frontier_ms FROM pipeline_frontiers WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_optional(pool)
            .await?;
    f.ok_or_else(|| anyhow!("no frontier saved yet"))
}

/// Waits until the saved frontier passes `after`: progress saves go through.
fn frontier_passes(
    rt: &tokio::runtime::Runtime,
    pool: &sqlx::PgPool,
    st: &Stack,
    after: i64,
) -> anyhow::Result<i64> {
    let name = &st.settings.pipeline.name;
    rt.block_on(eventually(
        "progress saved",
        Duration::from_secs(60),
        || async {
            let f = saved_frontier(pool, name).await?;
            ensure!(f > after, "frontier {f}");
            Ok(f)
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// kill -9 loops

#[test]
fn chaos_sigkill_loops_under_load_count_every_event_once() -> anyhow::Result<()> {
    if !enabled("chaos_sigkill_loops_under_load_count_every_event_once") {
        return Ok(());
    }
    let (_serial, _stack) = private_stack()?;
    scenario("kill -9 `tally run` in a loop", kill_loops)
}

fn kill_loops(k: &Knobs) -> anyhow::Result<Outcome> {
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let log = log_path("kill", &tag);
    let from = now_ms() - 60_000;
    let load = Load::start(&rt, &st, k.rate, k.seed);
    let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
    let mut tally = Tally::start(&st, "run", &[], &log)?;
    let mut rng = Rng((k.seed ^ 0x6b11) | 1);
    let mut replayed = 0;
    for _ in 0..k.kill_loops {
        pause(&rt, 300 + rng.next(3_700));
        let stored = rt.block_on(stored_offsets(&st))?;
        tally.kill9()?;
        let saved = rt.block_on(saved_offsets(&pool, &st.settings.pipeline.name))?;
        // Messages already in ClickHouse that the restart reads again.
        replayed += stored
            .iter()
            .map(|(p, high)| (high + 1 - saved.get(p).copied().unwrap_or(0)).max(0))
            .sum::<i64>();
        tally = Tally::start(&st, "run", &[], &log)?;
    }
    pause(&rt, 2_000);
    let sent = load.finish(&rt)?;
    let acked = distinct(&sent);
    let counted = settle(&rt, &st, &acked, from)?;
    tally.alive()?;
    ensure!(
        replayed > 0,
        "no stored message was read again after a kill: the loops tested nothing"
    );
    let started = Instant::now();
    let control = negative_control(&rt, &st, &sent, &acked, from);
    record("negative control", started, &control);
    control?;
    drop(tally);
    let _ = std::fs::remove_file(&log);
    teardown(&rt, &st)?;
    Ok(Outcome {
        acked: acked.len(),
        counted,
        duplicates: sent.len() - acked.len(),
        detail: format!(
            "{} kills at random moments; {replayed} messages already stored were read again",
            k.kill_loops
        ),
    })
}

/// The comparison can fail: it refuses an expectation that counts every copy the load sent
/// (no dedup), and one that misses a single acknowledged event.
fn negative_control(
    rt: &tokio::runtime::Runtime,
    st: &Stack,
    sent: &[Ev],
    acked: &[Ev],
    from: u64,
) -> anyhow::Result<Outcome> {
    let to = now_ms() + 60_000;
    ensure!(sent.len() > acked.len(), "the load sent no duplicate");
    let mut missing = acked.to_vec();
    missing.remove(missing.len() / 2);
    let mut refusals = Vec::new();
    for (what, expectation) in [
        ("duplicates counted", sent),
        ("one event missing", &missing),
    ] {
        for check in ["reports", "summary"] {
            let verdict = rt.block_on(async {
                match check {
                    "reports" => check_reports(st, expectation, from, to).await,
                    _ => check_summary(st, expectation, from, to).await,
                }
            });
            let Err(e) = verdict else {
                anyhow::bail!("{check} matched an expectation with {what}: the check cannot fail");
            };
            // A mismatch, not a transport error.
            ensure!(e.to_string().contains("want"), "{check}: {e:#}");
            refusals.push(format!("{what} / {check}: {e}"));
        }
    }
    Ok(Outcome {
        acked: sent.len(),
        counted: acked.len() as u64,
        duplicates: sent.len() - acked.len(),
        detail: format!(
            "all 4 wrong expectations refused, e.g. {}",
            refusals[0].lines().next().unwrap_or("")
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Kafka broker killed during HTTP ingest

/// One `POST /events` and its answer.
struct Post {
    events: Vec<Ev>,
    status: u16,
    body: Value,
    started: Instant,
    ended: Instant,
}

impl Post {
    /// For a 503: how many events the answer says were written.
    fn written(&self) -> anyhow::Result<usize> {
        let text = self.body["error"].as_str().unwrap_or("");
        ensure!(
            text.contains("retry"),
            "a 503 that does not say retry: {}",
            self.body
        );
        let (n, rest) = text
            .split_once("; ")
            .and_then(|(_, r)| r.split_once(" of "))
            .ok_or_else(|| anyhow!("a 503 that does not say what was written: {}", self.body))?;
        let total: usize = rest.split(' ').next().unwrap_or("").parse()?;
        ensure!(total == self.events.len(), "503 names {total} events");
        Ok(n.parse()?)
    }
}

/// Four clients posting batches of 20 events (all with ids, all stamped within 3 s after
/// `base_ms`, so no order of arrival makes one late) until `stop`; every answer is recorded.
fn start_posters(
    rt: &tokio::runtime::Runtime,
    st: &Stack,
    base_ms: u64,
    seed: u64,
    stop: &Arc<AtomicBool>,
    posts: &Arc<Mutex<Vec<Post>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4u64)
        .map(|client| {
            let (http, url) = (st.http.clone(), format!("{}/events", st.api));
            let (stop, posts) = (Arc::clone(stop), Arc::clone(posts));
            rt.spawn(async move {
                let mut rng = Rng((seed ^ ((client + 1) << 32)) | 1);
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let events: Vec<Ev> = (0..20)
                        .map(|i| {
                            http_event(&mut rng, format!("http-{seed}-{client}-{n}-{i}"), base_ms)
                        })
                        .collect();
                    n += 1;
                    let body = Value::Array(events.iter().map(Ev::json).collect());
                    let started = Instant::now();
                    let resp = http
                        .post(&url)
                        .json(&body)
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await;
                    let (status, body) = match resp {
                        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
                        Err(e) => (0, serde_json::json!({ "error": e.to_string() })),
                    };
                    let ended = Instant::now();
                    if let Ok(mut p) = posts.lock() {
                        p.push(Post {
                            events,
                            status,
                            body,
                            started,
                            ended,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .collect()
}

fn http_event(rng: &mut Rng, id: String, base_ms: u64) -> Ev {
    let types = ["page_view", "click", "signup", "purchase", "search"];
    let user = rng.next(40);
    Ev {
        id: Some(id),
        event_type: types[rng.next(types.len() as u64) as usize].to_owned(),
        user: format!("user-{user}"),
        session: (rng.next(5) != 0).then(|| format!("s-{user}-{}", rng.next(3))),
        ts_ms: base_ms + rng.next(3_000),
    }
}

/// Event ids stored in ClickHouse.
async fn stored_ids(st: &Stack) -> anyhow::Result<BTreeSet<String>> {
    let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, true);
    let ids: Vec<String> = ch
        .query("SELECT DISTINCT event_id FROM events")
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}

#[test]
fn chaos_kafka_killed_during_http_ingest_loses_no_acknowledged_event() -> anyhow::Result<()> {
    if !enabled("chaos_kafka_killed_during_http_ingest_loses_no_acknowledged_event") {
        return Ok(());
    }
    let (_serial, ps) = private_stack()?;
    scenario("Kafka broker kill -9 during HTTP ingest", |k| {
        kafka_outage(ps, k)
    })
}

fn kafka_outage(ps: &PrivateStack, k: &Knobs) -> anyhow::Result<Outcome> {
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let log = log_path("kafka", &tag);
    let mut tally = Tally::start(&st, "run", &[], &log)?;
    let now = now_ms();
    let base = now - now % 60_000 - 10 * 60_000 + 20_000;
    let (from, to) = (base - 120_000, now + 60_000);
    let (posts, killed, listening) = ingest_through_outage(ps, k, &rt, &st, base)?;
    let (refused, during, partial) = check_answers(&posts, killed, listening)?;
    let acked: Vec<Ev> = posts
        .iter()
        .filter(|p| p.status == 202)
        .flat_map(|p| p.events.clone())
        .collect();
    let present = rt.block_on(eventually(
        "acknowledged events stored",
        Duration::from_secs(120),
        || stored_before_retry(&st, &posts, &acked, from, to),
    ))?;
    // The clients retry every refused batch (same ids) until it is acknowledged.
    let mut all = acked;
    for p in posts.iter().filter(|p| p.status == 503) {
        let body = Value::Array(p.events.iter().map(Ev::json).collect());
        rt.block_on(eventually(
            "a refused batch retried",
            Duration::from_secs(60),
            || async {
                let (status, answer) = post(&st, &body).await?;
                ensure!(status == 202, "retry: {status} {answer}");
                Ok(())
            },
        ))?;
        all.extend(p.events.iter().cloned());
    }
    let counted = settle(&rt, &st, &all, from)?;
    tally.alive()?;
    drop(tally);
    let _ = std::fs::remove_file(&log);
    teardown(&rt, &st)?;
    Ok(Outcome {
        acked: all.len(),
        counted,
        duplicates: present,
        detail: format!(
            "{} posts: {} answered 202, {refused} answered 503 (all say retry; {partial} of their events written, {present} stored before the retry); {during} posts made entirely while the broker was down, all 503; broker down {:.0} s",
            posts.len(),
            posts.len() - refused,
            listening.duration_since(killed).as_secs_f64()
        ),
    })
}

/// Posts from four clients while the broker is killed, kept down `kafka_down_secs` and
/// restarted, until posts are acknowledged again. Returns every post, when the broker was
/// killed and when it listened again.
fn ingest_through_outage(
    ps: &PrivateStack,
    k: &Knobs,
    rt: &tokio::runtime::Runtime,
    st: &Stack,
    base_ms: u64,
) -> anyhow::Result<(Vec<Post>, Instant, Instant)> {
    let (stop, posts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let posters = start_posters(rt, st, base_ms, k.seed, &stop, &posts);
    pause(rt, 3_000);
    ps.kill(Service::Kafka, "KILL")?;
    let killed = Instant::now();
    let port = ps.brokers();
    let listening = rt.spawn(async move {
        while tokio::net::TcpStream::connect(&port).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Instant::now()
    });
    pause(rt, k.kafka_down_secs * 1_000);
    ps.up()?;
    let back = Instant::now();
    rt.block_on(eventually(
        "posts acknowledged again",
        Duration::from_secs(90),
        || async {
            let p = posts.lock().map_err(|_| anyhow!("poisoned"))?;
            let n = p
                .iter()
                .filter(|p| p.started > back && p.status == 202)
                .count();
            ensure!(n >= 4, "{n} posts acknowledged since the restart");
            Ok(())
        },
    ))?;
    stop.store(true, Ordering::SeqCst);
    for p in posters {
        rt.block_on(p)?;
    }
    let listening = rt.block_on(listening)?;
    let posts = std::mem::take(&mut *posts.lock().map_err(|_| anyhow!("poisoned"))?);
    Ok((posts, killed, listening))
}

/// Before any retry: every acknowledged event is stored, each 503 answer's batch has at least
/// as many events stored as it said were written, and the reports count exactly those.
/// Returns how many events of refused batches are stored (written twice once retried).
async fn stored_before_retry(
    st: &Stack,
    posts: &[Post],
    acked: &[Ev],
    from: u64,
    to: u64,
) -> anyhow::Result<usize> {
    let ids = stored_ids(st).await?;
    let stored = |e: &&Ev| ids.contains(e.id.as_deref().unwrap_or(""));
    let missing = acked.len() - acked.iter().filter(stored).count();
    ensure!(missing == 0, "{missing} acknowledged events missing");
    let mut expected = acked.to_vec();
    for p in posts.iter().filter(|p| p.status == 503) {
        let written: Vec<Ev> = p.events.iter().filter(stored).cloned().collect();
        ensure!(
            written.len() >= p.written()?,
            "a 503 said {} were written, {} are stored",
            p.written()?,
            written.len()
        );
        expected.extend(written);
    }
    check_summary(st, &expected, from, to).await?;
    check_reports(st, &expected, from, to).await?;
    Ok(expected.len() - acked.len())
}

/// Every answer is a 202 (all accepted) or a 503 saying retry and how many were written; a post
/// made entirely while the broker did not listen is a 503. Returns (503s, posts made while
/// down, events the 503s say were written).
fn check_answers(
    posts: &[Post],
    killed: Instant,
    listening: Instant,
) -> anyhow::Result<(usize, usize, usize)> {
    let (mut refused, mut during, mut partial) = (0, 0, 0);
    for p in posts {
        match p.status {
            202 => ensure!(
                p.body["accepted"].as_u64() == Some(p.events.len() as u64),
                "202 with {}",
                p.body
            ),
            503 => {
                refused += 1;
                partial += p.written()?;
            }
            other => anyhow::bail!("answer {other}: {}", p.body),
        }
        if p.started >= killed && p.ended <= listening {
            during += 1;
            ensure!(
                p.status == 503,
                "a post made while the broker was down got {}",
                p.status
            );
        }
    }
    ensure!(refused > 0, "no post was refused while the broker was down");
    Ok((refused, during, partial))
}

// ---------------------------------------------------------------------------------------------
// ClickHouse stopped, ClickHouse frozen

#[test]
fn chaos_clickhouse_stopped_pauses_reading_in_bounded_memory() -> anyhow::Result<()> {
    if !enabled("chaos_clickhouse_stopped_pauses_reading_in_bounded_memory") {
        return Ok(());
    }
    let (_serial, ps) = private_stack()?;
    scenario("ClickHouse kill -9, down", |k| {
        clickhouse_outage(ps, k, false)
    })
}

#[test]
fn chaos_clickhouse_frozen_pauses_reading_in_bounded_memory() -> anyhow::Result<()> {
    if !enabled("chaos_clickhouse_frozen_pauses_reading_in_bounded_memory") {
        return Ok(());
    }
    let (_serial, ps) = private_stack()?;
    scenario("ClickHouse frozen (SIGSTOP)", |k| {
        clickhouse_outage(ps, k, true)
    })
}

/// One reading of `tally all` during an outage.
struct Sample {
    at: Duration,
    rss: u64,
    read: f64,
    backlog: f64,
    acked: usize,
}

/// A ClickHouse outage (killed, or frozen with SIGSTOP) under load. `max_pending_rows` is
/// lowered to 100 so backpressure engages within the short version's outage.
fn clickhouse_outage(ps: &PrivateStack, k: &Knobs, freeze: bool) -> anyhow::Result<Outcome> {
    let secs = if freeze {
        k.ch_freeze_secs
    } else {
        k.ch_stop_secs
    };
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let log = log_path("clickhouse", &tag);
    let from = now_ms() - 60_000;
    let mut tally = Tally::start(
        &st,
        "all",
        &[("TALLY_PIPELINE__MAX_PENDING_ROWS", "100")],
        &log,
    )?;
    let api = ready(&rt, &st, &tally)?;
    let load = Load::start(&rt, &st, k.rate, k.seed);
    rt.block_on(eventually(
        "rows stored",
        Duration::from_secs(60),
        || async {
            ensure!(!stored_offsets(&st).await?.is_empty(), "nothing stored yet");
            Ok(())
        },
    ))?;
    if freeze {
        ps.signal(Service::ClickHouse, "STOP")?;
    } else {
        ps.kill(Service::ClickHouse, "KILL")?;
    }
    let began = Instant::now();
    let mut samples = Vec::new();
    while began.elapsed() < Duration::from_secs(secs) {
        let read_metric = |name| rt.block_on(metric(&st.http, &api, name));
        samples.push(Sample {
            at: began.elapsed(),
            rss: rss_bytes(tally.pid())?,
            read: read_metric("tally_pipeline_events_read_total")?,
            backlog: read_metric("tally_sink_backlog_rows")?,
            acked: load.acked(),
        });
        pause(&rt, 500);
    }
    if freeze {
        ps.signal(Service::ClickHouse, "CONT")?;
    } else {
        ps.up()?;
    }
    tally.alive()?;
    pause(&rt, 2_000);
    let sent = load.finish(&rt)?;
    let acked = distinct(&sent);
    let counted = settle(&rt, &st, &acked, from)?;
    tally.alive()?;
    let max_rss = samples.iter().map(|s| s.rss).max().unwrap_or(0);
    let max_backlog = samples.iter().map(|s| s.backlog).fold(0.0, f64::max);
    let paused = longest_pause(&samples);
    ensure!(
        max_rss < k.rss_limit_mib << 20,
        "tally's RSS reached {} MiB during the outage",
        max_rss >> 20
    );
    ensure!(
        paused >= Duration::from_millis(1_500),
        "reading never paused for 1.5 s while ClickHouse was out (longest {paused:?})"
    );
    drop(tally);
    let _ = std::fs::remove_file(&log);
    teardown(&rt, &st)?;
    Ok(Outcome {
        acked: acked.len(),
        counted,
        duplicates: sent.len() - acked.len(),
        detail: format!(
            "out {secs} s; max RSS {} MiB (bound {} MiB); reading paused {:.1} s with events waiting in Kafka; max sink backlog {max_backlog} rows",
            max_rss >> 20,
            k.rss_limit_mib,
            paused.as_secs_f64()
        ),
    })
}

/// The longest span over which `tally_pipeline_events_read_total` did not move while Kafka
/// held more acknowledged events than were read.
fn longest_pause(samples: &[Sample]) -> Duration {
    let mut best = Duration::ZERO;
    for (i, first) in samples.iter().enumerate() {
        for last in &samples[i + 1..] {
            if last.read != first.read || last.acked as f64 <= last.read {
                break;
            }
            best = best.max(last.at - first.at);
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL killed during a progress save

#[test]
fn chaos_postgres_killed_during_a_progress_save_loses_nothing() -> anyhow::Result<()> {
    if !enabled("chaos_postgres_killed_during_a_progress_save_loses_nothing") {
        return Ok(());
    }
    let (_serial, ps) = private_stack()?;
    scenario("PostgreSQL killed during a progress save", |k| {
        postgres_outage(ps, k)
    })
}

/// Stops a progress save half-way, deterministically: a transaction of the test's own locks the
/// pipeline's frontier row, so the next save writes its offsets and then waits for that row.
/// Returns the lock (keep it) and the waiting backend's pid.
async fn catch_a_save(
    pool: &sqlx::PgPool,
    pipeline: &str,
) -> anyhow::Result<(sqlx::Transaction<'static, sqlx::Postgres>, i32)> {
    let mut lock = pool.begin().await?;
    sqlx::query("SELECT 1 FROM pipeline_frontiers WHERE pipeline = $1 FOR UPDATE")
        .bind(pipeline)
        .execute(&mut *lock)
        .await?;
    let backend = eventually("a save waits half-way", Duration::from_secs(30), || async {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE '%INSERT INTO pipeline_frontiers%'
             LIMIT 1",
        )
        .fetch_optional(pool)
        .await?;
        pid.ok_or_else(|| anyhow!("no save waiting yet"))
    })
    .await?;
    Ok((lock, backend))
}

/// An event for `POST /events` with a unique id.
fn outage_event(tag: &str, n: u64) -> Ev {
    Ev {
        id: Some(format!("http-{tag}-{n}")),
        event_type: "page_view".to_owned(),
        user: "user-http".to_owned(),
        session: Some("s-http".to_owned()),
        ts_ms: now_ms(),
    }
}

/// `POST {api}/events` of `events` with the test's key; the status.
async fn post_events(st: &Stack, api: &str, events: &[Ev]) -> anyhow::Result<u16> {
    let body = Value::Array(events.iter().map(Ev::json).collect());
    let response = st
        .http
        .post(format!("{api}/events"))
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

fn postgres_outage(ps: &PrivateStack, k: &Knobs) -> anyhow::Result<Outcome> {
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let log = log_path("postgres", &tag);
    let from = now_ms() - 60_000;
    let mut tally = Tally::start(&st, "all", &[], &log)?;
    let api = ready(&rt, &st, &tally)?;
    let load = Load::start(&rt, &st, k.rate, k.seed);
    let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
    let before = frontier_passes(&rt, &pool, &st, 0)?;
    // Events over HTTP too, with the test's key: one while PostgreSQL is up, then during the
    // outage (the key from the API's cache, the request log dropping its rows).
    let mut over_http = vec![outage_event(&tag, 0)];
    ensure!(
        rt.block_on(post_events(&st, &api, &over_http))? == 202,
        "POST /events before the outage"
    );
    let (lock, backend) = rt.block_on(catch_a_save(&pool, &st.settings.pipeline.name))?;
    // The save's backend dies with its offsets written but not committed, then the server goes
    // down as if its host crashed.
    send_signal(backend as u32, "KILL")?;
    ps.kill(Service::Postgres, "QUIT")?;
    let _ = rt.block_on(lock.rollback()); // its connection died with the server
    for i in 0..k.pg_down_secs * 2 {
        pause(&rt, 500);
        tally.alive()?;
        if i % 4 == 1 {
            // Served without PostgreSQL, promptly: ingest and health.
            let event = outage_event(&tag, i + 1);
            let started = Instant::now();
            let status = rt.block_on(post_events(&st, &api, std::slice::from_ref(&event)))?;
            ensure!(status == 202, "POST /events with PostgreSQL down: {status}");
            ensure!(
                started.elapsed() < Duration::from_secs(5),
                "POST /events took {:?} with PostgreSQL down",
                started.elapsed()
            );
            over_http.push(event);
            let health = rt.block_on(st.http.get(format!("{api}/healthz")).send())?;
            ensure!(health.status() == 200, "healthz {}", health.status());
        }
    }
    ps.up()?;
    // The request log's writer waited for PostgreSQL (or dropped, past its pool's timeout)
    // without holding up a request.
    let dropped = rt.block_on(metric(
        &st.http,
        &api,
        "tally_api_request_log_dropped_total",
    ))?;
    let after = frontier_passes(&rt, &pool, &st, before)?;
    let failures = rt.block_on(metric(&st.http, &api, "tally_progress_save_failures_total"))?;
    ensure!(failures > 0.0, "the interrupted progress save did not fail");
    // A crash now resumes from what was saved across the outage.
    tally.kill9()?;
    let mut tally = Tally::start(&st, "all", &[], &log)?;
    ready(&rt, &st, &tally)?;
    pause(&rt, 2_000);
    let mut sent = load.finish(&rt)?;
    let posted = over_http.len();
    sent.extend(over_http);
    let acked = distinct(&sent);
    let counted = settle(&rt, &st, &acked, from)?;
    tally.alive()?;
    drop(tally);
    let _ = std::fs::remove_file(&log);
    teardown(&rt, &st)?;
    Ok(Outcome {
        acked: acked.len(),
        counted,
        duplicates: sent.len() - acked.len(),
        detail: format!(
            "a save's backend killed after it wrote offsets, before the frontier; server down {} s; {failures} saves failed and were retried; progress saved again (frontier {before} -> {after}); {posted} events posted over HTTP, some during the outage, each answered in < 5 s ({dropped} request-log rows dropped); then kill -9 and restart",
            k.pg_down_secs
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Fencing: a process that lost its lock cannot interleave with the one that took over

#[test]
fn chaos_a_process_that_lost_its_lock_is_fenced_out() -> anyhow::Result<()> {
    if !enabled("chaos_a_process_that_lost_its_lock_is_fenced_out") {
        return Ok(());
    }
    let (_serial, _stack) = private_stack()?;
    scenario(
        "lost lock: second `tally run` takes over, first fenced",
        fencing,
    )
}

async fn lease(pool: &sqlx::PgPool, pipeline: &str) -> anyhow::Result<(i64, String)> {
    Ok(
        sqlx::query_as("SELECT epoch, holder FROM pipeline_leases WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_one(pool)
            .await?,
    )
}

fn fencing(k: &Knobs) -> anyhow::Result<Outcome> {
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let name = st.settings.pipeline.name.clone();
    let (log_a, log_b) = (log_path("fence-a", &tag), log_path("fence-b", &tag));
    let from = now_ms() - 60_000;
    let load = Load::start(&rt, &st, k.rate, k.seed);
    let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
    let mut a = Tally::start(&st, "run", &[], &log_a)?;
    let before = frontier_passes(&rt, &pool, &st, 0)?;
    let (epoch_a, holder) = rt.block_on(lease(&pool, &name))?;
    ensure!(
        holder.ends_with(&format!("pid {}", a.pid())),
        "holder {holder}"
    );
    // While A holds its lock, another run is refused.
    let mut c = tally_command(&st, "run", &st.settings.clickhouse.url)?
        .stderr(Stdio::null())
        .spawn()?;
    let refused = wait_exit(&mut c, Duration::from_secs(60))?;
    ensure!(
        refused.code() == Some(75),
        "a second run while A holds the lock: {refused}"
    );
    // A loses its lock connection (as after a network cut); B takes the pipeline over.
    let terminated: i64 = rt.block_on(
        sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l
             JOIN pg_database d ON d.oid = l.database AND d.datname = current_database()
             WHERE l.locktype = 'advisory' AND l.granted
               AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0)",
        )
        .bind(format!("tally.pipeline.{name}"))
        .fetch_one(&pool),
    )?;
    ensure!(terminated == 1, "{terminated} lock holders terminated");
    let mut b = Tally::start(&st, "run", &[], &log_b)?;
    let status = a.wait(Duration::from_secs(60))?;
    let fenced_after = Instant::now();
    ensure!(
        status.code() == Some(75),
        "A after B took over: {status}; log {}",
        log_a.display()
    );
    ensure!(
        a.log_text().contains("took this pipeline over"),
        "A's log: {}",
        a.log_text()
    );
    let (epoch_b, holder) = rt.block_on(lease(&pool, &name))?;
    ensure!(
        epoch_b == epoch_a + 1 && holder.ends_with(&format!("pid {}", b.pid())),
        "lease {epoch_b} {holder}"
    );
    b.alive()?;
    let after = frontier_passes(&rt, &pool, &st, rt.block_on(saved_frontier(&pool, &name))?)?;
    pause(&rt, 2_000);
    let sent = load.finish(&rt)?;
    let acked = distinct(&sent);
    let counted = settle(&rt, &st, &acked, from)?;
    b.alive()?;
    drop((a, b));
    let _ = (std::fs::remove_file(&log_a), std::fs::remove_file(&log_b));
    teardown(&rt, &st)?;
    Ok(Outcome {
        acked: acked.len(),
        counted,
        duplicates: sent.len() - acked.len(),
        detail: format!(
            "a run beside A refused (75); A's lock backend terminated; B took epoch {epoch_b}; A exited 75 (fenced) {:.1} s later; B saved on (frontier {before} -> {after})",
            fenced_after.elapsed().as_secs_f64()
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Kafka retention deletes what the stopped pipeline still owed

#[test]
fn chaos_messages_deleted_while_the_pipeline_was_down_are_reported() -> anyhow::Result<()> {
    if !enabled("chaos_messages_deleted_while_the_pipeline_was_down_are_reported") {
        return Ok(());
    }
    let (_serial, _stack) = private_stack()?;
    scenario("retention deleted unread offsets while down", retention_gap)
}

/// Per partition of the test's topic, the high watermark.
fn high_watermarks(st: &Stack) -> anyhow::Result<BTreeMap<i32, i64>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        tally_pipeline::kafka::client_config(&st.settings.kafka).create()?;
    let topic = &st.settings.kafka.topic;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut out = BTreeMap::new();
    for t in md.topics() {
        for p in t.partitions() {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            out.insert(p.id(), high);
        }
    }
    Ok(out)
}

fn retention_gap(k: &Knobs) -> anyhow::Result<Outcome> {
    use rdkafka::{Offset, TopicPartitionList};
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let log = log_path("retention", &tag);
    let now = now_ms();
    let mut rng = Rng((k.seed ^ 0x4e7) | 1);
    let first = events(&mut rng, now - 180_000, 60_000, 300);
    let later = events(&mut rng, now - 90_000, 60_000, 200);
    let from = now - 240_000;
    rt.block_on(produce(&st, &first))?;
    let mut tally = Tally::start(&st, "run", &[], &log)?;
    settle(&rt, &st, &first, from)?;
    send_signal(tally.pid(), "TERM")?;
    let status = tally.wait(Duration::from_secs(60))?;
    ensure!(status.success(), "SIGTERM: {status}");
    // While it is stopped: more events, then retention removes everything not yet settled.
    rt.block_on(produce(&st, &later))?;
    let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
    let saved = rt.block_on(saved_offsets(&pool, &st.settings.pipeline.name))?;
    let highs = high_watermarks(&st)?;
    let mut tpl = TopicPartitionList::new();
    for (p, high) in &highs {
        tpl.add_partition_offset(&st.settings.kafka.topic, *p, Offset::Offset(*high))?;
    }
    rt.block_on(async {
        let admin: rdkafka::admin::AdminClient<_> =
            tally_pipeline::kafka::client_config(&st.settings.kafka).create()?;
        admin
            .delete_records(&tpl, &rdkafka::admin::AdminOptions::new())
            .await?;
        anyhow::Ok(())
    })?;
    let gaps: Vec<String> = saved
        .iter()
        .filter(|(p, s)| highs.get(*p).is_some_and(|h| *s < h))
        .map(|(p, s)| format!("partition {p}: messages {s}..{} were deleted", highs[p]))
        .collect();
    ensure!(
        !gaps.is_empty(),
        "no saved offset below the deleted range: {saved:?} {highs:?}"
    );
    let mut again = Tally::start(&st, "run", &[], &log)?;
    let status = again.wait(Duration::from_secs(60))?;
    let text = again.log_text();
    ensure!(
        status.code() == Some(78),
        "restart after the deletion: {status}; log {}",
        log.display()
    );
    let named = gaps.iter().find(|g| text.contains(g.as_str()));
    let named = named.ok_or_else(|| anyhow!("the log names none of {gaps:?}: {text}"))?;
    // Nothing was skipped silently: the reports still hold exactly the events read before, none
    // of the deleted ones.
    let counted = settle(&rt, &st, &first, from)?;
    let _ = std::fs::remove_file(&log);
    teardown(&rt, &st)?;
    Ok(Outcome {
        acked: first.len() + later.len(),
        counted,
        duplicates: 0,
        detail: format!(
            "restart refused with exit 78: \"{named}\" ({} partitions had a gap); reports unchanged",
            gaps.len()
        ),
    })
}
