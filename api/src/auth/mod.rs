//! API keys and roles: who is calling and what they may do.
//!
//! A key is `tly_` + 43 base64url characters (32 random bytes), sent as
//! `Authorization: Bearer <key>` or `X-API-Key: <key>`. PostgreSQL's `api_keys` stores its
//! SHA-256, never the key. [`authenticate`] (a middleware on every route) resolves the key
//! through the [`KeyStore`]'s short cache into an [`Authn`] request extension and never
//! answers itself; the extractors [`Ingest`], [`Read`] and [`Admin`] that handlers take turn
//! it into 401 (no key, unknown, revoked or malformed key), 403 (the role may not) or 503 (the
//! key cannot be checked).
//!
//! - `keys.rs`: key format, hashing, reading the headers.
//! - `store.rs`: [`KeyStore`], the cache in front of a [`KeySource`] (PostgreSQL).
//! - `routes.rs`: `/admin/keys`, `/admin/audit`, `/admin/jobs`.

mod keys;
mod routes;
mod store;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState, AuthMode};

pub use keys::{generate, hash, NewSecret, KEY_PREFIX};
pub(crate) use routes::routes;
pub use routes::{
    AuditEntryInfo, AuditPage, CreateKeyRequest, CreatedKey, JobRunInfo, JobsResponse, KeyInfo,
    KeyList, QueuedJobInfo,
};
pub use store::{CachePolicy, KeyRecord, KeySource, KeyStore, Lookup, SourceError, STALE_KEY_USES};

/// What a key may do. `admin` may do everything.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `POST /events`.
    Ingest,
    /// Reports, dashboard data, saved resources.
    Read,
    /// Everything, incl. `/users`, keys, jobs and the admin logs.
    Admin,
}

impl Role {
    /// Every role, in order of power.
    pub const ALL: [Role; 3] = [Role::Ingest, Role::Read, Role::Admin];

    /// `ingest`, `read` or `admin` (as stored in `api_keys.role`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    /// Parses `ingest`, `read` or `admin`; the error lists them.
    pub fn parse(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| format!("unknown role {text:?}: use ingest, read or admin"))
    }

    /// Whether a key of this role may call a route that needs `needed`: `admin` may call
    /// everything, the others only their own routes.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key a request was made with.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `api_keys.id`.
    pub key_id: i64,
    /// The key's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// The audit log's actor for this key.
    pub fn actor(&self) -> tally_sinks::postgres::audit::Actor {
        tally_sinks::postgres::audit::Actor {
            key_id: Some(self.key_id),
            name: self.name.clone(),
        }
    }
}

/// What the authentication middleware found, in the request's extensions.
#[derive(Clone, Debug)]
pub enum Authn {
    /// No key was sent.
    Anonymous,
    /// A valid key.
    Key(Caller),
    /// A key was sent and refused (401 on every route that needs a key, even under
    /// `ingest_open`).
    Refused(Refusal),
    /// A key was sent but cannot be checked: PostgreSQL is unreachable and the key is not
    /// cached (503 on routes that need a key).
    Unavailable,
}

/// Why a sent key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a Tally key (`tly_` + 43 base64url characters), or an `Authorization` header that is
    /// not `Bearer <key>`.
    Malformed,
    /// `Authorization` and `X-API-Key` carry different keys.
    Conflicting,
    /// Well-formed, but no stored key has it.
    Unknown,
    /// The key was revoked.
    Revoked,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => {
                "malformed API key: a key is `tly_` followed by 43 characters, sent as \
                 `Authorization: Bearer <key>` or `X-API-Key: <key>`"
            }
            Refusal::Conflicting => {
                "the Authorization and X-API-Key headers carry different keys: send one key"
            }
            Refusal::Unknown => {
                "unknown API key: check it, or ask an admin for a key (`tally keys create`)"
            }
            Refusal::Revoked => "this API key was revoked: use another key",
        }
    }
}

/// Middleware: resolves the key of the request into an [`Authn`] extension (at most one
/// lookup, usually answered by the cache). It never answers the request itself.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let authn = match keys::from_headers(request.headers()) {
        keys::Sent::Nothing => Authn::Anonymous,
        keys::Sent::Refused(r) => Authn::Refused(r),
        keys::Sent::Key(digest) => match state.keys.lookup(digest).await {
            Lookup::Valid(caller) => Authn::Key(caller),
            Lookup::Revoked => Authn::Refused(Refusal::Revoked),
            Lookup::Unknown => Authn::Refused(Refusal::Unknown),
            Lookup::Unavailable => Authn::Unavailable,
        },
    };
    request.extensions_mut().insert(authn);
    next.run(request).await
}

/// The caller of a route that needs `needed`, or the error to answer with.
fn require(parts: &Parts, needed: Role) -> Result<Caller, ApiError> {
    match parts.extensions.get::<Authn>() {
        None | Some(Authn::Anonymous) => Err(ApiError::Unauthorized(format!(
            "this route needs an API key with the `{needed}` role: send \
             `Authorization: Bearer <key>` or `X-API-Key: <key>` (an admin creates keys with \
             `tally keys create`)"
        ))),
        Some(Authn::Refused(r)) => Err(ApiError::Unauthorized(r.reason().to_owned())),
        Some(Authn::Unavailable) => Err(ApiError::Unavailable(
            "cannot check the API key now (the key store is unreachable); retry later".into(),
        )),
        Some(Authn::Key(caller)) if caller.role.allows(needed) => Ok(caller.clone()),
        Some(Authn::Key(caller)) => {
            let or_admin = if needed == Role::Admin {
                ""
            } else {
                " (or `admin`)"
            };
            Err(ApiError::Forbidden(format!(
                "the key `{}` has the `{}` role; this route needs `{needed}`{or_admin}",
                caller.name, caller.role
            )))
        }
    }
}

/// A caller allowed to `POST /events` (`None`: no key, under `api.auth = "ingest_open"`).
pub struct Ingest(pub Option<Caller>);
/// A caller with the `read` role (or `admin`).
pub struct Read(pub Caller);
/// A caller with the `admin` role.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Ingest {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let anonymous = matches!(
            parts.extensions.get::<Authn>(),
            None | Some(Authn::Anonymous)
        );
        if anonymous && state.config.auth == AuthMode::IngestOpen {
            return Ok(Ingest(None));
        }
        require(parts, Role::Ingest).map(|c| Ingest(Some(c)))
    }
}

impl FromRequestParts<AppState> for Read {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        require(parts, Role::Read).map(Read)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        require(parts, Role::Admin).map(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles() {
        assert!(Role::Admin.allows(Role::Ingest) && Role::Admin.allows(Role::Read));
        assert!(Role::Read.allows(Role::Read) && !Role::Read.allows(Role::Ingest));
        assert!(!Role::Ingest.allows(Role::Read) && !Role::Read.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        assert!(Role::parse("Admin").is_err());
    }
}
