//! The limiters on a hand-driven clock.

use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::*;

fn limiter(per_second: u32, burst: u32) -> (ClassLimiter, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let limiter = ClassLimiter::new("test", per_second, burst, LimitClock::Fake(clock.clone()));
    (limiter, clock)
}

#[test]
fn exactly_the_burst_at_once_then_refused_with_retry_after() {
    let (l, _clock) = limiter(5, 20);
    for i in 0..20 {
        let d = l.check("key:1");
        assert!(d.allowed, "request {i} refused");
        assert_eq!(d.limit, 20);
        assert_eq!(d.remaining, 19 - i, "remaining after request {i}");
    }
    let d = l.check("key:1");
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    // The next token comes in 200 ms: rounded up to 1 s, never 0.
    assert_eq!(d.retry_after_s, 1);
    // The whole burst is back after 200 ms + 19 × 200 ms = 4 s.
    assert_eq!(d.reset_s, 4);
}

#[test]
fn retry_after_rounds_up_long_waits() {
    let (l, clock) = limiter(1, 1);
    assert!(l.check("k").allowed);
    clock.advance(Duration::from_millis(100));
    let d = l.check("k");
    assert!(!d.allowed);
    assert_eq!(d.retry_after_s, 1, "900 ms rounds up to 1 s");
    // One request per 2.5 s is not expressible in requests/s; with 1/s a wait is ≤ 1 s.
    let (slow, clock) = limiter(1, 3);
    for _ in 0..3 {
        assert!(slow.check("k").allowed);
    }
    clock.advance(Duration::from_millis(10));
    let d = slow.check("k");
    assert!(!d.allowed);
    assert_eq!(d.retry_after_s, 1);
    assert_eq!(d.reset_s, 3, "0.99 s + 2 × 1 s rounds up to 3 s");
}

#[test]
fn refills_one_request_per_interval() {
    let (l, clock) = limiter(5, 2);
    assert!(l.check("k").allowed);
    assert!(l.check("k").allowed);
    assert!(!l.check("k").allowed);
    clock.advance(Duration::from_millis(199));
    assert!(!l.check("k").allowed, "before 1/rate s");
    clock.advance(Duration::from_millis(1));
    assert!(l.check("k").allowed, "after 1/rate s");
    assert!(!l.check("k").allowed, "only one came back");
    clock.advance(Duration::from_secs(10));
    let d = l.check("k");
    assert!(d.allowed);
    assert_eq!(d.remaining, 1, "refill stops at the burst");
}

#[test]
fn keys_are_independent() {
    let (l, _clock) = limiter(1, 2);
    assert!(l.check("key:1").allowed);
    assert!(l.check("key:1").allowed);
    assert!(!l.check("key:1").allowed);
    assert!(l.check("key:2").allowed);
    assert!(l.check("ip:10.0.0.1").allowed);
    assert!(!l.check("key:1").allowed);
}

#[test]
fn stale_keys_are_evicted() {
    let (l, clock) = limiter(10, 5);
    for i in 0..100 {
        assert!(l.check(&format!("ip:10.0.0.{i}")).allowed);
    }
    assert_eq!(l.keys(), 100);
    l.evict_stale();
    assert_eq!(l.keys(), 100, "every key is still within its burst window");
    clock.advance(Duration::from_secs(1));
    assert!(l.check("ip:10.0.1.1").allowed);
    l.evict_stale();
    assert_eq!(l.keys(), 1, "only the recent key stays");
}

#[test]
fn eviction_runs_by_itself() {
    let (l, clock) = limiter(1000, 1);
    for i in 0..EVICT_EVERY - 1 {
        l.check(&format!("k{i}"));
        clock.advance(Duration::from_millis(5));
    }
    assert_eq!(l.keys() as u64, EVICT_EVERY - 1);
    l.check("last");
    assert!(l.keys() <= 2, "kept {}", l.keys());
}

fn request(authn: Option<Authn>, peer: Option<&str>) -> Request {
    let mut r = Request::new(axum::body::Body::empty());
    if let Some(a) = authn {
        r.extensions_mut().insert(a);
    }
    if let Some(p) = peer {
        let addr: SocketAddr = p.parse().expect("addr");
        r.extensions_mut().insert(ConnectInfo(addr));
    }
    r
}

#[test]
fn keyed_by_key_then_ip() {
    let caller = crate::auth::Caller {
        key_id: 7,
        name: "ci".into(),
        role: crate::auth::Role::Read,
    };
    let with_key = request(Some(Authn::Key(caller)), Some("10.1.2.3:5555"));
    assert_eq!(client_key(&with_key), "key:7");
    let anonymous = request(Some(Authn::Anonymous), Some("10.1.2.3:5555"));
    assert_eq!(client_key(&anonymous), "ip:10.1.2.3");
    assert_eq!(
        client_key(&request(None, Some("[::1]:80"))),
        "ip:::1",
        "port ignored"
    );
    assert_eq!(client_key(&request(None, None)), "ip:unknown");
}

#[test]
fn ingest_is_off_by_default() {
    let limiters = Limiters::new(&ApiConfig::default());
    assert!(limiters.ingest.is_none());
    let config = ApiConfig {
        ingest_per_second: 3,
        ingest_burst: 4,
        ..ApiConfig::default()
    };
    let limiters = Limiters::new(&config);
    let ingest = limiters.ingest.expect("ingest limiter");
    assert_eq!(ingest.check("k").limit, 4);
    assert_eq!(limiters.create_resource.check("k").limit, 20);
    assert_eq!(limiters.get_resource.check("k").limit, 100);
}

#[test]
fn refusal_is_json_with_headers() {
    let (l, _clock) = limiter(5, 1);
    assert!(l.check("k").allowed);
    let d = l.check("k");
    let response = l.refusal(&d);
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = response.headers();
    assert_eq!(h["retry-after"], "1");
    assert_eq!(h["ratelimit-limit"], "1");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"], "1");
}
