//! The namespace data plane over HTTP, as Azure serves it (api-version
//! `2024-06-01`) and its SDKs call it:
//!
//! - `POST /topics/{topic}:publish`: one CloudEvent
//!   (`application/cloudevents+json`) or a JSON array of them
//!   (`application/cloudevents-batch+json`); 200 with `{}`.
//! - `POST /topics/{topic}/eventsubscriptions/{subscription}:receive?maxEvents=1..100&maxWaitTime=10..120`:
//!   a long poll; 200 with `{"value": [{"brokerProperties": {"lockToken",
//!   "deliveryCount"}, "event": {…}}]}`, an empty `value` when nothing came.
//! - `…:acknowledge`, `…:release?releaseDelayInSeconds=0|10|60|600|3600`,
//!   `…:reject`, `…:renewLock` with `{"lockTokens": […]}`: 200 with
//!   `{"succeededLockTokens": […], "failedLockTokens": [{"lockToken",
//!   "error": {"code", "message"}}]}`, also when every token failed (a
//!   token that is not a live lock fails with `TokenLost`, "Token has
//!   expired.", as Azure answers).
//!
//! Authentication: `Authorization: SharedAccessKey KEY` (what
//! `AzureKeyCredential` sends) or `aeg-sas-key: KEY`; with
//! `[namespace.entra]`, also `Authorization: Bearer <JWT>` (what a
//! `TokenCredential` sends, for the scope `https://eventgrid.azure.net/.default`),
//! checked by [`crate::entra`]. A token that fails a check is a 401 whose
//! message says which check; keys that cannot be loaded are a 500.
//!
//! A push subscription (`delivery = "push"`) is gridfn's own to deliver:
//! receiving from it or settling its tokens is a 400.
//!
//! Errors carry `{"error": {"code", "message"}}` (the spec's
//! `Azure.Core.Foundations.ErrorResponse`) and the code again in the
//! `broker-errorcode` and `x-ms-error-code` headers: 400 `ArgumentInvalid`
//! (an out-of-range `maxEvents`, `maxWaitTime` or `releaseDelayInSeconds`:
//! the service answers "(ArgumentInvalid) Invalid maxWaitTime parameter",
//! azure-sdk-for-python#30570), 400 `BadRequest` (a missing or unknown
//! `api-version`, a body that is not CloudEvents or lock tokens, a push
//! subscription), 401 `Unauthorized`, 404 `NotFound` (unknown topic or
//! subscription), 413 `PayloadTooLarge` (over Azure's 1 MB per publish),
//! 500 `InternalServerError` (the store failed; nothing was acknowledged).
//! What was checked against what, and what is not known, is in the README's
//! "Namespace topics served by gridfn" section.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use super::broker::{Broker, Settle, Settled};

/// API versions whose data plane this module serves (the GA version and the
/// previews the SDKs have sent).
const API_VERSIONS: [&str; 3] = ["2024-06-01", "2023-10-01-preview", "2023-06-01-preview"];

/// Azure's limit on a publish request's body.
const MAX_PUBLISH: usize = 1024 * 1024;

/// Releases may only be delayed by these many seconds.
pub const RELEASE_DELAYS: [u64; 5] = [0, 10, 60, 600, 3600];

/// The namespace routes over a started broker.
pub fn routes(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/topics/{*call}", post(call))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PUBLISH + 64 * 1024))
        .with_state(broker)
}

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Call<'a> {
    Publish { topic: &'a str },
    Receive { topic: &'a str, subscription: &'a str },
    Settle { topic: &'a str, subscription: &'a str, operation: Operation },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Acknowledge,
    Release,
    Reject,
    RenewLock,
}

impl<'a> Call<'a> {
    /// `{topic}:publish` or `{topic}/eventsubscriptions/{subscription}:{operation}`.
    fn parse(path: &'a str) -> Option<Call<'a>> {
        let (resource, operation) = path.rsplit_once(':')?;
        let Some((topic, subscription)) = resource.split_once("/eventsubscriptions/") else {
            return (operation == "publish" && !resource.contains('/')).then_some(Call::Publish { topic: resource });
        };
        if topic.contains('/') || subscription.contains('/') || subscription.is_empty() {
            return None;
        }
        let operation = match operation {
            "receive" => return Some(Call::Receive { topic, subscription }),
            "acknowledge" => Operation::Acknowledge,
            "release" => Operation::Release,
            "reject" => Operation::Reject,
            "renewLock" => Operation::RenewLock,
            _ => return None,
        };
        Some(Call::Settle { topic, subscription, operation })
    }
}

/// An error answer, in Azure's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "BadRequest", message: message.into() }
    }

    /// A query parameter out of its range, as the service words it.
    fn argument_invalid(name: &str, why: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "ArgumentInvalid",
            message: format!("Invalid {name} parameter: {why}"),
        }
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: "NotFound", message: message.into() }
    }

    fn internal(error: anyhow::Error) -> ApiError {
        tracing::error!("namespace: {error:#}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "InternalServerError",
            message: "gridfn could not store the change; nothing was acknowledged".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        let code = HeaderValue::from_static(self.code);
        response.headers_mut().insert("broker-errorcode", code.clone());
        response.headers_mut().insert("x-ms-error-code", code);
        response
    }
}

/// One data-plane request, top to bottom: version, key, path, resource, operation.
async fn call(
    State(broker): State<Arc<Broker>>,
    Path(path): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    match query.get("api-version").map(String::as_str) {
        Some(version) if API_VERSIONS.contains(&version) => {}
        Some(version) => {
            return Err(ApiError::bad_request(format!(
                "api-version {version} is not supported; use one of {}",
                API_VERSIONS.join(", ")
            )));
        }
        None => return Err(ApiError::bad_request("the api-version query parameter is required")),
    }
    authenticate(&broker, &headers).await?;
    let call = Call::parse(&path).ok_or_else(|| ApiError::not_found(format!("no such operation: /topics/{path}")))?;
    let topic_name = match &call {
        Call::Publish { topic } | Call::Receive { topic, .. } | Call::Settle { topic, .. } => *topic,
    };
    let topic = broker.topic(topic_name).ok_or_else(|| ApiError::not_found(format!("topic {topic_name} not found")))?;
    let subscription = |name: &str| match topic.subscription(name) {
        None => Err(ApiError::not_found(format!("event subscription {name} not found in topic {}", topic.name))),
        Some(subscription) if subscription.pushes() => Err(ApiError::bad_request(format!(
            "event subscription {name} delivers by push; only a queue subscription can be received from and settled"
        ))),
        Some(subscription) => Ok(subscription),
    };
    match call {
        Call::Publish { .. } => {
            if body.len() > MAX_PUBLISH {
                return Err(ApiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    code: "PayloadTooLarge",
                    message: format!("{} bytes is over the 1 MB a publish may carry", body.len()),
                });
            }
            let events = crate::event::decode_cloudevents(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
            let count = events.len();
            broker.publish(topic, events).await.map_err(ApiError::internal)?;
            tracing::debug!(topic = %topic.name, count, "namespace: published");
            Ok(axum::Json(json!({})).into_response())
        }
        Call::Receive { subscription: name, .. } => {
            let subscription = subscription(name)?;
            let max_events = bounded(&query, "maxEvents", 1, 1..=100)?;
            let max_wait = bounded(&query, "maxWaitTime", 60, 10..=120)?;
            let received = broker
                .receive(subscription, max_events as usize, Duration::from_secs(max_wait))
                .await
                .map_err(ApiError::internal)?;
            let value: Vec<_> = (received.into_iter())
                .map(|r| {
                    json!({"brokerProperties": {"lockToken": r.lock_token, "deliveryCount": r.delivery_count},
                           "event": r.event})
                })
                .collect();
            Ok(axum::Json(json!({ "value": value })).into_response())
        }
        Call::Settle { subscription: name, operation, .. } => {
            let subscription = subscription(name)?;
            let settle = match operation {
                Operation::Acknowledge => Settle::Acknowledge,
                Operation::Reject => Settle::Reject,
                Operation::RenewLock => Settle::RenewLock,
                Operation::Release => Settle::Release { delay: release_delay(&query)? },
            };
            let tokens = lock_tokens(&body)?;
            let settled = broker.settle(subscription, settle, tokens).await.map_err(ApiError::internal)?;
            Ok(axum::Json(settled_body(settled)).into_response())
        }
    }
}

/// `Authorization: SharedAccessKey KEY`, `aeg-sas-key: KEY`, or (with
/// `[namespace.entra]`) `Authorization: Bearer <JWT>`.
async fn authenticate(broker: &Broker, headers: &HeaderMap) -> Result<(), ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let unauthorized =
        |message: &str| ApiError { status: StatusCode::UNAUTHORIZED, code: "Unauthorized", message: message.into() };
    let bearer = authorization.filter(|v| v.get(..7).is_some_and(|scheme| scheme.eq_ignore_ascii_case("bearer ")));
    if bearer.is_some() {
        let Some(entra) = broker.entra() else {
            return Err(unauthorized("bearer tokens are not accepted: the namespace has no [namespace.entra]"));
        };
        return match entra.validate(bearer).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_server_side() => {
                tracing::error!("namespace: cannot check bearer tokens: {e}");
                Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "InternalServerError",
                    message: "gridfn cannot check bearer tokens now (its Entra signing keys are unavailable)".into(),
                })
            }
            Err(e) => Err(unauthorized(&e.to_string())),
        };
    }
    let presented = match authorization {
        Some(value) => value.strip_prefix("SharedAccessKey ").map(str::trim),
        None => headers.get("aeg-sas-key").and_then(|v| v.to_str().ok()),
    };
    let accepted = match broker.entra() {
        Some(_) => "Authorization: SharedAccessKey <key>, aeg-sas-key, or Authorization: Bearer <token>",
        None => "Authorization: SharedAccessKey <key> (or aeg-sas-key)",
    };
    match presented {
        Some(key) if broker.authorized(key.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("the key is not one of the namespace's keys")),
        None if authorization.is_some() => Err(unauthorized(&format!("only {accepted} is accepted"))),
        None => Err(unauthorized(&format!("a credential is required: {accepted}"))),
    }
}

/// An integer query parameter within `range`, or `default` when absent.
fn bounded(
    query: &HashMap<String, String>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    let Some(text) = query.get(name) else { return Ok(default) };
    match text.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ApiError::argument_invalid(
            name,
            format!("{text} is out of range: must be between {} and {}", range.start(), range.end()),
        )),
    }
}

fn release_delay(query: &HashMap<String, String>) -> Result<Duration, ApiError> {
    let Some(text) = query.get("releaseDelayInSeconds") else { return Ok(Duration::ZERO) };
    match text.parse::<u64>() {
        Ok(seconds) if RELEASE_DELAYS.contains(&seconds) => Ok(Duration::from_secs(seconds)),
        _ => Err(ApiError::argument_invalid(
            "releaseDelayInSeconds",
            format!("{text}: must be one of 0, 10, 60, 600, 3600"),
        )),
    }
}

/// `{"lockTokens": ["…", …]}`, at least one.
fn lock_tokens(body: &[u8]) -> Result<Vec<String>, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct LockTokens {
        lock_tokens: Vec<String>,
    }
    match serde_json::from_slice::<LockTokens>(body) {
        Ok(LockTokens { lock_tokens }) if !lock_tokens.is_empty() => Ok(lock_tokens),
        Ok(_) => Err(ApiError::bad_request("lockTokens must list at least one token")),
        Err(e) => Err(ApiError::bad_request(format!("the body must be {{\"lockTokens\": [...]}}: {e}"))),
    }
}

fn settled_body(settled: Settled) -> serde_json::Value {
    let failed: Vec<_> = (settled.failed.into_iter())
        .map(|(token, code, message)| json!({"lockToken": token, "error": {"code": code, "message": message}}))
        .collect();
    json!({"failedLockTokens": failed, "succeededLockTokens": settled.succeeded})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_the_calls_azure_serves() {
        assert_eq!(Call::parse("orders:publish"), Some(Call::Publish { topic: "orders" }));
        assert_eq!(
            Call::parse("orders/eventsubscriptions/all:receive"),
            Some(Call::Receive { topic: "orders", subscription: "all" })
        );
        for (operation, expected) in [
            ("acknowledge", Operation::Acknowledge),
            ("release", Operation::Release),
            ("reject", Operation::Reject),
            ("renewLock", Operation::RenewLock),
        ] {
            assert_eq!(
                Call::parse(&format!("orders/eventsubscriptions/all:{operation}")),
                Some(Call::Settle { topic: "orders", subscription: "all", operation: expected })
            );
        }
        for bad in [
            "orders",
            "orders:receive",
            "orders/eventsubscriptions/all:publish",
            "orders/eventsubscriptions/all:renewlock",
            "orders/eventsubscriptions/:receive",
            "a/b:publish",
            "orders/eventsubscriptions/a/b:receive",
        ] {
            assert_eq!(Call::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn query_limits_are_azures() {
        let query = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(bounded(&HashMap::new(), "maxWaitTime", 60, 10..=120).unwrap(), 60);
        assert_eq!(bounded(&query("maxWaitTime", "10"), "maxWaitTime", 60, 10..=120).unwrap(), 10);
        for bad in ["9", "121", "-1", "ten"] {
            let error = bounded(&query("maxWaitTime", bad), "maxWaitTime", 60, 10..=120).unwrap_err();
            assert_eq!((error.status, error.code), (StatusCode::BAD_REQUEST, "ArgumentInvalid"), "{bad}");
            assert!(error.message.starts_with("Invalid maxWaitTime parameter"), "{}", error.message);
        }
        assert_eq!(release_delay(&query("releaseDelayInSeconds", "600")).unwrap(), Duration::from_secs(600));
        assert!(release_delay(&query("releaseDelayInSeconds", "30")).is_err());
        assert!(lock_tokens(br#"{"lockTokens":[]}"#).is_err());
        assert!(lock_tokens(br#"{"tokens":["a"]}"#).is_err());
        assert_eq!(lock_tokens(br#"{"lockTokens":["a","b"]}"#).unwrap(), ["a", "b"]);
    }
}
