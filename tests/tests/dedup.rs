//! One event id counts once, end to end on the real stack (issue 5 item 4): the same id sent
//! again with a re-stamped time, across a UTC midnight, or with another event type counts once,
//! as its first copy, in `/reports/summary`, in every `/reports` point and in the raw `events`
//! table; over HTTP, straight through Kafka, and across a graceful restart between the first
//! copy and the retry. The oracle keeps the first copy of each id in send order (copies of one
//! id share a user, hence a partition) and computes every value by brute force.
//!
//! Every event is stamped two days ago or yesterday, and a last event stamped just after the
//! following midnight moves the watermark past all their windows, so the checks run on final,
//! acknowledged values and cannot pass while a retry is still on its way.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, ensure};
use chrono::Utc;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tally_tests::enabled;
use tally_tests::harness::{
    check_reports, check_summary_for, post, setup, start_pipeline, teardown, unique_tag,
    wait_final, Ev, Stack,
};

const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

/// Midnight (UTC) two days ago: the events of these tests are in that day and the next.
fn day0() -> u64 {
    let now = Utc::now().timestamp_millis() as u64;
    now - now % DAY - 2 * DAY
}

fn ev(id: &str, event_type: &str, user: &str, ts_ms: u64) -> Ev {
    Ev {
        id: Some(id.to_owned()),
        event_type: event_type.to_owned(),
        user: user.to_owned(),
        session: Some(format!("s-{user}")),
        ts_ms,
    }
}

/// The input and its two siblings, each one id sent several times plus another event.
fn cases(d0: u64) -> Vec<Ev> {
    let t = d0 + 12 * HOUR + 30 * SEC;
    let m = d0 + DAY; // the midnight between the two days
    let c = d0 + 6 * HOUR;
    // In time order: events more than the out-of-orderness bound (5 s) behind the newest one
    // read would be late.
    vec![
        // A retry that changes event_type (and is re-stamped).
        ev("type-a", "click", "ta", c),
        ev("type-a", "purchase", "ta", c + 1_500),
        ev("type-b", "signup", "tb", c + 3 * SEC),
        // The issue: twice with one timestamp, once 1.5 s later, plus one other event.
        ev("issue-a", "click", "ua", t),
        ev("issue-a", "click", "ua", t),
        ev("issue-a", "click", "ua", t + 1_500),
        ev("issue-b", "page_view", "ub", t + 4 * SEC),
        // Across UTC midnight: first copy at 23:59:59.5, the retry at 00:00:01.
        ev("midnight-a", "click", "ma", m - 500),
        ev("midnight-a", "click", "ma", m + SEC),
        ev("midnight-b", "page_view", "mb", m + 2 * SEC),
    ]
}

/// An event stamped just after the midnight that ends `d0`'s next day: once read, every window
/// of the events above closes.
fn closer(d0: u64, tag: &str) -> Ev {
    ev(
        &format!("closer-{tag}"),
        "page_view",
        "closer",
        d0 + 2 * DAY + 20 * SEC,
    )
}

/// The oracle's input: the first copy of each id, in send order.
fn first_seen(sent: &[Ev]) -> Vec<Ev> {
    let mut ids = HashSet::new();
    sent.iter()
        .filter(|e| e.id.as_ref().is_none_or(|id| ids.insert(id.clone())))
        .cloned()
        .collect()
}

/// Posts each event on its own, as a client retrying one request at a time would.
async fn send_http(st: &Stack, evs: &[Ev]) -> anyhow::Result<()> {
    for e in evs {
        let (status, resp) = post(st, &e.json()).await?;
        ensure!(status == 202, "POST /events: {status} {resp}");
    }
    Ok(())
}

/// Writes each event to the topic, keyed by user like the API, one after the other.
async fn send_kafka(st: &Stack, evs: &[Ev]) -> anyhow::Result<()> {
    let producer: FutureProducer =
        tally_pipeline::kafka::producer_config(&st.settings.kafka).create()?;
    for e in evs {
        let payload = e.json().to_string();
        let record = FutureRecord::to(&st.settings.kafka.topic)
            .key(&e.user)
            .payload(&payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)?;
    }
    Ok(())
}

/// `/reports/summary` for `[from, to)` and every event type equals the oracle over `want`.
async fn check_summaries(st: &Stack, want: &[Ev], from: u64, to: u64) -> anyhow::Result<()> {
    let filters = [
        None,
        Some("click"),
        Some("purchase"),
        Some("signup"),
        Some("page_view"),
    ];
    check_summary_for(st, want, from, to, &filters).await
}

/// The raw `events` table holds exactly the first copy of each id (a replayed copy is the same
/// row; `DISTINCT` stands in for merges that have not happened yet).
async fn check_raw(st: &Stack, want: &[Ev]) -> anyhow::Result<()> {
    let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, true);
    let got: Vec<(String, String, i64)> = ch
        .query(
            "SELECT DISTINCT event_id, event_type, timestamp_ms FROM events
             ORDER BY event_id, timestamp_ms, event_type",
        )
        .fetch_all()
        .await?;
    let mut expected: Vec<(String, String, i64)> = want
        .iter()
        .map(|e| {
            let id = e.id.clone().unwrap_or_default();
            (id, e.event_type.clone(), e.ts_ms as i64)
        })
        .collect();
    expected.sort();
    ensure!(
        got == expected,
        "raw events: got {got:?}, want {expected:?}"
    );
    Ok(())
}

/// Every check over the ranges around each case: all report points (all metrics, windows and
/// the harness's filters), summaries for every type, the raw rows.
async fn check_everything(st: &Stack, sent: &[Ev], d0: u64) -> anyhow::Result<()> {
    let want = first_seen(sent);
    let around = |t: u64| (t - 2 * MIN, t + 3 * MIN);
    let ranges = [
        around(d0 + 12 * HOUR),
        around(d0 + DAY),
        around(d0 + 6 * HOUR),
    ];
    for (from, to) in ranges {
        check_reports(st, &want, from, to).await?;
        check_summaries(st, &want, from, to).await?;
    }
    check_summaries(st, &want, d0, d0 + 2 * DAY).await?;
    check_raw(st, &want).await
}

/// Sends the cases (and the closer) by `path`, waits for final values, checks everything.
fn retries_count_once(path: &str) -> anyhow::Result<()> {
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    let d0 = day0();
    let mut sent = cases(d0);
    sent.push(closer(d0, &tag));
    rt.block_on(async {
        match path {
            "http" => send_http(&st, &sent).await,
            _ => send_kafka(&st, &sent).await,
        }
    })?;
    rt.block_on(wait_final(&st, &pipeline, ("1d", DAY), d0 + 2 * DAY))?;
    rt.block_on(check_everything(&st, &sent, d0))?;
    stop.store(true, Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;
    teardown(&rt, &st)
}

#[test]
fn retries_count_once_over_http() -> anyhow::Result<()> {
    if !enabled("retries_count_once_over_http") {
        return Ok(());
    }
    retries_count_once("http")
}

#[test]
fn retries_count_once_through_kafka() -> anyhow::Result<()> {
    if !enabled("retries_count_once_through_kafka") {
        return Ok(());
    }
    retries_count_once("kafka")
}

/// The first copies are read, their day closes and is acknowledged, the pipeline stops
/// gracefully; after the restart come the retries: one stamped across the midnight (its day is
/// still open) and one re-stamped within the first day. The restart must re-read the first
/// copies (their offsets are owed until their dedup horizon), so both retries are dropped.
#[test]
fn a_retry_after_a_restart_counts_once() -> anyhow::Result<()> {
    if !enabled("a_retry_after_a_restart_counts_once") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let d0 = day0();
    let m = d0 + DAY;
    let before = vec![
        ev("restart-day", "click", "rd", m - 20 * SEC),
        ev("restart-mid", "click", "rm", m - SEC),
        ev("restart-other", "signup", "ro", m - 500),
        // Closes the first day (watermark past its end plus grace), not the second.
        ev(
            &format!("pusher-{tag}"),
            "page_view",
            "pusher",
            m + 30 * SEC,
        ),
    ];
    let after = vec![
        ev("restart-day", "purchase", "rd", m - 18_500),
        ev("restart-mid", "click", "rm", m + 500),
        closer(d0, &tag),
    ];
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    rt.block_on(send_http(&st, &before))?;
    rt.block_on(wait_final(&st, &pipeline, ("1d", DAY), m))?;
    stop.store(true, Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;

    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    rt.block_on(send_http(&st, &after))?;
    rt.block_on(wait_final(&st, &pipeline, ("1d", DAY), d0 + 2 * DAY))?;
    let sent: Vec<Ev> = before.into_iter().chain(after).collect();
    let want = first_seen(&sent);
    rt.block_on(async {
        check_reports(&st, &want, m - 3 * MIN, m + 3 * MIN).await?;
        check_summaries(&st, &want, m - 3 * MIN, m + 3 * MIN).await?;
        check_summaries(&st, &want, d0, d0 + 2 * DAY).await?;
        check_raw(&st, &want).await
    })?;
    stop.store(true, Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;
    teardown(&rt, &st)
}
