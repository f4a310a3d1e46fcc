//! End to end on the real stack: events posted over HTTP (some twice) flow through Kafka and
//! the pipeline into ClickHouse; `GET /users` (every page, both sorts, JSON and CSV) must equal
//! an independent computation over the events the test generated: per user the first and last
//! event time, the events, the distinct client sessions and the most frequent event type, over
//! all time and over sub-ranges with whole and partial days.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{anyhow, ensure};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tally_tests::harness::{events, post, setup, start_pipeline, teardown, unique_tag, Ev, Rng};
use tally_tests::{enabled, eventually};

const DAY: u64 = 86_400_000;
const HOUR: u64 = 3_600_000;

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The oracle: every user with an event in `[from, to)` (each generated event is distinct:
/// given ids are unique, the API assigns the others).
fn oracle(evs: &[Ev], from: u64, to: u64) -> BTreeMap<String, Value> {
    let mut by_user: BTreeMap<&str, Vec<&Ev>> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.ts_ms >= from && e.ts_ms < to) {
        by_user.entry(&e.user).or_default().push(e);
    }
    by_user
        .into_iter()
        .map(|(user, es)| {
            let sessions: BTreeSet<&str> = es.iter().filter_map(|e| e.session.as_deref()).collect();
            let mut types: BTreeMap<&str, usize> = BTreeMap::new();
            for e in &es {
                *types.entry(&e.event_type).or_default() += 1;
            }
            let most = types.values().copied().max().unwrap_or(0);
            let top = types
                .iter()
                .find(|(_, n)| **n == most)
                .map_or("", |(t, _)| *t);
            let first = es.iter().map(|e| e.ts_ms).min().unwrap_or(0);
            let last = es.iter().map(|e| e.ts_ms).max().unwrap_or(0);
            let v = json!({
                "user_id": user,
                "first_seen": iso(first),
                "last_seen": iso(last),
                "events": es.len(),
                "sessions": sessions.len(),
                "top_event_type": top,
            });
            (user.to_owned(), v)
        })
        .collect()
}

/// Every page of `/users?{query}` with `limit`: the users in answer order.
async fn all_pages(
    st: &tally_tests::harness::Stack,
    query: &str,
    limit: u64,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut url = format!("{}/users?limit={limit}{query}", st.api);
        if let Some(n) = &next {
            url.push_str(&format!("&next={n}"));
        }
        let resp = st.http.get(&url).send().await?;
        ensure!(resp.status() == 200, "{url}: {}", resp.status());
        let page: Value = resp.json().await?;
        let users = page["users"].as_array().cloned().unwrap_or_default();
        ensure!(users.len() as u64 <= limit, "{url}: {} users", users.len());
        out.extend(users);
        match page["next"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => return Ok(out),
        }
        ensure!(out.len() < 100_000, "paging does not end");
    }
}

/// `/users` over `[from, to)` (bounds given as `Some`) equals the oracle, paged with a small
/// limit in both sorts: every user once, in order.
async fn check_users(
    st: &tally_tests::harness::Stack,
    evs: &[Ev],
    from: Option<u64>,
    to: Option<u64>,
) -> anyhow::Result<()> {
    let want = oracle(evs, from.unwrap_or(0), to.unwrap_or(u64::MAX));
    ensure!(
        !want.is_empty(),
        "the range holds no events: a useless check"
    );
    let mut query = String::new();
    if let Some(f) = from {
        query.push_str(&format!("&from={}", iso(f)));
    }
    if let Some(t) = to {
        query.push_str(&format!("&to={}", iso(t)));
    }
    for sort in ["last_seen", "events"] {
        let got = all_pages(st, &format!("{query}&sort={sort}"), 7).await?;
        let keys: Vec<(i64, String)> = got
            .iter()
            .map(|u| {
                let key = if sort == "events" {
                    u["events"].as_i64().unwrap_or(0)
                } else {
                    DateTime::parse_from_rfc3339(u["last_seen"].as_str().unwrap_or(""))
                        .map(|t| t.timestamp_millis())
                        .unwrap_or(0)
                };
                (-key, u["user_id"].as_str().unwrap_or("").to_owned())
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        ensure!(keys == sorted, "sort={sort} {query}: out of order");
        let by_id: BTreeMap<String, Value> = got
            .iter()
            .map(|u| (u["user_id"].as_str().unwrap_or("").to_owned(), u.clone()))
            .collect();
        ensure!(
            by_id.len() == got.len(),
            "sort={sort} {query}: a user repeated"
        );
        for (id, w) in &want {
            let g = by_id
                .get(id)
                .ok_or_else(|| anyhow!("{query}: {id} missing"))?;
            ensure!(g == w, "{query}: {id}: got {g}, want {w}");
        }
        ensure!(
            by_id.len() == want.len(),
            "{query}: users that have no events"
        );
    }
    Ok(())
}

#[test]
fn users_equal_the_posted_events() -> anyhow::Result<()> {
    if !enabled("users_equal_the_posted_events") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);

    // 30 hours over two UTC midnights (`m0`, `m1`), all in the past: one whole day between
    // two partial ones.
    let now = Utc::now().timestamp_millis() as u64;
    let m1 = now - now % DAY - DAY;
    let m0 = m1 - DAY;
    let start = m0 - 3 * HOUR;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ start);
    let all = events(&mut rng, start, DAY + 6 * HOUR, 1_500);

    let result = rt.block_on(async {
        for chunk in all.chunks(300) {
            let body = Value::Array(chunk.iter().map(Ev::json).collect());
            let (status, resp) = post(&st, &body).await?;
            ensure!(status == 202 || status == 200, "post: {status} {resp}");
        }
        // Some events again (same ids): counted once.
        let again: Vec<Value> = all
            .iter()
            .filter(|e| e.id.is_some())
            .take(150)
            .map(Ev::json)
            .collect();
        let (status, resp) = post(&st, &Value::Array(again)).await?;
        ensure!(
            status == 202 || status == 200,
            "post again: {status} {resp}"
        );

        eventually("all-time users match", Duration::from_secs(120), || async {
            ensure!(!pipeline.is_finished(), "the pipeline stopped early");
            check_users(&st, &all, None, None).await
        })
        .await?;
        // A whole day with partial edges on both sides (aggregate and raw events); the whole
        // day alone (the aggregate alone); across one midnight without a whole day, and
        // within one day (raw events alone); open ends.
        check_users(
            &st,
            &all,
            Some(m0 - 2 * HOUR + 123),
            Some(m1 + 2 * HOUR - 77),
        )
        .await?;
        check_users(&st, &all, Some(m0), Some(m1)).await?;
        check_users(&st, &all, Some(m1 - HOUR - 5), Some(m1 + HOUR + 5)).await?;
        check_users(&st, &all, Some(m0 + 5 * HOUR + 1), Some(m0 + 6 * HOUR)).await?;
        check_users(&st, &all, Some(m0 + 17), None).await?;
        check_users(&st, &all, None, Some(m1 - 1)).await?;

        // CSV: the same users, one row each under a header.
        let url = format!("{}/users?format=csv&limit=1000", st.api);
        let text = st.http.get(&url).send().await?.text().await?;
        let mut lines = text.lines();
        ensure!(
            lines.next() == Some("user_id,first_seen,last_seen,events,sessions,top_event_type"),
            "{text}"
        );
        let want = oracle(&all, 0, u64::MAX);
        let rows: BTreeSet<String> = lines.map(str::to_owned).collect();
        let want_rows: BTreeSet<String> = want
            .values()
            .map(|u| {
                format!(
                    "{},{},{},{},{},{}",
                    u["user_id"].as_str().unwrap_or(""),
                    u["first_seen"].as_str().unwrap_or(""),
                    u["last_seen"].as_str().unwrap_or(""),
                    u["events"],
                    u["sessions"],
                    u["top_event_type"].as_str().unwrap_or("")
                )
            })
            .collect();
        ensure!(rows == want_rows, "csv: {rows:?}\nwant {want_rows:?}");
        anyhow::Ok(())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let stopped = pipeline.join();
    teardown(&rt, &st)?;
    result?;
    stopped.map_err(|_| anyhow!("pipeline panicked"))??;
    Ok(())
}
