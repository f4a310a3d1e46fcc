//! The readers end to end, on real files: formats, gzip, BOM, CRLF, blank lines, rejects with
//! their line numbers, stable ids.

use std::io::Write as _;
use std::sync::atomic::AtomicUsize;

use serde_json::{json, Value};

use super::*;

/// A fresh file under the system's temp directory.
fn temp_file(name: &str, data: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tally-import-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write");
    path
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn ts(days_ago: u64) -> u64 {
    chrono::Utc::now().timestamp_millis() as u64 - days_ago * 86_400_000
}

fn line(user: &str, days_ago: u64) -> String {
    format!(
        r#"{{"event_type":"click","user_id":"{user}","timestamp":{}}}"#,
        ts(days_ago)
    )
}

/// Every checked record of `paths`, or the error that stopped the reading.
fn read(
    paths: &[&Path],
    format: Option<Format>,
    map: &[&str],
) -> Result<Vec<Checked>, ImportError> {
    let flags: Vec<String> = map.iter().map(|s| (*s).to_owned()).collect();
    let mapping = Mapping::parse(&flags)?;
    let sources = paths
        .iter()
        .map(|p| Source::check(p, format, &mapping))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = ReadPlan {
        sources,
        mapping,
        limits: Limits {
            retention_days: 365,
            max_message_bytes: 1_000_000,
        },
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let count = Arc::new(ReadCount::default());
    read_all(&plan, &count, &AtomicBool::new(false), &tx)?;
    assert_eq!(count.files.load(Ordering::SeqCst), paths.len());
    drop(tx);
    let mut out = Vec::new();
    while let Some(batch) = rx.blocking_recv() {
        out.extend(batch);
    }
    Ok(out)
}

/// (position, Ok(event JSON) | Err(reason)) of each record.
fn summary(checked: &[Checked]) -> Vec<(u64, Result<Value, String>)> {
    checked
        .iter()
        .map(|c| match c {
            Ok(v) => (
                v.at.position,
                Ok(serde_json::from_slice(&v.payload).expect("payload")),
            ),
            Err(r) => (r.at.position, Err(r.reason.clone())),
        })
        .collect()
}

fn ids(checked: &[Checked]) -> Vec<String> {
    summary(checked)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .map(|v| v["event_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn json_lines_with_bom_crlf_blank_and_bad_lines() {
    let data = format!(
        "\u{feff}{}\r\n\r\n{}\r\n{{broken\r\n   \n{}\n[1]\n",
        line("a", 1),
        line("b", 2),
        r#"{"event_type":"x","user_id":"c"}"#
    );
    let path = temp_file("events.jsonl", data.as_bytes());
    let got = summary(&read(&[&path], None, &[]).expect("read"));
    let positions: Vec<u64> = got.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, [1, 3, 4, 6, 7]);
    assert!(got[0].1.as_ref().is_ok_and(|v| v["user_id"] == "a"));
    assert!(got[1].1.as_ref().is_ok_and(|v| v["user_id"] == "b"));
    assert!(got[2]
        .1
        .as_ref()
        .is_err_and(|r| r.starts_with("not valid JSON")));
    assert_eq!(got[3].1, Err("`timestamp` is required".to_owned()));
    assert_eq!(got[4].1, Err("an event must be a JSON object".to_owned()));
}

#[test]
fn gzip_by_extension_or_magic_and_every_member() {
    let (a, b) = (format!("{}\n", line("a", 1)), format!("{}\n", line("b", 1)));
    let mut two = gzip(a.as_bytes());
    two.extend(gzip(b.as_bytes()));
    let by_name = temp_file("e.jsonl.gz", &two);
    let by_magic = temp_file("e.jsonl", &two);
    for path in [&by_name, &by_magic] {
        let got = summary(&read(&[path], None, &[]).expect("read"));
        assert_eq!(got.len(), 2, "{}", path.display());
        assert!(got.iter().all(|(_, r)| r.is_ok()));
        assert_eq!((got[0].0, got[1].0), (1, 2), "lines count across members");
    }
}

#[test]
fn a_truncated_gzip_says_how_far_it_got() {
    let data: String = (0..2_000)
        .map(|i| format!("{}\n", line(&format!("u{i}"), 1)))
        .collect();
    let full = gzip(data.as_bytes());
    let path = temp_file("cut.jsonl.gz", &full[..full.len() / 2]);
    let err = read(&[&path], None, &[]).expect_err("truncated");
    assert_eq!(err.exit_code(), 65, "{err}");
    let text = err.to_string();
    assert!(text.contains("reading failed after"), "{text}");
    assert!(
        text.contains(&format!("of {} bytes", full.len() / 2)),
        "{text}"
    );
}

#[test]
fn json_arrays_are_streamed_with_element_indexes() {
    let data = format!(
        "\u{feff}[\n  {},\n  {{\"event_type\":\"a]b\",\"user_id\":\"[u,\\\"v]\",\"timestamp\":{},\"metadata\":{{\"l\":[1,[2]]}}}},\n  {{}}\n]\n",
        line("a", 1),
        ts(3)
    );
    let path = temp_file("events.json", data.as_bytes());
    let got = summary(&read(&[&path], None, &[]).expect("read"));
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].0, 0);
    let second = got[1].1.as_ref().expect("valid");
    assert_eq!(
        (
            &second["event_type"],
            &second["user_id"],
            &second["metadata"]
        ),
        (&json!("a]b"), &json!("[u,\"v]"), &json!({"l": [1, [2]]}))
    );
    assert_eq!(got[2], (2, Err("`event_type` is required".to_owned())));
}

#[test]
fn csv_gz_with_quoted_commas_mapping_and_metadata() {
    let data = format!(
        "event,user_id,timestamp,session_id,plan,note\r\n\
         signup,u1,{},s1,pro,\"a, b\"\r\n\
         \r\n\
         click,u2,{},,,\r\n\
         view,u3,yesterday,,,\r\n\
         view,u4\r\n",
        ts(1),
        chrono::DateTime::from_timestamp_millis(ts(2) as i64)
            .expect("time")
            .to_rfc3339()
    );
    let path = temp_file("events.csv.gz", &gzip(data.as_bytes()));
    let got = summary(&read(&[&path], None, &["event_type=event"]).expect("read"));
    let positions: Vec<u64> = got.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, [2, 4, 5, 6]);
    let first = got[0].1.as_ref().expect("valid");
    assert_eq!(first["event_type"], "signup");
    assert_eq!(first["session_id"], "s1");
    assert_eq!(first["metadata"], json!({"plan": "pro", "note": "a, b"}));
    let second = got[1].1.as_ref().expect("valid");
    assert_eq!(second.get("session_id"), None, "an empty cell is absent");
    assert_eq!(second["metadata"], json!({}));
    assert!(got[2].1.as_ref().is_err_and(|r| r.contains("RFC 3339")));
    assert_eq!(
        got[3].1,
        Err("the row has 2 cells; the header has 6".to_owned())
    );
    let err = read(&[&path], None, &["event_type=kind"]).expect_err("no column");
    assert_eq!(err.exit_code(), 78);
}

#[test]
fn ids_are_stable_across_runs_paths_and_appends() {
    let data = format!("{0}\n{0}\n", line("same", 1));
    let path = temp_file("events.jsonl", data.as_bytes());
    let first = ids(&read(&[&path], None, &[]).expect("read"));
    assert_eq!(first.len(), 2);
    assert_ne!(
        first[0], first[1],
        "identical lines on different lines differ"
    );
    assert_eq!(ids(&read(&[&path], None, &[]).expect("read")), first);
    let moved = temp_file("renamed.jsonl", data.as_bytes());
    assert_eq!(ids(&read(&[&moved], None, &[]).expect("read")), first);
    let appended = temp_file(
        "more.jsonl",
        format!("{data}{}\n", line("new", 1)).as_bytes(),
    );
    let more = ids(&read(&[&appended], None, &[]).expect("read"));
    assert_eq!(&more[..2], &first[..]);
    assert_eq!(more.len(), 3);
}

#[test]
fn paths_are_checked_before_anything_is_read() {
    let missing = Path::new("/nonexistent/tally/events.jsonl");
    let err = read(&[missing], None, &[]).expect_err("missing");
    assert_eq!(err.exit_code(), 66);
    let dir = temp_file("x.jsonl", b"");
    let err = read(&[dir.parent().expect("dir")], Some(Format::Jsonl), &[]).expect_err("dir");
    assert_eq!(err.exit_code(), 66);
    let unknown = temp_file("events.txt", b"");
    assert_eq!(
        read(&[&unknown], None, &[])
            .map_err(|e| e.exit_code())
            .err(),
        Some(78)
    );
    assert!(read(&[&unknown], Some(Format::Jsonl), &[]).is_ok_and(|r| r.is_empty()));
}
