//! Golden tests: small scripts through the real dataflow, every row worked out by hand.

use std::collections::BTreeMap;

use tally_core::{
    Dimension, FieldPath, Filter, Metric, RollupRow, RowTable, Topology, Value, WindowSpec,
};
use tally_topologies::kit::{event, event_with, run, settle, Config, RowKey, Script};
use tally_topologies::product_analytics;

/// 2024-03-13T23:59:00Z; midnight is `T + 60 s`.
const T: u64 = 1_710_374_340_000;
const M: u64 = T + 60_000;
const MIN: u64 = 60_000;
const HOUR: u64 = 3_600_000;
const DAY: u64 = 86_400_000;

/// A row as the golden lists write it: (time, window, start, dimension, value, values, final).
type Golden = (u64, String, u64, String, String, Vec<u64>, bool);

fn golden(rows: &[(u64, RollupRow)]) -> Vec<Golden> {
    let mut out: Vec<Golden> = rows
        .iter()
        .map(|(time, r)| {
            assert_eq!(&*r.topology, "product_analytics");
            assert_eq!(r.table, RowTable::Windows);
            let values = r.values.iter().map(|v| v.as_f64() as u64).collect();
            (
                *time,
                r.window.to_string(),
                r.start_ms,
                r.dimension.to_string(),
                r.value.clone(),
                values,
                r.is_final,
            )
        })
        .collect();
    out.sort_by(|a, b| (a.0, a.6, &a.1, a.2, &a.3, &a.4).cmp(&(b.0, b.6, &b.1, b.2, &b.3, &b.4)));
    out
}

fn script() -> Script {
    let mut s = Script::new();
    s.event(0, event("e1", T + 10_000, "click", "u1", Some("s1")))
        .event(1, event("e2", T + 20_000, "view", "u2", Some("s2")))
        .event(0, event("e1", T + 10_000, "click", "u1", Some("s1"))) // re-sent: dropped
        .tick()
        .watermark(T + 30_000)
        .event(0, event("e3", M + 10_000, "click", "u1", Some("s1")))
        .event(1, event("e4", T + 40_000, "view", "u3", None))
        // Closes the minute, hour and day of T (each ends at midnight; grace 5 s).
        .watermark(M + 5_000)
        // Late for all three: counted, not aggregated.
        .event(1, event("e5", T + 50_000, "view", "u2", Some("s2")))
        .event(0, event("e6", M + 61_000, "buy", "u1", Some("s3")))
        .tick();
    s
}

/// Hand-worked rows of [`script`] on one worker. Columns: events, unique users, unique
/// sessions, unique event types. Every row of a window carries its close time (end + 5 s).
fn expected() -> Vec<Golden> {
    let row = |window: &str, start: u64, size: u64, value: &str, values: [u64; 4], fin: bool| {
        let dimension = if value.is_empty() { "" } else { "event_type" };
        (
            start + size + 5_000,
            window.to_owned(),
            start,
            dimension.to_owned(),
            value.to_owned(),
            values.to_vec(),
            fin,
        )
    };
    let hour_t = M - HOUR;
    let day_t = M - DAY;
    let mut rows = Vec::new();
    // Windows of T: first tick sees e1 and e2; the close adds e4 (e5 is late).
    for (w, start, size) in [("1m", T, MIN), ("1h", hour_t, HOUR), ("1d", day_t, DAY)] {
        rows.push(row(w, start, size, "", [2, 2, 2, 2], false));
        rows.push(row(w, start, size, "click", [1, 1, 1, 1], false));
        rows.push(row(w, start, size, "view", [1, 1, 1, 1], false));
        rows.push(row(w, start, size, "", [3, 3, 2, 2], true));
        rows.push(row(w, start, size, "click", [1, 1, 1, 1], true));
        rows.push(row(w, start, size, "view", [2, 2, 1, 1], true));
    }
    // After midnight: e3 (click, minute M) and e6 (buy, minute M + 1), same user, two sessions.
    for fin in [false, true] {
        rows.push(row("1m", M, MIN, "", [1, 1, 1, 1], fin));
        rows.push(row("1m", M, MIN, "click", [1, 1, 1, 1], fin));
        rows.push(row("1m", M + MIN, MIN, "", [1, 1, 1, 1], fin));
        rows.push(row("1m", M + MIN, MIN, "buy", [1, 1, 1, 1], fin));
        for (w, size) in [("1h", HOUR), ("1d", DAY)] {
            rows.push(row(w, M, size, "", [2, 1, 2, 2], fin));
            rows.push(row(w, M, size, "click", [1, 1, 1, 1], fin));
            rows.push(row(w, M, size, "buy", [1, 1, 1, 1], fin));
        }
    }
    rows.sort_by(|a, b| (a.0, a.6, &a.1, a.2, &a.3, &a.4).cmp(&(b.0, b.6, &b.1, b.2, &b.3, &b.4)));
    rows
}

#[test]
fn product_analytics_rows_on_one_worker() {
    let config = Config {
        grace_ms: 5_000,
        ..Config::workers(1)
    };
    let out = run(&script(), &[product_analytics()], &config);
    assert_eq!(golden(&out.rows), expected());
    let kept: Vec<(u32, u64)> = out.kept.iter().map(|k| (k.partition, k.offset)).collect();
    // Every copy but the re-sent e1 (partition 0, offset 1).
    assert_eq!(kept, [(0, 0), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]);
    assert_eq!(out.counters.duplicates(), 1);
    for w in ["1m", "1h", "1d"] {
        assert_eq!(out.counters.late("product_analytics", w), 1, "{w}");
    }
}

#[test]
fn product_analytics_settles_alike_on_2_and_4_workers() {
    let finals =
        |rows: &[Golden]| -> Vec<Golden> { rows.iter().filter(|r| r.6).cloned().collect() };
    for workers in [2, 4] {
        for step_every in [0, 1] {
            let config = Config {
                grace_ms: 5_000,
                step_every,
                ..Config::workers(workers)
            };
            let out = run(&script(), &[product_analytics()], &config);
            assert_eq!(
                finals(&golden(&out.rows)),
                finals(&expected()),
                "{workers} workers"
            );
            let settled = settle(&out.rows);
            assert!(settled.values().all(|s| s.is_final));
            assert_eq!(settled.len(), finals(&expected()).len());
            assert_eq!(out.counters.late("product_analytics", "1d"), 1);
        }
    }
}

/// A filtered topology with a hopping window, a capped metadata dimension and field metrics.
#[test]
fn hopping_windows_capped_dimension_and_fields() {
    let price = FieldPath::parse("metadata.price").expect("path");
    let shop = Topology::builder("shop")
        .filter(Filter::EventTypeIn(vec!["buy".into()]))
        .window(WindowSpec::hopping("10m_5m", 10 * MIN, 5 * MIN))
        .dimension(Dimension {
            max_values: 1,
            ..Dimension::parse("metadata.platform").expect("dimension")
        })
        .metric(Metric::Events)
        .metric(Metric::UniqueUsers)
        .metric(Metric::Avg(price.clone()))
        .metric(Metric::Max(price))
        .build()
        .expect("valid");
    // 2024-03-13T10:00:00Z.
    let b = 1_710_324_000_000;
    let mut s = Script::new();
    s.event(
        0,
        event_with(
            "b1",
            b + MIN,
            "buy",
            "u1",
            None,
            serde_json::json!({"platform": "ios", "price": 2.5}),
        ),
    )
    .event(
        1,
        event_with(
            "b2",
            b + 6 * MIN,
            "buy",
            "u2",
            None,
            serde_json::json!({"platform": "web", "price": 4}),
        ),
    )
    .event(
        0,
        event_with(
            "v1",
            b + 7 * MIN,
            "view",
            "u3",
            None,
            serde_json::json!({"platform": "ios", "price": 100}),
        ),
    )
    .event(
        0,
        event_with(
            "b3",
            b + 8 * MIN,
            "buy",
            "u1",
            None,
            serde_json::json!({"platform": "ios"}),
        ),
    );
    // Cap 1: of ios and web, the value with the smaller xxh3-64 hash keeps its row.
    let h = |v: &str| xxhash_rust::xxh3::xxh3_64(v.as_bytes());
    let (kept, folded) = if h("ios") < h("web") {
        ("ios", "web")
    } else {
        ("web", "ios")
    };
    // Columns: events, unique_users, sum, count, max of metadata.price.
    let v = |e: u64, u: u64, sum: f64, n: u64, max: f64| {
        vec![
            Value::U64(e),
            Value::U64(u),
            Value::F64(sum),
            Value::U64(n),
            Value::F64(max),
        ]
    };
    // ios: b1 (2.5), b3 (no price); web: b2 (4). v1 is filtered out.
    let ios = |in_window: &[&str]| match (in_window.contains(&"b1"), in_window.contains(&"b3")) {
        (true, true) => v(2, 1, 2.5, 1, 2.5),
        (true, false) => v(1, 1, 2.5, 1, 2.5),
        (false, true) => v(1, 1, 0.0, 0, 0.0),
        (false, false) => unreachable!(),
    };
    let web = v(1, 1, 4.0, 1, 4.0);
    let mut want: BTreeMap<(u64, String), Vec<Value>> = BTreeMap::new();
    // [9:55, 10:05): b1. [10:00, 10:10): b1, b2, b3. [10:05, 10:15): b2, b3.
    want.insert((b - 5 * MIN, String::new()), v(1, 1, 2.5, 1, 2.5));
    want.insert((b - 5 * MIN, "ios".into()), ios(&["b1"]));
    want.insert((b, String::new()), v(3, 2, 6.5, 2, 4.0));
    want.insert((b + 5 * MIN, String::new()), v(2, 2, 4.0, 1, 4.0));
    for start in [b, b + 5 * MIN] {
        let present: &[&str] = if start == b { &["b1", "b3"] } else { &["b3"] };
        let (kept_row, other_row) = if kept == "ios" {
            (ios(present), web.clone())
        } else {
            (web.clone(), ios(present))
        };
        want.insert((start, kept.to_owned()), kept_row);
        want.insert((start, "__other__".to_owned()), other_row);
    }
    for workers in [1, 2, 4] {
        let out = run(&s, std::slice::from_ref(&shop), &Config::workers(workers));
        let got: BTreeMap<(u64, String), Vec<Value>> = settle(&out.rows)
            .into_iter()
            .map(|(k, s): (RowKey, _)| {
                assert!(s.is_final);
                assert_eq!(k.window, "10m_5m");
                ((k.start_ms, k.value), s.values)
            })
            .collect();
        assert_eq!(
            got, want,
            "{workers} workers (kept {kept}, folded {folded})"
        );
        // b2 or b1 + b3 folded: one contribution per event and window it is in.
        let folded_points = if folded == "web" { 2 } else { 3 };
        assert_eq!(out.counters.folded(), folded_points, "{workers} workers");
        // Avg from the stored components, as the API derives it.
        let avg = Metric::Avg(FieldPath::parse("metadata.price").expect("path"));
        let all = &got[&(b, String::new())];
        assert_eq!(avg.value(&[all[2].as_f64(), all[3].as_f64()]), Some(3.25));
    }
}
