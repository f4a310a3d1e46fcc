//! Hostile input and the one error and shutdown path, on the real stack:
//! - a poison message too large to dead-letter whole is dead-lettered truncated (original size
//!   and reason in headers) and the pipeline goes on counting the valid events around it;
//! - `tally all` reports its pipeline in `/healthz` and `/readyz`, drains and exits 0 on SIGTERM,
//!   and exits promptly with the config exit code (78) when a table disappears under it;
//! - `tally run` before `tally migrate` says so and exits 78;
//! - a second `tally run` with the same pipeline name is refused (exit 75);
//! - messages deleted by Kafka retention before they were read stop the pipeline at startup.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tally_tests::harness::{
    check_summary, events, produce, setup, start_pipeline, tally_command, teardown, unique_tag,
    wait_exit, Ev, Rng, Stack,
};
use tally_tests::{enabled, eventually};

/// Writes raw bytes to the test's events topic (as kcat would).
async fn produce_raw(st: &Stack, key: &[u8], payload: &[u8]) -> anyhow::Result<()> {
    let producer: FutureProducer = tally_pipeline::kafka::client_config(&st.settings.kafka)
        .set("message.max.bytes", "2000000")
        .create()?;
    let record = FutureRecord::to(&st.settings.kafka.topic)
        .key(key)
        .payload(payload);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow!("producing a raw message: {e}"))?;
    Ok(())
}

/// One dead letter: value length and headers.
struct DeadLetter {
    len: usize,
    headers: HashMap<String, String>,
}

/// Reads every record of the test's DLQ topic (as many as its partitions' high watermarks say;
/// failing if fewer than `at_least`).
fn read_dlq(st: &Stack, at_least: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = tally_pipeline::kafka::client_config(&st.settings.kafka)
        .set("group.id", format!("dlq-reader-{}", unique_tag()))
        .set("fetch.message.max.bytes", "2000000")
        .create()?;
    let topic = &st.settings.kafka.dlq_topic;
    let mut tpl = TopicPartitionList::new();
    let mut total = 0;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    for t in metadata.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
            total += usize::try_from(high - low)?;
            tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning)?;
        }
    }
    ensure!(
        total >= at_least,
        "{total} dead letters, want at least {at_least}"
    );
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while out.len() < total && std::time::Instant::now() < deadline {
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg?;
            let headers = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_owned(), v.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(DeadLetter {
                len: msg.payload().map_or(0, <[u8]>::len),
                headers,
            });
        }
    }
    Ok(out)
}

/// Incompressible bytes (the DLQ producer compresses), not JSON.
fn garbage(n: usize) -> Vec<u8> {
    let mut rng = Rng(0xBADC0DE);
    (0..n).map(|_| (rng.next(256)) as u8).collect()
}

#[test]
fn poison_messages_are_dead_lettered_truncated_and_the_pipeline_goes_on() -> anyhow::Result<()> {
    if !enabled("poison_messages_are_dead_lettered_truncated_and_the_pipeline_goes_on") {
        return Ok(());
    }
    let (rt, st) = setup(&unique_tag())?;
    let limit = st.settings.kafka.max_message_bytes;
    let now = Utc::now().timestamp_millis() as u64;
    let start = now - now % 60_000 - 5 * 60_000;
    let mut rng = Rng(0x9015 ^ start);
    let before = events(&mut rng, start, 60_000, 200);
    let after = events(&mut rng, start + 60_000, 60_000, 200);
    rt.block_on(produce(&st, &before))?;
    // 1. Fits the events topic, but not the DLQ once the reason headers are added.
    let big = garbage(limit - 200);
    rt.block_on(produce_raw(&st, b"user-1", &big))?;
    // 2. A valid JSON object whose validation error (an unknown field named by 100 kB) would
    //    make a reason header of 100 kB.
    let long_field = format!("{{\"{}\": 1}}", "f".repeat(100_000));
    rt.block_on(produce_raw(&st, b"user-2", long_field.as_bytes()))?;
    // 3. A message with a 4 kB key and an empty value.
    rt.block_on(produce_raw(&st, &vec![b'k'; 4096], b""))?;
    rt.block_on(produce(&st, &after))?;

    let (stop, handle) = start_pipeline(&st.settings, &rt);
    let mut all = before.clone();
    all.extend(after.iter().cloned());
    let from = start - 60_000;
    let to = now + 60_000;
    let verdict = rt.block_on(eventually(
        "valid events around the poison counted",
        Duration::from_secs(60),
        || check_summary(&st, &all, from, to),
    ));
    ensure!(
        !handle.is_finished(),
        "the pipeline stopped on a poison message"
    );
    verdict?;

    let letters = read_dlq(&st, 3)?;
    ensure!(letters.len() == 3, "{} dead letters, want 3", letters.len());
    let by_size = |n: usize| {
        letters
            .iter()
            .find(|l| l.headers.get("tally.dlq.original.size") == Some(&n.to_string()))
            .ok_or_else(|| anyhow!("no dead letter of original size {n}"))
    };
    let cut = by_size(big.len())?;
    ensure!(cut.headers.get("tally.dlq.truncated").map(String::as_str) == Some("true"));
    ensure!(
        cut.len < big.len() && cut.len > limit / 2,
        "truncated to {} bytes",
        cut.len
    );
    ensure!(
        cut.headers["tally.dlq.reason"].starts_with("not valid JSON"),
        "reason: {}",
        cut.headers["tally.dlq.reason"]
    );
    let long = by_size(long_field.len())?;
    ensure!(long.len == long_field.len(), "a 100 kB message fits whole");
    let reason = &long.headers["tally.dlq.reason"];
    ensure!(
        reason.starts_with("unknown field") && reason.len() <= 1024,
        "reason of {} bytes",
        reason.len()
    );
    let keyed = by_size(0)?;
    ensure!(
        keyed
            .headers
            .get("tally.dlq.original.key.size")
            .map(String::as_str)
            == Some("4096")
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let joined = handle
        .join()
        .map_err(|_| anyhow!("pipeline thread panicked"))?;
    joined.context("pipeline ended with an error")?;

    // A restart re-reads the poison messages (offsets are committed a day behind) but does not
    // dead-letter them again. One valid event behind each of them, on the same key (so the
    // same partition), shows when they have been re-read.
    let (stop, handle) = start_pipeline(&st.settings, &rt);
    let keys: [&[u8]; 3] = [b"user-1", b"user-2", &[b'k'; 4096]];
    for (i, key) in keys.iter().enumerate() {
        let e = Ev {
            id: Some(format!("behind-poison-{i}")),
            event_type: "click".into(),
            user: format!("behind-{i}"),
            session: None,
            ts_ms: start + 90_000 + i as u64,
        };
        rt.block_on(produce_raw(&st, key, e.json().to_string().as_bytes()))?;
        all.push(e);
    }
    let verdict = rt.block_on(eventually(
        "events behind the poison counted after a restart",
        Duration::from_secs(60),
        || check_summary(&st, &all, from, to),
    ));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let joined = handle
        .join()
        .map_err(|_| anyhow!("pipeline thread panicked"))?;
    verdict?;
    joined.context("pipeline ended with an error after the restart")?;
    let again = read_dlq(&st, 3)?;
    ensure!(
        again.len() == 3,
        "{} dead letters after a restart, want the same 3",
        again.len()
    );
    teardown(&rt, &st)
}

/// A free TCP port on loopback.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let resp = http.get(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

#[test]
fn tally_all_reports_health_drains_on_sigterm_and_stops_on_a_fatal_error() -> anyhow::Result<()> {
    if !enabled("tally_all_reports_health_drains_on_sigterm_and_stops_on_a_fatal_error") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let ch_url = st.settings.clickhouse.url.clone();
    let log = std::env::temp_dir().join(format!("tally-lifecycle-{tag}.log"));
    let spawn = |port: u16| -> anyhow::Result<std::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        Ok(tally_command(&st, "all", &ch_url)?
            .env("TALLY_API__LISTEN", format!("127.0.0.1:{port}"))
            .stderr(log)
            .spawn()?)
    };
    let http = st.http.clone();
    let now = Utc::now().timestamp_millis() as u64;
    let mut rng = Rng(0xA11 ^ now);
    let evs = events(&mut rng, now - 120_000, 60_000, 100);
    rt.block_on(produce(&st, &evs))?;

    // 1. Ready while running; SIGTERM drains and exits 0.
    let port = free_port()?;
    let mut child = spawn(port)?;
    let base = format!("http://127.0.0.1:{port}");
    let ready = rt.block_on(eventually("ready", Duration::from_secs(60), || async {
        let (status, body) = get_json(&http, &format!("{base}/readyz")).await?;
        ensure!(status == 200, "readyz {status}: {body}");
        let (status, health) = get_json(&http, &format!("{base}/healthz")).await?;
        ensure!(
            status == 200 && health["pipeline"]["state"] == "running",
            "healthz {health}"
        );
        Ok(())
    }));
    if ready.is_err() {
        let _ = child.kill();
    }
    ready?;
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    let status = wait_exit(&mut child, Duration::from_secs(60))?;
    ensure!(status.code() == Some(0), "SIGTERM: {status}");

    // 2. A table dropped under a running pipeline: a fatal error, exit 78, promptly.
    let port = free_port()?;
    let mut child = spawn(port)?;
    let base = format!("http://127.0.0.1:{port}");
    rt.block_on(eventually(
        "ready again",
        Duration::from_secs(60),
        || async {
            let (status, body) = get_json(&http, &format!("{base}/readyz")).await?;
            ensure!(status == 200, "readyz {status}: {body}");
            Ok(())
        },
    ))?;
    rt.block_on(async {
        let ch = tally_sinks::clickhouse::connect(&st.settings.clickhouse, true);
        ch.query("DROP TABLE rollups_product_analytics")
            .execute()
            .await
    })?;
    let more = events(&mut rng, now - 60_000, 30_000, 50);
    rt.block_on(produce(&st, &more))?;
    let status = wait_exit(&mut child, Duration::from_secs(60))?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    ensure!(
        status.code() == Some(78),
        "exit {status}; log {}",
        log.display()
    );
    ensure!(
        text.contains("tally migrate"),
        "log does not say what to do: {text}"
    );
    let _ = std::fs::remove_file(&log);
    teardown(&rt, &st)
}

/// Runs `tally run` to its exit and returns (exit code, stderr).
fn run_to_exit(st: &Stack, env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut cmd = tally_command(st, "run", &st.settings.clickhouse.url)?;
    cmd.stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let status = wait_exit(&mut child, Duration::from_secs(60))?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr)?;
    }
    Ok((status.code(), stderr))
}

#[test]
fn tally_run_before_migrate_says_so() -> anyhow::Result<()> {
    if !enabled("tally_run_before_migrate_says_so") {
        return Ok(());
    }
    // A ClickHouse database nobody migrated (the harness's setup is not called).
    let st = tally_tests::harness::stack(&unique_tag());
    let (code, stderr) = run_to_exit(&st, &[])?;
    ensure!(code == Some(78), "exit {code:?}: {stderr}");
    ensure!(stderr.contains("run `tally migrate`"), "{stderr}");
    // `tally produce` to a topic nobody created says the same.
    let mut produce = tally_command(&st, "produce", &st.settings.clickhouse.url)?;
    let out = produce
        .args(["--count", "1"])
        .stderr(Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(78),
        "produce: {:?}: {stderr}",
        out.status
    );
    ensure!(stderr.contains("run `tally migrate`"), "{stderr}");
    Ok(())
}

#[test]
fn a_second_pipeline_with_the_same_name_is_refused() -> anyhow::Result<()> {
    if !enabled("a_second_pipeline_with_the_same_name_is_refused") {
        return Ok(());
    }
    let (rt, st) = setup(&unique_tag())?;
    let (stop, handle) = start_pipeline(&st.settings, &rt);
    let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
    rt.block_on(eventually(
        "first pipeline holds the lease",
        Duration::from_secs(30),
        || async {
            let n: i64 = sqlx_count(&pool, &st.settings.pipeline.name).await?;
            ensure!(n == 1, "no lease yet");
            Ok(())
        },
    ))?;
    let (code, stderr) = run_to_exit(&st, &[])?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let first = handle
        .join()
        .map_err(|_| anyhow!("pipeline thread panicked"))?;
    ensure!(code == Some(75), "exit {code:?}: {stderr}");
    ensure!(
        stderr.contains("another `tally run` holds this pipeline"),
        "{stderr}"
    );
    first.context("the first pipeline was disturbed")?;
    teardown(&rt, &st)
}

async fn sqlx_count(pool: &sqlx::PgPool, pipeline: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM pipeline_leases WHERE pipeline = $1")
            .bind(pipeline)
            .fetch_one(pool)
            .await?,
    )
}

#[test]
fn messages_deleted_by_retention_before_they_were_read_are_reported() -> anyhow::Result<()> {
    if !enabled("messages_deleted_by_retention_before_they_were_read_are_reported") {
        return Ok(());
    }
    let (rt, st) = setup(&unique_tag())?;
    let topic = st.settings.kafka.topic.clone();
    let now = Utc::now().timestamp_millis() as u64;
    // 10 events of one user: one partition.
    let evs: Vec<Ev> = (0..10)
        .map(|i| Ev {
            id: Some(format!("gap-{i}")),
            event_type: "click".into(),
            user: "gap-user".into(),
            session: None,
            ts_ms: now - 60_000 + i,
        })
        .collect();
    rt.block_on(produce(&st, &evs))?;
    let partition = rt.block_on(async {
        let consumer: BaseConsumer =
            tally_pipeline::kafka::client_config(&st.settings.kafka).create()?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut found = None;
        for t in md.topics() {
            for p in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10))?;
                if high > 0 {
                    found = Some(p.id());
                }
            }
        }
        found.ok_or_else(|| anyhow!("no partition has data"))
    })?;
    // The pipeline had read up to offset 3 of that partition when it stopped...
    let pool = rt.block_on(tally_sinks::postgres::connect(&st.settings.postgres))?;
    rt.block_on(
        sqlx::query(
            "INSERT INTO pipeline_offsets (pipeline, topic, partition, next_offset, read_until)
             VALUES ($1, $2, $3, 3, 3)",
        )
        .bind(&st.settings.pipeline.name)
        .bind(&topic)
        .bind(partition)
        .execute(&pool),
    )?;
    // ...then retention deleted offsets 0..8.
    rt.block_on(async {
        let admin: rdkafka::admin::AdminClient<_> =
            tally_pipeline::kafka::client_config(&st.settings.kafka).create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(8))?;
        admin
            .delete_records(&tpl, &rdkafka::admin::AdminOptions::new())
            .await?;
        anyhow::Ok(())
    })?;
    let (code, stderr) = run_to_exit(&st, &[])?;
    ensure!(code == Some(78), "exit {code:?}: {stderr}");
    ensure!(
        stderr.contains(&format!(
            "partition {partition}: messages 3..8 were deleted"
        )),
        "{stderr}"
    );
    // Accepting the loss: the pipeline starts from offset 8 and counts the two events left.
    let (stop, handle) = {
        let mut settings = st.settings.clone();
        settings.pipeline.on_retention_gap = tally_pipeline::RetentionGapPolicy::Skip;
        start_pipeline(&settings, &rt)
    };
    let kept = evs[8..].to_vec();
    let verdict = rt.block_on(eventually(
        "events after the gap counted",
        Duration::from_secs(60),
        || check_summary(&st, &kept, now - 120_000, now + 60_000),
    ));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let joined = handle
        .join()
        .map_err(|_| anyhow!("pipeline thread panicked"))?;
    verdict?;
    joined?;
    teardown(&rt, &st)
}

#[test]
fn wrong_credentials_are_a_config_error_not_an_outage() -> anyhow::Result<()> {
    if !enabled("wrong_credentials_are_a_config_error_not_an_outage") {
        return Ok(());
    }
    let st = tally_tests::harness::stack(&unique_tag());
    let (code, stderr) = run_to_exit(&st, &[("TALLY_CLICKHOUSE__PASSWORD", "wrong")])?;
    ensure!(
        code == Some(78),
        "clickhouse password: exit {code:?}: {stderr}"
    );
    ensure!(
        stderr.contains("clickhouse.user/clickhouse.password"),
        "{stderr}"
    );
    let bad_role = st.settings.postgres.url.replacen("tally@", "nobody@", 1);
    let (code, stderr) = run_to_exit(&st, &[("TALLY_POSTGRES__URL", &bad_role)])?;
    ensure!(code == Some(78), "postgres role: exit {code:?}: {stderr}");
    ensure!(stderr.contains("postgres.url"), "{stderr}");
    Ok(())
}
