//! The handshake Event Grid makes before it delivers to a new webhook
//! subscription, so an endpoint only gets events it agreed to:
//!
//! - Event Grid schema: a `SubscriptionValidationEvent` POSTed with
//!   `aeg-event-type: SubscriptionValidation`. The endpoint either answers
//!   `{"validationResponse": CODE}` at once, or answers 200 without a code
//!   and later GETs the event's `validationUrl`; `send` serves that URL
//!   itself, on a local port, and waits for the GET.
//! - CloudEvents: the webhook abuse-protection `OPTIONS` request with
//!   `WebHook-Request-Origin`; the endpoint must allow that origin (or `*`)
//!   in `WebHook-Allowed-Origin`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::deliver::Subscriber;
use crate::event::SUBSCRIPTION_VALIDATION_EVENT;

/// The origin Event Grid announces in the CloudEvents handshake.
pub const ORIGIN: &str = "eventgrid.azure.net";

/// How the endpoint agreed.
#[derive(Debug, PartialEq, Eq)]
pub enum Validated {
    /// It answered the validation code in the response.
    Synchronously,
    /// It GETs the validation URL.
    ThroughUrl,
    /// It allowed the origin in the CloudEvents handshake (and this rate, if it said).
    Origin { allowed_rate: Option<String> },
}

/// Where the validation URL is served and how long to wait for its GET.
pub struct UrlValidation {
    pub listen: SocketAddr,
    pub timeout: Duration,
}

/// The Event Grid schema handshake.
pub async fn validate_event_grid(subscriber: &Subscriber, url: &UrlValidation) -> anyhow::Result<Validated> {
    let code = uuid::Uuid::new_v4().to_string();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let (confirmed_tx, confirmed) = oneshot::channel();
    let listener = tokio::net::TcpListener::bind(url.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the validation URL on {}: {e}", url.listen))?;
    let local = listener.local_addr()?;
    let validation_url = format!(
        "http://{local}/eventsubscriptions/{}/validate?id={code}&t={}&apiVersion=2018-05-01-preview&token={token}",
        subscriber.subscription,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    let state = Arc::new(Expected { code: code.clone(), token, confirmed: Mutex::new(Some(confirmed_tx)) });
    let app = axum::Router::new()
        .route("/eventsubscriptions/{subscription}/validate", axum::routing::get(confirm))
        .with_state(state);
    // Serves until this handshake is over (the task is aborted on return).
    let _server = AbortOnDrop(tokio::spawn(async move { axum::serve(listener, app).await }));

    let event = serde_json::json!([{
        "id": uuid::Uuid::new_v4().to_string(),
        "topic": format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/gridfn-send/providers/Microsoft.EventGrid/topics/{}", subscriber.subscription),
        "subject": "",
        "data": { "validationCode": code, "validationUrl": validation_url },
        "eventType": SUBSCRIPTION_VALIDATION_EVENT,
        "eventTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "metadataVersion": "1",
        "dataVersion": "2"
    }]);
    let response = subscriber
        .request(reqwest::Method::POST, "SubscriptionValidation", 0)
        .header("content-type", "application/json; charset=utf-8")
        .body(serde_json::to_vec(&event)?)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("validation handshake with {}: {e}", subscriber.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{} refused the validation handshake: {status} {}", subscriber.url, excerpt(&text));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        validation_response: Option<String>,
    }
    match serde_json::from_str::<Answer>(&text).ok().and_then(|a| a.validation_response) {
        Some(answered) if answered == code => Ok(Validated::Synchronously),
        Some(answered) => anyhow::bail!(
            "{} answered the validation handshake with code {answered:?}, not the {code:?} it was sent",
            subscriber.url
        ),
        None => {
            eprintln!(
                "{} answered {status} without a validation code; waiting up to {} for a GET of {validation_url}",
                subscriber.url,
                humantime::format_duration(url.timeout)
            );
            match tokio::time::timeout(url.timeout, confirmed).await {
                Ok(Ok(())) => Ok(Validated::ThroughUrl),
                _ => anyhow::bail!(
                    "{} was not validated: no validation code in its answer, and no GET of the validation URL within {}",
                    subscriber.url,
                    humantime::format_duration(url.timeout)
                ),
            }
        }
    }
}

/// What a GET of the validation URL must carry.
struct Expected {
    code: String,
    token: String,
    /// Taken by the first matching GET.
    confirmed: Mutex<Option<oneshot::Sender<()>>>,
}

#[derive(Deserialize)]
struct ValidateQuery {
    id: String,
    token: String,
}

async fn confirm(
    State(expected): State<Arc<Expected>>,
    Query(query): Query<ValidateQuery>,
) -> (StatusCode, &'static str) {
    if query.id != expected.code || query.token != expected.token {
        return (StatusCode::NOT_FOUND, "no such validation\n");
    }
    if let Some(confirmed) = expected.confirmed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = confirmed.send(());
    }
    (StatusCode::OK, "Webhook successfully validated as a subscription endpoint.\n")
}

/// The CloudEvents abuse-protection handshake.
pub async fn validate_cloudevents(subscriber: &Subscriber) -> anyhow::Result<Validated> {
    let response = subscriber
        .request(reqwest::Method::OPTIONS, "SubscriptionValidation", 0)
        .header("webhook-request-origin", ORIGIN)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("CloudEvents handshake (OPTIONS) with {}: {e}", subscriber.url))?;
    let status = response.status();
    let header =
        |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_owned);
    let allowed = header("webhook-allowed-origin");
    let allowed_rate = header("webhook-allowed-rate");
    if !status.is_success() {
        anyhow::bail!("{} refused the CloudEvents handshake (OPTIONS): {status}", subscriber.url);
    }
    match allowed.as_deref() {
        Some(origin) if origin == "*" || origin.eq_ignore_ascii_case(ORIGIN) => Ok(Validated::Origin { allowed_rate }),
        Some(other) => {
            anyhow::bail!("{} allowed origin {other:?} in the CloudEvents handshake, not {ORIGIN}", subscriber.url)
        }
        None => anyhow::bail!(
            "{} answered the CloudEvents handshake (OPTIONS) without WebHook-Allowed-Origin: it does not accept deliveries from {ORIGIN}",
            subscriber.url
        ),
    }
}

/// At most 200 characters of an answer, for messages.
pub fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
