//! `tally import` end to end on the real stack (issue 6, section 3): a few thousand generated
//! historical events, written as JSON lines, gzip CSV with `--map` and a JSON array, are
//! imported by the `tally` binary while a pipeline runs; `/reports/summary` must equal an
//! independent count; importing the same files again (one from another path) counts nothing
//! twice, and the topic holds no new event id; a file with bad lines exits 65 and lists them in
//! the rejects file with their line and reason; `--allow-rejects` exits 0; Ctrl-C exits 130
//! after waiting for the events in flight.
//!
//! The events lie in the two UTC days before yesterday's midnight `E`; after each import one
//! more event, an hour later each time, moves the watermark so that `complete_until` (1h
//! windows) passing it proves the pipeline read and stored everything imported before.

use std::collections::BTreeSet;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _};
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message as _;
use serde_json::{json, Value};
use tally_tests::enabled;
use tally_tests::harness::{
    check_summary_for, events, setup, start_pipeline, tally_command, teardown, unique_tag,
    wait_exit, wait_final, Ev, Rng, Stack,
};

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;
const FILTERS: [Option<&str>; 3] = [None, Some("signup"), Some("click")];

fn now_ms() -> u64 {
    Utc::now().timestamp_millis() as u64
}

fn iso(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A directory of its own for the test's files.
fn work_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-import-e2e-{tag}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// JSON lines, with a blank line and CRLF endings here and there.
fn jsonl(evs: &[Ev]) -> String {
    let mut out = String::new();
    for (i, e) in evs.iter().enumerate() {
        out.push_str(&e.json().to_string());
        out.push_str(if i % 7 == 0 { "\r\n" } else { "\n" });
        if i % 100 == 50 {
            out.push('\n');
        }
    }
    out
}

/// CSV under other column names (hence `--map`), timestamps alternately epoch ms and RFC 3339,
/// an extra `path` column (into metadata), empty cells for absent ids and sessions.
fn csv(evs: &[Ev]) -> String {
    let mut out = String::from("id,kind,who,session,time,path\n");
    for (i, e) in evs.iter().enumerate() {
        let time = if i % 2 == 0 {
            e.ts_ms.to_string()
        } else {
            iso(e.ts_ms)
        };
        let (id, session) = (
            e.id.as_deref().unwrap_or(""),
            e.session.as_deref().unwrap_or(""),
        );
        let kind = &e.event_type;
        out.push_str(&format!(
            "{id},{kind},{},{session},{time},\"/p,{i}\"\n",
            e.user
        ));
    }
    out
}

const CSV_MAP: [&str; 10] = [
    "--map",
    "event_id=id",
    "--map",
    "event_type=kind",
    "--map",
    "user_id=who",
    "--map",
    "session_id=session",
    "--map",
    "timestamp=time",
];

/// Runs `tally import ARGS` to its end (at most 120 s).
fn import(st: &Stack, args: &[&str]) -> anyhow::Result<Output> {
    let child = tally_command(st, "import", &st.settings.clickhouse.url)?
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut child = child;
    wait_exit(&mut child, Duration::from_secs(120))?;
    Ok(child.wait_with_output()?)
}

/// Checks the exit code, returns stdout.
fn expect_exit(out: &Output, code: i32) -> anyhow::Result<String> {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(
        out.status.code() == Some(code),
        "tally import: {}, want exit {code}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    Ok(stdout.trim().to_owned())
}

/// One event an hour after `end` + `k` hours, written as its own file: once the pipeline has
/// read it, `complete_until` (1h windows) can pass `end + k h`.
fn closer(dir: &Path, st: &Stack, end: u64, k: u64) -> anyhow::Result<()> {
    let e = Ev {
        id: Some(format!("closer-{k}")),
        event_type: "closer".into(),
        user: "closer".into(),
        session: None,
        ts_ms: end + k * HOUR + 20_000,
    };
    let path = dir.join(format!("closer-{k}.jsonl"));
    std::fs::write(&path, format!("{}\n", e.json()))?;
    expect_exit(&import(st, &[path.to_str().unwrap_or_default()])?, 0)?;
    Ok(())
}

/// Every `event_id` in the test's topic (read from the start), and how many messages.
fn topic_ids(st: &Stack, messages: usize) -> anyhow::Result<BTreeSet<String>> {
    let consumer: BaseConsumer = tally_pipeline::kafka::client_config(&st.settings.kafka)
        .set("group.id", format!("{}-ids", st.settings.pipeline.name))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&st.settings.kafka.topic])?;
    let (mut ids, mut seen) = (BTreeSet::new(), 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen < messages {
        ensure!(
            std::time::Instant::now() < deadline,
            "read {seen} of {messages} messages"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        let v: Value = serde_json::from_slice(msg.payload().unwrap_or_default())?;
        ids.insert(v["event_id"].as_str().unwrap_or_default().to_owned());
        seen += 1;
    }
    Ok(ids)
}

#[test]
fn imported_history_is_counted_once_and_rejects_are_listed() -> anyhow::Result<()> {
    if !enabled("imported_history_is_counted_once_and_rejects_are_listed") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let (stop, pipeline) = start_pipeline(&st.settings, &rt);
    let dir = work_dir(&tag)?;
    let now = now_ms();
    let end = now - now % DAY - DAY; // yesterday's midnight (UTC)
    let start = end - 2 * DAY;
    let mut rng = Rng(0x5EED_1A2B ^ start);
    let mut all = events(&mut rng, start, 2 * DAY, 3_000);
    let (a, rest) = all.split_at(1_000);
    let (b, c) = rest.split_at(1_000);
    let paths = [
        dir.join("a.jsonl"),
        dir.join("b.csv.gz"),
        dir.join("c.json"),
    ];
    std::fs::write(&paths[0], jsonl(a))?;
    std::fs::write(&paths[1], gzip(csv(b).as_bytes())?)?;
    let array: Vec<Value> = c.iter().map(Ev::json).collect();
    std::fs::write(&paths[2], serde_json::to_string_pretty(&array)?)?;
    let p = |i: usize| paths[i].to_str().unwrap_or_default().to_owned();
    let rejects = dir.join("rejects.jsonl");
    let rejects_arg = rejects.to_str().unwrap_or_default().to_owned();

    // 1. The three formats; the CSV with --map.
    let mut csv_args = vec![p(1)];
    csv_args.extend(CSV_MAP.iter().map(|s| (*s).to_owned()));
    for args in [vec![p(0), p(2)], csv_args.clone()] {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--rejects", &rejects_arg]);
        let stdout = expect_exit(&import(&st, &args)?, 0)?;
        ensure!(stdout.contains("(0 rejected)"), "{stdout}");
    }
    ensure!(
        !rejects.exists(),
        "no rejects file when nothing is rejected"
    );
    closer(&dir, &st, end, 0)?;
    rt.block_on(wait_final(&st, &pipeline, ("1h", HOUR), end))?;
    rt.block_on(check_summary_for(&st, &all, start, end, &FILTERS))?;
    let first_ids = topic_ids(&st, 3_001)?;

    // 2. Again, the JSON lines from another path: the same ids, so nothing counts twice.
    let moved = dir.join("moved.jsonl");
    std::fs::rename(&paths[0], &moved)?;
    let moved = moved.to_str().unwrap_or_default().to_owned();
    let stdout = expect_exit(&import(&st, &[&moved, &p(2)])?, 0)?;
    ensure!(
        stdout.starts_with("imported 2000 events (0 rejected) from 2 files in "),
        "{stdout}"
    );
    let csv_again: Vec<&str> = csv_args.iter().map(String::as_str).collect();
    expect_exit(&import(&st, &csv_again)?, 0)?;
    ensure!(
        topic_ids(&st, 6_001)? == first_ids,
        "the second import sent new event ids"
    );
    closer(&dir, &st, end, 1)?;
    rt.block_on(wait_final(&st, &pipeline, ("1h", HOUR), end + HOUR))?;
    rt.block_on(check_summary_for(&st, &all, start, end, &FILTERS))?;

    // 3. Bad lines: exit 65 and the rejects file; the valid lines still count.
    let good: Vec<Ev> = events(&mut rng, start, DAY, 3)
        .into_iter()
        .map(|e| Ev {
            id: None,
            user: format!("new-{}", e.user),
            ..e
        })
        .collect();
    let bad_file = dir.join("bad.jsonl");
    let lines = [
        good[0].json().to_string(),
        "{\"event_type\":\"click\",\"user_id\":\"u\"".to_owned(),
        String::new(),
        json!({"event_type": "click", "timestamp": start}).to_string(),
        good[1].json().to_string(),
        json!({"event_type": "click", "user_id": "u", "timestamp": now - 400 * DAY}).to_string(),
        good[2].json().to_string(),
    ];
    std::fs::write(&bad_file, lines.join("\n"))?;
    let bad = bad_file.to_str().unwrap_or_default();
    let stdout = expect_exit(&import(&st, &[bad, "--rejects", &rejects_arg])?, 65)?;
    ensure!(
        stdout.starts_with("imported 3 events (3 rejected) from 1 files in ")
            && stdout.ends_with(&format!(" s; rejects in {rejects_arg}")),
        "{stdout}"
    );
    let listed: Vec<Value> = std::fs::read_to_string(&rejects)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let got: Vec<(u64, String)> = listed
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap_or(0),
                r["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        got[0].0 == 2 && got[0].1.starts_with("not valid JSON: EOF while parsing"),
        "{got:?}"
    );
    ensure!(got[1] == (4, "`user_id` is required".to_owned()), "{got:?}");
    let too_old = "`timestamp` is older than the retention period (365 days)";
    ensure!(got[2] == (6, too_old.to_owned()), "{got:?}");
    ensure!(
        listed.iter().all(|r| r["file"] == json!(bad)) && listed[1]["input"] == json!(lines[3]),
        "{listed:?}"
    );
    expect_exit(
        &import(&st, &[bad, "--rejects", &rejects_arg, "--allow-rejects"])?,
        0,
    )?;
    all.extend(good);
    closer(&dir, &st, end, 2)?;
    rt.block_on(wait_final(&st, &pipeline, ("1h", HOUR), end + 2 * HOUR))?;
    rt.block_on(check_summary_for(&st, &all, start, end, &FILTERS))?;

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    pipeline
        .join()
        .map_err(|_| anyhow!("pipeline panicked"))??;
    teardown(&rt, &st)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Ctrl-C stops reading, waits for the events in flight, prints an interrupted summary and
/// exits 130. No pipeline: only the topic is needed.
#[test]
fn ctrl_c_stops_an_import_cleanly() -> anyhow::Result<()> {
    if !enabled("ctrl_c_stops_an_import_cleanly") {
        return Ok(());
    }
    let tag = unique_tag();
    let (rt, st) = setup(&tag)?;
    let dir = work_dir(&tag)?;
    let now = now_ms();
    let path = dir.join("big.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for i in 0..2_000_000u64 {
        let ts = now - DAY + i % 1_000;
        writeln!(
            file,
            r#"{{"event_type":"x","user_id":"u{}","timestamp":{ts}}}"#,
            i % 97
        )?;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let mut child = tally_command(&st, "import", &st.settings.clickhouse.url)?
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Interrupt once the import is under way: its first progress line (after 5 s).
    let mut stderr = std::io::BufReader::new(child.stderr.take().context("stderr")?);
    let mut line = String::new();
    while !line.starts_with("import: ") {
        line.clear();
        ensure!(
            stderr.read_line(&mut line)? > 0,
            "no progress line before the end"
        );
    }
    tally_tests::harness::send_signal(child.id(), "INT")?;
    let mut rest = String::new();
    stderr.read_to_string(&mut rest)?;
    let status = wait_exit(&mut child, Duration::from_secs(60))?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(rest.contains("import interrupted"), "{rest}");
    ensure!(status.code() == Some(130), "{status}: {stdout}");
    ensure!(stdout.starts_with("interrupted: imported "), "{stdout}");
    let sent: u64 = stdout["interrupted: imported ".len()..]
        .split(' ')
        .next()
        .unwrap_or("")
        .parse()?;
    ensure!(sent > 0 && sent < 2_000_000, "{stdout}");
    teardown(&rt, &st)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
