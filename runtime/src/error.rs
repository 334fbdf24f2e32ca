//! The one error type of gridfn's HTTP surface (deliveries and the admin
//! API). Each variant states the status the caller needs to see: for Event
//! Grid, 400/401/404/413/415 are final (it does not retry 400, 401, 403 or
//! 413, and dead-letters them) and 503 is retried. Every body is
//! `{"error": {"code", "message", "event_index"?, "field"?}}`; internal
//! details are logged, not sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::event::DecodeError;
use crate::registry::DeployError;

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
    /// Headers arrived, the body did not (in time); Event Grid retries 408.
    #[error("the request body did not arrive within {limit:?}")]
    SlowBody { limit: std::time::Duration },
    #[error(
        "content type {0:?} is not supported; send application/json (Event Grid schema), \
         application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode CloudEvent (ce-* headers)"
    )]
    UnsupportedMediaType(String),
    /// The admin API is off: no `server.admin_keys`.
    #[error("the admin API is off: set server.admin_keys to turn it on")]
    AdminDisabled,
    /// A new handler version does not compile or does not fit the contract.
    #[error("{0}")]
    Refused(String),
    #[error("{0} has no previous version to roll back to")]
    NoPrevious(String),
    /// Something on gridfn's side failed (e.g. writing to its state folder).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DeployError> for RequestError {
    fn from(error: DeployError) -> Self {
        match error {
            DeployError::UnknownHandler(name) => RequestError::UnknownHandler(name),
            DeployError::Refused(reason) => RequestError::Refused(reason),
            DeployError::NoPrevious(name) => RequestError::NoPrevious(name),
            DeployError::Storage(reason) => RequestError::Internal(reason),
        }
    }
}

impl RequestError {
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RequestError::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::UnknownHandler(_) | RequestError::AdminDisabled => StatusCode::NOT_FOUND,
            RequestError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::NoPrevious(_) => StatusCode::CONFLICT,
            RequestError::BadRequest(_) | RequestError::Decode(_) => StatusCode::BAD_REQUEST,
            RequestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::SlowBody { .. } => StatusCode::REQUEST_TIMEOUT,
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
            RequestError::SlowBody { .. } => "slow_body",
            RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
            RequestError::AdminDisabled => "admin_disabled",
            RequestError::Refused(_) => "refused",
            RequestError::NoPrevious(_) => "no_previous_version",
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
