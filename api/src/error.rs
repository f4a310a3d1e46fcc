//! The API's one error type: every variant maps to a status and a JSON body that says what to
//! do, and never leaks internals (those go to the log).

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; the text says how.
    #[error("{0}")]
    BadRequest(String),
    /// No key, or an unknown, malformed or revoked one (answered with
    /// `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// The key is valid but its role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such route or object.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what is stored (e.g. a key name already taken).
    #[error("{0}")]
    Conflict(String),
    /// The body (or the batch) is too large.
    #[error("{0}")]
    TooLarge(String),
    /// The body's `Content-Type` or `Content-Encoding` is not one Tally reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A dependency (Kafka, ClickHouse) is unreachable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected server error; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail, "internal error");
        }
        let mut response = json_error(self.status(), &self.to_string());
        if let ApiError::Unauthorized(_) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// The one shape of every error answer: `{"error": reason}` with `status`.
pub(crate) fn json_error(status: StatusCode, reason: &str) -> Response {
    (status, Json(serde_json::json!({ "error": reason }))).into_response()
}

/// Rewrites an error answer that is not JSON (axum's own extractor rejections, 405, anything a
/// layer produced) into `{"error": ...}` with the same status and headers. The text of a 5xx is
/// logged, not returned.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let canonical = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let reason = if status.is_server_error() {
        tracing::warn!(%status, text, "server error answered generically");
        canonical
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        "request body too large (at most api.max_body_bytes)".to_owned()
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        // axum adds the `Allow` header outside this layer.
        "method not allowed for this route (see the Allow header)".to_owned()
    } else if text.is_empty() {
        canonical
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let mut rewritten = json_error(status, &reason);
    for (name, value) in &parts.headers {
        rewritten.headers_mut().append(name, value.clone());
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    /// axum's own rejections (here the `Json` extractor's, which no Tally route uses yet) come
    /// out as `{"error": ...}` with their status.
    #[tokio::test]
    async fn extractor_rejections_become_json() {
        let app = Router::new()
            .route(
                "/j",
                post(|Json(v): Json<serde_json::Value>| async move { Json(v) }),
            )
            .layer(axum::middleware::from_fn(json_errors));
        let cases = [
            (None, "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Some("application/json"), "{", StatusCode::BAD_REQUEST),
        ];
        for (content_type, body, want) in cases {
            let mut request = axum::http::Request::post("/j");
            if let Some(c) = content_type {
                request = request.header("content-type", c);
            }
            let response = app
                .clone()
                .oneshot(request.body(Body::from(body)).expect("request"))
                .await
                .expect("infallible");
            assert_eq!(response.status(), want);
            let bytes = to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert!(
                json["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{json}"
            );
        }
    }
}
