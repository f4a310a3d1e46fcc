//! End to end on the real stack: events posted over HTTP and written straight to Kafka flow
//! through the pipeline into ClickHouse; every report point and summary must equal an
//! independent computation over the input; invalid input is rejected or dead-lettered with a
//! reason; a restart of the pipeline neither loses nor double-counts anything.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tally_tests::harness::{
    check_reports, check_summary, events, post, setup, start_pipeline, teardown, unique_tag,
    wait_final, Ev, Rng,
};
use tally_tests::{enabled, eventually};

#[test]
fn events_flow_to_exact_reports_across_a_restart() -> anyhow::Result<()> {
    if !enabled("events_flow_to_exact_reports_across_a_restart") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
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
    rt.block_on(wait_final(&st, &pipeline, ("1m", 60_000), window_end))?;
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
    teardown(&rt, &st)
}
