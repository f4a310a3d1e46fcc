//! A fast client clock on the real stack (issue 5 item 5): one accepted event stamped 120 s in
//! the future, then on-time events from other users, all over HTTP. The future event may move
//! the watermark no further than the broker's clock allows, so no on-time event is late: once
//! their windows are final, every report point equals the oracle over every event sent, no
//! event was counted late, and `complete_until` never passed the wall clock.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, ensure};
use chrono::{DateTime, Utc};
use tally_tests::harness::{check_reports, post, report, setup, start_pipeline, teardown, Stack};
use tally_tests::harness::{unique_tag, Ev};
use tally_tests::{enabled, eventually};

const MINUTE: u64 = 60_000;

fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

fn event(user: &str, event_type: &str, ts_ms: u64, n: usize) -> Ev {
    Ev {
        id: Some(format!("skew-{user}-{n}")),
        event_type: event_type.to_owned(),
        user: user.to_owned(),
        session: Some(format!("s-{user}")),
        ts_ms,
    }
}

/// Posts one event, which must be accepted.
async fn send(st: &Stack, e: &Ev) -> anyhow::Result<()> {
    let (status, resp) = post(st, &e.json()).await?;
    ensure!(status == 202, "{status} {resp}");
    Ok(())
}

/// The `/metrics` lines of `name` (with or without labels).
async fn metric_lines(st: &Stack, name: &str) -> anyhow::Result<Vec<String>> {
    let text = st
        .http
        .get(format!("{}/metrics", st.api))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .map(str::to_owned)
        .collect())
}

/// `complete_until` of the 1m events report over `[from, to)`, checked against the wall clock
/// read after the answer.
async fn complete_until(st: &Stack, from: u64, to: u64) -> anyhow::Result<Option<u64>> {
    let r = report(st, "events", "1m", from, to, None).await?;
    let now = now_ms();
    let Some(cu) = r["complete_until"].as_str() else {
        return Ok(None);
    };
    let cu = DateTime::parse_from_rfc3339(cu)?.timestamp_millis() as u64;
    ensure!(
        cu <= now,
        "complete_until {cu} is past the wall clock {now}"
    );
    Ok(Some(cu))
}

#[test]
fn a_fast_client_clock_makes_nobody_late() -> anyhow::Result<()> {
    if !enabled("a_fast_client_clock_makes_nobody_late") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    let out_of_orderness = st.settings.pipeline.max_out_of_orderness_ms;

    // One accepted event 120 s ahead of the wall clock.
    let t0 = now_ms();
    let (from, to) = (t0 - t0 % MINUTE - MINUTE, t0 + 4 * MINUTE);
    let mut all = vec![event("fast-clock", "click", t0 + 120_000, 0)];
    rt.block_on(send(&st, &all[0]))?;
    // Wait until the pipeline has read it and moved its watermark as far as it may: the
    // acknowledged frontier reaches its arrival minus the out-of-orderness bound (every other
    // partition is idle), with the fix no further than that plus the clock-skew tolerance,
    // without it to the event's own time minus the bound.
    rt.block_on(eventually(
        "the future event moved the watermark",
        Duration::from_secs(60),
        || async {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            let lines = metric_lines(&st, "tally_acked_frontier_ms").await?;
            let frontier: u64 = lines
                .first()
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no acked frontier in {lines:?}"))?;
            ensure!(frontier + out_of_orderness >= t0, "frontier {frontier}");
            Ok(())
        },
    ))?;
    rt.block_on(complete_until(&st, from, to))?;

    // Three on-time events from other users.
    for (n, user) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let e = event(user, "page_view", now_ms(), n);
        rt.block_on(send(&st, &e))?;
        all.push(e);
    }
    // On-time events from a steady user move the watermark with the wall clock until the
    // windows of the three are final; `complete_until` must stay behind the wall clock.
    let last_window_end = all.iter().skip(1).map(|e| e.ts_ms).max().unwrap_or(t0);
    let last_window_end = last_window_end - last_window_end % MINUTE + MINUTE;
    rt.block_on(async {
        for n in 0..150 {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            if complete_until(&st, from, to)
                .await?
                .is_some_and(|cu| cu >= last_window_end)
            {
                return Ok(());
            }
            let e = event("steady", "purchase", now_ms(), n);
            send(&st, &e).await?;
            all.push(e);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(anyhow!(
            "the on-time events' windows are not final after 150 s"
        ))
    })?;

    // Every point of every report equals the oracle over every event sent, the future one in
    // its own (still open) window included.
    rt.block_on(eventually(
        "reports match the oracle",
        Duration::from_secs(30),
        || async {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            check_reports(&st, &all, from, to).await
        },
    ))?;
    rt.block_on(async {
        let late = metric_lines(&st, "tally_late_events_total").await?;
        ensure!(!late.is_empty(), "no tally_late_events_total in /metrics");
        ensure!(
            late.iter().all(|l| l.ends_with(" 0")),
            "late events counted: {late:?}"
        );
        complete_until(&st, from, to).await?;
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;
    teardown(&rt, &st)
}
