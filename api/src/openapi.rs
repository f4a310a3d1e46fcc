//! The OpenAPI 3.1 description, generated from the handlers' `#[utoipa::path]` annotations
//! (`utoipa` + `utoipa-axum`), served at `GET /openapi.json`; `GET /docs` serves Swagger UI
//! from the binary (`utoipa-swagger-ui`, feature `vendored`: no network at build or run time).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Spec;
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

/// The security scheme names handlers list in `security(...)`: a key as
/// `Authorization: Bearer <key>` or as `X-API-Key: <key>`.
pub const BEARER: &str = "bearer";
/// See [`BEARER`].
pub const API_KEY_HEADER: &str = "api_key";

/// Every error answer: `{"error": "<reason>"}`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and, where it helps, what to do.
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "Streaming product analytics: event ingest, windowed reports, users, \
                       saved resources, dashboard data and the platform's admin logs. \
                       Send a key as `Authorization: Bearer <key>` or `X-API-Key: <key>`; \
                       errors are `{\"error\": reason}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "ingest", description = "Writing events"),
        (name = "reports", description = "Windowed rollups and exact totals"),
        (name = "users", description = "Tracked users (admin)"),
        (name = "resources", description = "Saved reports and dashboards (rate-limited)"),
        (name = "dashboard", description = "What the dashboard draws"),
        (name = "admin", description = "Keys, jobs, request and audit logs (admin)"),
        (name = "health", description = "Liveness, readiness, metrics"),
    )
)]
pub(crate) struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut Spec) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A Tally API key (`tally keys create`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY_HEADER,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// `GET /openapi.json` and `GET /docs` (Swagger UI reading it).
pub(crate) fn routes(spec: Spec) -> axum::Router<crate::AppState> {
    SwaggerUi::new("/docs").url("/openapi.json", spec).into()
}
