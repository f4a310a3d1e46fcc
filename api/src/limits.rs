//! Rate limits (GCRA, `governor`) per key or client IP: saved resources' creates and gets,
//! and optionally `POST /events`.
//!
//! `governor`'s keyed limiters are used directly rather than through `tower_governor`:
//! - one middleware keys every class by the *authenticated* key id (the [`Authn`] extension
//!   the auth layer sets), falling back to the peer IP, without re-parsing headers;
//! - the refusal's wait is exact (`NotUntil::wait_time_from`), so `Retry-After` is rounded
//!   up (tower_governor rounds down and sends 0 for a sub-second wait) and the `RateLimit-*`
//!   headers come from the same decision;
//! - the clock is ours ([`LimitClock`]): tests drive it by hand (`FakeRelativeClock`).
//!
//! Every spelling of a route shares its class's limiter: the routes attach the same class.
//! Memory is bounded: every [`EVICT_EVERY`] checks a class drops keys whose state equals a
//! fresh key's (`retain_recent`) and shrinks its map.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, FakeRelativeClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::auth::Authn;
use crate::{ApiConfig, AppState};

/// A class evicts stale keys after this many checks.
pub const EVICT_EVERY: u64 = 4096;

/// The time source of the limiters: the monotonic clock, or a hand-driven one for tests.
#[derive(Clone, Debug)]
pub enum LimitClock {
    /// `std::time::Instant`, relative to when the limiters were built.
    Monotonic(std::time::Instant),
    /// Advances only when told (`FakeRelativeClock::advance`); clones share the time.
    Fake(FakeRelativeClock),
}

impl LimitClock {
    /// The monotonic clock, starting now.
    pub fn monotonic() -> LimitClock {
        LimitClock::Monotonic(std::time::Instant::now())
    }
}

impl Clock for LimitClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match self {
            LimitClock::Monotonic(start) => Nanos::from(start.elapsed()),
            LimitClock::Fake(clock) => clock.now(),
        }
    }
}

type Keyed = RateLimiter<String, DashMapStateStore<String>, LimitClock, StateInformationMiddleware>;

/// A limiter's decision for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The burst (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests still allowed at once (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Whole seconds until the full burst is available again (`RateLimit-Reset`), rounded up.
    pub reset_s: u64,
    /// Whole seconds to wait before retrying (`Retry-After`, ≥ 1), when refused.
    pub retry_after_s: u64,
}

/// The GCRA limiter of one route class, keyed by `key:<id>` or `ip:<address>`.
pub struct ClassLimiter {
    class: &'static str,
    per_second: u32,
    burst: u32,
    limiter: Keyed,
    checks: AtomicU64,
}

impl ClassLimiter {
    /// `per_second` requests per second with a burst of `burst` (0s count as 1), timed by
    /// `clock`. `class` names it in refusals.
    pub fn new(class: &'static str, per_second: u32, burst: u32, clock: LimitClock) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let cap = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(cap);
        let limiter = RateLimiter::dashmap_with_clock(quota, clock)
            .with_middleware::<StateInformationMiddleware>();
        ClassLimiter {
            class,
            per_second: rate.get(),
            burst: cap.get(),
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    /// The class's name, e.g. `create_resource`.
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// Counts one request of `key` and decides it.
    pub fn check(&self, key: &str) -> Decision {
        if self.checks.fetch_add(1, Ordering::Relaxed) % EVICT_EVERY == EVICT_EVERY - 1 {
            self.evict_stale();
        }
        let interval = 1.0 / f64::from(self.per_second);
        let ceil = |s: f64| s.ceil().max(0.0) as u64;
        match self.limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Decision {
                    allowed: true,
                    limit: self.burst,
                    remaining,
                    reset_s: ceil(f64::from(self.burst - remaining.min(self.burst)) * interval),
                    retry_after_s: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(self.limiter.clock().now())
                    .as_secs_f64();
                Decision {
                    allowed: false,
                    limit: self.burst,
                    remaining: 0,
                    reset_s: ceil(wait + f64::from(self.burst - 1) * interval).max(1),
                    retry_after_s: ceil(wait).max(1),
                }
            }
        }
    }

    /// Drops keys whose state is that of a fresh key and releases the memory.
    pub fn evict_stale(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys currently held.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    /// The 429 answer for a refused `decision`: `{"error": "rate limit of <class>: N
    /// requests/s with a burst of B exceeded; retry in S s"}`, `Retry-After` and `RateLimit-*`.
    pub fn refusal(&self, decision: &Decision) -> Response {
        let reason = format!(
            "rate limit of {}: {} requests/s with a burst of {} exceeded; retry in {} s",
            self.class, self.per_second, self.burst, decision.retry_after_s
        );
        let mut response = crate::error::json_error(StatusCode::TOO_MANY_REQUESTS, &reason);
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(decision.retry_after_s),
        );
        set_headers(headers, decision);
        response
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft names).
fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    headers.insert("ratelimit-limit", HeaderValue::from(decision.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(decision.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(decision.reset_s));
}

/// One limiter per limited route class.
pub struct Limiters {
    /// `POST /create_resource`, `POST /resources`, `PUT`/`DELETE /resources/{id}`.
    pub create_resource: ClassLimiter,
    /// `GET /get_resource`, `GET /resources`, `GET /resources/{id}`.
    pub get_resource: ClassLimiter,
    /// `POST /events`, when `api.ingest_per_second > 0`.
    pub ingest: Option<ClassLimiter>,
}

impl Limiters {
    /// The limiters `config` asks for, on the monotonic clock.
    pub fn new(config: &ApiConfig) -> Limiters {
        Limiters::with_clock(config, LimitClock::monotonic())
    }

    /// The limiters `config` asks for, timed by `clock` (tests pass a fake one).
    pub fn with_clock(config: &ApiConfig, clock: LimitClock) -> Limiters {
        Limiters {
            create_resource: ClassLimiter::new(
                "create_resource",
                config.create_resource_per_second,
                config.create_resource_burst,
                clock.clone(),
            ),
            get_resource: ClassLimiter::new(
                "get_resource",
                config.get_resource_per_second,
                config.get_resource_burst,
                clock.clone(),
            ),
            ingest: (config.ingest_per_second > 0).then(|| {
                ClassLimiter::new(
                    "ingest",
                    config.ingest_per_second,
                    config.ingest_burst,
                    clock,
                )
            }),
        }
    }
}

/// Whom a request is counted for: `key:<id>` for a valid key, else `ip:<peer ip>`, else
/// `ip:unknown` (no peer address: a router called without a socket).
pub fn client_key(request: &Request) -> String {
    if let Some(Authn::Key(caller)) = request.extensions().get::<Authn>() {
        return format!("key:{}", caller.key_id);
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
        None => "ip:unknown".to_owned(),
    }
}

/// Counts the request against `limiter`: 429 when over, else the route's answer with the
/// `RateLimit-*` headers.
async fn enforce(limiter: Option<&ClassLimiter>, request: Request, next: Next) -> Response {
    let Some(limiter) = limiter else {
        return next.run(request).await;
    };
    let decision = limiter.check(&client_key(&request));
    if !decision.allowed {
        return limiter.refusal(&decision);
    }
    let mut response = next.run(request).await;
    set_headers(response.headers_mut(), &decision);
    response
}

/// Middleware of the resource-creating routes (the `create_resource` class).
pub(crate) async fn limit_create(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    enforce(Some(&state.limiters.create_resource), request, next).await
}

/// Middleware of the resource-reading routes (the `get_resource` class).
pub(crate) async fn limit_get(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    enforce(Some(&state.limiters.get_resource), request, next).await
}

/// Middleware for `POST /events` (the `ingest` class; passes everything when
/// `api.ingest_per_second = 0`).
pub(crate) async fn limit_ingest(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    enforce(state.limiters.ingest.as_ref(), request, next).await
}

#[cfg(test)]
mod tests;
