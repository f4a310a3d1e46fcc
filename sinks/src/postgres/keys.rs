//! API keys (`api_keys`): the SHA-256 of each key (never the key), its name, role and
//! lifecycle. Creating and revoking a key write their audit row (`key.created`,
//! `key.revoked`) in the same transaction.
//!
//! The key itself, its format and its hash are the API's business (`tally_api::auth`); this
//! module stores and finds rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::audit::{self, Actor};
use crate::SinkError;

/// Longest key name, characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A key to store: its name, role (`ingest`, `read` or `admin`), the SHA-256 of the key and
/// its first characters (for display).
#[derive(Clone, Copy, Debug)]
pub struct NewKey<'a> {
    /// Unique name, see [`check_name`].
    pub name: &'a str,
    /// `ingest`, `read` or `admin`.
    pub role: &'a str,
    /// SHA-256 of the key, 32 bytes.
    pub key_hash: &'a [u8],
    /// The key's first characters, e.g. `tly_AbCd`.
    pub key_prefix: &'a str,
}

/// A stored key as listed: never its hash.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct KeyRow {
    /// `api_keys.id`.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// `ingest`, `read` or `admin`.
    pub role: String,
    /// The key's first characters.
    pub key_prefix: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use (updated at most once a minute), `None` if never used.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time, `None` while the key is valid.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What authentication needs of a key, found by its hash.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyAuth {
    /// `api_keys.id`.
    pub id: i64,
    /// Name.
    pub name: String,
    /// `ingest`, `read` or `admin`.
    pub role: String,
    /// The stored SHA-256 (for the constant-time comparison).
    pub key_hash: Vec<u8>,
    /// Whether the key was revoked.
    pub revoked: bool,
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Another key (valid or revoked) has this name: pick another one.
    #[error(
        "a key named `{0}` already exists (revoked keys keep their name): choose another name"
    )]
    NameTaken(String),
    /// The name breaks [`check_name`]'s rule.
    #[error("{0}")]
    InvalidName(String),
    /// PostgreSQL failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// A name is 1 to 64 characters of `A-Z a-z 0-9 . _ -` starting with a letter (so it never
/// reads as an id). The error says so.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.chars().count() <= MAX_NAME_CHARS
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid key name {name:?}: use 1 to {MAX_NAME_CHARS} characters of A-Z a-z 0-9 . _ -, starting with a letter"
        ))
    }
}

/// The columns of [`KeyRow`], for `concat!` (sqlx takes only static SQL).
macro_rules! columns {
    () => {
        "id, name, role, key_prefix, created_at, last_used_at, revoked_at"
    };
}

/// Stores `key` and writes `key.created` (target `key:<id>`, details name and role) in one
/// transaction. Fails with [`KeyError::NameTaken`] when the name exists.
pub async fn create(pool: &PgPool, key: NewKey<'_>, actor: &Actor) -> Result<KeyRow, KeyError> {
    check_name(key.name).map_err(KeyError::InvalidName)?;
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| SinkError::postgres("creating a key", e))?;
    let row: KeyRow = sqlx::query_as(concat!(
        "INSERT INTO api_keys (name, role, key_hash, key_prefix) VALUES ($1, $2, $3, $4)
         RETURNING ",
        columns!(),
        ""
    ))
    .bind(key.name)
    .bind(key.role)
    .bind(key.key_hash)
    .bind(key.key_prefix)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d)
            if d.is_unique_violation() && d.constraint() == Some("api_keys_name_key") =>
        {
            KeyError::NameTaken(key.name.to_owned())
        }
        _ => KeyError::Sink(SinkError::postgres("creating a key", e)),
    })?;
    let details = serde_json::json!({ "name": row.name, "role": row.role });
    audit::record(&mut tx, actor, "key.created", &target(row.id), details).await?;
    tx.commit()
        .await
        .map_err(|e| SinkError::postgres("committing a new key", e))?;
    Ok(row)
}

fn target(id: i64) -> String {
    format!("key:{id}")
}

/// Every key, valid and revoked, oldest first.
pub async fn list(pool: &PgPool) -> Result<Vec<KeyRow>, SinkError> {
    sqlx::query_as(concat!("SELECT ", columns!(), " FROM api_keys ORDER BY id"))
        .fetch_all(pool)
        .await
        .map_err(|e| SinkError::postgres("listing keys", e))
}

/// Revokes the key named `name_or_id` (or, when no key has that name, the key with that id)
/// and writes `key.revoked` in the same transaction. `None`: no such key (nothing written).
/// A key revoked before is returned as it is, without a second audit row.
pub async fn revoke(
    pool: &PgPool,
    name_or_id: &str,
    actor: &Actor,
) -> Result<Option<KeyRow>, SinkError> {
    match revoke_checked(pool, name_or_id, actor, false).await? {
        Revoked::Done(row) | Revoked::AlreadyRevoked(row) | Revoked::LastAdmin(row) => {
            Ok(Some(row))
        }
        Revoked::NotFound => Ok(None),
    }
}

/// What [`revoke_checked`] did.
#[derive(Debug)]
pub enum Revoked {
    /// Revoked now (audited `key.revoked`).
    Done(KeyRow),
    /// It was revoked before: nothing changed, no audit row written.
    AlreadyRevoked(KeyRow),
    /// No key has this name or id.
    NotFound,
    /// Refused: it is the last active admin key (nothing changed).
    LastAdmin(KeyRow),
}

/// As [`revoke`]; with `keep_an_admin`, refuses to revoke the last active admin key (the admin
/// rows are locked, so two concurrent revocations cannot both pass the check).
pub async fn revoke_checked(
    pool: &PgPool,
    name_or_id: &str,
    actor: &Actor,
    keep_an_admin: bool,
) -> Result<Revoked, SinkError> {
    let ctx = |e| SinkError::postgres("revoking a key", e);
    let mut tx = pool.begin().await.map_err(ctx)?;
    if keep_an_admin {
        sqlx::query(
            "SELECT id FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(ctx)?;
    }
    let Some(row) = find_for_update(&mut tx, name_or_id).await.map_err(ctx)? else {
        return Ok(Revoked::NotFound);
    };
    if row.revoked_at.is_some() {
        return Ok(Revoked::AlreadyRevoked(row));
    }
    if keep_an_admin && row.role == "admin" {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL AND id <> $1",
        )
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(ctx)?;
        if others == 0 {
            return Ok(Revoked::LastAdmin(row));
        }
    }
    let row: KeyRow = sqlx::query_as(concat!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 RETURNING ",
        columns!(),
        ""
    ))
    .bind(row.id)
    .fetch_one(&mut *tx)
    .await
    .map_err(ctx)?;
    let details = serde_json::json!({ "name": row.name, "role": row.role });
    audit::record(&mut tx, actor, "key.revoked", &target(row.id), details).await?;
    tx.commit().await.map_err(ctx)?;
    Ok(Revoked::Done(row))
}

async fn find_for_update(
    tx: &mut PgConnection,
    name_or_id: &str,
) -> Result<Option<KeyRow>, sqlx::Error> {
    let by_name: Option<KeyRow> = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM api_keys WHERE name = $1 FOR UPDATE"
    ))
    .bind(name_or_id)
    .fetch_optional(&mut *tx)
    .await?;
    match (by_name, name_or_id.parse::<i64>()) {
        (Some(row), _) => Ok(Some(row)),
        (None, Ok(id)) => {
            sqlx::query_as(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE id = $1 FOR UPDATE"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
        }
        (None, Err(_)) => Ok(None),
    }
}

/// The key whose SHA-256 is `key_hash`, revoked or not; `None` if no key has it. Also sets its
/// `last_used_at` when the key is valid and it was last set over a minute ago (one round trip).
pub async fn find_by_hash(pool: &PgPool, key_hash: &[u8]) -> Result<Option<KeyAuth>, SinkError> {
    sqlx::query_as(
        "WITH k AS (SELECT id, name, role, key_hash, revoked_at, last_used_at
                    FROM api_keys WHERE key_hash = $1),
              touched AS (UPDATE api_keys SET last_used_at = now() FROM k
                          WHERE api_keys.id = k.id AND k.revoked_at IS NULL
                            AND (k.last_used_at IS NULL
                                 OR k.last_used_at < now() - interval '1 minute')
                          RETURNING api_keys.id)
         SELECT id, name, role, key_hash, revoked_at IS NOT NULL AS revoked FROM k",
    )
    .bind(key_hash)
    .fetch_optional(pool)
    .await
    .map_err(|e| SinkError::postgres("looking up an API key", e))
}

/// Whether a valid (not revoked) `admin` key exists.
pub async fn has_active_admin(pool: &PgPool) -> Result<bool, SinkError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL)",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| SinkError::postgres("looking for an admin key", e))
}

/// Whether any key (valid or revoked) is named `name`.
pub async fn name_exists(pool: &PgPool, name: &str) -> Result<bool, SinkError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE name = $1)")
        .bind(name)
        .fetch_one(pool)
        .await
        .map_err(|e| SinkError::postgres("looking up a key name", e))
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names() {
        for good in ["admin", "admin-2", "ci.ingest_1", "A"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        let long = "a".repeat(65);
        for bad in ["", "7", "1abc", "-x", "a b", "ä", "a/b", long.as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
