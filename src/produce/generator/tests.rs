//! Tests of [`EventGenerator`](super::EventGenerator) (in their own file: the generator plus its
//! tests would exceed the house file size).

use super::*;

pub(in crate::produce) const START_MS: i64 = 1_710_324_000_000; // 2024-03-13T10:00:00Z

fn config(seed: u64) -> GeneratorConfig {
    GeneratorConfig {
        users: 1_000,
        zipf_s: 1.1,
        disorder_ms: 2_000,
        invalid_fraction: 0.0,
        start_ms: START_MS,
        step_ns: 1_000_000, // 1000 events/s
        seed,
    }
}

fn generate(config: &GeneratorConfig, n: usize) -> Vec<GeneratedEvent> {
    let mut generator = EventGenerator::new(config).expect("valid config");
    (0..n).map(|_| generator.next_event()).collect()
}

/// A naive check of the contract in docs/events.md (the parts the defects break).
fn follows_contract(payload: &[u8]) -> bool {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    let non_empty = |k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    non_empty("event_type") && non_empty("user_id") && o.get("timestamp").is_some_and(Value::is_i64)
}

#[test]
fn same_seed_same_events_different_seed_different_events() {
    let cfg = GeneratorConfig {
        invalid_fraction: 0.1,
        ..config(7)
    };
    let payloads = |c: &GeneratorConfig| -> Vec<Vec<u8>> {
        generate(c, 2_000)
            .iter()
            .map(GeneratedEvent::payload)
            .collect()
    };
    assert_eq!(generate(&cfg, 2_000), generate(&cfg, 2_000));
    assert_eq!(payloads(&cfg), payloads(&cfg));
    assert_ne!(
        payloads(&cfg),
        payloads(&GeneratorConfig {
            seed: 8,
            ..cfg.clone()
        })
    );
}

#[test]
fn valid_events_follow_the_contract() {
    let cfg = config(1);
    let mut last_clock = i64::MIN;
    for (i, e) in generate(&cfg, 5_000).iter().enumerate() {
        assert_eq!(e.defect, None);
        assert!(follows_contract(&e.payload()), "event {i}: {e:?}");
        let v: Value = serde_json::from_slice(&e.payload()).expect("json");
        let event_type = v["event_type"].as_str().expect("event_type");
        assert!(
            EVENT_TYPES.iter().any(|(t, _)| *t == event_type),
            "{event_type}"
        );
        let user: u64 = v["user_id"]
            .as_str()
            .and_then(|u| u.strip_prefix('u'))
            .and_then(|n| n.parse().ok())
            .expect("u<n>");
        assert!((1..=cfg.users).contains(&user), "user {user}");
        let id = Uuid::parse_str(v["event_id"].as_str().expect("event_id")).expect("uuid");
        assert_eq!(id.get_version_num(), 4);
        assert!(v
            .get("session_id")
            .is_none_or(|s| s.as_str().is_some_and(|s| Uuid::parse_str(s).is_ok())));
        assert!(["mobile", "desktop", "tablet"]
            .contains(&v["metadata"]["device"].as_str().expect("device")));
        assert!(v["metadata"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')));
        let ts = v["timestamp"].as_i64().expect("epoch millis");
        assert!(e.clock_ms >= last_clock, "clock went back at event {i}");
        assert!(
            (e.clock_ms - 2_000..=e.clock_ms).contains(&ts),
            "event {i}: {ts} vs clock {}",
            e.clock_ms
        );
        last_clock = e.clock_ms;
    }
    // 1 ms per event: the clock covers the run.
    assert_eq!(last_clock, START_MS + 4_999);
}

#[test]
fn live_clock_never_goes_back() {
    let mut generator = EventGenerator::new(&GeneratorConfig {
        step_ns: 0,
        ..config(2)
    })
    .expect("valid");
    assert_eq!(generator.next_event().clock_ms, START_MS);
    generator.advance_clock_to(START_MS + 500);
    assert_eq!(generator.next_event().clock_ms, START_MS + 500);
    generator.advance_clock_to(START_MS + 100);
    let e = generator.next_event();
    assert_eq!(e.clock_ms, START_MS + 500);
    assert!(e.event.timestamp_ms <= START_MS + 500);
}

#[test]
fn sessions_last_2_to_20_events_and_some_events_have_none() {
    let mut generator = EventGenerator::new(&GeneratorConfig {
        users: 50,
        ..config(3)
    })
    .expect("valid");
    let events: Vec<_> = (0..10_000).map(|_| generator.next_event()).collect();
    let mut counts: HashMap<Uuid, u32> = HashMap::new();
    for id in events.iter().filter_map(|e| e.event.session_id) {
        *counts.entry(id).or_default() += 1;
    }
    let open: Vec<Uuid> = generator.sessions.values().map(|s| s.id).collect();
    let closed = counts.iter().filter(|(id, _)| !open.contains(id));
    assert!(
        closed.clone().count() > 500,
        "too few sessions: {}",
        counts.len()
    );
    for (id, n) in closed {
        assert!((2..=20).contains(n), "session {id} had {n} events");
    }
    assert!(counts.values().all(|n| *n <= 20));
    assert!(counts.values().any(|n| *n == 20) && counts.values().any(|n| *n == 2));
    let none = events
        .iter()
        .filter(|e| e.event.session_id.is_none())
        .count();
    assert!(
        (300..=700).contains(&none),
        "{none} of 10000 events without session"
    );
}

#[test]
fn user_popularity_is_skewed() {
    let per_user = |zipf_s: f64| {
        let mut counts = vec![0u32; 1_000];
        for e in generate(
            &GeneratorConfig {
                zipf_s,
                ..config(4)
            },
            10_000,
        ) {
            let n: usize = e.event.user_id[1..].parse().expect("u<n>");
            counts[n - 1] += 1;
        }
        counts.sort_unstable();
        (counts[counts.len() - 1], counts[counts.len() / 2])
    };
    let (top, median) = per_user(1.1);
    assert!(
        top > 1_000 && top > 20 * median.max(1),
        "top {top}, median {median}"
    );
    let (top, median) = per_user(0.0);
    assert!(
        top < 40 && median >= 5,
        "uniform: top {top}, median {median}"
    );
}

#[test]
fn invalid_fraction_is_honoured_and_defects_break_the_contract() {
    let events = generate(
        &GeneratorConfig {
            invalid_fraction: 0.2,
            ..config(5)
        },
        5_000,
    );
    let invalid = events.iter().filter(|e| e.defect.is_some()).count();
    assert!(
        (750..=1_250).contains(&invalid),
        "{invalid} of 5000 invalid"
    );
    for e in &events {
        assert_eq!(follows_contract(&e.payload()), e.defect.is_none(), "{e:?}");
    }
    for d in DEFECTS {
        assert!(events.iter().any(|e| e.defect == Some(d)), "no {d:?}");
    }
}

#[test]
fn bad_config_is_rejected() {
    assert!(EventGenerator::new(&GeneratorConfig {
        invalid_fraction: 1.5,
        ..config(6)
    })
    .is_err());
    assert!(EventGenerator::new(&GeneratorConfig {
        zipf_s: -1.0,
        ..config(6)
    })
    .is_err());
    assert!(EventGenerator::new(&GeneratorConfig {
        users: 0,
        ..config(6)
    })
    .is_err());
}
