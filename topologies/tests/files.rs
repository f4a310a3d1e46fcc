//! Topology files: the shipped files give the topologies built by hand with the builder, and
//! every kind of mistake is reported with the file, the line of the key at fault, and the key.

use std::path::{Path, PathBuf};

use tally_core::{
    Dimension, DistinctMode, FieldPath, Filter, Metric, SessionSpec, Topology, WindowSpec,
};
use tally_topologies::file::{
    load_dir, load_files, parse, shipped, FileError, TopologiesConfig, SHIPPED,
};

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn product_analytics_by_hand() -> Topology {
    Topology::builder("product_analytics")
        .description(
            "Events, unique users, unique sessions and unique event types per minute, hour \
             and day, overall and per event type.",
        )
        .table("rollups_product_analytics")
        .distinct(DistinctMode::Exact)
        .window(WindowSpec::tumbling("1m", MINUTE))
        .window(WindowSpec::tumbling("1h", HOUR))
        .window(WindowSpec::tumbling("1d", DAY))
        .dimension(Dimension {
            max_values: 100_000,
            ..Dimension::parse("event_type").expect("dimension")
        })
        .metric(Metric::Events)
        .metric(Metric::UniqueUsers)
        .metric(Metric::UniqueSessions)
        .metric(Metric::UniqueEventTypes)
        .build()
        .expect("valid")
}

fn web_sessions_by_hand() -> Topology {
    Topology::builder("web_sessions")
        .description(
            "Events, unique users and sessions (bounce rate, duration, depth) per hour, per \
             day and per hour every 15 minutes, overall and per platform.",
        )
        .window(WindowSpec::tumbling("1h", HOUR))
        .window(WindowSpec::tumbling("1d", DAY))
        .window(WindowSpec::hopping("1h_15m", HOUR, 15 * MINUTE))
        .sessions(SessionSpec {
            gap_ms: 30 * MINUTE,
            max_duration_ms: DAY,
        })
        .dimension(Dimension::parse("metadata.platform").expect("dimension"))
        .metric(Metric::Events)
        .metric(Metric::UniqueUsers)
        .metric(Metric::Sessions)
        .metric(Metric::BounceRate)
        .metric(Metric::AvgSessionDurationS)
        .metric(Metric::EventsPerSession)
        .build()
        .expect("valid")
}

#[test]
fn shipped_files_are_the_topologies_built_by_hand() {
    let dir = crate_dir();
    let pa = parse(
        "product_analytics.toml",
        &std::fs::read_to_string(dir.join("product_analytics.toml")).expect("read"),
    )
    .expect("valid");
    assert_eq!(pa, product_analytics_by_hand());
    // Today's tables and columns: the four counts in one table, no sessions table.
    assert_eq!(pa.table, "rollups_product_analytics");
    let ws = parse(
        "web_sessions.toml",
        &std::fs::read_to_string(dir.join("web_sessions.toml")).expect("read"),
    )
    .expect("valid");
    assert_eq!(ws, web_sessions_by_hand());
    assert_eq!(ws.table, "rollups_web_sessions");
    assert_eq!(
        ws.window("1h_15m").map(WindowSpec::windows_per_event),
        Some(4)
    );

    // The folder (which is also the crate's: Cargo.toml is skipped), the built-in copies and
    // the default settings (no ./topologies folder in the test's working directory) agree.
    let from_dir: Vec<Topology> = load_dir(&dir)
        .expect("dir")
        .into_iter()
        .map(|f| f.topology)
        .collect();
    assert_eq!(from_dir, vec![pa.clone(), ws.clone()]);
    let built_in = shipped().expect("shipped");
    assert_eq!(built_in[1].path, "<built-in>/web_sessions.toml");
    assert_eq!(
        built_in.into_iter().map(|f| f.topology).collect::<Vec<_>>(),
        from_dir
    );
    assert_eq!(SHIPPED.len(), 2);
    assert!(!Path::new("topologies").exists(), "cwd is the crate folder");
    assert_eq!(
        TopologiesConfig::default().load().expect("default"),
        from_dir
    );
}

#[test]
fn the_other_spellings_mean_the_same() {
    // Inline arrays of tables, dimension names as strings, default window names and kinds,
    // default session settings, filters.
    let text = r#"
name = "web_sessions"
description = "Events, unique users and sessions (bounce rate, duration, depth) per hour, per day and per hour every 15 minutes, overall and per platform."
windows = [{ size = "1h" }, { size = "1d" }, { size = "60m", slide = "15m", kind = "hopping" }]
dimensions = ["metadata.platform"]
metrics = ["events", "unique_users", "sessions", "bounce_rate", "avg_session_duration_s", "events_per_session"]
sessions = {}
"#;
    assert_eq!(
        parse("web_sessions.toml", text).expect("valid"),
        web_sessions_by_hand()
    );

    let text = r#"
name = "pro_checkout"
distinct = "approx"
table = "pro_checkout_rollups"
metrics = ["events", "sum(metadata.price)", "max(metadata.price)"]
[[windows]]
size = "1h"
[filters]
event_type_in = ["checkout", "purchase"]
event_type_not_in = ["test"]
metadata.plan = "pro"
metadata.cart.items = 3
metadata.trial = false
"#;
    let path = |s: &str| FieldPath::parse(s).expect(s);
    let want = Topology::builder("pro_checkout")
        .distinct(DistinctMode::Approx)
        .table("pro_checkout_rollups")
        .window(WindowSpec::tumbling("1h", HOUR))
        .filter(Filter::EventTypeIn(vec![
            "checkout".into(),
            "purchase".into(),
        ]))
        .filter(Filter::EventTypeNotIn(vec!["test".into()]))
        .filter(Filter::MetadataEquals(
            path("metadata.plan"),
            serde_json::json!("pro"),
        ))
        .filter(Filter::MetadataEquals(
            path("metadata.cart.items"),
            serde_json::json!(3),
        ))
        .filter(Filter::MetadataEquals(
            path("metadata.trial"),
            serde_json::json!(false),
        ))
        .metric(Metric::Events)
        .metric(Metric::Sum(path("metadata.price")))
        .metric(Metric::Max(path("metadata.price")))
        .build()
        .expect("valid");
    assert_eq!(parse("pro_checkout.toml", text).expect("valid"), want);
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    text[..at].matches('\n').count() + 1
}

const BASE: &str = r#"name = "t"
description = "a test"
metrics = ["events", "unique_users"]

[[windows]]
name = "1h"
size = "1h"

[[windows]]
name = "1h_15m"
size = "1h"
slide = "15m"

[[dimensions]]
name = "metadata.platform"
max_values = 50
"#;

/// Parses `BASE` with `from` replaced by `to` and checks the error: its key, that its line is
/// the line of `marker` in the edited text, and that the message names file, line and key and
/// contains `says`.
fn check(from: &str, to: &str, key: &str, marker: &str, says: &str) -> FileError {
    assert!(BASE.contains(from), "{from:?}");
    let text = BASE.replacen(from, to, 1);
    let e = parse("dir/t.toml", &text).expect_err(key);
    let at = e.location().expect("a location").clone();
    let msg = e.to_string();
    assert_eq!(e.key(), Some(key), "{msg}");
    assert_eq!(at.file, "dir/t.toml", "{msg}");
    assert_eq!(at.line, line_of(&text, marker), "{msg}");
    assert!(
        msg.starts_with(&format!("dir/t.toml:{}:", at.line)),
        "{msg}"
    );
    assert!(msg.contains(&format!("`{key}`")), "{msg}");
    assert!(msg.contains(says), "{msg:?} should contain {says:?}");
    assert_eq!(e.exit_code(), 65);
    e
}

#[test]
fn every_error_names_file_line_and_key() {
    // Unknown keys, at the top and inside a table, with a suggestion and what is allowed.
    let e = check(
        "description",
        "descripton",
        "descripton",
        "descripton",
        "(did you mean `description`?)",
    );
    assert!(matches!(e, FileError::UnknownKey { .. }));
    assert!(e
        .to_string()
        .contains("allowed here: name, description, table"));
    let e = check(
        "size = \"1h\"\n\n[[w",
        "sise = \"1h\"\n\n[[w",
        "windows[0].sise",
        "sise",
        "allowed here: name, kind, size, slide",
    );
    assert!(matches!(e, FileError::UnknownKey { .. }));
    // A metric that does not exist: what exists.
    let e = check(
        "\"unique_users\"]",
        "\"unique_users\", \"bounce\"]",
        "metrics[2]",
        "metrics",
        "unknown metric \"bounce\" (did you mean `bounce_rate`?); allowed: events, unique_users",
    );
    assert!(e.to_string().contains("sum(metadata.<field>)"));
    assert!(matches!(e, FileError::InvalidValue { .. }));
    // A bad duration.
    check(
        "slide = \"15m\"",
        "slide = \"15 minutes\"",
        "windows[1].slide",
        "slide",
        "is not a duration",
    );
    // A slide that does not divide the size: the builder's error, on the slide's line.
    check(
        "slide = \"15m\"",
        "slide = \"7m\"",
        "windows[1].slide",
        "slide",
        "must divide the size",
    );
    // A session metric without [sessions].
    check(
        "\"unique_users\"]",
        "\"unique_users\", \"bounce_rate\"]",
        "metrics[2]",
        "metrics",
        "bounce_rate needs a [sessions] section",
    );
    // A window declared twice: the builder names the second one's name.
    check(
        "name = \"1h_15m\"",
        "name = \"1h\"",
        "windows[1].name",
        "name = \"1h\"\nsize = \"1h\"\nslide",
        "declared twice",
    );
    // Wrong types.
    let e = check(
        "max_values = 50",
        "max_values = \"50\"",
        "dimensions[0].max_values",
        "max_values",
        "must be a whole number, not string",
    );
    assert!(matches!(e, FileError::WrongType { .. }));
    check(
        "metrics = [\"events\", \"unique_users\"]",
        "metrics = \"events\"",
        "metrics",
        "metrics",
        "must be an array of metric names, not string",
    );
    // A value out of range, checked by the builder.
    check(
        "max_values = 50",
        "max_values = 0",
        "dimensions[0].max_values",
        "max_values",
        "between 1 and 100000",
    );
    // A dimension that is neither event_type nor a metadata field.
    check(
        "name = \"metadata.platform\"",
        "name = \"platform\"",
        "dimensions[0].name",
        "platform",
        "allowed: event_type, or metadata.<field>",
    );
    // Distinct mode and window kinds.
    check(
        "description = \"a test\"",
        "distinct = \"roughly\"",
        "distinct",
        "distinct",
        "allowed: \"exact\" (default) or \"approx\"",
    );
    check(
        "slide = \"15m\"",
        "slide = \"15m\"\nkind = \"tumbling\"",
        "windows[1].slide",
        "slide",
        "a tumbling window's slide equals its size",
    );
    check(
        "name = \"1h\"\nsize",
        "name = \"1h\"\nkind = \"sliding\"\nsize",
        "windows[0].kind",
        "sliding",
        "allowed: \"tumbling\", \"hopping\"",
    );
    let e = check(
        "name = \"1h\"\nsize",
        "name = \"1h\"\nkind = \"hopping\"\nsize",
        "windows[0].slide",
        "[[windows]]",
        "a hopping window needs a slide",
    );
    assert!(matches!(e, FileError::MissingKey { .. }));
    // A missing size: the window's header line.
    check(
        "size = \"1h\"\nslide",
        "slide",
        "windows[1].size",
        "[[windows]]\nname = \"1h_15m\"",
        "missing key",
    );
    // Sessions: bad key, max shorter than the gap (the builder's check).
    check(
        "[[dimensions]]",
        "[sessions]\ngap = \"2h\"\nmax_duration = \"1h\"\n\n[[dimensions]]",
        "sessions.max_duration",
        "max_duration",
        "must be at least the gap",
    );
    check(
        "[[dimensions]]",
        "[sessions]\ntimeout = \"2h\"\n\n[[dimensions]]",
        "sessions.timeout",
        "timeout",
        "allowed here: gap, max_duration",
    );
    // Filters: an empty list, a bad metadata key, an array where a value goes.
    check(
        "[[dimensions]]",
        "[filters]\nevent_type_in = []\n\n[[dimensions]]",
        "filters.event_type_in",
        "event_type_in",
        "an empty list",
    );
    check(
        "[[dimensions]]",
        "[filters]\nmetadata = { \"a b\" = 1 }\n\n[[dimensions]]",
        "filters.metadata.a b",
        "metadata =",
        "is not a metadata key",
    );
    check(
        "[[dimensions]]",
        "[filters]\nmetadata.tags = [\"x\"]\n\n[[dimensions]]",
        "filters.metadata.tags",
        "metadata.tags",
        "must be a string, number or boolean",
    );
    // The name must be the file's, and valid.
    let e = check(
        "name = \"t\"",
        "name = \"u\"",
        "name",
        "name = \"u\"",
        "rename the file to u.toml",
    );
    assert!(matches!(e, FileError::NameMismatch { .. }));
    check(
        "name = \"t\"",
        "name = \"T\"",
        "name",
        "name = \"T\"",
        "is not a valid name",
    );
}

#[test]
fn syntax_and_missing_keys_name_the_place() {
    let text = "name = \"t\"\nmetrics = [\"events\"\n[[windows]]\n";
    let e = parse("t.toml", text).expect_err("syntax");
    assert!(matches!(e, FileError::Syntax { .. }), "{e}");
    // Where the parser found the missing comma: the next line.
    assert!(e.to_string().starts_with("t.toml:3:1: invalid TOML"), "{e}");
    let e = parse("t.toml", "name = \"t\"\nmetrics = [\"events\"]\n").expect_err("no windows");
    assert_eq!(e.key(), Some("windows"));
    assert!(
        e.to_string()
            .starts_with("t.toml:1:1: missing key `windows`"),
        "{e}"
    );
    let e = parse("t.toml", "name = \"t\"\nname = \"u\"\n").expect_err("duplicate key");
    assert!(e.to_string().starts_with("t.toml:2:"), "{e}");
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tally-topology-files-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn write(dir: &Path, file: &str, name: &str, table: &str) -> PathBuf {
    let path = dir.join(file);
    let text =
        format!("name = {name:?}\n{table}metrics = [\"events\"]\n[[windows]]\nsize = \"1m\"\n");
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn folders_lists_and_settings() {
    let dir = temp_dir("dir");
    write(&dir, "b.toml", "b", "");
    write(&dir, "a.toml", "a", "");
    std::fs::write(dir.join("Cargo.toml"), "[package]\n").expect("write");
    std::fs::write(dir.join("notes.txt"), "not a topology").expect("write");
    let names = |files: Vec<tally_topologies::file::TopologyFile>| -> Vec<String> {
        files.into_iter().map(|f| f.topology.name).collect()
    };
    assert_eq!(names(load_dir(&dir).expect("dir")), ["a", "b"]);

    // Settings: every file by default, `enabled` picks and orders, errors name the field.
    let config = |enabled: Option<Vec<&str>>| TopologiesConfig {
        dir: Some(dir.clone()),
        enabled: enabled.map(|e| e.into_iter().map(str::to_owned).collect()),
    };
    assert_eq!(names(config(None).load_files().expect("all")), ["a", "b"]);
    assert_eq!(
        names(config(Some(vec!["b"])).load_files().expect("b")),
        ["b"]
    );
    let e = config(Some(vec!["b", "c"])).load().expect_err("c");
    assert_eq!(e.key(), Some("topologies.enabled"));
    assert!(
        e.to_string().contains("no topology \"c\"; found: a ("),
        "{e}"
    );
    assert_eq!(e.exit_code(), 78);
    let e = config(Some(vec![])).load().expect_err("empty");
    assert_eq!(e.key(), Some("topologies.enabled"));
    let e = TopologiesConfig {
        dir: Some(dir.join("missing")),
        enabled: None,
    }
    .load()
    .expect_err("missing");
    assert_eq!(e.key(), Some("topologies.dir"));

    // Two topologies writing one table, in one folder.
    write(&dir, "c.toml", "c", "table = \"rollups_a\"\n");
    let e = load_dir(&dir).expect_err("one table twice");
    assert!(matches!(e, FileError::DuplicateTable { .. }), "{e}");
    assert!(
        e.to_string().contains("c.toml: `table`: \"rollups_a\""),
        "{e}"
    );
    std::fs::remove_file(dir.join("c.toml")).expect("rm");

    // Two files of one name (a file name is unique in a folder, so: two folders).
    let other = temp_dir("other");
    let first = write(&dir, "a.toml", "a", "");
    let second = write(&other, "a.toml", "a", "table = \"rollups_a2\"\n");
    let e = load_files(&[first.clone(), second.clone()]).expect_err("one name twice");
    assert!(matches!(e, FileError::DuplicateName { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&first.display().to_string()) && msg.contains(&second.display().to_string()),
        "{msg}"
    );

    // A broken file in the folder fails the load, naming it.
    std::fs::write(dir.join("d.toml"), "name = \"d\"\nwindows = 3\n").expect("write");
    let e = load_dir(&dir).expect_err("broken");
    assert!(e.to_string().contains("d.toml:2:"), "{e}");
    let e = load_files(&[dir.join("nope.toml")]).expect_err("io");
    assert_eq!(e.exit_code(), 66);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}
