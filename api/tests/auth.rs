//! Authentication and roles through the router, without sockets: every documented route (taken
//! from the OpenAPI description, so a new route is covered by itself) × every kind of caller.
//! Keys come from an in-memory key source; services are closed ports, so a request that passes
//! authentication answers whatever its handler answers without them (never 401 or 403).

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{call_as, call_as_is, memory_keys, state, state_with, unreachable_kafka, Who};
use futures::future::BoxFuture;
use serde_json::Value;
use tally_api::auth::{CachePolicy, KeyRecord, KeySource, KeyStore, SourceError};
use tally_api::{ApiConfig, AppState, AuthMode};

/// The role a route needs, by its tag; routes whose role differs from their tag's are listed
/// in `OVERRIDES` (method, path, role).
fn needed(method: &str, path: &str, tags: &[String]) -> &'static str {
    const OVERRIDES: &[(&str, &str, &str)] = &[];
    if let Some((_, _, role)) = OVERRIDES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
    {
        return role;
    }
    let tag = tags.first().map(String::as_str).unwrap_or_default();
    match tag {
        "ingest" => "ingest",
        "admin" | "users" => "admin",
        "reports" | "resources" | "dashboard" => "read",
        other => panic!("{method} {path}: tag {other:?} has no role here; add it to `needed`"),
    }
}

struct Route {
    method: Method,
    path: String,
    /// `None`: public.
    role: Option<&'static str>,
}

/// Every documented route with the role it needs, from `GET /openapi.json`'s content.
fn documented_routes(state: &AppState) -> Vec<Route> {
    let spec = serde_json::to_value(tally_api::openapi_spec(state)).expect("spec as JSON");
    let mut routes = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let tags: Vec<String> = op["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            if secured {
                let responses = op["responses"].as_object().expect("responses");
                for code in ["401", "403"] {
                    assert!(
                        responses.contains_key(code),
                        "{method} {path} needs a key but does not document {code}"
                    );
                }
            }
            routes.push(Route {
                role: secured.then(|| needed(m.as_str(), path, &tags)),
                method: m,
                path: path.clone(),
            });
        }
    }
    assert!(routes.len() >= 8, "only {} routes documented", routes.len());
    routes
}

/// The route's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "1" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

fn request(route: &Route) -> Request<Body> {
    let body = if route.method == Method::GET || route.method == Method::DELETE {
        Body::empty()
    } else {
        Body::from("{}")
    };
    Request::builder()
        .method(route.method.clone())
        .uri(concrete(&route.path))
        .header("content-type", "application/json")
        .body(body)
        .expect("request")
}

async fn send(state: AppState, who: Who, route: &Route) -> (StatusCode, Option<String>, Value) {
    let (status, headers, body) = call_as(state, who, request(route)).await;
    let www = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        www,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// What `who` must get on a route that needs `role`: `Some(status)` for a refusal, `None` for
/// "passed authentication" (anything but 401 and 403).
fn expected(who: Who, role: &str, mode: AuthMode) -> Option<StatusCode> {
    let allowed = match who {
        Who::Admin => true,
        Who::Ingest => role == "ingest",
        Who::Read => role == "read",
        Who::None => role == "ingest" && mode == AuthMode::IngestOpen,
        Who::Revoked | Who::Unknown | Who::Malformed => false,
    };
    match who {
        _ if allowed => None,
        Who::Ingest | Who::Read => Some(StatusCode::FORBIDDEN),
        _ => Some(StatusCode::UNAUTHORIZED),
    }
}

async fn matrix(mode: AuthMode) {
    let config = ApiConfig {
        auth: mode,
        ..ApiConfig::default()
    };
    let state = state_with(config, unreachable_kafka());
    let routes = documented_routes(&state);
    for route in &routes {
        for who in Who::ALL {
            let (status, www, body) = send(state.clone(), who, route).await;
            let what = format!("{} {} as {who:?} ({mode:?})", route.method, route.path);
            let error = body["error"].as_str().unwrap_or_default();
            let Some(role) = route.role else {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}: public route answered {status}: {body}"
                );
                continue;
            };
            match expected(who, role, mode) {
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what}: should pass authentication, got {status}: {body}"
                ),
                Some(want) => {
                    assert_eq!(status, want, "{what}: {body}");
                    assert!(!error.is_empty(), "{what}: no error in {body}");
                    let needle = match who {
                        Who::None => format!("needs an API key with the `{role}` role"),
                        Who::Revoked => "revoked".into(),
                        Who::Unknown => "unknown API key".into(),
                        Who::Malformed => "malformed API key".into(),
                        _ => format!("this route needs `{role}`"),
                    };
                    assert!(
                        error.contains(&needle),
                        "{what}: `{error}` lacks `{needle}`"
                    );
                    let want_www = (want == StatusCode::UNAUTHORIZED).then(|| "Bearer".to_owned());
                    assert_eq!(www, want_www, "{what}: WWW-Authenticate");
                }
            }
            if let Some(key) = who.key() {
                assert!(
                    !body.to_string().contains(&key),
                    "{what}: the key is echoed"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_documented_route_by_every_caller() {
    matrix(AuthMode::Required).await;
}

#[tokio::test]
async fn ingest_open_lets_events_in_without_a_key_only() {
    matrix(AuthMode::IngestOpen).await;
}

#[tokio::test]
async fn the_role_matrix_covers_the_admin_routes() {
    let routes = documented_routes(&state());
    let admin: BTreeSet<String> = routes
        .iter()
        .filter(|r| r.role == Some("admin"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    for want in [
        "GET /admin/keys",
        "POST /admin/keys",
        "DELETE /admin/keys/{id_or_name}",
        "GET /admin/audit",
        "GET /admin/jobs",
    ] {
        assert!(admin.contains(want), "{want} missing from {admin:?}");
    }
    let ingest: Vec<_> = routes.iter().filter(|r| r.role == Some("ingest")).collect();
    assert_eq!(ingest.len(), 1, "only POST /events needs `ingest`");
}

#[tokio::test]
async fn public_routes_answer_without_a_key() {
    for uri in ["/healthz", "/readyz", "/openapi.json", "/docs/", "/metrics"] {
        let request = Request::get(uri).body(Body::empty()).expect("request");
        let (status, _, _) = call_as(state(), Who::None, request).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
    // The dashboard's static files: whatever is (or is not) built, never a key question.
    let request = Request::get("/dashboard/")
        .body(Body::empty())
        .expect("request");
    let (status, _, _) = call_as(state(), Who::None, request).await;
    assert!(
        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
        "/dashboard/: {status}"
    );
    // A refused key on a public route does not matter.
    let request = Request::get("/healthz")
        .body(Body::empty())
        .expect("request");
    let (status, _, _) = call_as(state(), Who::Revoked, request).await;
    assert_eq!(status, StatusCode::OK);
}

async fn with_headers(headers: &[(&str, String)]) -> (StatusCode, Value) {
    let mut request = Request::get("/topologies");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let (status, _, body) =
        call_as_is(state(), request.body(Body::empty()).expect("request")).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn both_header_spellings_work_and_must_agree() {
    let read = Who::Read.key().expect("key");
    let admin = Who::Admin.key().expect("key");
    let ingest = Who::Ingest.key().expect("key");
    let cases: Vec<(Vec<(&str, String)>, StatusCode)> = vec![
        (vec![("x-api-key", read.clone())], StatusCode::OK),
        (
            vec![("authorization", format!("Bearer {read}"))],
            StatusCode::OK,
        ),
        (
            vec![("authorization", format!("bearer {read}"))],
            StatusCode::OK,
        ),
        (
            vec![
                ("authorization", format!("Bearer {read}")),
                ("x-api-key", read.clone()),
            ],
            StatusCode::OK,
        ),
        (
            vec![
                ("authorization", format!("Bearer {read}")),
                ("x-api-key", admin.clone()),
            ],
            StatusCode::UNAUTHORIZED,
        ),
        (
            vec![("authorization", format!("Basic {read}"))],
            StatusCode::UNAUTHORIZED,
        ),
        (
            vec![("authorization", read.clone())],
            StatusCode::UNAUTHORIZED,
        ),
        (vec![("x-api-key", ingest)], StatusCode::FORBIDDEN),
    ];
    for (headers, want) in cases {
        let (status, body) = with_headers(&headers).await;
        assert_eq!(status, want, "{headers:?}: {body}");
        if want != StatusCode::OK {
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{body}"
            );
        }
    }
    let differ = [
        ("authorization", format!("Bearer {read}")),
        ("x-api-key", admin),
    ];
    let (_, body) = with_headers(&differ).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("different keys"),
        "{body}"
    );
}

/// A key source that always fails, as PostgreSQL does when it is down.
struct Down;

impl KeySource for Down {
    fn find(&self, _: [u8; 32]) -> BoxFuture<'_, Result<Option<KeyRecord>, SourceError>> {
        Box::pin(async { Err(SourceError("connection refused".into())) })
    }
}

#[tokio::test]
async fn an_unreachable_key_store_is_503_for_keys_and_401_without_one() {
    let mut state = state();
    state.keys = KeyStore::new(Down, CachePolicy::default());
    let topologies = || {
        Request::get("/topologies")
            .body(Body::empty())
            .expect("request")
    };
    let (status, _, body) = call_as(state.clone(), Who::Read, topologies()).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("retry later"),
        "{body}"
    );
    let (status, _, _) = call_as(state.clone(), Who::None, topologies()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call_as(state, Who::Malformed, topologies()).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a malformed key needs no lookup"
    );
}

#[tokio::test]
async fn the_skeleton_admin_is_gone() {
    // Without the middleware's extension (a handler reached some other way) nothing is allowed.
    let mut state = state();
    state.keys = memory_keys();
    let request = Request::get("/admin/keys")
        .body(Body::empty())
        .expect("request");
    let (status, _, _) = call_as(state, Who::None, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
