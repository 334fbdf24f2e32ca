//! The one error type of the request path. Each variant states the status
//! Event Grid needs to see: 400/401/404/413/415 are final (Event Grid does not
//! retry 400, 401, 403 or 413, and dead-letters them), 500 is retried.
//! Every body is `{"error": {"code", "message", "event_index"?, "field"?}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::DecodeError;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Unauthorized(String),
    /// The sender could not be checked (e.g. Entra signing keys unreachable):
    /// not the sender's fault, so Event Grid should retry.
    #[error("cannot check credentials right now: {0}")]
    AuthUnavailable(String),
    #[error("no handler named {0:?} in this gridfn")]
    UnknownHandler(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error(
        "content type {0:?} is not supported; send application/json (Event Grid schema), \
         application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode CloudEvent (ce-* headers)"
    )]
    UnsupportedMediaType(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RequestError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::UnknownHandler(_) => StatusCode::NOT_FOUND,
            RequestError::BadRequest(_) | RequestError::Decode(_) => StatusCode::BAD_REQUEST,
            RequestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RequestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            RequestError::Unauthorized(_) => "unauthorized",
            RequestError::AuthUnavailable(_) => "auth_unavailable",
            RequestError::UnknownHandler(_) => "unknown_handler",
            RequestError::BadRequest(_) => "bad_request",
            RequestError::Decode(_) => "invalid_event",
            RequestError::TooLarge { .. } => "too_large",
            RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
            RequestError::Internal(_) => "internal",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let (message, event_index, field) = match &self {
            RequestError::Decode(e) => (e.message.clone(), e.event_index, e.field.as_deref()),
            RequestError::Internal(detail) => {
                tracing::error!("{detail}");
                ("internal error; see the gridfn log".to_owned(), None, None)
            }
            other => (other.to_string(), None, None),
        };
        let body = ErrorBody { error: ErrorDetail { code: self.code(), message, event_index, field } };
        (self.status(), Json(body)).into_response()
    }
}
