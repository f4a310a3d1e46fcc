//! Saved resources (`resources`): reports and dashboards, each created, changed or deleted in
//! one transaction with its audit row (`resource.created`, `resource.updated`,
//! `resource.deleted`).

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::audit::{self, Actor};
use crate::SinkError;

fn ctx(what: &'static str) -> impl FnOnce(sqlx::Error) -> SinkError {
    move |e| SinkError::postgres(what, e)
}

const COLUMNS: &str =
    "id, kind, name, description, definition, owner_key_id, created_at, updated_at";

/// One stored resource.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Resource {
    /// Increasing id.
    pub id: i64,
    /// `report` or `dashboard`.
    pub kind: String,
    /// 1..=200 characters (checked by the API).
    pub name: String,
    /// At most 2000 characters (checked by the API).
    pub description: String,
    /// `{"report": {..}}` or `{"reports": [..]}`, as validated by the API.
    pub definition: serde_json::Value,
    /// The creating key (`None` for a caller without a stored key).
    pub owner_key_id: Option<i64>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What to store: the fields a caller sets.
#[derive(Clone, Copy, Debug)]
pub struct ResourceInput<'a> {
    /// `report` or `dashboard`.
    pub kind: &'a str,
    /// Name.
    pub name: &'a str,
    /// Description.
    pub description: &'a str,
    /// The definition.
    pub definition: &'a serde_json::Value,
}

/// The outcome of a change that may be refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Change<T> {
    /// Done.
    Done(T),
    /// No resource with that id.
    NotFound,
    /// It exists but belongs to another key (and the caller is not an admin).
    NotOwner,
}

fn details(input: &ResourceInput<'_>) -> serde_json::Value {
    serde_json::json!({ "kind": input.kind, "name": input.name })
}

/// Stores a new resource owned by `owner_key_id` and audits it; returns it as stored.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    owner_key_id: Option<i64>,
    input: &ResourceInput<'_>,
) -> Result<Resource, SinkError> {
    let mut tx = pool.begin().await.map_err(ctx("starting a transaction"))?;
    let stored: Resource = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO resources (kind, name, description, definition, owner_key_id)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    )))
    .bind(input.kind)
    .bind(input.name)
    .bind(input.description)
    .bind(input.definition)
    .bind(owner_key_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(ctx("storing a resource"))?;
    let target = format!("resource:{}", stored.id);
    audit::record(&mut tx, actor, "resource.created", &target, details(input)).await?;
    tx.commit().await.map_err(ctx("committing a resource"))?;
    Ok(stored)
}

/// The resource `id`, if it exists.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<Resource>, SinkError> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM resources WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(ctx("reading a resource"))
}

/// Newest first: at most `limit` resources with an id below `before` (all when `None`).
pub async fn page(
    pool: &PgPool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Resource>, SinkError> {
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM resources WHERE $1::BIGINT IS NULL OR id < $1
         ORDER BY id DESC LIMIT $2"
    )))
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(ctx("listing resources"))
}

/// Locks the row `id` and checks its owner: `only_owner = Some(k)` requires key `k` to own it
/// (`None`: an admin, any owner).
async fn lock_owned(
    tx: &mut PgConnection,
    id: i64,
    only_owner: Option<i64>,
) -> Result<Change<()>, SinkError> {
    let owner: Option<Option<i64>> =
        sqlx::query_scalar("SELECT owner_key_id FROM resources WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ctx("reading a resource"))?;
    Ok(match (owner, only_owner) {
        (None, _) => Change::NotFound,
        (Some(owner), Some(caller)) if owner != Some(caller) => Change::NotOwner,
        _ => Change::Done(()),
    })
}

/// Replaces the resource's kind, name, description and definition (owner and creation time
/// stay) and audits it. See [`lock_owned`] for `only_owner`.
pub async fn update(
    pool: &PgPool,
    actor: &Actor,
    id: i64,
    only_owner: Option<i64>,
    input: &ResourceInput<'_>,
) -> Result<Change<Resource>, SinkError> {
    let mut tx = pool.begin().await.map_err(ctx("starting a transaction"))?;
    match lock_owned(&mut tx, id, only_owner).await? {
        Change::Done(()) => {}
        Change::NotFound => return Ok(Change::NotFound),
        Change::NotOwner => return Ok(Change::NotOwner),
    }
    let stored: Resource = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE resources SET kind = $2, name = $3, description = $4, definition = $5,
                updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(input.kind)
    .bind(input.name)
    .bind(input.description)
    .bind(input.definition)
    .fetch_one(&mut *tx)
    .await
    .map_err(ctx("updating a resource"))?;
    let target = format!("resource:{id}");
    audit::record(&mut tx, actor, "resource.updated", &target, details(input)).await?;
    tx.commit().await.map_err(ctx("committing a resource"))?;
    Ok(Change::Done(stored))
}

/// Deletes the resource and audits it. See [`lock_owned`] for `only_owner`.
pub async fn delete(
    pool: &PgPool,
    actor: &Actor,
    id: i64,
    only_owner: Option<i64>,
) -> Result<Change<()>, SinkError> {
    let mut tx = pool.begin().await.map_err(ctx("starting a transaction"))?;
    match lock_owned(&mut tx, id, only_owner).await? {
        Change::Done(()) => {}
        other => return Ok(other),
    }
    let name: String = sqlx::query_scalar("DELETE FROM resources WHERE id = $1 RETURNING name")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(ctx("deleting a resource"))?;
    let target = format!("resource:{id}");
    let details = serde_json::json!({ "name": name });
    audit::record(&mut tx, actor, "resource.deleted", &target, details).await?;
    tx.commit().await.map_err(ctx("committing a resource"))?;
    Ok(Change::Done(()))
}
