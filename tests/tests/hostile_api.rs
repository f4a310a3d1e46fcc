//! Hostile input against the real stack (issue 5): the topic message limit `tally migrate` sets,
//! oversized events that must never reach Kafka, gzip bodies of several members, and report
//! ranges ending at the edge of ClickHouse `DateTime`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use chrono::{SecondsFormat, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::{json, Value};
use tally_pipeline::kafka::KafkaConfig;
use tally_tests::harness::{setup, stack, start_pipeline, teardown, unique_tag, Stack};
use tally_tests::{enabled, eventually};

fn admin(kafka: &KafkaConfig) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    Ok(tally_pipeline::kafka::client_config(kafka).create()?)
}

/// The value of `key` in `topic`'s config.
async fn topic_config(kafka: &KafkaConfig, topic: &str, key: &str) -> anyhow::Result<String> {
    let resource = ResourceSpecifier::Topic(topic);
    let described = admin(kafka)?
        .describe_configs([&resource], &AdminOptions::new())
        .await?;
    let config = described
        .into_iter()
        .next()
        .context("no answer")?
        .map_err(|code| anyhow!("describing {topic}: {code:?}"))?;
    config
        .get(key)
        .and_then(|e| e.value.clone())
        .with_context(|| format!("{topic} has no {key}"))
}

#[test]
fn migrate_sets_and_raises_the_topic_message_limit() -> anyhow::Result<()> {
    if !enabled("migrate_sets_and_raises_the_topic_message_limit") {
        return Ok(());
    }
    let kafka = stack(&unique_tag()).settings.kafka;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // New topics get the configured limit.
        tally_pipeline::kafka::ensure_topics(&kafka).await?;
        for topic in [&kafka.topic, &kafka.dlq_topic] {
            let limit = topic_config(&kafka, topic, "max.message.bytes").await?;
            ensure!(limit == "1000000", "{topic}: {limit}");
        }
        // An existing topic with a lower limit is raised, keeping its other settings; a higher
        // one is left alone; running again changes nothing.
        let (low, high) = (
            format!("{}_low", kafka.topic),
            format!("{}_high", kafka.topic),
        );
        let topics = [
            NewTopic::new(&low, 1, TopicReplication::Fixed(1))
                .set("max.message.bytes", "2000")
                .set("retention.ms", "123456789"),
            NewTopic::new(&high, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "2000000"),
        ];
        for result in admin(&kafka)?
            .create_topics(&topics, &AdminOptions::new())
            .await?
        {
            result.map_err(|(t, code)| anyhow!("creating {t}: {code:?}"))?;
        }
        for _ in 0..2 {
            for (topic, want) in [(&low, "1000000"), (&high, "2000000")] {
                let existing = KafkaConfig {
                    topic: topic.clone(),
                    dlq_topic: kafka.dlq_topic.clone(),
                    ..kafka.clone()
                };
                let created = tally_pipeline::kafka::ensure_topics(&existing).await?;
                ensure!(created.is_empty(), "created {created:?}");
                let limit = topic_config(&kafka, topic, "max.message.bytes").await?;
                ensure!(
                    limit == want,
                    "{topic}: max.message.bytes {limit}, want {want}"
                );
            }
            let retention = topic_config(&kafka, &low, "retention.ms").await?;
            ensure!(retention == "123456789", "retention.ms lost: {retention}");
        }
        let all = [&kafka.topic, &kafka.dlq_topic, &low, &high].map(String::as_str);
        admin(&kafka)?
            .delete_topics(&all, &AdminOptions::new())
            .await?;
        anyhow::Ok(())
    })
}

/// One gzip member of `data`, made by the system's `gzip` (this crate does not depend on flate2).
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("gzip")
        .arg("-cn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow!("gzip writer panicked"))??;
    ensure!(output.status.success(), "gzip failed: {}", output.status);
    Ok(output.stdout)
}

async fn post_raw(st: &Stack, body: Vec<u8>, gzipped: bool) -> anyhow::Result<(u16, Value)> {
    let mut request = st
        .http
        .post(format!("{}/events", st.api))
        .header("content-type", "application/json");
    if gzipped {
        request = request.header("content-encoding", "gzip");
    }
    let response = request.body(body).send().await?;
    Ok((response.status().as_u16(), response.json().await?))
}

/// Messages in every partition of `topic`.
fn messages_in(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = tally_pipeline::kafka::client_config(kafka)
        .set("group.id", format!("hostile-count-{}", unique_tag()))
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}

#[test]
fn oversized_events_never_reach_kafka_and_gzip_members_decode_whole() -> anyhow::Result<()> {
    if !enabled("oversized_events_never_reach_kafka_and_gzip_members_decode_whole") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let now = Utc::now().timestamp_millis();
    let padded = |pad: usize| {
        json!({"event_id": format!("big-{tag}"), "event_type": "x", "user_id": "u",
               "timestamp": now, "metadata": {"pad": "x".repeat(pad)}})
        .to_string()
    };
    rt.block_on(async {
        let base = padded(0).len();
        let big = padded(1_010_150 - base);
        ensure!(big.len() == 1_010_150);
        for (body, gzipped) in [
            (big.into_bytes(), false),
            (gzip(padded(3_000_000).as_bytes())?, true),
        ] {
            let (status, answer) = post_raw(&st, body, gzipped).await?;
            ensure!(status == 400, "oversized: {status} {answer}");
            ensure!(answer["accepted"] == 0, "{answer}");
            let reason = answer["rejected"][0]["reason"].as_str().unwrap_or("");
            ensure!(reason.contains("the limit is 1000000 bytes"), "{answer}");
        }
        // `cat a.gz b.gz`: one array split across two members.
        let event = |i: u32| {
            json!({"event_id": format!("m{i}-{tag}"), "event_type": "x", "user_id": "u",
                   "timestamp": now})
            .to_string()
        };
        let mut body = gzip(format!("[{},", event(1)).as_bytes())?;
        body.extend(gzip(format!("{}]", event(2)).as_bytes())?);
        let (status, answer) = post_raw(&st, body, true).await?;
        ensure!(
            status == 202 && answer["accepted"] == 2,
            "members: {status} {answer}"
        );
        anyhow::Ok(())
    })?;
    // Only the two events of the gzip body were written.
    let written = messages_in(&st.settings.kafka, &st.settings.kafka.topic)?;
    ensure!(written == 2, "{written} messages in the topic");
    teardown(&rt, &st)
}

#[test]
fn summary_to_the_end_of_datetime_counts_every_event() -> anyhow::Result<()> {
    if !enabled("summary_to_the_end_of_datetime_counts_every_event") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    let now = Utc::now();
    let iso = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let from = iso(now - chrono::Duration::hours(1));
    let result = rt.block_on(async {
        let events: Vec<Value> = (0..2)
            .map(|i| {
                json!({"event_id": format!("t{i}-{tag}"), "event_type": "x",
                            "user_id": format!("u{i}"), "timestamp": now.timestamp_millis()})
            })
            .collect();
        let (status, answer) = tally_tests::harness::post(&st, &Value::Array(events)).await?;
        ensure!(status == 202, "{status} {answer}");
        let summary = |to: String| {
            let url = format!("{}/reports/summary?from={from}&to={to}", st.api);
            let http = st.http.clone();
            async move {
                let response = http.get(&url).send().await?;
                let status = response.status().as_u16();
                anyhow::Ok((status, response.json::<Value>().await?))
            }
        };
        let near = iso(now + chrono::Duration::hours(1));
        eventually(
            "both events are stored",
            Duration::from_secs(60),
            || async {
                let (status, got) = summary(near.clone()).await?;
                ensure!(status == 200 && got["events"] == 2, "{status} {got}");
                anyhow::Ok(())
            },
        )
        .await?;
        // The last storable instant: the same two events, not 0 (the bound must not wrap).
        let (status, got) = summary("2106-02-07T06:28:16Z".into()).await?;
        ensure!(
            status == 200 && got["events"] == 2,
            "to=2106-02-07T06:28:16Z: {status} {got}"
        );
        for to in ["2106-02-07T06:28:17Z", "2107-01-01T00:00:00Z"] {
            let (status, got) = summary(to.into()).await?;
            let error = got["error"].as_str().unwrap_or("");
            ensure!(
                status == 400 && error.contains("`to`"),
                "to={to}: {status} {got}"
            );
        }
        anyhow::Ok(())
    });
    stop.store(true, Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;
    result?;
    teardown(&rt, &st)
}
