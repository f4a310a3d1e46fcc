//! The product-analytics topology keeps exactly the first copy read of every event id, and the
//! raw payloads it passes on are those same copies: the raw rows and the rollups agree.

use tally_topologies::kit::{event, run, settle, Config, RowKey, Script};
use tally_topologies::product_analytics;

/// 2024-03-13T23:59:00Z
const T: u64 = 1_710_374_340_000;

/// A copy's (partition, offset) and its label.
type Labelled = ((u32, u64), &'static str);

/// The reads; each user's events are one partition (Kafka keys by user id). Returns the script
/// and, per copy, a label naming it, in (partition, offset) order.
fn script() -> (Script, Vec<Labelled>) {
    let copies: Vec<(u64, &str, u32, &str, u64, &str)> = vec![
        // (watermark, label, partition = user, id, time, type)
        // The issue: one id three times, the third re-stamped 1.5 s later, plus another event.
        (0, "a1", 0, "a", T + 10_000, "click"),
        (0, "a2", 0, "a", T + 10_000, "click"),
        (0, "a3", 0, "a", T + 11_500, "click"),
        (0, "b1", 1, "b", T + 12_000, "view"),
        // Across UTC midnight (2024-03-14T00:00:00Z is T + 60 s).
        (0, "m1", 2, "m", T + 59_500, "click"),
        (T + 55_000, "m2", 2, "m", T + 61_000, "click"),
        // A retry with another event type.
        (T + 55_000, "c1", 3, "c", T + 50_000, "click"),
        (T + 56_000, "c2", 3, "c", T + 51_500, "purchase"),
    ];
    let mut s = Script::new();
    let mut labels = Vec::new();
    let mut offsets = [0u64; 4];
    for (watermark, label, partition, id, ts, kind) in copies {
        s.watermark(watermark);
        let user = format!("u{id}");
        s.event(partition, event(id, ts, kind, &user, None));
        labels.push(((partition, offsets[partition as usize]), label));
        offsets[partition as usize] += 1;
    }
    labels.sort();
    (s, labels)
}

fn check(workers: usize) {
    let (script, labels) = script();
    let config = Config {
        grace_ms: 5_000,
        ..Config::workers(workers)
    };
    let out = run(&script, &[product_analytics()], &config);
    let mut kept: Vec<&str> = out
        .kept
        .iter()
        .filter_map(|k| {
            labels
                .iter()
                .find(|(at, _)| *at == (k.partition, k.offset))
                .map(|(_, l)| *l)
        })
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, ["a1", "b1", "c1", "m1"], "{workers} workers");
    let settled = settle(&out.rows);
    assert!(settled.values().all(|s| s.is_final));
    let events = |window: &str, start: u64, event_type: Option<&str>| {
        let key = RowKey {
            topology: "product_analytics".into(),
            table: tally_core::RowTable::Windows,
            window: window.into(),
            start_ms: start,
            dimension: event_type.map_or("", |_| "event_type").into(),
            value: event_type.unwrap_or("").into(),
        };
        settled.get(&key).map_or(0, |s| s.values[0].as_f64() as u64)
    };
    let midnight = T + 60_000;
    let day_before = midnight - 86_400_000;
    assert_eq!(events("1d", day_before, None), 4);
    assert_eq!(events("1d", midnight, None), 0);
    assert_eq!(events("1d", day_before, Some("click")), 3);
    assert_eq!(events("1d", day_before, Some("purchase")), 0);
    let minutes: u64 = settled
        .iter()
        .filter(|(k, _)| k.window == "1m" && k.dimension.is_empty())
        .map(|(_, s)| s.values[0].as_f64() as u64)
        .sum();
    assert_eq!(minutes, 4);
    assert_eq!(out.counters.duplicates(), 4);
}

#[test]
fn raw_and_rollups_keep_the_first_copy_on_one_worker() {
    check(1);
}

#[test]
fn raw_and_rollups_keep_the_first_copy_across_workers() {
    check(3);
}
