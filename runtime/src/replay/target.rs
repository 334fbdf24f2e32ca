//! Where replayed batches go: the handlers of a manifest, in this process,
//! through the same pipeline as a pushed event; or a URL (a running gridfn,
//! or any Event Grid webhook), POSTed the way Event Grid delivers.
//!
//! Either way a batch comes back as one outcome per event, so the ledger
//! knows which records are done.

use std::sync::Arc;
use std::time::Duration;

use crate::event::{DeliveryInfo, Event, Schema};
use crate::host::Host;
use crate::pipeline::{ReplayOutcome, Target as PipelineTarget, Verdict};
use crate::webhook::REPLAY_HEADER;

/// Event Grid's largest delivery, and so the largest `--to` body.
pub const MAX_BODY: usize = 1 << 20;

/// Events for one destination that arrived the same way (one subscription,
/// one attempt count, one schema): what one dispatch or one POST carries.
pub struct Batch {
    pub destination: Arc<str>,
    pub subscription: Option<Arc<str>>,
    /// Delivery attempts before the replay (from the dead-letter record).
    pub attempt: u32,
    pub schema: Schema,
    /// Shared with the records they were read from, not copied.
    pub events: Vec<Arc<Event>>,
    /// Bytes of the events' JSON, for the `--to` body limit.
    pub bytes: usize,
}

/// What became of a batch: one outcome per event, and why the failed ones failed.
pub struct Sent {
    pub outcomes: Vec<ReplayOutcome>,
    pub error: Option<String>,
}

impl Sent {
    fn all(count: usize, outcome: ReplayOutcome, error: Option<String>) -> Sent {
        Sent { outcomes: vec![outcome; count], error }
    }

    /// Reads a gridfn verdict's per-event outcomes (events it does not list
    /// were not for any handler: a subscription-deleted notice).
    fn from_verdict(count: usize, verdict: &Verdict) -> Sent {
        let mut outcomes = vec![ReplayOutcome::Unmatched; count];
        for event in &verdict.outcomes {
            if let Some(slot) = outcomes.get_mut(event.event_index) {
                *slot = event.outcome;
            }
        }
        let error = verdict.retry.first().map(|r| r.reason.clone());
        Sent { outcomes, error }
    }
}

/// Where batches go.
pub enum Target {
    /// The handlers of `--config`, in this process.
    InProcess(Arc<Host>),
    /// `--to URL`.
    Http(HttpTarget),
}

impl Target {
    pub async fn send(&self, batch: Batch) -> Sent {
        match self {
            Target::InProcess(host) => {
                let count = batch.events.len();
                let delivery = DeliveryInfo {
                    attempt: batch.attempt,
                    subscription: batch.subscription.as_deref().map(str::to_owned),
                    replay: true,
                    traceparent: None,
                };
                let target = PipelineTarget::Handler(&batch.destination);
                match host.pipeline.dispatch(batch.events, &delivery, target).await {
                    Ok(verdict) => Sent::from_verdict(count, &verdict),
                    Err(unknown) => Sent::all(
                        count,
                        ReplayOutcome::Failed,
                        Some(format!("handler {} is not in the manifest", unknown.0)),
                    ),
                }
            }
            Target::Http(http) => http.post(batch).await,
        }
    }
}

/// A URL events are POSTed to, as Event Grid delivers them.
pub struct HttpTarget {
    client: reqwest::Client,
    /// May hold `{handler}`, replaced by each batch's destination.
    url: String,
    /// Sent as `aeg-sas-key`.
    key: Option<String>,
}

impl HttpTarget {
    pub fn new(url: &str, key: Option<String>) -> anyhow::Result<HttpTarget> {
        let example = url.replace("{handler}", "h");
        url::Url::parse(&example).map_err(|e| anyhow::anyhow!("--to {url}: not a URL: {e}"))?;
        // Event Grid gives an endpoint 30 s; a replay is as patient.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(HttpTarget { client, url: url.to_owned(), key })
    }

    /// Whether the URL names a handler per batch.
    pub fn per_handler(url: &str) -> bool {
        url.contains("{handler}")
    }

    async fn post(&self, batch: Batch) -> Sent {
        let count = batch.events.len();
        let url = if Self::per_handler(&self.url) {
            let handler = percent_encoding::utf8_percent_encode(&batch.destination, percent_encoding::NON_ALPHANUMERIC);
            self.url.replace("{handler}", &handler.to_string())
        } else {
            self.url.clone()
        };
        let mut body = Vec::with_capacity(batch.bytes + count + 2);
        body.push(b'[');
        for (i, event) in batch.events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(event.raw.get().as_bytes());
        }
        body.push(b']');
        let content_type = match batch.schema {
            Schema::EventGrid => "application/json",
            Schema::CloudEvents => "application/cloudevents-batch+json; charset=utf-8",
        };
        let mut request = self
            .client
            .post(&url)
            .header("content-type", content_type)
            .header("aeg-event-type", "Notification")
            .header("aeg-delivery-count", batch.attempt.to_string())
            .header(REPLAY_HEADER, "true")
            .body(body);
        if let Some(subscription) = &batch.subscription {
            request = request.header("aeg-subscription-name", &**subscription);
        }
        if let Some(key) = &self.key {
            request = request.header("aeg-sas-key", key);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Sent::all(count, ReplayOutcome::Failed, Some(format!("POST {url}: {e}"))),
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        // A gridfn says what became of each event; another endpoint only
        // says yes (2xx: Event Grid's "delivered") or no.
        let verdict = serde_json::from_str::<Verdict>(&text).ok().filter(|v| !v.outcomes.is_empty());
        match (verdict, status.is_success()) {
            (Some(verdict), _) => Sent::from_verdict(count, &verdict),
            (None, true) => Sent::all(count, ReplayOutcome::Succeeded, None),
            (None, false) => {
                let text: String = text.chars().take(200).collect();
                Sent::all(count, ReplayOutcome::Failed, Some(format!("POST {url} answered {status}: {text}")))
            }
        }
    }
}
