use super::*;
use tally_core::{Dimension, Metric, SessionSpec, Topology};

fn product_analytics() -> Topology {
    let mut b = Topology::builder("product_analytics")
        .table("rollups_product_analytics")
        .dimension(Dimension::parse("event_type").expect("dimension"));
    for (name, ms) in [("1m", 60_000), ("1h", 3_600_000), ("1d", 86_400_000)] {
        b = b.window(WindowSpec::tumbling(name, ms));
    }
    for m in [
        "events",
        "unique_users",
        "unique_sessions",
        "unique_event_types",
    ] {
        b = b.metric(Metric::parse(m).expect("metric"));
    }
    b.build().expect("valid")
}

fn web_sessions() -> Topology {
    let mut b = Topology::builder("web_sessions")
        .window(WindowSpec::tumbling("1h", 3_600_000))
        .window(WindowSpec::hopping("1h_15m", 3_600_000, 900_000))
        .sessions(SessionSpec::default())
        .dimension(Dimension::parse("metadata.platform").expect("dimension"));
    for m in ["events", "sessions", "bounce_rate"] {
        b = b.metric(Metric::parse(m).expect("metric"));
    }
    b.build().expect("valid")
}

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<ReportQuery, ApiError> {
    parse_report_query(
        &params(pairs),
        &[product_analytics(), web_sessions()],
        10_000,
    )
}

fn err(pairs: &[(&str, &str)]) -> String {
    match parse(pairs) {
        Err(ApiError::BadRequest(reason)) => reason,
        other => panic!("expected a 400, got {other:?}"),
    }
}

const RANGE: [(&str, &str); 2] = [
    ("from", "2024-03-13T10:00:00Z"),
    ("to", "2024-03-13T11:00:00Z"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = RANGE.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn valid_query_and_windows() {
    let q = parse(&[
        ("metric", "events"),
        ("window", "1h"),
        ("from", "2024-03-13T10:30:00Z"),
        ("to", "2024-03-13T13:00:00Z"),
    ])
    .expect("valid");
    // Windows overlapping [10:30, 13:00): 10:00, 11:00, 12:00.
    let starts: Vec<String> = q.window_starts().map(rfc3339).collect();
    assert_eq!(
        starts,
        [
            "2024-03-13T10:00:00Z",
            "2024-03-13T11:00:00Z",
            "2024-03-13T12:00:00Z"
        ]
    );
    assert_eq!(q.window_count(), 3);
    assert_eq!(q.topology, "product_analytics");
    assert_eq!(q.table, "rollups_product_analytics");
    assert_eq!(q.row_filter(), ("", ""));
}

#[test]
fn hopping_windows_step_by_the_slide() {
    let q = parse(&[
        ("topology", "web_sessions"),
        ("metric", "bounce_rate"),
        ("window", "1h_15m"),
        ("from", "2024-03-13T10:20:00Z"),
        ("to", "2024-03-13T11:00:00Z"),
        ("group_by", "metadata.platform"),
    ])
    .expect("valid");
    let starts: Vec<String> = q.window_starts().map(rfc3339).collect();
    assert_eq!(
        starts,
        [
            "2024-03-13T10:15:00Z",
            "2024-03-13T10:30:00Z",
            "2024-03-13T10:45:00Z"
        ]
    );
    assert_eq!(q.window_count(), 3);
    assert_eq!(q.table, "rollups_web_sessions_sessions");
    assert_eq!(q.limit, DEFAULT_LIMIT);
    // Session rows settle max_duration + 2 gap + grace after their window's end.
    assert_eq!(q.close_delay_ms(5_000), 86_400_000 + 3_600_000 + 5_000);
}

#[test]
fn event_type_reads_the_event_type_dimension() {
    let q = parse(&with(&[
        ("metric", "events"),
        ("window", "1m"),
        ("event_type", "click"),
    ]))
    .expect("valid");
    assert_eq!(q.row_filter(), ("event_type", "click"));
    assert_eq!(q.close_delay_ms(5_000), 5_000);
}

#[test]
fn bad_queries_say_why_and_list_what_exists() {
    let e = err(&with(&[("metric", "revenue"), ("window", "1m")]));
    assert!(e.contains("unknown metric `revenue`"), "{e}");
    assert!(
        e.contains("events, unique_users, unique_sessions, unique_event_types"),
        "{e}"
    );
    assert!(err(&with(&[("window", "1m")])).contains("`metric` is required"));
    let e = err(&with(&[("metric", "events"), ("window", "2m")]));
    assert!(
        e.contains("unknown window `2m`") && e.contains("1m, 1h, 1d"),
        "{e}"
    );
    let e = err(&with(&[
        ("topology", "nope"),
        ("metric", "events"),
        ("window", "1m"),
    ]));
    assert!(
        e.contains("unknown topology `nope`") && e.contains("product_analytics, web_sessions"),
        "{e}"
    );
    let e = err(&with(&[
        ("metric", "events"),
        ("window", "1m"),
        ("group_by", "metadata.platform"),
    ]));
    assert!(
        e.contains("unknown dimension `metadata.platform`") && e.contains("use event_type"),
        "{e}"
    );
    let e = err(&with(&[
        ("topology", "web_sessions"),
        ("metric", "events"),
        ("window", "1h"),
        ("event_type", "click"),
    ]));
    assert!(e.contains("needs an event_type dimension"), "{e}");
    assert!(err(&with(&[
        ("metric", "unique_event_types"),
        ("window", "1m"),
        ("event_type", "click")
    ]))
    .contains("cannot be combined"));
    assert!(err(&with(&[
        ("metric", "events"),
        ("window", "1m"),
        ("event_type", "click"),
        ("group_by", "event_type")
    ]))
    .contains("cannot be combined with `group_by`"));
    assert!(err(&with(&[
        ("metric", "events"),
        ("window", "1m"),
        ("limit", "5")
    ]))
    .contains("grouped reports only"));
    for limit in ["0", "101", "ten", "-1"] {
        let mut p = with(&[
            ("metric", "events"),
            ("window", "1m"),
            ("group_by", "event_type"),
        ]);
        p.push(("limit", limit));
        assert!(err(&p).contains("from 1 to 100"), "{limit}");
    }
    assert!(
        err(&with(&[("metric", "events"), ("window", "1m"), ("x", "1")]))
            .contains("unknown parameter")
    );
    assert!(err(&[
        ("metric", "events"),
        ("window", "1m"),
        ("from", "yesterday"),
        ("to", "2024-03-13T11:00:00Z")
    ])
    .contains("RFC 3339"));
    assert!(err(&[
        ("metric", "events"),
        ("window", "1m"),
        ("from", "2024-03-13T11:00:00Z"),
        ("to", "2024-03-13T10:00:00Z")
    ])
    .contains("before"));
}

#[test]
fn the_default_topology_must_exist() {
    let e = match parse_report_query(
        &params(&with(&[("metric", "events"), ("window", "1h")])),
        &[web_sessions()],
        10_000,
    ) {
        Err(ApiError::BadRequest(reason)) => reason,
        other => panic!("expected a 400, got {other:?}"),
    };
    assert!(
        e.contains("`product_analytics` (the default)") && e.contains("use web_sessions"),
        "{e}"
    );
}

#[test]
fn sizes_are_bounded() {
    // 10,001 one-minute windows.
    let too_long = err(&[
        ("metric", "events"),
        ("window", "1m"),
        ("from", "2024-03-13T00:00:00Z"),
        ("to", "2024-03-19T22:41:00Z"),
    ]);
    assert!(too_long.contains("limit is 10000"), "{too_long}");
    assert!(parse(&[
        ("metric", "events"),
        ("window", "1m"),
        ("from", "2024-03-13T00:00:00Z"),
        ("to", "2024-03-19T22:40:00Z")
    ])
    .is_ok());
    // Grouped: 10,000 windows × 11 series is over 100,000 points; 9,090 × 11 is not.
    let grouped = |to: &'static str, limit: &'static str| {
        vec![
            ("metric", "events"),
            ("window", "1m"),
            ("group_by", "event_type"),
            ("limit", limit),
            ("from", "2024-03-13T00:00:00Z"),
            ("to", to),
        ]
    };
    // 2024-03-19T07:30:00Z is 9,090 minutes after the start; 07:31 is 9,091.
    assert!(parse(&grouped("2024-03-19T07:30:00Z", "10")).is_ok());
    assert!(err(&grouped("2024-03-19T07:31:00Z", "10")).contains("limit is 100000"));
}

#[test]
fn complete_until_needs_grace_past_the_end() {
    let t0 = 1_710_324_000_000; // 10:00:00
    let minute = WindowSpec::tumbling("1m", 60_000);
    // The 10:00 minute closes at 10:01:00 + 5 s; it is final once the frontier passes that.
    let later = t0 + 3_600_000;
    assert_eq!(
        complete_until_from(t0 + 65_000, 5_000, &minute, later),
        Some(t0)
    );
    assert_eq!(
        complete_until_from(t0 + 65_001, 5_000, &minute, later),
        Some(t0 + 60_000)
    );
    assert_eq!(complete_until_from(3_000, 5_000, &minute, later), None);
}

#[test]
fn complete_until_of_hopping_windows_counts_whole_windows() {
    let t0 = 1_710_324_000_000; // 10:00:00
    let hop = WindowSpec::hopping("1h_15m", 3_600_000, 900_000);
    let later = t0 + 86_400_000;
    // Frontier just past 11:20 + grace: [10:00, 11:00) and [10:15, 11:15) are final, the
    // window starting 10:30 ends 11:30 and is not: every start before 10:30.
    let frontier = t0 + 80 * 60_000 + 5_001;
    assert_eq!(
        complete_until_from(frontier, 5_000, &hop, later),
        Some(t0 + 30 * 60_000)
    );
    // Exactly at 11:15 + grace + 1 ms: [10:15, 11:15) has just become final.
    assert_eq!(
        complete_until_from(t0 + 75 * 60_000 + 5_001, 5_000, &hop, later),
        Some(t0 + 30 * 60_000)
    );
    assert_eq!(
        complete_until_from(t0 + 75 * 60_000 + 5_000, 5_000, &hop, later),
        Some(t0 + 15 * 60_000)
    );
    // Before the first whole window ends, nothing is complete.
    assert_eq!(
        complete_until_from(60_000 + 5_001, 5_000, &hop, later),
        Some(0)
    );
}

#[test]
fn complete_until_never_passes_the_wall_clock() {
    // At 10:00:30 the frontier is 2 minutes ahead (a fast clock, or a frontier saved by a
    // pipeline without the clock-skew cap): nothing after 10:00 may be called complete.
    let t0 = 1_710_324_000_000; // 10:00:00
    let minute = WindowSpec::tumbling("1m", 60_000);
    let hour = WindowSpec::tumbling("1h", 3_600_000);
    let frontier = t0 + 120_000 + 5_001;
    assert_eq!(
        complete_until_from(frontier, 5_000, &minute, t0 + 30_000),
        Some(t0)
    );
    assert_eq!(
        complete_until_from(frontier, 5_000, &minute, t0 + 60_000),
        Some(t0 + 60_000)
    );
    assert_eq!(
        complete_until_from(frontier, 5_000, &hour, t0 + 30_000),
        Some(t0)
    );
    // Behind the wall clock, the frontier decides.
    assert_eq!(
        complete_until_from(frontier, 5_000, &minute, t0 + 600_000),
        Some(t0 + 120_000)
    );
}

fn response(points: Option<Vec<Point>>, series: Option<Vec<Series>>) -> ReportResponse {
    ReportResponse {
        topology: "web_sessions".into(),
        metric: "bounce_rate".into(),
        unit: "ratio",
        window: "1h".into(),
        window_size_s: 3600,
        slide_s: 3600,
        from: "2024-03-13T10:00:00Z".into(),
        to: "2024-03-13T12:00:00Z".into(),
        event_type: None,
        group_by: None,
        limit: None,
        complete_until: None,
        pending_corrections: None,
        points,
        series,
    }
}

#[test]
fn csv_has_a_row_per_point_and_guards_groups() {
    let p = |start: &str, v: serde_json::Value| Point {
        window_start: start.into(),
        value: v,
    };
    let (t0, t1) = ("2024-03-13T10:00:00Z", "2024-03-13T11:00:00Z");
    let plain = response(
        Some(vec![
            p(t0, serde_json::json!(0.25)),
            p(t1, serde_json::Value::Null),
        ]),
        None,
    );
    let text = String::from_utf8(report_csv(&plain).expect("csv")).expect("utf-8");
    assert_eq!(
        text,
        format!("window_start,value\r\n{t0},0.25\r\n{t1},\r\n")
    );
    let grouped = response(
        None,
        Some(vec![
            Series {
                group: "-1+1".into(),
                total: serde_json::json!(3),
                points: vec![p(t0, serde_json::json!(-3)), p(t1, serde_json::json!(1))],
            },
            Series {
                group: "a,\"b\"".into(),
                total: serde_json::json!(1),
                points: vec![p(t0, serde_json::json!(1))],
            },
        ]),
    );
    let text = String::from_utf8(report_csv(&grouped).expect("csv")).expect("utf-8");
    assert_eq!(
        text,
        format!(
            "group,window_start,value\r\n'-1+1,{t0},-3\r\n'-1+1,{t1},1\r\n\"a,\"\"b\"\"\",{t0},1\r\n"
        )
    );
}
