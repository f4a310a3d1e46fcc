//! Admin routes: `/admin/keys` (list, create, revoke), `/admin/audit`, `/admin/jobs`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tally_sinks::postgres::{audit, jobs, keys};
use tally_sinks::SinkError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Admin, Role};
use crate::{ApiError, AppState};

/// `/admin/keys`, `/admin/audit`, `/admin/jobs`.
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(get_audit))
        .routes(routes!(get_jobs))
}

fn unavailable(e: SinkError) -> ApiError {
    tracing::warn!(error = %e, "postgres request of an admin route failed");
    ApiError::Unavailable("PostgreSQL is unavailable; retry later".into())
}

/// A stored key (never the key or its hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    /// Id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// `ingest`, `read` or `admin`.
    pub role: String,
    /// The key's first 12 characters, to recognise it.
    pub key_prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use (updated at most once a minute), `null` if never used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time, `null` while valid.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<keys::KeyRow> for KeyInfo {
    fn from(r: keys::KeyRow) -> Self {
        KeyInfo {
            id: r.id,
            name: r.name,
            role: r.role,
            key_prefix: r.key_prefix,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// `GET /admin/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Every key, valid and revoked, oldest first.
    pub keys: Vec<KeyInfo>,
}

/// Lists every key (valid and revoked) without the keys themselves.
#[utoipa::path(get, path = "/admin/keys", tag = "admin",
    responses(
        (status = 200, description = "Every key, oldest first", body = KeyList),
        (status = 400, description = "A query parameter was given (this route takes none)", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown, revoked or malformed key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::openapi::ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn list_keys(
    _admin: Admin,
    State(state): State<AppState>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<KeyList>, ApiError> {
    crate::paging::only(&params, &[])?;
    let rows = keys::list(&state.postgres).await.map_err(unavailable)?;
    Ok(Json(KeyList {
        keys: rows.into_iter().map(KeyInfo::from).collect(),
    }))
}

/// `POST /admin/keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Unique name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`, starting with a letter.
    pub name: String,
    /// `ingest`, `read` or `admin`.
    pub role: Role,
}

/// A new key: `key` is shown this once and cannot be read again.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key (`tly_` + 43 characters): send it as `Authorization: Bearer <key>`.
    pub key: String,
    /// The stored key.
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// Creates a key (audited `key.created`).
#[utoipa::path(post, path = "/admin/keys", tag = "admin",
    request_body(content = CreateKeyRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the key is in the answer, once", body = CreatedKey),
        (status = 400, description = "Not JSON, an invalid name or an unknown role", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown, revoked or malformed key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::openapi::ErrorBody),
        (status = 409, description = "A key (valid or revoked) already has this name", body = crate::openapi::ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn create_key(
    Admin(caller): Admin,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let request: CreateKeyRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be {{\"name\": \"...\", \"role\": \"ingest\" | \"read\" | \"admin\"}}: {e}"
        ))
    })?;
    keys::check_name(&request.name).map_err(ApiError::BadRequest)?;
    let secret =
        super::generate().map_err(|e| ApiError::Internal(format!("generating a key: {e}")))?;
    let new = keys::NewKey {
        name: &request.name,
        role: request.role.as_str(),
        key_hash: &secret.key_hash,
        key_prefix: &secret.key_prefix,
    };
    let row = match keys::create(&state.postgres, new, &caller.actor()).await {
        Ok(row) => row,
        Err(e @ keys::KeyError::NameTaken(_)) => return Err(ApiError::Conflict(e.to_string())),
        Err(keys::KeyError::InvalidName(reason)) => return Err(ApiError::BadRequest(reason)),
        Err(keys::KeyError::Sink(e)) => return Err(unavailable(e)),
    };
    tracing::info!(
        key_id = row.id,
        name = row.name,
        role = row.role,
        "key created"
    );
    let created = CreatedKey {
        key: secret.key,
        info: row.into(),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revokes a key by name, or by id when no key has that name (audited `key.revoked`). It stops
/// working within 5 s. Revoking a revoked key changes nothing and answers it.
#[utoipa::path(delete, path = "/admin/keys/{id_or_name}", tag = "admin",
    params(("id_or_name" = String, Path, description = "The key's name or id")),
    responses(
        (status = 200, description = "The revoked key", body = KeyInfo),
        (status = 401, description = "No key, or an unknown, revoked or malformed key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::openapi::ErrorBody),
        (status = 404, description = "No key has this name or id", body = crate::openapi::ErrorBody),
        (status = 409, description = "The last active admin key (create another first)", body = crate::openapi::ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn revoke_key(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id_or_name): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    match keys::revoke_checked(&state.postgres, &id_or_name, &caller.actor(), true).await {
        Ok(keys::Revoked::Done(row)) => {
            tracing::info!(key_id = row.id, name = row.name, "key revoked");
            Ok(Json(row.into()))
        }
        Ok(keys::Revoked::AlreadyRevoked(row)) => Ok(Json(row.into())),
        Ok(keys::Revoked::NotFound) => Err(ApiError::NotFound(format!(
            "no key named {id_or_name:?} or with that id (GET /admin/keys lists them)"
        ))),
        Ok(keys::Revoked::LastAdmin(row)) => Err(ApiError::Conflict(format!(
            "key `{}` is the last active admin key: create another admin key first \
             (POST /admin/keys), or revoke it with `tally keys revoke` on the command line",
            row.name
        ))),
        Err(e) => Err(unavailable(e)),
    }
}

/// One audited admin action.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryInfo {
    /// Increasing id (the `before` cursor).
    pub id: i64,
    /// When the action committed.
    pub at: DateTime<Utc>,
    /// The acting key's id (`null` for the command line).
    pub key_id: Option<i64>,
    /// The acting key's name, or `cli:<user>`.
    pub actor: String,
    /// `key.created`, `key.revoked`, `resource.created`, `resource.updated`,
    /// `resource.deleted` or `job.started`.
    pub action: String,
    /// What it acted on, e.g. `key:7`, `resource:12`, `rebuild:3`.
    pub target: String,
    /// Action-specific fields.
    pub details: serde_json::Value,
}

/// `GET /admin/audit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<AuditEntryInfo>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    pub next: Option<i64>,
}

/// The audit log of admin actions, newest first, a page at a time.
#[utoipa::path(get, path = "/admin/audit", tag = "admin",
    params(
        ("limit" = Option<i64>, Query, description = "Entries per page, 1..=1000, default 100"),
        ("before" = Option<i64>, Query, description = "Only entries with an id below this (the previous page's `next`)")),
    responses(
        (status = 200, description = "A page of entries, newest first", body = AuditPage),
        (status = 400, description = "A bad `limit` or `before`", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown, revoked or malformed key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::openapi::ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn get_audit(
    _admin: Admin,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<AuditPage>, ApiError> {
    crate::paging::only(&params, &["limit", "before"])?;
    let limit = crate::paging::limit(&params, 100, 1000)?;
    let before = crate::paging::before_id(&params)?;
    let rows = audit::page(&state.postgres, before, limit)
        .await
        .map_err(unavailable)?;
    let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit;
    let next = if full {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let entries = rows
        .into_iter()
        .map(|r| AuditEntryInfo {
            id: r.id,
            at: r.at,
            key_id: r.key_id,
            actor: r.actor,
            action: r.action,
            target: r.target,
            details: r.details,
        })
        .collect();
    Ok(Json(AuditPage { entries, next }))
}

/// One run of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobRunInfo {
    /// Run id.
    pub id: i64,
    /// The queue's job id.
    pub job_id: i64,
    /// `correct`, `rebuild` or `retention`.
    pub kind: String,
    /// `running`, `succeeded`, `failed` or `interrupted`.
    pub state: String,
    /// Attempt number (1 for the first).
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The failure, if any.
    pub error: Option<String>,
    /// What it did.
    pub summary: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End, `null` while it runs.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job in the queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedJobInfo {
    /// The queue's job id.
    pub id: i64,
    /// Job kind.
    pub kind: String,
    /// `running`, `superseded`, `failed`, `retrying`, `scheduled` or `queued`.
    pub state: String,
    /// Attempts started.
    pub attempts: i16,
    /// Attempts allowed.
    pub max_attempts: i16,
    /// When it may run next.
    pub run_at: DateTime<Utc>,
    /// The last attempt's error.
    pub last_error: Option<String>,
}

/// `GET /admin/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobsResponse {
    /// The pipeline whose jobs these are.
    pub pipeline: String,
    /// Jobs in the queue, oldest first.
    pub queued: Vec<QueuedJobInfo>,
    /// Recent runs, newest first.
    pub runs: Vec<JobRunInfo>,
}

/// The job queue and recent job runs of this API's pipeline.
#[utoipa::path(get, path = "/admin/jobs", tag = "admin",
    params(("limit" = Option<i64>, Query, description = "Recent runs listed, 1..=1000, default 50")),
    responses(
        (status = 200, description = "Queued jobs and recent runs", body = JobsResponse),
        (status = 400, description = "A bad `limit`", body = crate::openapi::ErrorBody),
        (status = 401, description = "No key, or an unknown, revoked or malformed key", body = crate::openapi::ErrorBody),
        (status = 403, description = "The key is not an admin key", body = crate::openapi::ErrorBody),
        (status = 503, description = "PostgreSQL unavailable; retry", body = crate::openapi::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
async fn get_jobs(
    _admin: Admin,
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<JobsResponse>, ApiError> {
    crate::paging::only(&params, &["limit"])?;
    let limit = crate::paging::limit(&params, 50, 1000)?;
    let pipeline = &state.pipeline_name;
    let runs = jobs::recent_runs(&state.postgres, pipeline, limit)
        .await
        .map_err(unavailable)?;
    let queued = jobs::queued(&state.postgres, pipeline)
        .await
        .map_err(unavailable)?;
    let now = Utc::now();
    Ok(Json(JobsResponse {
        pipeline: pipeline.clone(),
        queued: queued
            .into_iter()
            .map(|j| QueuedJobInfo {
                state: j.state(now).to_owned(),
                id: j.id,
                kind: j.kind,
                attempts: j.attempts,
                max_attempts: j.max_attempts,
                run_at: j.run_at,
                last_error: j.last_error,
            })
            .collect(),
        runs: runs
            .into_iter()
            .map(|r| JobRunInfo {
                id: r.id,
                job_id: r.job_id,
                kind: r.kind,
                state: r.state,
                attempt: r.attempt,
                max_attempts: r.max_attempts,
                error: r.error,
                summary: r.summary,
                started_at: r.started_at,
                finished_at: r.finished_at,
            })
            .collect(),
    }))
}
