//! Two topologies in one process on the real stack: `product_analytics` and `web_sessions`
//! (tumbling `1h` and `1d`, hopping `1h_15m`, sessions with a 30 min gap, grouped by
//! `metadata.platform`) read the same Kafka topic. Three days of history posted in a shuffled
//! order (a tenth sent twice), with live traffic flowing, settle to values that equal an
//! independent computation over the input: sessions by a plain sort-and-scan per user written
//! here, window metrics by counting. Every point of every metric, window and group is checked,
//! and `product_analytics` still equals the harness's own oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tally_tests::harness::{
    check_reports, distinct, post, setup, start_pipeline, start_worker, teardown, unique_tag, Ev,
    Load, Rng, Stack,
};
use tally_tests::{enabled, eventually};

const MINUTE: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;
const GAP: u64 = 30 * MINUTE;
const MAX_SESSION: u64 = DAY;
const PLATFORMS: [&str; 3] = ["ios", "android", "web"];
/// The name a missing dimension value is reported under.
const NOT_SET: &str = "(not set)";

/// One test event: the harness's fields plus the platform (`None`: no such metadata key).
#[derive(Clone, Debug)]
struct WebEv {
    ev: Ev,
    platform: Option<String>,
}

impl WebEv {
    fn json(&self) -> Value {
        let mut v = self.ev.json();
        v["metadata"] = match &self.platform {
            Some(p) => json!({ "platform": p, "path": "/p" }),
            None => json!({ "path": "/p" }),
        };
        v
    }
    fn group(&self) -> String {
        self.platform.clone().unwrap_or_else(|| NOT_SET.to_owned())
    }
}

/// `count` users' visits over `[from, to)`: each visit is a burst of 1–6 events a few minutes
/// apart on one platform (a few users switch platform between visits, and a few events carry
/// none), so sessions, bounces and merges all occur.
fn history(rng: &mut Rng, tag: &str, from: u64, to: u64, count: usize) -> Vec<WebEv> {
    let types = ["page_view", "click", "signup", "purchase"];
    let mut out = Vec::new();
    let mut used: BTreeSet<(u64, u64)> = BTreeSet::new();
    while out.len() < count {
        let user = rng.next(40);
        let platform = match rng.next(10) {
            0 => None,
            n => Some(PLATFORMS[(user + n / 7) as usize % 3].to_owned()),
        };
        let mut t = from + rng.next(to - from - 3 * HOUR);
        for _ in 0..=rng.next(6) {
            // Gaps mostly within a session, sometimes just past the 30 min gap.
            t += match rng.next(8) {
                0 => GAP + 1 + rng.next(20 * MINUTE),
                1 => GAP - rng.next(MINUTE),
                _ => rng.next(10 * MINUTE),
            };
            // One event per user and millisecond, so "the first event" of a session is one.
            if !used.insert((user, t)) {
                continue;
            }
            out.push(WebEv {
                ev: Ev {
                    id: Some(format!("{tag}-{}", out.len())),
                    event_type: types[rng.next(4) as usize].to_owned(),
                    user: format!("user-{user}"),
                    session: Some(format!("s-{user}")),
                    ts_ms: t,
                },
                platform: platform.clone(),
            });
        }
    }
    out
}

/// One window's expected values for one group.
#[derive(Clone, Debug, Default, PartialEq)]
struct Expect {
    events: u64,
    users: BTreeSet<String>,
    sessions: u64,
    bounced: u64,
    duration_ms: u64,
    session_events: u64,
}

impl Expect {
    fn metric(&self, name: &str) -> Option<f64> {
        let n = self.sessions as f64;
        match name {
            "events" => Some(self.events as f64),
            "unique_users" => Some(self.users.len() as f64),
            "sessions" => Some(n),
            "bounce_rate" => (n > 0.0).then(|| self.bounced as f64 / n),
            "avg_session_duration_s" => (n > 0.0).then(|| self.duration_ms as f64 / 1000.0 / n),
            "events_per_session" => (n > 0.0).then(|| self.session_events as f64 / n),
            _ => None,
        }
    }
}

/// (window start, group or `None` for all events) -> expected values, for windows of `size`
/// starting every `slide`.
type Oracle = BTreeMap<(u64, Option<String>), Expect>;

/// Starts of the windows of `size`/`slide` containing `t`, by plain arithmetic.
fn starts(t: u64, size: u64, slide: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut s = t - t % slide;
    loop {
        if s + size > t {
            out.push(s);
        }
        if s < slide {
            break;
        }
        s -= slide;
        if s + size <= t {
            break;
        }
    }
    out
}

/// The independent computation: window metrics by counting each distinct event; sessions by
/// sorting each user's events and scanning them (a new session after more than `GAP` of
/// silence, or at `MAX_SESSION` after the session's first event), each attributed with its
/// first event's platform to the windows containing its first event.
fn oracle(evs: &[WebEv], size: u64, slide: u64) -> Oracle {
    let mut out = Oracle::new();
    let mut by_user: BTreeMap<&str, Vec<&WebEv>> = BTreeMap::new();
    for e in evs {
        for s in starts(e.ev.ts_ms, size, slide) {
            for g in [None, Some(e.group())] {
                let x = out.entry((s, g)).or_default();
                x.events += 1;
                x.users.insert(e.ev.user.clone());
            }
        }
        by_user.entry(&e.ev.user).or_default().push(e);
    }
    for (_, mut list) in by_user {
        list.sort_by_key(|e| e.ev.ts_ms);
        let mut i = 0;
        while i < list.len() {
            let first = list[i];
            let mut j = i + 1;
            while j < list.len()
                && list[j].ev.ts_ms - list[j - 1].ev.ts_ms <= GAP
                && list[j].ev.ts_ms - first.ev.ts_ms < MAX_SESSION
            {
                j += 1;
            }
            let (count, last) = ((j - i) as u64, list[j - 1].ev.ts_ms);
            for s in starts(first.ev.ts_ms, size, slide) {
                for g in [None, Some(first.group())] {
                    let x = out.entry((s, g)).or_default();
                    x.sessions += 1;
                    x.bounced += u64::from(count == 1);
                    x.duration_ms += last - first.ev.ts_ms;
                    x.session_events += count;
                }
            }
            i = j;
        }
    }
    out
}

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `GET /reports` of `web_sessions`; `group_by` adds the platform series.
async fn web_report(
    st: &Stack,
    metric: &str,
    window: &str,
    (from, to): (u64, u64),
    group_by: bool,
) -> anyhow::Result<Value> {
    let mut url = format!(
        "{}/reports?topology=web_sessions&metric={metric}&window={window}&from={}&to={}",
        st.api,
        iso(from),
        iso(to)
    );
    if group_by {
        url.push_str("&group_by=metadata.platform&limit=10");
    }
    let resp = st.http.get(&url).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status == 200, "{url}: {status} {body}");
    Ok(body)
}

/// Points of an answer as start (ms) -> value (`None` for `null`).
fn points(points: &Value) -> anyhow::Result<BTreeMap<u64, Option<f64>>> {
    points
        .as_array()
        .context("points is not an array")?
        .iter()
        .map(|p| {
            let start = p["window_start"].as_str().context("window_start")?;
            let start = DateTime::parse_from_rfc3339(start)?.timestamp_millis() as u64;
            Ok((start, p["value"].as_f64()))
        })
        .collect()
}

fn same(got: Option<f64>, want: Option<f64>) -> bool {
    match (got, want) {
        (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1.0),
        (None, None) => true,
        // A window without any session may read as 0 sessions and a null ratio alike.
        (g, w) => g.unwrap_or(0.0) == 0.0 && w.unwrap_or(0.0) == 0.0,
    }
}

/// Every point of every metric and window of `web_sessions` in `[from, to)`, overall and per
/// platform, equals the oracle.
async fn check_web_sessions(st: &Stack, evs: &[WebEv], from: u64, to: u64) -> anyhow::Result<()> {
    let metrics = [
        "events",
        "unique_users",
        "sessions",
        "bounce_rate",
        "avg_session_duration_s",
        "events_per_session",
    ];
    for (window, size, slide) in [
        ("1h", HOUR, HOUR),
        ("1d", DAY, DAY),
        ("1h_15m", HOUR, 15 * MINUTE),
    ] {
        let want = oracle(evs, size, slide);
        for metric in metrics {
            let all = web_report(st, metric, window, (from, to), false).await?;
            ensure!(
                all["pending_corrections"].as_u64() == Some(0),
                "{metric} {window}: corrections pending: {}",
                all["pending_corrections"]
            );
            let got = points(&all["points"])?;
            let mut s = from;
            while s < to {
                let w = want.get(&(s, None)).and_then(|x| x.metric(metric));
                let g = got.get(&s).copied().flatten();
                ensure!(
                    same(g, w),
                    "{metric} {window} at {}: got {g:?}, want {w:?}",
                    iso(s)
                );
                s += slide;
            }
            let grouped = web_report(st, metric, window, (from, to), true).await?;
            let series = grouped["series"].as_array().context("series missing")?;
            let mut seen = BTreeSet::new();
            for one in series {
                let group = one["group"].as_str().context("group")?.to_owned();
                let got = points(&one["points"])?;
                for (&start, &g) in &got {
                    let w = want
                        .get(&(start, Some(group.clone())))
                        .and_then(|x| x.metric(metric));
                    ensure!(
                        same(g, w),
                        "{metric} {window} {group} at {}: got {g:?}, want {w:?}",
                        iso(start)
                    );
                }
                seen.insert(group);
            }
            // Every group with events in the range is in the series.
            for ((start, g), _) in want.range((from, None)..(to, None)) {
                if let Some(g) = g {
                    ensure!(
                        seen.contains(g),
                        "{metric} {window}: group {g} (window {}) missing from {seen:?}",
                        iso(*start)
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn web_sessions_and_product_analytics_run_side_by_side_and_equal_the_oracle() -> anyhow::Result<()>
{
    if !enabled("web_sessions_and_product_analytics_run_side_by_side_and_equal_the_oracle") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    let (stop_worker, worker) = start_worker(&st.settings, &rt);
    let load = Load::start(&rt, &st, 20, 7);
    let now = Utc::now().timestamp_millis() as u64;
    let (from, to) = (now - now % DAY - 5 * DAY, now - now % DAY - 2 * DAY);
    let mut rng = Rng(0x5e55_1045);
    let mut evs = history(&mut rng, &tag, from, to, 3_000);
    let mut sent: Vec<WebEv> = evs.clone();
    // A tenth sent twice (a retrying client), all in a shuffled order.
    for i in (0..evs.len()).step_by(10) {
        sent.push(evs[i].clone());
    }
    for i in (1..sent.len()).rev() {
        sent.swap(i, rng.next(i as u64 + 1) as usize);
    }
    rt.block_on(async {
        for chunk in sent.chunks(500) {
            let body = Value::Array(chunk.iter().map(WebEv::json).collect());
            let (status, resp) = post(&st, &body).await?;
            ensure!(
                status == 202 || status == 200,
                "POST /events: {status} {resp}"
            );
        }
        anyhow::Ok(())
    })?;
    let live = load.finish(&rt)?;
    evs.sort_by_key(|e| e.ev.ts_ms);
    let result = rt.block_on(async {
        eventually("web_sessions settles", Duration::from_secs(240), || {
            check_web_sessions(&st, &evs, from, to)
        })
        .await?;
        // The product analytics of the same input (history + live) are unchanged.
        let mut all: Vec<Ev> = evs.iter().map(|e| e.ev.clone()).collect();
        all.extend(distinct(&live));
        eventually(
            "product_analytics settles",
            Duration::from_secs(120),
            || check_reports(&st, &all, from, to),
        )
        .await
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    stop_worker.store(true, std::sync::atomic::Ordering::SeqCst);
    let stopped = pipeline.join();
    let _ = rt.block_on(worker);
    result?;
    ensure!(matches!(stopped, Ok(Ok(()))), "pipeline: {stopped:?}");
    // The oracle sees sessions: a check that could not fail would be worthless.
    let o = oracle(&evs, HOUR, HOUR);
    ensure!(o.values().any(|x| x.bounced > 0 && x.sessions > x.bounced));
    teardown(&rt, &st)
}

#[test]
fn oracle_windows_by_hand() {
    // 00:20 is in the hours starting 23:30, 23:45, 00:00 and 00:15 (slide 15 min).
    let t = DAY + 20 * MINUTE;
    let got = starts(t, HOUR, 15 * MINUTE);
    assert_eq!(
        got,
        vec![DAY + 15 * MINUTE, DAY, DAY - 15 * MINUTE, DAY - 30 * MINUTE]
    );
    assert_eq!(starts(t, DAY, DAY), vec![DAY]);
    // Sessions: user a at 0, 10 min, 50 min (a 40 min gap: two sessions, the second a bounce).
    let ev = |t: u64, p: &str| WebEv {
        ev: Ev {
            id: None,
            event_type: "x".into(),
            user: "a".into(),
            session: None,
            ts_ms: DAY + t,
        },
        platform: Some(p.into()),
    };
    let o = oracle(
        &[ev(0, "ios"), ev(10 * MINUTE, "web"), ev(50 * MINUTE, "web")],
        HOUR,
        HOUR,
    );
    let all = &o[&(DAY, None)];
    assert_eq!((all.sessions, all.bounced, all.session_events), (2, 1, 3));
    assert_eq!(all.metric("avg_session_duration_s"), Some(300.0));
    // The first session takes its first event's platform.
    assert_eq!(o[&(DAY, Some("ios".into()))].sessions, 1);
    assert_eq!(o[&(DAY, Some("web".into()))].sessions, 1);
    assert_eq!(o[&(DAY, Some("web".into()))].events, 2);
}
