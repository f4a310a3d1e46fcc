//! Late events on the real stack: a seeded history of 35 days posted in a shuffled order, plus
//! events late by seconds, hours and days while live traffic flows, end up exactly in every
//! rollup of every window kind and filter once the corrections settle, checked against an
//! independent computation over the input (the harness's oracle). Faults: the worker killed
//! with SIGKILL during a recompute and the pipeline killed during a backfill leave the reports
//! exact, nothing counted twice.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use tally_tests::harness::{
    check_reports, check_summary, distinct, post, produce, report, setup, start_pipeline,
    start_worker, tally_command, teardown, unique_tag, wait_exit, Ev, Load, Rng, Stack,
};
use tally_tests::{enabled, eventually};

const DAY: u64 = 86_400_000;
const HOUR: u64 = 3_600_000;

/// `count` events with ids, spread uniformly at random over `[from, to)`: 60 users, six types,
/// sessions per user, about a fifth without a session.
fn history(rng: &mut Rng, tag: &str, from: u64, to: u64, count: usize) -> Vec<Ev> {
    let types = [
        "page_view",
        "click",
        "signup",
        "purchase",
        "search",
        "logout",
    ];
    (0..count)
        .map(|i| {
            let user = rng.next(60);
            Ev {
                id: Some(format!("{tag}-{i}")),
                event_type: types[rng.next(types.len() as u64) as usize].to_owned(),
                user: format!("user-{user}"),
                session: (rng.next(5) != 0).then(|| format!("s-{user}-{}", rng.next(4))),
                ts_ms: from + rng.next(to - from),
            }
        })
        .collect()
}

/// Fisher–Yates with the test's own generator.
fn shuffle(rng: &mut Rng, evs: &mut [Ev]) {
    for i in (1..evs.len()).rev() {
        evs.swap(i, rng.next(i as u64 + 1) as usize);
    }
}

/// Posts `evs` over HTTP in batches of 500; every event must be accepted.
async fn post_all(st: &Stack, evs: &[Ev]) -> anyhow::Result<()> {
    for chunk in evs.chunks(500) {
        let body = Value::Array(chunk.iter().map(Ev::json).collect());
        let (status, resp) = post(st, &body).await?;
        ensure!(
            status == 202 || status == 200,
            "POST /events: {status} {resp}"
        );
        ensure!(resp["accepted"] == chunk.len(), "accepted: {resp}");
    }
    Ok(())
}

/// The number of windows still waiting for a correction in `[from, to)`, for each window kind.
async fn pending(st: &Stack, from: u64, to: u64) -> anyhow::Result<u64> {
    let mut total = 0;
    for window in ["1d", "1h", "1m"] {
        // At most a day of minutes per request (the API caps the points per answer).
        let step = if window == "1m" { DAY } else { to - from };
        let mut t = from;
        while t < to {
            let r = report(st, "events", window, t, (t + step).min(to), None).await?;
            total += r["pending_corrections"]
                .as_u64()
                .context("pending_corrections missing")?;
            t += step;
        }
    }
    Ok(total)
}

/// Every report point equals the oracle over `[from, to)`, a day at a time (every window kind,
/// metric and filter; see `check_reports`), and the summary too.
async fn check_all(st: &Stack, evs: &[Ev], from: u64, to: u64) -> anyhow::Result<()> {
    check_summary(st, evs, from, to).await?;
    let mut day = from - from % DAY;
    while day < to {
        check_reports(st, evs, day.max(from), (day + DAY).min(to)).await?;
        day += DAY;
    }
    Ok(())
}

/// Waits until nothing is pending and every point is exact, for at most `timeout`.
async fn settled(
    st: &Stack,
    evs: &[Ev],
    from: u64,
    to: u64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eventually("the corrections settle", timeout, || async {
        let n = pending(st, from, to).await?;
        ensure!(n == 0, "{n} windows pending");
        check_all(st, evs, from, to).await
    })
    .await?;
    Ok(started.elapsed())
}

/// A pipeline and a job worker running in this process for the test's stack.
struct Running {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pipeline: std::thread::JoinHandle<Result<(), tally_pipeline::PipelineError>>,
    stop_worker: std::sync::Arc<std::sync::atomic::AtomicBool>,
    worker: tokio::task::JoinHandle<Result<(), tally_jobs::JobsError>>,
}

impl Running {
    fn start(st: &Stack, rt: &tokio::runtime::Runtime) -> Running {
        let (stop, pipeline) = start_pipeline(&st.settings, rt);
        let (stop_worker, worker) = start_worker(&st.settings, rt);
        Running {
            stop,
            pipeline,
            stop_worker,
            worker,
        }
    }

    /// Stops both (the pipeline drains) and waits for them.
    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.stop_worker
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.pipeline.join();
        let _ = rt.block_on(self.worker);
    }
}

#[test]
fn late_events_are_corrected_exactly_in_every_window() -> anyhow::Result<()> {
    if !enabled("late_events_are_corrected_exactly_in_every_window") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let running = Running::start(&st, &rt);
    let now = Utc::now().timestamp_millis() as u64;
    let from = now - now % DAY - 35 * DAY;
    let mut rng = Rng(0x1A7E ^ now);
    let mut past = history(&mut rng, &tag, from, now - 2 * HOUR, 6_000);
    shuffle(&mut rng, &mut past);
    let load = Load::start(&rt, &st, 20, now);
    let result = rt.block_on(async {
        // Live traffic first, so the watermark is near now and the history is late.
        eventually(
            "live traffic is counted",
            Duration::from_secs(30),
            || async {
                let r = report(&st, "events", "1d", now - now % DAY, now + DAY, None).await?;
                ensure!(r["points"][0]["value"].as_u64() > Some(0), "{r}");
                Ok(())
            },
        )
        .await?;
        // The history in a shuffled order: half over HTTP, a sixth straight to Kafka, a tenth
        // of it sent twice (a client retrying), and the last third with `tally import --wait`.
        let (http, rest) = past.split_at(past.len() / 2);
        let (kafka, file) = rest.split_at(rest.len() / 3);
        post_all(&st, http).await?;
        produce(&st, kafka).await?;
        post_all(&st, &past[..past.len() / 10]).await?;
        let out = import(&st, file, &["--wait"])?;
        ensure!(out.status.success(), "tally import --wait: {out:?}");
        // `--wait` returned: every complete day of the history is exact now, without polling.
        let today = now - now % DAY;
        check_all(&st, &past, from, today)
            .await
            .context("right after tally import --wait")?;
        // Late by seconds (past the 10 s out-of-orderness and 5 s grace), hours and days.
        let t = Utc::now().timestamp_millis() as u64;
        let mut late = history(&mut rng, &format!("{tag}-s"), t - 60_000, t - 20_000, 150);
        late.extend(history(
            &mut rng,
            &format!("{tag}-h"),
            t - 5 * HOUR,
            t - HOUR,
            150,
        ));
        late.extend(history(
            &mut rng,
            &format!("{tag}-d"),
            t - 9 * DAY,
            t - DAY,
            150,
        ));
        shuffle(&mut rng, &mut late);
        post_all(&st, &late).await?;
        // Re-sends of days-late events, re-stamped a day earlier or with the current time (a
        // client that stamps its retries): the first copy read wins, so they count nowhere.
        let t = Utc::now().timestamp_millis() as u64;
        let resent: Vec<Ev> = late
            .iter()
            .filter(|e| e.ts_ms < t - DAY)
            .take(40)
            .enumerate()
            .map(|(i, e)| Ev {
                ts_ms: if i % 2 == 0 { e.ts_ms - DAY } else { t - 1_000 },
                ..e.clone()
            })
            .collect();
        post_all(&st, &resent).await?;
        late.extend(resent);
        tokio::time::sleep(Duration::from_secs(2)).await;
        anyhow::Ok(late)
    });
    let live = load.finish(&rt)?;
    let late = result?;
    let end = Utc::now().timestamp_millis() as u64;
    let mut all = past.clone();
    all.extend(late);
    all.extend(live);
    let all = distinct(&all);
    // Up to the last closed minute: later windows are still open (provisional).
    let to = end - end % 60_000 - 60_000;
    let took = rt.block_on(settled(&st, &all, from, to, Duration::from_secs(120)));
    running.stop(&rt);
    let took = took?;
    eprintln!(
        "settled {} events over 35 days in {:.1} s after the last post",
        all.len(),
        took.as_secs_f64()
    );
    // The ledger recorded the late windows and their corrections: every window-metric window,
    // and every session-metric window whose sessions have closed (27 h after its start at most
    // for web_sessions' 1d windows: 1 d + 24 h max duration + 2 × 30 min gap + grace); later
    // ones wait for that close.
    let (windows, corrected, early): (i64, i64, i64) = rt.block_on(async {
        let pool = tally_sinks::postgres::connect(&st.settings.postgres).await?;
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*),
                    count(*) FILTER (WHERE corrections > 0 AND pending_since IS NULL),
                    count(*) FILTER (WHERE pending_since IS NOT NULL AND table_kind = 'sessions'
                                       AND window_start_ms >= $2)
             FROM late_windows WHERE pipeline = $1",
        )
        .bind(&st.settings.pipeline.name)
        .bind(now as i64 - (2 * DAY + 2 * HOUR) as i64)
        .fetch_one(&pool)
        .await?;
        anyhow::Ok(row)
    })?;
    ensure!(windows > 1_000, "only {windows} late windows recorded");
    ensure!(
        corrected + early == windows,
        "{corrected} of {windows} corrected ({early} session windows not closed yet)"
    );
    teardown(&rt, &st)
}

/// Writes `evs` as JSON lines and runs `tally import` on the file with `flags`.
fn import(st: &Stack, evs: &[Ev], flags: &[&str]) -> anyhow::Result<std::process::Output> {
    let path = std::env::temp_dir().join(format!("late-{}.jsonl", unique_tag()));
    let lines: Vec<String> = evs.iter().map(|e| e.json().to_string()).collect();
    std::fs::write(&path, lines.join("\n"))?;
    let out = tally_command(st, "import", &st.settings.clickhouse.url)?
        .arg(&path)
        .args(flags)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()?;
    std::fs::remove_file(&path)?;
    Ok(out)
}

/// RFC 3339 for a `--from`/`--to` flag.
fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Spawns `tally <subcommand>` for the test's pipeline, logging to a file.
fn spawn(st: &Stack, subcommand: &str, log: &str) -> anyhow::Result<std::process::Child> {
    let file = std::fs::File::create(std::env::temp_dir().join(log))?;
    Ok(tally_command(st, subcommand, &st.settings.clickhouse.url)?
        .stderr(file)
        .spawn()?)
}

/// Whether a `correct` run of the test's pipeline is in progress.
async fn correcting(pool: &sqlx::PgPool, pipeline: &str) -> anyhow::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_runs WHERE pipeline = $1 AND kind = 'correct' AND state = 'running'",
    )
    .bind(pipeline)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

#[test]
fn killing_the_worker_mid_recompute_and_the_pipeline_mid_backfill_loses_and_doubles_nothing(
) -> anyhow::Result<()> {
    if !enabled(
        "killing_the_worker_mid_recompute_and_the_pipeline_mid_backfill_loses_and_doubles_nothing",
    ) {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
    let now = Utc::now().timestamp_millis() as u64;
    let from = now - now % DAY - 30 * DAY;
    let mut rng = Rng(0xC0FFEE ^ now);
    // Something recent first, so the history that follows is late.
    let recent = history(
        &mut rng,
        &format!("{tag}-r"),
        now - 60_000,
        now - 30_000,
        50,
    );
    rt.block_on(produce(&st, &recent))?;
    let mut pipeline = spawn(&st, "run", &format!("late-run-{tag}.log"))?;
    let mut worker: Option<std::process::Child> = None;
    let mut past = history(&mut rng, &tag, from, now - 2 * HOUR, 8_000);
    shuffle(&mut rng, &mut past);
    let result = rt.block_on(async {
        eventually(
            "the recent events are counted",
            Duration::from_secs(60),
            || check_summary(&st, &recent, now - 60_000, now),
        )
        .await?;
        // The pipeline is killed during the backfill (half over HTTP, half with `tally
        // import`) and started again.
        let (first, second) = past.split_at(past.len() / 2);
        post_all(&st, first).await?;
        let importing = {
            let (st, second) = (st.clone(), second.to_vec());
            std::thread::spawn(move || import(&st, &second, &[]))
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        tally_tests::harness::send_signal(pipeline.id(), "KILL")?;
        let _ = pipeline.wait();
        let out = importing
            .join()
            .map_err(|_| anyhow::anyhow!("the import thread panicked"))??;
        ensure!(out.status.success(), "tally import: {out:?}");
        pipeline = spawn(&st, "run", &format!("late-run2-{tag}.log"))?;
        let mut stored = recent.clone();
        stored.extend(past.iter().cloned());
        eventually("the backfill is stored", Duration::from_secs(90), || {
            check_summary(&st, &stored, from, now)
        })
        .await?;
        // Thousands of windows are now waiting: a worker starts, and is killed while its
        // first recompute runs.
        let mut first_worker = spawn(&st, "worker", &format!("late-worker-{tag}.log"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !correcting(&pool, &st.settings.pipeline.name).await? {
            ensure!(
                Instant::now() < deadline,
                "no correction started within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tally_tests::harness::send_signal(first_worker.id(), "KILL")?;
        let _ = first_worker.wait();
        // Late events while no worker runs: marked now, corrected after the restart.
        let t = Utc::now().timestamp_millis() as u64;
        let late = history(&mut rng, &format!("{tag}-l"), t - 3 * DAY, t - HOUR, 300);
        post_all(&st, &late).await?;
        worker = Some(spawn(&st, "worker", &format!("late-worker2-{tag}.log"))?);
        anyhow::Ok(late)
    });
    let late = match result {
        Ok(late) => late,
        Err(e) => {
            let _ = pipeline.kill();
            if let Some(w) = worker.as_mut() {
                let _ = w.kill();
            }
            return Err(e);
        }
    };
    let mut all = recent.clone();
    all.extend(past);
    all.extend(late);
    let to = now - now % 60_000 - 120_000;
    let settled = rt.block_on(settled(&st, &all, from, to, Duration::from_secs(120)));
    for child in std::iter::once(&mut pipeline).chain(worker.as_mut()) {
        tally_tests::harness::send_signal(child.id(), "TERM")?;
        wait_exit(child, Duration::from_secs(60))?;
    }
    settled?;
    // The killed run is on record; a later run finished the work.
    let states: BTreeSet<String> = rt.block_on(async {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT state FROM job_runs WHERE pipeline = $1 AND kind = 'correct'",
        )
        .bind(&st.settings.pipeline.name)
        .fetch_all(&pool)
        .await?;
        anyhow::Ok(rows.into_iter().collect())
    })?;
    ensure!(
        (states.contains("running") || states.contains("interrupted"))
            && states.contains("succeeded"),
        "job runs: {states:?}"
    );
    teardown(&rt, &st)
}

#[test]
fn rebuild_rewrites_a_range_with_the_same_exact_values() -> anyhow::Result<()> {
    if !enabled("rebuild_rewrites_a_range_with_the_same_exact_values") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let running = Running::start(&st, &rt);
    let now = Utc::now().timestamp_millis() as u64;
    let from = now - now % DAY - 3 * DAY;
    let mut rng = Rng(0xB1D ^ now);
    let recent = history(
        &mut rng,
        &format!("{tag}-r"),
        now - 60_000,
        now - 30_000,
        20,
    );
    let past = history(&mut rng, &tag, from, now - 2 * HOUR, 2_000);
    let outcome = (|| {
        rt.block_on(async {
            post_all(&st, &recent).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            post_all(&st, &past).await
        })?;
        let mut all = recent.clone();
        all.extend(past.iter().cloned());
        let to = now - now % 60_000 - 60_000;
        rt.block_on(settled(&st, &all, from, to, Duration::from_secs(120)))?;
        // Corrupt the stored rollups of one day (as a bug would), then rebuild the range.
        rt.block_on(async {
            let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, true);
            ch.query(
                "INSERT INTO rollups_product_analytics (window_name, window_start, dimension,
                     value, events, unique_users, unique_sessions, unique_event_types, is_final,
                     version)
                 SELECT window_name, window_start, dimension, value, events + 7, unique_users,
                     unique_sessions, unique_event_types, is_final, version + 1
                 FROM rollups_product_analytics
                 WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?)",
            )
            .bind((from + DAY) / 1000)
            .bind((from + 2 * DAY) / 1000)
            .execute()
            .await
        })?;
        ensure!(
            rt.block_on(check_all(&st, &all, from, to)).is_err(),
            "the corruption was not visible (the check cannot fail)"
        );
        let out = tally_command(&st, "rebuild", &st.settings.clickhouse.url)?
            .args(["--from", &iso(from), "--to", &iso(now)])
            .stdout(std::process::Stdio::piped())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "tally rebuild: {:?} {stdout}",
            out.status
        );
        ensure!(stdout.contains("done"), "tally rebuild said: {stdout}");
        // The rebuild's `job.started` audit row, committed with its record.
        let audited: Vec<(String, String)> = rt.block_on(async {
            let pool = tally_sinks::postgres::connect(&st.settings.postgres).await?;
            let rows = sqlx::query_as(
                "SELECT a.actor, a.target FROM audit_log a JOIN rebuilds r
                   ON a.target = 'rebuild:' || r.id
                 WHERE a.action = 'job.started' AND r.pipeline = $1",
            )
            .bind(&st.settings.pipeline.name)
            .fetch_all(&pool)
            .await?;
            anyhow::Ok(rows)
        })?;
        ensure!(
            audited.len() == 1 && audited[0].0.starts_with("cli"),
            "job.started audit rows: {audited:?}"
        );
        rt.block_on(check_all(&st, &all, from, to))
    })();
    running.stop(&rt);
    outcome?;
    teardown(&rt, &st)
}
