//! The delivery path, top to bottom: authenticate, handshake or decode, route,
//! then for each (event, handler) pair: dedup, run, record; then the verdict.
//!
//! A delivery is a batch and Event Grid treats it as all-or-none, so the
//! verdict is 200 only when every pair is done (succeeded now, succeeded
//! before, or dead-lettered); otherwise 503 with `Retry-After`, and the pairs
//! that did succeed are remembered so the redelivery runs only what is left.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::join_all;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::config::Manifest;
use crate::config::Validation;
use crate::deadletter::{DeadLetterDir, Rejection};
use crate::dedup::{Claim, DedupKey, MemoryDedup};
use crate::error::RequestError;
use crate::event::{Event, SUBSCRIPTION_DELETED_EVENT};
use crate::filter::Filter;
use crate::metrics::{Metrics, PairOutcome};
use crate::sandbox::{DeliveryInfo, LoadedHandler, MAX_INSTANCES, Outcome, Sandbox};
use crate::webhook::{self, EventGridDomains, Keys, RequestKind};

/// Retry-After when no handler asked for a specific delay: Event Grid's own
/// first retry interval.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The `handler` label of events the shared endpoint routed to no handler.
pub const UNMATCHED_LABEL: &str = "*";

/// Everything a delivery needs, built once at start.
pub struct Host {
    keys: Keys,
    routes: Vec<Route>,
    dedup: Arc<MemoryDedup>,
    deadletter: Arc<DeadLetterDir>,
    pub metrics: Metrics,
    /// Bounds the instances alive at once to what the pooling allocator has
    /// room for; events beyond it wait here rather than fail to instantiate.
    instance_slots: Semaphore,
    pub max_body: usize,
    validation: Validation,
    pub event_grid_domains: EventGridDomains,
    // Keeps the engine (and its epoch ticker) alive as long as the host.
    _sandbox: Sandbox,
}

/// A handler and the events it subscribes to.
struct Route {
    handler: Arc<LoadedHandler>,
    filter: Option<Filter>,
}

/// Which handlers a request is for.
pub enum Target<'a> {
    /// `POST /api/events`: every handler whose filter matches.
    All,
    /// `POST /api/events/{name}` and the Azure Functions-style URL.
    Handler(&'a str),
}

impl Host {
    /// Compiles every handler (or takes it from the compile cache) and sets up
    /// the stores. Fails if any handler does not fit the contract.
    pub fn start(manifest: &Manifest) -> anyhow::Result<Host> {
        let max_memory = manifest.handlers.iter().map(|h| h.memory).max().unwrap_or(64 << 20);
        let sandbox = Sandbox::new(max_memory, &manifest.server.cache_dir)?;
        let routes = manifest
            .handlers
            .iter()
            .map(|h| Ok(Route { handler: Arc::new(sandbox.load(h)?), filter: h.filter.clone() }))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if manifest.server.allow_anonymous && manifest.server.keys.is_empty() {
            tracing::warn!(
                "ANONYMOUS ACCESS: server.allow_anonymous is set and no key is configured; anyone who can reach this port can deliver events"
            );
        }
        Ok(Host {
            keys: Keys::new(&manifest.server.keys, manifest.server.allow_anonymous),
            routes,
            dedup: MemoryDedup::new(manifest.dedup.ttl),
            deadletter: Arc::new(DeadLetterDir::new(&manifest.deadletter.path)),
            metrics: Metrics::default(),
            instance_slots: Semaphore::new(MAX_INSTANCES as usize),
            max_body: manifest.server.max_body,
            validation: manifest.server.validation,
            event_grid_domains: EventGridDomains::new(&manifest.server.event_grid_domains),
            _sandbox: sandbox,
        })
    }

    pub fn handler_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| &*r.handler.name)
    }

    /// Forgets expired dedup records; the server calls it periodically.
    pub fn sweep(&self) {
        self.dedup.sweep();
    }

    /// Handles one pushed request, from authentication to verdict.
    pub async fn deliver(
        &self,
        target: Target<'_>,
        headers: &HeaderMap,
        code: Option<&str>,
        body: Bytes,
    ) -> Result<Response, RequestError> {
        let received = OffsetDateTime::now_utc();
        self.keys.authenticate(headers, code)?;
        let kind = RequestKind::from_headers(headers)?;
        let routes = self.routes_for(&target)?;
        if kind == RequestKind::SubscriptionDeletion {
            tracing::warn!(subscription = ?headers.get("aeg-subscription-name"), "Event Grid says the subscription is being deleted");
            return Ok(StatusCode::OK.into_response());
        }
        let events = webhook::decode(headers, &body)?;
        if kind == RequestKind::SubscriptionValidation {
            return webhook::validate_subscription(&events, self.validation, &self.event_grid_domains);
        }

        let delivery = webhook::delivery_info(headers);
        let mut pairs = Vec::new();
        let mut unmatched = 0;
        for (index, event) in events.into_iter().map(Arc::new).enumerate() {
            if event.event_type == SUBSCRIPTION_DELETED_EVENT {
                tracing::warn!(topic = %event.source, subject = ?event.subject, "Event Grid says a subscription was deleted; not dispatched to handlers");
                continue;
            }
            let wanted_by: Vec<&Route> = routes.iter().copied().filter(|route| route.wants(&event)).collect();
            if wanted_by.is_empty() {
                unmatched += 1;
                let label = match target {
                    Target::All => UNMATCHED_LABEL,
                    Target::Handler(name) => name,
                };
                self.metrics.count(label, PairOutcome::Unmatched);
            }
            for route in wanted_by {
                pairs.push(self.run_pair(index, event.clone(), route, &delivery, received));
            }
        }
        let mut verdict = Verdict::from_pairs(join_all(pairs).await);
        verdict.unmatched = unmatched;
        Ok(verdict.into_response())
    }

    fn routes_for(&self, target: &Target) -> Result<Vec<&Route>, RequestError> {
        match target {
            Target::All => Ok(self.routes.iter().collect()),
            Target::Handler(name) => self
                .routes
                .iter()
                .find(|r| &*r.handler.name == *name)
                .map(|r| vec![r])
                .ok_or_else(|| RequestError::UnknownHandler((*name).to_owned())),
        }
    }

    /// One (event, handler) pair: claim it, run it in a fresh instance,
    /// dead-letter a rejection, and record it as done only once it is.
    async fn run_pair(
        &self,
        index: usize,
        event: Arc<Event>,
        route: &Route,
        delivery: &DeliveryInfo,
        received: OffsetDateTime,
    ) -> PairResult {
        let handler = route.handler.clone();
        let key = DedupKey { handler: handler.name.clone(), source: event.source.clone(), id: event.id.clone() };
        // A copy already running gets as long as its deadline to finish.
        let wait = handler.timeout() + Duration::from_secs(1);
        let lease = match self.dedup.claim(key, wait).await {
            Claim::Done => {
                return self.record(index, &event, &handler, PairOutcome::Duplicate, None);
            }
            Claim::Busy => {
                let reason = "another copy of this event is still running".to_owned();
                return self.record(
                    index,
                    &event,
                    &handler,
                    PairOutcome::Retry,
                    Some(Outcome::Retry { reason, after: None }),
                );
            }
            Claim::Run(lease) => lease,
        };

        let _slot = self.instance_slots.acquire().await.expect("the instance semaphore is never closed");
        let run = {
            let (event, handler, delivery, deadletter) =
                (event.clone(), handler.clone(), delivery.clone(), self.deadletter.clone());
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let outcome = handler.invoke(&event, &delivery);
                let elapsed = started.elapsed();
                let outcome = match outcome {
                    Outcome::Reject { reason } => {
                        dead_letter(&deadletter, &event, &handler, &delivery, &reason, received)
                    }
                    other => other,
                };
                (outcome, elapsed)
            })
        };
        let outcome = match run.await {
            Ok((outcome, elapsed)) => {
                self.metrics.observe_run(&handler.name, elapsed.as_secs_f64());
                outcome
            }
            Err(panic) => Outcome::Retry { reason: format!("gridfn failed running the handler: {panic}"), after: None },
        };
        match outcome {
            Outcome::Success => {
                lease.done();
                self.record(index, &event, &handler, PairOutcome::Success, None)
            }
            Outcome::Reject { .. } => {
                lease.done();
                self.record(index, &event, &handler, PairOutcome::Reject, Some(outcome))
            }
            Outcome::Retry { .. } => {
                drop(lease);
                self.record(index, &event, &handler, PairOutcome::Retry, Some(outcome))
            }
        }
    }

    fn record(
        &self,
        index: usize,
        event: &Event,
        handler: &LoadedHandler,
        result: PairOutcome,
        outcome: Option<Outcome>,
    ) -> PairResult {
        self.metrics.count(&handler.name, result);
        if let Some(Outcome::Retry { reason, .. }) = &outcome {
            tracing::warn!(handler = %handler.name, event_id = %event.id, "event will be retried: {reason}");
        }
        PairResult { index, event_id: event.id.clone(), handler: handler.name.to_string(), result, outcome }
    }
}

impl Route {
    fn wants(&self, event: &Event) -> bool {
        let Some(filter) = &self.filter else {
            return true;
        };
        match serde_json::from_str::<serde_json::Value>(event.raw.get()) {
            Ok(json) => filter.matches(&json, event.schema),
            Err(_) => false,
        }
    }
}

/// Writes a rejected event to the dead-letter store; only a durable write
/// makes the rejection final, otherwise the event is retried.
fn dead_letter(
    store: &DeadLetterDir,
    event: &Event,
    handler: &LoadedHandler,
    delivery: &DeliveryInfo,
    reason: &str,
    received: OffsetDateTime,
) -> Outcome {
    let rejection = Rejection {
        subscription: delivery.subscription.as_deref().unwrap_or(&handler.name),
        handler: &handler.name,
        reason,
        attempts: delivery.attempt + 1,
        received,
    };
    match store.write(event, &rejection) {
        Ok(path) => {
            tracing::warn!(handler = %handler.name, event_id = %event.id, blob = %path.display(), "event rejected and dead-lettered: {reason}");
            Outcome::Reject { reason: reason.to_owned() }
        }
        Err(e) => {
            let reason = format!(
                "handler rejected the event ({reason}) but writing it to {} failed: {e}",
                store.root().display()
            );
            tracing::error!(handler = %handler.name, event_id = %event.id, "{reason}");
            Outcome::Retry { reason, after: None }
        }
    }
}

/// What became of one (event, handler) pair.
struct PairResult {
    index: usize,
    event_id: String,
    handler: String,
    result: PairOutcome,
    outcome: Option<Outcome>,
}

/// The answer to Event Grid for the whole batch.
#[derive(Serialize)]
struct Verdict {
    succeeded: usize,
    duplicates: usize,
    rejected: usize,
    /// Events no handler's filter wanted: acknowledged, not run.
    unmatched: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    retry: Vec<RetryItem>,
    #[serde(skip)]
    retry_after: Option<Duration>,
}

#[derive(Serialize)]
struct RetryItem {
    event_index: usize,
    id: String,
    handler: String,
    reason: String,
}

impl Verdict {
    fn from_pairs(pairs: Vec<PairResult>) -> Self {
        let count = |kind| pairs.iter().filter(|p| p.result == kind).count();
        let mut verdict = Verdict {
            succeeded: count(PairOutcome::Success),
            duplicates: count(PairOutcome::Duplicate),
            rejected: count(PairOutcome::Reject),
            unmatched: 0,
            retry: Vec::new(),
            retry_after: None,
        };
        for pair in pairs {
            if let Some(Outcome::Retry { reason, after }) = pair.outcome {
                let after = after.unwrap_or(DEFAULT_RETRY_AFTER);
                verdict.retry_after = Some(verdict.retry_after.map_or(after, |a| a.max(after)));
                verdict.retry.push(RetryItem {
                    event_index: pair.index,
                    id: pair.event_id,
                    handler: pair.handler,
                    reason,
                });
            }
        }
        verdict
    }
}

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
