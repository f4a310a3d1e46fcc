//! Keys in the real PostgreSQL through the router (no sockets): an admin creates a key over
//! the API, the key works, the admin revokes it and within 5 s it gets 401; every step lands in
//! the audit log, and a failed action writes no audit row. Runs with `TALLY_E2E=1` and the
//! local stack up (`deploy/local/stack.sh up`); key names are unique per run.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::call_as_is;
use serde_json::{json, Value};
use tally_api::auth::KeyStore;
use tally_api::AppState;

fn enabled(test: &str) -> bool {
    if std::env::var("TALLY_E2E").as_deref() == Ok("1") {
        return true;
    }
    eprintln!(
        "skipping {test}: set TALLY_E2E=1 with the local stack up (deploy/local/stack.sh up)"
    );
    false
}

/// The default state, with keys and admin routes on the real PostgreSQL (migrated).
async fn pg_state() -> AppState {
    let url = std::env::var("TALLY_POSTGRES__URL")
        .unwrap_or_else(|_| "postgres://tally@127.0.0.1:5432/tally".into());
    let pool = sqlx::PgPool::connect(&url).await.expect("postgres");
    tally_sinks::postgres::migrate(&pool)
        .await
        .expect("migrate");
    let mut state = common::state();
    state.keys = KeyStore::postgres(pool.clone());
    state.postgres = pool;
    state
}

fn tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

/// An admin key stored directly (as `tally keys create` does), for the test to act with.
async fn admin_key(state: &AppState, name: &str) -> String {
    let secret = tally_api::auth::generate().expect("rng");
    let new = tally_sinks::postgres::keys::NewKey {
        name,
        role: "admin",
        key_hash: &secret.key_hash,
        key_prefix: &secret.key_prefix,
    };
    let actor = tally_sinks::postgres::audit::Actor::cli();
    tally_sinks::postgres::keys::create(&state.postgres, new, &actor)
        .await
        .expect("create admin key");
    secret.key
}

async fn send(
    state: &AppState,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(k) = key {
        request = request.header("x-api-key", k);
    }
    let body = match body {
        Some(b) => {
            request = request.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let (status, _, bytes) = call_as_is(state.clone(), request.body(body).expect("request")).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn audit_of(state: &AppState, admin: &str, target: &str) -> Vec<String> {
    let (status, page) = send(state, "GET", "/admin/audit?limit=1000", Some(admin), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["target"] == target)
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_key_is_created_used_and_revoked_within_five_seconds() {
    if !enabled("a_key_is_created_used_and_revoked_within_five_seconds") {
        return;
    }
    let state = pg_state().await;
    let t = tag();
    let admin = admin_key(&state, &format!("admin-{t}")).await;
    let name = format!("reader-{t}");

    let (status, created) = send(
        &state,
        "POST",
        "/admin/keys",
        Some(&admin),
        Some(json!({"name": name, "role": "read"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();
    let id = created["id"].as_i64().expect("id");
    assert_eq!(created["role"], "read");
    assert!(key.starts_with(created["key_prefix"].as_str().expect("prefix")));

    // Taken name: 409, and no second audit row.
    let again = json!({"name": name, "role": "admin"});
    let (status, body) = send(&state, "POST", "/admin/keys", Some(&admin), Some(again)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("already exists"));

    // The key reads, but may not administer.
    let (status, body) = send(&state, "GET", "/topologies", Some(&key), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(&state, "GET", "/admin/keys", Some(&key), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Listed without the key or its hash, with last_used_at set by the lookups.
    let (status, list) = send(&state, "GET", "/admin/keys", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(!list.to_string().contains(&key), "the list shows the key");
    let row = list["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == id)
        .expect("listed")
        .clone();
    assert!(
        row["revoked_at"].is_null() && !row["last_used_at"].is_null(),
        "{row}"
    );
    assert!(row.get("key_hash").is_none(), "{row}");

    // Revoke: 401 within 5 s (the cache holds a row for at most 2 s).
    let (status, revoked) = send(
        &state,
        "DELETE",
        &format!("/admin/keys/{name}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(!revoked["revoked_at"].is_null());
    let start = Instant::now();
    loop {
        let (status, body) = send(&state, "GET", "/topologies", Some(&key), None).await;
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("revoked"),
                "{body}"
            );
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Revoking again changes nothing; unknown keys are 404 and write nothing.
    let (status, _) = send(
        &state,
        "DELETE",
        &format!("/admin/keys/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ghost = format!("ghost-{t}");
    let (status, body) = send(
        &state,
        "DELETE",
        &format!("/admin/keys/{ghost}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let target = format!("key:{id}");
    assert_eq!(
        audit_of(&state, &admin, &target).await,
        vec!["key.revoked".to_owned(), "key.created".to_owned()],
        "newest first, one row per change"
    );
    let (status, page) = send(&state, "GET", "/admin/audit?limit=1000", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.to_string().contains(&ghost),
        "a failed revoke was audited"
    );
    let actor = page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["target"] == target)
        .map(|e| e["actor"].clone());
    assert_eq!(actor, Some(json!(format!("admin-{t}"))));
}

#[tokio::test]
async fn the_audit_log_pages_newest_first() {
    if !enabled("the_audit_log_pages_newest_first") {
        return;
    }
    let state = pg_state().await;
    let t = tag();
    let (admin, _) = common::stored_key(&state.postgres, tally_api::auth::Role::Admin).await;
    for i in 0..3 {
        let body = json!({"name": format!("p{i}-{t}"), "role": "ingest"});
        let (status, b) = send(&state, "POST", "/admin/keys", Some(&admin), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
    }
    let (status, first) = send(&state, "GET", "/admin/audit?limit=2", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let entries = first["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2);
    let (a, b) = (entries[0]["id"].as_i64(), entries[1]["id"].as_i64());
    assert!(a > b, "newest first: {first}");
    assert_eq!(first["next"].as_i64(), b);
    let uri = format!("/admin/audit?limit=2&before={}", b.expect("id"));
    let (status, second) = send(&state, "GET", &uri, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let next_first = second["entries"][0]["id"].as_i64().expect("id");
    assert!(next_first < b.expect("id"), "{second}");
    for bad in ["limit=0", "limit=1001", "limit=x", "before=-1"] {
        let (status, body) = send(
            &state,
            "GET",
            &format!("/admin/audit?{bad}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, jobs) = send(&state, "GET", "/admin/jobs", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{jobs}");
    assert!(
        jobs["runs"].is_array() && jobs["queued"].is_array(),
        "{jobs}"
    );
}
