//! One subscription's deliveries, as Event Grid makes them: a batch is
//! POSTed with Event Grid's headers, retried on its schedule while the
//! answers allow, and dead-lettered (or dropped, without a dead-letter
//! folder) when it cannot be delivered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use http::HeaderMap;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::report::Stats;
use super::retry::{Answer, RetryPolicy};
use crate::deadletter::{blob_name, write_durably};
use crate::event::Schema;

/// How `send` proves who it is to the endpoint.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// `aeg-sas-key`, as gridfn (and Azure Functions, as `x-functions-key`) accept it.
    Key(String),
    /// `Authorization: Bearer`, as Event Grid sends an Entra ID token.
    Bearer(String),
}

/// The webhook endpoint of one subscription.
pub struct Subscriber {
    pub url: String,
    /// Sent as `aeg-subscription-name`; also the dead-letter folder's name.
    pub subscription: String,
    client: reqwest::Client,
    auth: Auth,
    /// `--header`: Event Grid's custom delivery properties, on every
    /// delivery; each replaces a header of the same name.
    properties: HeaderMap,
}

impl Subscriber {
    /// `timeout` is how long an answer may take (Event Grid waits 30 s, then
    /// counts the attempt as failed).
    pub fn new(
        url: &str,
        subscription: &str,
        auth: Auth,
        properties: HeaderMap,
        timeout: Duration,
    ) -> anyhow::Result<Subscriber> {
        url::Url::parse(url).map_err(|e| anyhow::anyhow!("--to {url}: not a URL: {e}"))?;
        let client = reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(Subscriber { url: url.to_owned(), subscription: subscription.to_owned(), client, auth, properties })
    }

    /// A request to the endpoint with Event Grid's headers and the credentials.
    pub fn request(&self, method: reqwest::Method, event_type: &str, delivery_count: u32) -> reqwest::RequestBuilder {
        let request = self
            .client
            .request(method, &self.url)
            .header("aeg-event-type", event_type)
            .header("aeg-subscription-name", &self.subscription)
            .header("aeg-delivery-count", delivery_count.to_string())
            .header("aeg-metadata-version", "1");
        match &self.auth {
            Auth::None => request,
            Auth::Key(key) => request.header("aeg-sas-key", key),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }
}

/// One event to deliver: its JSON as it goes on the wire.
pub struct Outgoing {
    pub raw: String,
    /// For `aeg-data-version` (the first event's, for a batch).
    pub data_version: Option<String>,
}

/// Events that go in one delivery, and are retried and dead-lettered together.
pub struct Batch {
    pub events: Vec<Outgoing>,
    pub schema: Schema,
    /// When `send` published them: the event time to live runs from here.
    pub published: Instant,
    pub published_at: DateTime<Utc>,
}

impl Batch {
    /// The body and its content type: an array of events for the Event Grid
    /// schema; a CloudEvent alone as `application/cloudevents+json`, several
    /// as `application/cloudevents-batch+json`.
    fn body(&self) -> (&'static str, String) {
        let array = || format!("[{}]", self.events.iter().map(|e| e.raw.as_str()).collect::<Vec<_>>().join(","));
        match (self.schema, self.events.as_slice()) {
            (Schema::EventGrid, _) => ("application/json; charset=utf-8", array()),
            (Schema::CloudEvents, [one]) => ("application/cloudevents+json; charset=utf-8", one.raw.clone()),
            (Schema::CloudEvents, _) => ("application/cloudevents-batch+json; charset=utf-8", array()),
        }
    }
}

/// What became of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// Written to the dead-letter folder, for this reason.
    DeadLettered(String),
    /// Not delivered, and no dead-letter folder (or writing there failed).
    Dropped(String),
}

/// Why delivery stopped, and what the last attempt saw.
struct GaveUp {
    reason: String,
    outcome: String,
    status: Option<u16>,
    attempts: u32,
    last_attempt: DateTime<Utc>,
}

/// Delivers batches to one subscriber under one policy.
pub struct Deliverer {
    pub subscriber: Subscriber,
    pub policy: RetryPolicy,
    /// Event Grid's dead-letter container, as a folder; `None` drops.
    pub dead_letter: Option<PathBuf>,
    /// Requests in flight at once (`--concurrency`); a batch waiting for its
    /// next retry holds none.
    pub requests: Arc<Semaphore>,
    pub stats: Arc<Stats>,
}

impl Deliverer {
    /// Attempts `batch` until it is delivered or Event Grid would give up.
    pub async fn deliver(&self, batch: Batch) -> Fate {
        let (content_type, body) = batch.body();
        let data_version = batch.events.first().and_then(|e| e.data_version.clone());
        let mut failed = 0;
        let gave_up = loop {
            let (answer, status) = {
                let _permit = self.requests.acquire().await.expect("the semaphore is never closed");
                let mut request = self
                    .subscriber
                    .request(reqwest::Method::POST, "Notification", failed)
                    .header("content-type", content_type)
                    .body(body.clone());
                if let Some(version) = &data_version {
                    request = request.header("aeg-data-version", version);
                }
                // `headers` replaces same-named headers, where `header` adds one.
                request = request.headers(self.subscriber.properties.clone());
                let started = Instant::now();
                // The answer's body is read (and dropped) so the connection
                // can carry the next delivery.
                let result = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.map(|_| status)
                    }
                    Err(e) => Err(e),
                };
                self.stats.attempt(started.elapsed(), result.as_ref().ok().copied());
                match result {
                    Ok(status) => (Answer::from_status(status), Some(status.as_u16())),
                    Err(e) if e.is_timeout() => (Answer::Retry { outcome: "TimedOut".into() }, None),
                    Err(_) => (Answer::Retry { outcome: "GenericError".into() }, None),
                }
            };
            failed += 1;
            let last_attempt = Utc::now();
            let give_up =
                |reason: String, outcome: String| GaveUp { reason, outcome, status, attempts: failed, last_attempt };
            match answer {
                Answer::Delivered => return Fate::Delivered,
                Answer::Final { outcome } => break give_up(format!("UndeliverableDueToHttp{outcome}"), outcome),
                Answer::Retry { outcome } => {
                    let Some(wait) = self.policy.delay_after(failed) else {
                        break give_up("MaxDeliveryAttemptsExceeded".into(), outcome);
                    };
                    tokio::time::sleep(wait).await;
                    if self.policy.expired(batch.published.elapsed()) {
                        break give_up("TimeToLiveExceeded".into(), outcome);
                    }
                    self.stats.retry();
                }
            }
        };
        self.give_up(&batch, gave_up).await
    }

    async fn give_up(&self, batch: &Batch, gave_up: GaveUp) -> Fate {
        let Some(root) = &self.dead_letter else { return Fate::Dropped(gave_up.reason) };
        match write_blob(root, &self.subscriber.subscription, batch, &gave_up).await {
            Ok(()) => Fate::DeadLettered(gave_up.reason),
            Err(e) => {
                eprintln!("could not dead-letter {} event(s) to {}: {e:#}", batch.events.len(), root.display());
                Fate::Dropped(gave_up.reason)
            }
        }
    }
}

/// Writes the batch as one blob in Event Grid's dead-letter layout and
/// format: each event as it was sent, plus the dead-letter attributes
/// (camelCase for the Event Grid schema, lower case for CloudEvents).
async fn write_blob(root: &std::path::Path, subscription: &str, batch: &Batch, gave_up: &GaveUp) -> anyhow::Result<()> {
    let stamp = |t: DateTime<Utc>| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    let mut records = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        let mut record: Map<String, Value> = serde_json::from_str(&event.raw)?;
        let mut fields = vec![
            ("deadLetterReason", Value::from(gave_up.reason.as_str())),
            ("deliveryAttempts", Value::from(gave_up.attempts)),
            ("lastDeliveryOutcome", Value::from(gave_up.outcome.as_str())),
            ("publishTime", stamp(batch.published_at)),
            ("lastDeliveryAttemptTime", stamp(gave_up.last_attempt)),
        ];
        if let Some(status) = gave_up.status {
            fields.push(("lastHttpStatusCode", Value::from(status)));
        }
        for (name, value) in fields {
            let name = match batch.schema {
                Schema::EventGrid => name.to_owned(),
                Schema::CloudEvents => name.to_ascii_lowercase(),
            };
            record.insert(name, value);
        }
        records.push(Value::Object(record));
    }
    let body = serde_json::to_vec_pretty(&records)?;
    let path = root.join(blob_name(subscription, Utc::now()));
    tokio::task::spawn_blocking(move || write_durably(&path, &body)).await??;
    Ok(())
}
