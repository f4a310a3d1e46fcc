//! `tally rebuild` and `tally jobs`: the job queue from the command line.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tally_sinks::postgres::{jobs as records, ledger};

use crate::config::TallyConfig;

/// `tally rebuild`.
#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// Range start: RFC 3339 (2024-03-01T00:00:00Z), a date (2024-03-01, UTC) or epoch ms.
    #[arg(long)]
    from: String,
    /// Range end (exclusive), same forms.
    #[arg(long)]
    to: String,
    /// Queue the rebuild and return at once (print its id) instead of showing its progress.
    #[arg(long)]
    no_wait: bool,
}

/// `tally jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Recent runs to list.
    #[arg(long, default_value_t = 20)]
    limit: i64,
    /// Also list the most recently marked windows of the late-event ledger.
    #[arg(long)]
    late: bool,
}

/// Parses a time as `tally rebuild` accepts it, to ms since the epoch.
fn parse_time(flag: &str, value: &str) -> anyhow::Result<u64> {
    let ms = if let Ok(ms) = value.parse::<u64>() {
        Some(ms)
    } else if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        u64::try_from(t.timestamp_millis()).ok()
    } else if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
            .and_then(|t| u64::try_from(t.and_utc().timestamp_millis()).ok())
    } else {
        None
    };
    ms.with_context(|| {
        format!("--{flag} {value:?}: expected RFC 3339 (2024-03-01T00:00:00Z), a date (2024-03-01) or epoch ms")
    })
    .context(crate::InvalidConfig)
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// Queues a rebuild of `[from, to)` and, unless `--no-wait`, follows its progress until it is
/// done (a bar on a terminal, a line every 5 s otherwise). Fails when the job fails for good.
pub async fn rebuild(config: &TallyConfig, args: &RebuildArgs) -> anyhow::Result<()> {
    let (from, to) = (parse_time("from", &args.from)?, parse_time("to", &args.to)?);
    // Nothing older than the retention is stored, and nothing after today is closed.
    let today = u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0) / 86_400_000 * 86_400_000;
    let oldest = today.saturating_sub(u64::from(config.clickhouse.retention_days) * 86_400_000);
    let (from, to) = (from.max(oldest), to.min(today + 86_400_000));
    let Some((from, to)) = tally_jobs::aligned_range(from, to) else {
        return Err(anyhow::anyhow!(
            "--to must be after --from, within the retention ({} days) and not after today",
            config.clickhouse.retention_days
        )
        .context(crate::InvalidConfig));
    };
    let pool = tally_sinks::postgres::connect(&config.postgres).await?;
    let (from_ms, to_ms) = (
        i64::try_from(from).unwrap_or(i64::MAX),
        i64::try_from(to).unwrap_or(i64::MAX),
    );
    let pipeline = &config.pipeline.name;
    let actor = tally_sinks::postgres::audit::Actor::cli();
    let id = records::rebuild_create(&pool, pipeline, from_ms, to_ms, &actor).await?;
    tally_jobs::enqueue(
        &pool,
        pipeline,
        tally_jobs::Rebuild { rebuild_id: id },
        None,
        None,
    )
    .await?;
    eprintln!(
        "rebuild {id}: {} to {} queued ({} days)",
        rfc3339(from_ms),
        rfc3339(to_ms),
        (to - from) / 86_400_000
    );
    if args.no_wait {
        println!("{id}");
        return Ok(());
    }
    let total = to - from;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total / 86_400_000);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} rebuild [{bar:30}] {pos}/{len} days  {msg}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let started = Instant::now();
    let mut last_line = Instant::now();
    let mut last_hint = Instant::now();
    loop {
        let r = records::rebuild_get(&pool, id)
            .await?
            .context("the rebuild record disappeared")?;
        let done_days = u64::try_from(r.done_until_ms - from_ms).unwrap_or(0) / 86_400_000;
        if let Some(bar) = &bar {
            bar.set_position(done_days);
            bar.set_message(format!("{} rows", r.rows_written));
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "rebuild {id}: {done_days}/{} days, {} rows, {} ({:.0} s)",
                total / 86_400_000,
                r.rows_written,
                r.state,
                started.elapsed().as_secs_f64()
            );
            last_line = Instant::now();
        }
        match r.state.as_str() {
            "done" => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                println!(
                    "rebuild {id}: done, {} rollup rows rewritten in {:.1} s",
                    r.rows_written,
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            "failed" => bail!("rebuild {id} failed: {}", r.error.unwrap_or_default()),
            _ => {}
        }
        if r.state == "queued"
            && started.elapsed() > Duration::from_secs(15)
            && last_hint.elapsed() >= Duration::from_secs(15)
        {
            last_hint = Instant::now();
            let hint = format!(
                "rebuild {id}: still queued; is a worker running (`tally worker` or `tally all`)?"
            );
            match &bar {
                Some(bar) => bar.println(hint),
                None => eprintln!("{hint}"),
            }
            last_line = Instant::now();
        }
        // A job that failed for good never sets `failed` itself: check the queue.
        let failed = records::queued(&pool, pipeline)
            .await?
            .into_iter()
            .find(|j| {
                j.kind == "rebuild"
                    && !j.superseded
                    && j.attempts >= j.max_attempts
                    && j.last_error.is_some()
            });
        if let Some(j) = failed {
            bail!(
                "rebuild {id} failed after {} attempts: {}",
                j.attempts,
                j.last_error.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints the queue, the latest runs and the correction backlog.
pub async fn jobs(config: &TallyConfig, args: &JobsArgs) -> anyhow::Result<()> {
    let pool = tally_sinks::postgres::connect(&config.postgres).await?;
    let now = Utc::now();
    let mut out = String::new();
    let pipeline = &config.pipeline.name;
    let queued = records::queued(&pool, pipeline).await?;
    let _ = writeln!(out, "queue ({} jobs):", queued.len());
    if !queued.is_empty() {
        let _ = writeln!(
            out,
            "  {:>8}  {:<10} {:<9} {:>8}  {:<20}  last error",
            "id", "kind", "state", "attempts", "run at"
        );
    }
    for j in &queued {
        let _ = writeln!(
            out,
            "  {:>8}  {:<10} {:<9} {:>8}  {:<20}  {}",
            j.id,
            j.kind,
            j.state(now),
            format!("{}/{}", j.attempts, j.max_attempts),
            j.run_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            j.last_error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
        );
    }
    let runs = records::recent_runs(&pool, pipeline, args.limit).await?;
    let _ = writeln!(out, "recent runs ({}):", runs.len());
    if !runs.is_empty() {
        let _ = writeln!(
            out,
            "  {:>8} {:>8}  {:<10} {:<10} {:>7}  {:<20} {:>9}  result",
            "run", "job", "kind", "state", "attempt", "started", "seconds"
        );
    }
    for r in &runs {
        let secs = r
            .finished_at
            .map(|f| {
                format!(
                    "{:.2}",
                    (f - r.started_at).num_milliseconds() as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "  {:>8} {:>8}  {:<10} {:<10} {:>7}  {:<20} {:>9}  {}",
            r.id,
            r.job_id,
            r.kind,
            r.state,
            format!("{}/{}", r.attempt, r.max_attempts),
            r.started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            secs,
            r.error.as_deref().or(r.summary.as_deref()).unwrap_or("")
        );
    }
    let (pending, lag) = ledger::backlog(&pool, pipeline).await?;
    let _ = writeln!(
        out,
        "corrections: {pending} windows pending, oldest {lag:.1} s"
    );
    if args.late {
        let entries = ledger::recent(&pool, pipeline, args.limit).await?;
        let _ = writeln!(out, "late-event ledger (latest {}):", entries.len());
        let _ = writeln!(
            out,
            "  {:<18} {:<8} {:<7} {:<20} {:>11} {:>11}  {:<8} {:<20}  last corrected",
            "topology",
            "metrics",
            "window",
            "start",
            "late events",
            "corrections",
            "pending",
            "last late event"
        );
        for e in entries {
            let _ = writeln!(
                out,
                "  {:<18} {:<8} {:<7} {:<20} {:>11} {:>11}  {:<8} {:<20}  {}",
                e.topology,
                e.table_kind,
                e.window_name,
                rfc3339(e.window_start_ms),
                e.late_events,
                e.corrections,
                if e.pending { "yes" } else { "no" },
                e.last_late_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                e.last_corrected_at
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "never".into())
            );
        }
    }
    // A closed pipe (`tally jobs | head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
