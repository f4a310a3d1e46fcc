//! The audit log: admin actions (keys created and revoked, resources created, changed and
//! deleted, jobs started), each written in the transaction of the action it records, so an
//! action and its audit row commit or roll back together.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::SinkError;

/// Who did it: the API key (id and name), or the command line.
#[derive(Clone, Debug)]
pub struct Actor {
    /// `api_keys.id`; `None` for the command line (`tally keys`, `tally rebuild`).
    pub key_id: Option<i64>,
    /// The key's name, or `cli:<user>` for the command line.
    pub name: String,
}

impl Actor {
    /// The command line, as the OS user running it (`cli:<USER>`, `cli` when unknown).
    pub fn cli() -> Actor {
        let user = std::env::var("USER").unwrap_or_default();
        Actor {
            key_id: None,
            name: if user.is_empty() {
                "cli".to_owned()
            } else {
                format!("cli:{user}")
            },
        }
    }
}

/// One audited action, e.g. `("key.created", "key:7", {"name": "ci", "role": "ingest"})`.
///
/// Actions in use: `key.created`, `key.revoked`, `resource.created`, `resource.updated`,
/// `resource.deleted`, `job.started`.
pub async fn record(
    tx: &mut PgConnection,
    actor: &Actor,
    action: &str,
    target: &str,
    details: serde_json::Value,
) -> Result<i64, SinkError> {
    sqlx::query_scalar(
        "INSERT INTO audit_log (key_id, actor, action, target, details)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(actor.key_id)
    .bind(&actor.name)
    .bind(action)
    .bind(target)
    .bind(details)
    .fetch_one(tx)
    .await
    .map_err(|e| SinkError::postgres("writing the audit log", e))
}

/// One row of the audit log.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    /// Increasing id (the paging cursor).
    pub id: i64,
    /// When the action committed.
    pub at: DateTime<Utc>,
    /// The acting key's id (`null` for the command line).
    pub key_id: Option<i64>,
    /// The acting key's name or `cli:<user>`.
    pub actor: String,
    /// e.g. `key.revoked`.
    pub action: String,
    /// What it acted on, e.g. `key:7`, `resource:12`, `rebuild:3`.
    pub target: String,
    /// Action-specific fields.
    pub details: serde_json::Value,
}

/// Newest first: at most `limit` entries with an id below `before` (all when `None`).
pub async fn page(
    pool: &PgPool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, SinkError> {
    sqlx::query_as(
        "SELECT id, at, key_id, actor, action, target, details FROM audit_log
         WHERE $1::BIGINT IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| SinkError::postgres("reading the audit log", e))
}
