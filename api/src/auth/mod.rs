//! API keys and roles: who is calling and what they may do.
//!
//! SKELETON (issue 8): the interface every handler uses; the key store, cache, middleware and
//! admin routes are filled in by the auth work.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;

use crate::{ApiError, AppState};

/// What a key may do. `admin` may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `POST /events`.
    Ingest,
    /// Reports, dashboard data, saved resources.
    Read,
    /// Everything, incl. `/users`, keys, jobs and the admin logs.
    Admin,
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

/// What the authentication middleware found, in the request's extensions.
#[derive(Clone, Debug)]
pub enum Authn {
    /// No key was sent.
    Anonymous,
    /// A valid key.
    Key(Caller),
}

/// Where keys are looked up.
#[derive(Clone)]
pub struct KeyStore {
    _pool: Option<sqlx::PgPool>,
}

impl KeyStore {
    /// Keys in PostgreSQL's `api_keys`.
    pub fn postgres(pool: sqlx::PgPool) -> KeyStore {
        KeyStore { _pool: Some(pool) }
    }
}

/// Middleware: resolves the key of the request into an [`Authn`] extension.
pub(crate) async fn authenticate(
    State(_state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(Authn::Anonymous);
    next.run(request).await
}

/// A caller allowed to `POST /events` (`None`: no key, under `api.auth = "ingest_open"`).
pub struct Ingest(pub Option<Caller>);
/// A caller with the `read` role (or `admin`).
pub struct Read(pub Caller);
/// A caller with the `admin` role.
pub struct Admin(pub Caller);

fn skeleton_caller() -> Caller {
    Caller {
        key_id: 0,
        name: "skeleton".into(),
        role: Role::Admin,
    }
}

impl FromRequestParts<AppState> for Ingest {
    type Rejection = ApiError;
    async fn from_request_parts(_: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(Ingest(Some(skeleton_caller())))
    }
}

impl FromRequestParts<AppState> for Read {
    type Rejection = ApiError;
    async fn from_request_parts(_: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(Read(skeleton_caller()))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(_: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(Admin(skeleton_caller()))
    }
}

/// `/admin/keys`, `/admin/audit`, `/admin/jobs`.
pub(crate) fn routes(_state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
