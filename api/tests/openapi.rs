//! The OpenAPI description is complete and true: every route the product has is in
//! `/openapi.json`, nothing else is, every documented operation exists in the router, and the
//! description is well formed (3.1, errors documented, references resolve). Socket-free.

mod common;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;

/// Every documented route: the endpoints plus the existing ones. Adding a route means
/// adding it here and to the spec (its handler's `#[utoipa::path]`); forgetting either fails.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/events"),
    ("get", "/reports"),
    ("get", "/reports/summary"),
    ("get", "/topologies"),
    ("get", "/users"),
    ("get", "/dashboard/data"),
    ("post", "/create_resource"),
    ("get", "/get_resource"),
    ("post", "/resources"),
    ("get", "/resources"),
    ("get", "/resources/{id}"),
    ("put", "/resources/{id}"),
    ("delete", "/resources/{id}"),
    ("get", "/admin/keys"),
    ("post", "/admin/keys"),
    ("delete", "/admin/keys/{id_or_name}"),
    ("get", "/admin/audit"),
    ("get", "/admin/jobs"),
    ("get", "/admin/requests"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// Public routes: answered without a key.
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// `GET /openapi.json` without a key (it is public).
async fn spec() -> Value {
    let request = Request::get("/openapi.json")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = common::call_as_is(common::state(), request).await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).expect("json")
}

fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                out.insert((method.to_owned(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_route_is_documented_and_nothing_else() {
    let spec = spec().await;
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        spec["openapi"]
    );
    let documented = operations(&spec);
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|&(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented routes not in the list: {extra:?}"
    );
}

/// Every documented operation is served by the router: without a key it answers 401 (or 200
/// for the public ones), never 404/405.
#[tokio::test]
async fn every_documented_operation_exists_in_the_router() {
    let spec = spec().await;
    for (method, path) in operations(&spec) {
        let uri = path.replace("{id}", "1").replace("{id_or_name}", "k");
        let request = Request::builder()
            .method(Method::from_bytes(method.to_uppercase().as_bytes()).expect("method"))
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .expect("request");
        let (status, _, body) = common::call_as_is(common::state(), request).await;
        let want = if PUBLIC.contains(&path.as_str()) {
            vec![StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]
        } else {
            vec![StatusCode::UNAUTHORIZED]
        };
        assert!(
            want.contains(&status),
            "{method} {uri}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
}

/// Operations say who may call them and document their errors; `$ref`s resolve.
#[tokio::test]
async fn operations_document_security_errors_and_parameters() {
    let spec = spec().await;
    let schemes = spec["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    assert!(schemes.contains_key("bearer") && schemes.contains_key("api_key"));
    for (method, path) in operations(&spec) {
        let op = &spec["paths"][&path][&method];
        let responses = op["responses"].as_object().expect("responses");
        let codes: Vec<&str> = responses.keys().map(String::as_str).collect();
        assert!(
            codes.iter().any(|c| c.starts_with('2')),
            "{method} {path}: no success response in {codes:?}"
        );
        assert!(
            op["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{method} {path}: no tag"
        );
        if !PUBLIC.contains(&path.as_str()) {
            assert!(
                op["security"].as_array().is_some_and(|s| !s.is_empty()),
                "{method} {path}: no security requirement"
            );
            for code in ["401", "403"] {
                assert!(
                    codes.contains(&code),
                    "{method} {path}: {code} undocumented"
                );
            }
        }
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            let declared = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path"));
            assert!(
                declared,
                "{method} {path}: path parameter {name} undeclared"
            );
        }
    }
    // Every `$ref` points at a schema that exists.
    let text = spec.to_string();
    let schemas = spec["components"]["schemas"].as_object().expect("schemas");
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().expect("name");
        assert!(schemas.contains_key(name), "dangling $ref to {name}");
    }
}

#[tokio::test]
async fn swagger_ui_is_served_offline_without_a_key() {
    let request = Request::get("/docs/").body(Body::empty()).expect("request");
    let (status, _, body) = common::call_as_is(common::state(), request).await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains("swagger"), "{html}");
    // The bundle comes from the binary (feature `vendored`), not a CDN.
    assert!(
        !html.contains("unpkg.com") && !html.contains("cdn."),
        "{html}"
    );
    let request = Request::get("/docs/swagger-ui-bundle.js")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = common::call_as_is(common::state(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() > 100_000, "bundle of {} bytes", body.len());
}
