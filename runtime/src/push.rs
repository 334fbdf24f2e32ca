//! The push source: Event Grid (or any CloudEvents webhook sender) POSTs a
//! delivery, and it goes top to bottom through
//!
//! 1. authenticate, from the headers alone (an unauthenticated sender costs a
//!    header parse, never a buffered body);
//! 2. what the headers say: the request kind (`aeg-event-type`) and, on a
//!    per-handler URL, that the handler exists;
//! 3. read the body, up to `server.max_body`;
//! 4. a subscription deletion is acknowledged, a validation handshake
//!    answered; otherwise decode the events;
//! 5. [`Pipeline::dispatch`];
//! 6. the verdict as Event Grid's answer: 200 when every pair is done, 503
//!    with `Retry-After` when any must be retried.
//!
//! The protocol's pieces (keys, headers, encodings, handshakes) are in
//! [`crate::webhook`]; this module is the order they run in.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::config::Validation;
use crate::error::RequestError;
use crate::event::DeliveryInfo;
use crate::pipeline::{Pipeline, Target, UnknownHandler, Verdict};
use crate::webhook::{self, Authenticator, EventGridDomains, RequestKind};

/// The webhook endpoint's settings, and the pipeline behind it.
pub struct Webhook {
    pub pipeline: Arc<Pipeline>,
    pub auth: Authenticator,
    pub validation: Validation,
    pub domains: EventGridDomains,
    /// The largest body read; larger is 413.
    pub max_body: usize,
    /// How long the body may take to arrive once the headers have; slower is 408.
    pub body_timeout: std::time::Duration,
}

type Params = Query<HashMap<String, String>>;

/// `POST /api/events`: every handler whose filter matches.
pub async fn all_handlers(
    State(webhook): State<Arc<Webhook>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(webhook.deliver(Target::All, &params, &headers, body).await)
}

/// `POST /api/events/{handler}`: that handler only.
pub async fn one_handler(
    State(webhook): State<Arc<Webhook>>,
    Path(handler): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(webhook.deliver(Target::Handler(&handler), &params, &headers, body).await)
}

/// Azure Functions' URL shape, so a subscription made for a Function App can
/// point at gridfn unchanged: `POST /runtime/webhooks/eventgrid?functionName=NAME`.
pub async fn functions_style(
    State(webhook): State<Arc<Webhook>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(handler) = params.get("functionName") else {
        return answer(Err(RequestError::BadRequest("the functionName query parameter is required".into())));
    };
    answer(webhook.deliver(Target::Handler(handler), &params, &headers, body).await)
}

/// `OPTIONS` on each delivery URL: the CloudEvents abuse-protection handshake.
pub async fn abuse_protection(State(webhook): State<Arc<Webhook>>, headers: HeaderMap) -> Response {
    webhook::abuse_protection(&headers, &webhook.domains)
}

impl Webhook {
    /// One pushed request, from credentials to verdict, in the delivery's
    /// span (each pair's span is a child of it), off unless `gridfn::spans`
    /// is enabled at debug (see `main.rs`).
    #[tracing::instrument(name = "delivery", target = "gridfn::spans", level = "debug", skip_all, fields(
        subscription = tracing::field::Empty, delivery_count = tracing::field::Empty,
        events = tracing::field::Empty, trace_id = tracing::field::Empty, parent_id = tracing::field::Empty,
    ))]
    async fn deliver(
        &self,
        target: Target<'_>,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, RequestError> {
        self.auth.authenticate(headers, params.get("code").map(String::as_str)).await?;
        let kind = RequestKind::from_headers(headers)?;
        self.pipeline.check_target(target)?;
        let body = tokio::time::timeout(self.body_timeout, axum::body::to_bytes(body, self.max_body))
            .await
            .map_err(|_| RequestError::SlowBody { limit: self.body_timeout })?
            .map_err(|_| RequestError::TooLarge { limit: self.max_body })?;
        match kind {
            RequestKind::SubscriptionDeletion => {
                tracing::warn!(subscription = ?headers.get("aeg-subscription-name"), "Event Grid says the subscription is being deleted");
                Ok(StatusCode::OK.into_response())
            }
            RequestKind::SubscriptionValidation => {
                let events = webhook::decode(headers, &body)?;
                webhook::validate_subscription(&events, self.validation, &self.domains)
            }
            RequestKind::Notification => {
                let events = webhook::decode(headers, &body)?;
                // The events hold copies of what they need: the body's buffer
                // goes back to the connection now, not when the delivery ends.
                drop(body);
                let delivery = webhook::delivery_info(headers);
                describe_span(&delivery, events.len());
                let verdict = self.pipeline.dispatch(events, &delivery, target).await?;
                Ok(verdict.into_response())
            }
        }
    }
}

/// Records what the delivery's span shows once the request is decoded.
fn describe_span(delivery: &DeliveryInfo, events: usize) {
    let span = tracing::Span::current();
    span.record("subscription", delivery.subscription.as_deref());
    span.record("delivery_count", delivery.attempt);
    span.record("events", events);
    if let Some(parent) = delivery.traceparent {
        parent.record(&span, "parent_id");
        crate::otlp::join(&span, Some(parent));
    }
}

/// A refused request is logged, then answered with its status.
fn answer(result: Result<Response, RequestError>) -> Response {
    result.unwrap_or_else(|error| {
        tracing::info!(status = error.status().as_u16(), "refused a delivery: {error}");
        error.into_response()
    })
}

impl From<UnknownHandler> for RequestError {
    fn from(UnknownHandler(name): UnknownHandler) -> Self {
        RequestError::UnknownHandler(name)
    }
}

/// Event Grid's answer for a batch: 200 when every pair is done, else 503
/// with `Retry-After` in whole seconds (at least 1).
impl IntoResponse for Verdict {
    fn into_response(self) -> Response {
        match self.retry_after {
            None => (StatusCode::OK, Json(self)).into_response(),
            Some(after) => {
                let seconds = after.as_millis().div_ceil(1000).max(1).to_string();
                let retry_after = HeaderValue::from_str(&seconds).expect("digits are a valid header value");
                (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, retry_after)], Json(self)).into_response()
            }
        }
    }
}
