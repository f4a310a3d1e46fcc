//! The API's one error type: every variant maps to a status and a JSON body that says what to
//! do, and never leaks internals (those go to the log).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the text says how.
    #[error("{0}")]
    BadRequest(String),
    /// The body (or the batch) is too large.
    #[error("{0}")]
    TooLarge(String),
    /// A dependency (Kafka, ClickHouse) is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected server error; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(detail) => {
                tracing::error!(detail, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
