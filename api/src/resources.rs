//! Saved resources (reports and dashboards) in PostgreSQL: `POST /create_resource`,
//! `GET /get_resource`, and the RESTful `POST /resources`, `GET /resources`,
//! `GET|PUT|DELETE /resources/{id}`.
//!
//! A resource is a name, a description and one report definition (`report`, kind `report`) or
//! 1..=20 of them (`reports`, kind `dashboard`), each validated as `GET /reports` validates
//! its parameters. Creates, updates and deletes write their audit row in the same transaction.
//! The creating routes (and `PUT`/`DELETE`) share the `create_resource` rate limit, the
//! reading ones the `get_resource` limit, whatever the spelling.

mod validate;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use tally_sinks::postgres::audit::Actor;
use tally_sinks::postgres::resources::{self as store, Change, Resource};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Read, Role};
use crate::openapi::ErrorBody;
use crate::{limits, ApiError, AppState};

pub use validate::{ReportDefinition, ResourceRequest, MAX_DESCRIPTION, MAX_NAME, MAX_REPORTS};

/// Resources per `GET /resources` page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest `GET /resources` page.
pub const MAX_PAGE: i64 = 100;

/// A stored resource as the API answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResourceBody {
    /// Its id (positive).
    pub id: i64,
    /// `report` (one `report`) or `dashboard` (`reports`).
    pub kind: String,
    /// 1..=200 characters.
    pub name: String,
    /// At most 2000 characters.
    pub description: String,
    /// The report definition (kind `report`), as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    /// The report definitions (kind `dashboard`), as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports: Option<Value>,
    /// The creating key's id (`null` for a caller without a stored key).
    pub owner_key_id: Option<i64>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// With `with_data=true`: what `GET /reports` answers for the report (kind `report`), or
    /// an array of those, one per report (kind `dashboard`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl From<Resource> for ResourceBody {
    fn from(r: Resource) -> ResourceBody {
        let time = |t: chrono::DateTime<chrono::Utc>| {
            t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        ResourceBody {
            id: r.id,
            report: r.definition.get("report").cloned(),
            reports: r.definition.get("reports").cloned(),
            kind: r.kind,
            name: r.name,
            description: r.description,
            owner_key_id: r.owner_key_id,
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
            data: None,
        }
    }
}

/// A `GET /resources` page, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResourcePage {
    /// At most `limit` resources.
    pub resources: Vec<ResourceBody>,
    /// The `before` of the next page; `null` on the last one.
    pub next: Option<i64>,
}

fn unavailable(e: tally_sinks::SinkError) -> ApiError {
    tracing::warn!(error = %e, "resources: postgres request failed");
    ApiError::Unavailable("the platform database is unavailable; retry later".into())
}

fn actor(caller: &Caller) -> Actor {
    Actor {
        key_id: owner_of(caller),
        name: caller.name.clone(),
    }
}

/// The stored owner of what `caller` creates: its key id (ids start at 1; a caller without a
/// stored key owns nothing).
fn owner_of(caller: &Caller) -> Option<i64> {
    (caller.key_id > 0).then_some(caller.key_id)
}

/// A resource id: a positive whole number.
fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        let shown: String = raw.chars().take(40).collect();
        ApiError::BadRequest(format!(
            "`id` must be a positive whole number, got `{shown}`"
        ))
    })
}

fn not_found(id: i64) -> ApiError {
    ApiError::NotFound(format!("no resource {id}"))
}

fn with_data_param(params: &HashMap<String, String>) -> Result<bool, ApiError> {
    match params.get("with_data").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::BadRequest(
            "`with_data` must be true or false".into(),
        )),
    }
}

async fn create(state: &AppState, caller: &Caller, body: &Value) -> Result<Response, ApiError> {
    let v = validate::resource(state, body)?;
    let input = v.input();
    let stored = store::create(&state.postgres, &actor(caller), owner_of(caller), &input)
        .await
        .map_err(unavailable)?;
    Ok((StatusCode::CREATED, Json(ResourceBody::from(stored))).into_response())
}

/// The resource `id`, with its reports' current data when `with_data`.
async fn fetch(state: &AppState, id: i64, with_data: bool) -> Result<ResourceBody, ApiError> {
    let stored = store::get(&state.postgres, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(id))?;
    let mut body = ResourceBody::from(stored);
    if with_data {
        body.data = Some(validate::data(state, &body).await?);
    }
    Ok(body)
}

/// `POST /create_resource`: stores a saved report or dashboard.
#[utoipa::path(post, path = "/create_resource", tag = "resources",
    request_body = ResourceRequest,
    responses(
        (status = 201, description = "Stored; the answer is the resource with its id", body = ResourceBody),
        (status = 400, description = "A field is missing, unknown or invalid; the reason names it (e.g. `reports[2].window: ...`)", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "The key's role may not read", body = ErrorBody),
        (status = 429, description = "Over the create_resource rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn create_resource(
    Read(caller): Read,
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    create(&state, &caller, &body).await
}

/// `POST /resources`: as `POST /create_resource`.
#[utoipa::path(post, path = "/resources", tag = "resources",
    request_body = ResourceRequest,
    responses(
        (status = 201, description = "Stored; the answer is the resource with its id", body = ResourceBody),
        (status = 400, description = "A field is missing, unknown or invalid; the reason names it", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "The key's role may not read", body = ErrorBody),
        (status = 429, description = "Over the create_resource rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn post_resources(
    Read(caller): Read,
    State(state): State<AppState>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    create(&state, &caller, &body).await
}

/// `GET /get_resource?id=ID[&with_data=true]`.
#[utoipa::path(get, path = "/get_resource", tag = "resources",
    params(
        ("id" = i64, Query, description = "The resource's id"),
        ("with_data" = Option<bool>, Query, description = "Add `data`: each report's current answer (default false)")),
    responses(
        (status = 200, description = "The resource", body = ResourceBody),
        (status = 400, description = "`id` missing or not a positive integer, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "The key's role may not read", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 409, description = "with_data: a saved report no longer validates (its topology changed)", body = ErrorBody),
        (status = 429, description = "Over the get_resource rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "PostgreSQL or ClickHouse unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_resource(
    _caller: Read,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ResourceBody>, ApiError> {
    crate::paging::only(&params, &["id", "with_data"])?;
    let raw = params
        .get("id")
        .ok_or_else(|| ApiError::BadRequest("`id` is required".into()))?;
    let id = parse_id(raw)?;
    fetch(&state, id, with_data_param(&params)?).await.map(Json)
}

/// `GET /resources/{id}[?with_data=true]`: as `GET /get_resource`.
#[utoipa::path(get, path = "/resources/{id}", tag = "resources",
    params(
        ("id" = i64, Path, description = "The resource's id"),
        ("with_data" = Option<bool>, Query, description = "Add `data`: each report's current answer (default false)")),
    responses(
        (status = 200, description = "The resource", body = ResourceBody),
        (status = 400, description = "`id` not a positive integer, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "The key's role may not read", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 409, description = "with_data: a saved report no longer validates", body = ErrorBody),
        (status = 429, description = "Over the get_resource rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "PostgreSQL or ClickHouse unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn get_resource_by_id(
    _caller: Read,
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ResourceBody>, ApiError> {
    crate::paging::only(&params, &["with_data"])?;
    let id = parse_id(&raw)?;
    fetch(&state, id, with_data_param(&params)?).await.map(Json)
}

/// `GET /resources[?limit=N&before=ID]`: every saved resource, newest first.
#[utoipa::path(get, path = "/resources", tag = "resources",
    params(
        ("limit" = Option<i64>, Query, description = "Resources per page, 1..=100, default 50"),
        ("before" = Option<i64>, Query, description = "Only ids below this (the previous page's `next`)")),
    responses(
        (status = 200, description = "A page of resources", body = ResourcePage),
        (status = 400, description = "`limit` or `before` invalid, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "The key's role may not read", body = ErrorBody),
        (status = 429, description = "Over the get_resource rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list_resources(
    _caller: Read,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ResourcePage>, ApiError> {
    crate::paging::only(&params, &["limit", "before"])?;
    let limit = crate::paging::limit(&params, DEFAULT_PAGE, MAX_PAGE)?;
    let before = crate::paging::before_id(&params)?;
    let rows = store::page(&state.postgres, before, limit)
        .await
        .map_err(unavailable)?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let resources = rows.into_iter().map(ResourceBody::from).collect();
    Ok(Json(ResourcePage { resources, next }))
}

/// Who may change `id`: admins any resource, others their own.
fn only_owner(caller: &Caller) -> Option<i64> {
    match caller.role {
        Role::Admin => None,
        // A caller without a stored key owns nothing: match no owner.
        _ => Some(owner_of(caller).unwrap_or(0)),
    }
}

fn changed<T>(id: i64, change: Change<T>) -> Result<T, ApiError> {
    match change {
        Change::Done(t) => Ok(t),
        Change::NotFound => Err(not_found(id)),
        Change::NotOwner => Err(ApiError::Forbidden(format!(
            "resource {id} belongs to another key; only its owner or an admin may change it"
        ))),
    }
}

/// `PUT /resources/{id}`: replaces a resource's name, description and report(s).
#[utoipa::path(put, path = "/resources/{id}", tag = "resources",
    params(("id" = i64, Path, description = "The resource's id")),
    request_body = ResourceRequest,
    responses(
        (status = 200, description = "The resource as now stored", body = ResourceBody),
        (status = 400, description = "A field is missing, unknown or invalid; the reason names it", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "Not the owner's key nor an admin's", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 429, description = "Over the create_resource rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn put_resource(
    Read(caller): Read,
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<ResourceBody>, ApiError> {
    let id = parse_id(&raw)?;
    let v = validate::resource(&state, &body)?;
    let change = store::update(
        &state.postgres,
        &actor(&caller),
        id,
        only_owner(&caller),
        &v.input(),
    )
    .await
    .map_err(unavailable)?;
    changed(id, change).map(|r| Json(ResourceBody::from(r)))
}

/// `DELETE /resources/{id}`.
#[utoipa::path(delete, path = "/resources/{id}", tag = "resources",
    params(("id" = i64, Path, description = "The resource's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`id` not a positive integer", body = ErrorBody),
        (status = 401, description = "No key, or an unknown or revoked key", body = ErrorBody),
        (status = 403, description = "Not the owner's key nor an admin's", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 429, description = "Over the create_resource rate limit; see Retry-After", body = ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete_resource(
    Read(caller): Read,
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    let change = store::delete(&state.postgres, &actor(&caller), id, only_owner(&caller))
        .await
        .map_err(unavailable)?;
    changed(id, change).map(|()| StatusCode::NO_CONTENT)
}

/// The resource routes, rate-limited per key: the writing ones share the `create_resource`
/// limiter, the reading ones the `get_resource` limiter.
pub(crate) fn routes(state: &AppState) -> OpenApiRouter<AppState> {
    let writes = OpenApiRouter::new()
        .routes(routes!(create_resource))
        .routes(routes!(post_resources))
        .routes(routes!(put_resource, delete_resource))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_create,
        ));
    let reads = OpenApiRouter::new()
        .routes(routes!(get_resource))
        .routes(routes!(get_resource_by_id))
        .routes(routes!(list_resources))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::limit_get,
        ));
    writes.merge(reads)
}
