//! `tally import --wait`: waiting until the pipeline has counted an imported time range.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::config::TallyConfig;

/// How often the conditions are checked.
const POLL: Duration = Duration::from_millis(500);

/// Waits until the pipeline (`pipeline.name`) has counted, and the job worker corrected, every
/// event imported with a timestamp in `[min_ts_ms, max_ts_ms]` (ms since the Unix epoch):
///
/// 1. the pipeline's saved `read_until` reaches, in every partition of the topic, the high
///    watermark Kafka reported when the import finished (every imported record is below it);
/// 2. then, after the sink's batch wait plus 2 s (the batch holding the last records is
///    written, and its late windows marked, within `clickhouse.batch_ms`), no window with a
///    start in the range is pending in the late-event ledger and no `correct` job of the
///    pipeline is waiting or running, at two checks 1 s apart.
///
/// Prints what it waits for on stderr every 5 s, and the time it took when settled. Returns
/// `false` when `stop` was set (a signal) before it settled.
///
/// # Errors
/// PostgreSQL or Kafka unreachable; not settled within `timeout` (exit 75, `EX_TEMPFAIL`: the
/// pipeline or the worker is not running or far behind); a `correct` job failed for good.
pub async fn wait_until_settled(
    config: &TallyConfig,
    min_ts_ms: u64,
    max_ts_ms: u64,
    stop: &AtomicBool,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let check = |what: &str| -> anyhow::Result<bool> {
        if stop.load(Ordering::SeqCst) {
            eprintln!("stopped waiting ({what}); the import itself is complete");
            return Ok(false);
        }
        if Instant::now() >= deadline {
            return Err(anyhow::Error::new(NotSettled(format!(
                "not settled after {} s ({what}); the import itself is complete: is `tally run` \
                 and a worker (`tally worker`, or `tally all`) running?",
                timeout.as_secs()
            ))));
        }
        Ok(true)
    };
    let started = Instant::now();
    let topic = config.kafka.topic.clone();
    let kafka = config.kafka.clone();
    let high: Vec<(i32, i64)> = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = tally_pipeline::kafka::client_config(&kafka)
            .create()
            .context("creating a kafka client")?;
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(&kafka.topic), timeout)
            .context("reading the topic's partitions")?;
        let mut high = Vec::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, h) = consumer
                    .fetch_watermarks(&kafka.topic, p.id(), timeout)
                    .context("reading the topic's high watermarks")?;
                high.push((p.id(), h));
            }
        }
        anyhow::Ok(high)
    })
    .await??;
    let pool = tally_sinks::postgres::connect(&config.postgres).await?;
    let pipeline = &config.pipeline.name;
    let mut said = Instant::now();
    eprintln!(
        "waiting for pipeline {pipeline} to read the import and correct its windows (Ctrl-C to stop waiting)"
    );
    loop {
        let read: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT partition, read_until FROM pipeline_offsets WHERE pipeline = $1 AND topic = $2",
        )
        .bind(pipeline)
        .bind(&topic)
        .fetch_all(&pool)
        .await?;
        let behind: Vec<String> = high
            .iter()
            .filter(|(p, h)| *h > 0 && !read.iter().any(|(rp, until)| rp == p && until >= h))
            .map(|(p, h)| format!("partition {p} (to offset {h})"))
            .collect();
        if behind.is_empty() {
            break;
        }
        if !check("the pipeline has not read the import yet")? {
            return Ok(false);
        }
        if said.elapsed() >= Duration::from_secs(5) {
            eprintln!("  the pipeline has not read {} yet", behind.join(", "));
            said = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
    tokio::time::sleep(Duration::from_millis(config.clickhouse.batch_ms) + Duration::from_secs(2))
        .await;
    let (from, to) = (
        i64::try_from(min_ts_ms - min_ts_ms % 86_400_000).unwrap_or(0),
        i64::try_from(max_ts_ms).unwrap_or(i64::MAX),
    );
    let mut quiet = 0;
    let mut owed_sessions = 0;
    while quiet < 2 {
        if !check("windows wait for their correction")? {
            return Ok(false);
        }
        // Session metrics of windows whose sessions may still change are the pipeline's to
        // write, and corrected only once they close (a day and an hour after the window with
        // the default sessions): `--wait` waits for the window metrics' corrections, and says
        // how many session windows are still owed one.
        let (pending, sessions_owed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE table_kind <> 'sessions'),
                    count(*) FILTER (WHERE table_kind = 'sessions')
             FROM late_windows WHERE pipeline = $1 AND pending_since IS NOT NULL
               AND window_start_ms >= $2 AND window_start_ms <= $3",
        )
        .bind(pipeline)
        .bind(from)
        .bind(to)
        .fetch_one(&pool)
        .await?;
        owed_sessions = sessions_owed;
        let jobs = tally_sinks::postgres::jobs::queued(&pool, pipeline).await?;
        if let Some(failed) = jobs
            .iter()
            .find(|j| j.kind == "correct" && !j.superseded && j.attempts >= j.max_attempts)
        {
            anyhow::bail!(
                "a correction failed for good: {}",
                failed.last_error.as_deref().unwrap_or("no error recorded")
            );
        }
        // A correction running, or queued to run now (one scheduled later only waits for
        // windows that cannot be corrected yet, e.g. session windows a day from closing).
        let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
        let correcting = jobs.iter().any(|j| {
            j.kind == "correct" && (j.locked_at.is_some() || (!j.superseded && j.run_at <= soon))
        });
        if pending == 0 && !correcting {
            quiet += 1;
        } else {
            quiet = 0;
            if said.elapsed() >= Duration::from_secs(5) {
                eprintln!("  {pending} windows waiting for their correction (is a worker running: `tally worker` or `tally all`?)");
                said = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "settled: the reports for the imported range are exact ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if owed_sessions > 0 {
        eprintln!(
            "  {owed_sessions} session-metric windows get their correction once their sessions \
             close (see `tally jobs --late`)"
        );
    }
    Ok(true)
}

/// `--wait` gave up: exit 75 (`EX_TEMPFAIL`).
#[derive(Debug)]
pub struct NotSettled(String);

impl std::fmt::Display for NotSettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotSettled {}
