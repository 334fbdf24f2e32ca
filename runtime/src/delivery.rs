//! The delivery path, top to bottom: authenticate, handshake or decode, route,
//! then for each (event, handler) pair: claim, run (retrying locally as the
//! handler's policy allows), dead-letter a rejection; then record every done
//! pair in one durable write, and answer.
//!
//! A delivery is a batch and Event Grid treats it as all-or-none, so the
//! verdict is 200 only when every pair is done (succeeded now, succeeded
//! before, or dead-lettered); otherwise 503 with `Retry-After`, and the pairs
//! that did succeed are remembered so the redelivery runs only what is left.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::config::{self, Manifest, Validation};
use crate::cpu::CpuSlots;
use crate::deadletter::{DeadLetterStore, Rejection};
use crate::dedup::{Claim, Dedup, DedupKey, Lease};
use crate::deploy::Deployments;
use crate::entra::EntraValidator;
use crate::error::RequestError;
use crate::event::{Event, SUBSCRIPTION_DELETED_EVENT};
use crate::metrics::{Metrics, PairOutcome};
use crate::publish::{MAX_LOCAL_DEPTH, Published, Topic};
use crate::sandbox::{DeliveryInfo, Invocation, LoadedHandler, MAX_INSTANCES, Outcome, Sandbox};
use crate::webhook::{self, Authenticator, EventGridDomains, RequestKind};

/// Retry-After when no handler asked for a specific delay: Event Grid's own
/// first retry interval.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Local retries stop once a delivery has run this long, so the answer goes
/// out well before Event Grid's 30 s timeout (after which it retries anyway).
const LOCAL_RETRY_BUDGET: Duration = Duration::from_secs(20);

/// The `handler` label of events the shared endpoint routed to no handler.
pub const UNMATCHED_LABEL: &str = "*";

/// What handlers see as `delivery.subscription` for events from the local topic.
pub const LOCAL_TOPIC_SUBSCRIPTION: &str = "gridfn-local-topic";

/// Everything a delivery needs, built once at start.
pub struct Host {
    auth: Authenticator,
    pub(crate) routes: Vec<Route>,
    dedup: Arc<Dedup>,
    deadletter: DeadLetterStore,
    pub metrics: Metrics,
    /// Instances alive at once, all handlers together: what the pooling
    /// allocator holds.
    instances: Semaphore,
    pub max_body: usize,
    validation: Validation,
    pub event_grid_domains: EventGridDomains,
    /// Compiles new handler versions; owns the engine and its epoch ticker.
    pub(crate) sandbox: Arc<Sandbox>,
    pub(crate) deployments: Deployments,
    pub(crate) admin_keys: Vec<String>,
    /// `server.watch`: the folder watched for new handler versions.
    pub watch: Option<std::path::PathBuf>,
    /// Sends what handlers publish to Event Grid topics.
    publisher: reqwest::Client,
}

/// A handler as the manifest lists it (filter, retries, limits), and the
/// version of it that runs now.
pub(crate) struct Route {
    pub(crate) config: config::Handler,
    /// Swapped atomically by a deploy; an event takes its own reference at
    /// the start, so events in flight finish on the version they started on.
    pub(crate) current: RwLock<Arc<LoadedHandler>>,
    /// What a rollback goes back to.
    pub(crate) previous: Mutex<Option<Arc<LoadedHandler>>>,
    /// `max_concurrency` permits: instances of this handler alive at once.
    slots: Semaphore,
    /// Its instances on CPU at once (see [`crate::cpu`]): every core but one
    /// when there are other handlers, so no handler, however busy or hostile,
    /// can take every core from the others; a handler waiting on I/O holds
    /// none.
    on_cpu: CpuSlots,
    /// Events waiting for a permit; bounded by `queue`, so a flood costs a
    /// 503, never unbounded memory.
    waiting: AtomicUsize,
}

/// Which handlers a request is for.
pub enum Target<'a> {
    /// `POST /api/events`: every handler whose filter matches.
    All,
    /// `POST /api/events/{name}` and the Azure Functions-style URL.
    Handler(&'a str),
}

impl Host {
    /// Compiles every handler (or takes it from the compile cache) and opens
    /// the stores. Fails if any handler does not fit the contract or a store
    /// cannot be reached.
    pub async fn start(manifest: &Manifest) -> anyhow::Result<Host> {
        let max_memory = manifest.handlers.iter().map(|h| h.memory).max().unwrap_or(64 << 20);
        let fuel = manifest.handlers.iter().any(|h| h.fuel.is_some());
        let kv = match manifest.handlers.iter().any(|h| h.capabilities.kv) {
            true => Some(crate::kv::open(&manifest.dedup.store, &manifest.server.state_dir).await?),
            false => None,
        };
        let sandbox = Sandbox::new(max_memory, fuel, &manifest.server.cache_dir, kv)?;
        let deployments = Deployments::new(&manifest.server.state_dir);
        let routes = manifest
            .handlers
            .iter()
            .map(|h| {
                let handler = match deployments.current(&h.name)? {
                    Some((bytes, source)) => {
                        tracing::warn!(handler = %h.name, "running the version deployed last ({source}), not {}", h.module.display());
                        sandbox.load_bytes(h, &bytes, &source)?
                    }
                    None => sandbox.load(h)?,
                };
                Ok(Route {
                    config: h.clone(),
                    current: RwLock::new(Arc::new(handler)),
                    previous: Mutex::new(None),
                    slots: Semaphore::new(h.max_concurrency.min(MAX_INSTANCES as usize)),
                    on_cpu: CpuSlots::new(cpu_share(manifest.handlers.len())),
                    waiting: AtomicUsize::new(0),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let entra = match &manifest.server.entra {
            Some(config) => Some(EntraValidator::new(config).await?),
            None => None,
        };
        if manifest.server.allow_anonymous && manifest.server.keys.is_empty() && entra.is_none() {
            tracing::warn!(
                "ANONYMOUS ACCESS: server.allow_anonymous is set and no key is configured; anyone who can reach this port can deliver events"
            );
        }
        Ok(Host {
            auth: Authenticator::new(&manifest.server.keys, manifest.server.allow_anonymous, entra),
            routes,
            dedup: Dedup::new(crate::dedup::open(&manifest.dedup.store).await?, manifest.dedup.ttl),
            deadletter: DeadLetterStore::open(&manifest.deadletter).await?,
            metrics: Metrics::default(),
            instances: Semaphore::new(MAX_INSTANCES as usize),
            max_body: manifest.server.max_body,
            validation: manifest.server.validation,
            event_grid_domains: EventGridDomains::new(&manifest.server.event_grid_domains),
            sandbox: Arc::new(sandbox),
            deployments,
            admin_keys: manifest.server.admin_keys.clone(),
            watch: manifest.server.watch.clone(),
            publisher: reqwest::Client::new(),
        })
    }

    pub fn handler_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.config.name.as_str())
    }

    /// Forgets expired dedup records; the server calls it periodically.
    pub async fn sweep(&self) {
        self.dedup.sweep().await;
    }

    /// Handles one pushed request, from authentication to verdict.
    pub async fn deliver(
        &self,
        target: Target<'_>,
        headers: &HeaderMap,
        code: Option<&str>,
        body: Bytes,
    ) -> Result<Response, RequestError> {
        let received = Received { at: Instant::now(), time: OffsetDateTime::now_utc() };
        self.auth.authenticate(headers, code).await?;
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
        let label = match target {
            Target::All => UNMATCHED_LABEL,
            Target::Handler(name) => name,
        };
        Ok(self.dispatch(&routes, label, events, &delivery, &received, 0).await.into_response())
    }

    /// Routes each event to the handlers that want it, runs every pair, and
    /// records the done ones: the verdict for a batch, whether Event Grid
    /// pushed it or a handler published it to the local topic (`depth` > 0).
    /// Events no route wants are counted under `unmatched_label`.
    ///
    /// Boxed, because publishing to the local topic comes back here.
    fn dispatch<'a>(
        &'a self,
        routes: &'a [&'a Route],
        unmatched_label: &'a str,
        events: Vec<Event>,
        delivery: &'a DeliveryInfo,
        received: &'a Received,
        depth: u32,
    ) -> BoxFuture<'a, Verdict> {
        async move {
            let mut pairs = Vec::new();
            let mut unmatched = 0;
            for (index, event) in events.into_iter().map(Arc::new).enumerate() {
                if event.event_type == SUBSCRIPTION_DELETED_EVENT {
                    let (topic, subject) = (&event.source, &event.subject);
                    tracing::warn!(%topic, ?subject, "Event Grid says a subscription was deleted; not dispatched to handlers");
                    continue;
                }
                // Parsed once per event, and only if some handler has a filter.
                let json = std::cell::OnceCell::new();
                let wanted_by: Vec<&Route> = routes.iter().copied().filter(|route| route.wants(&event, &json)).collect();
                if wanted_by.is_empty() {
                    unmatched += 1;
                    self.metrics.count(unmatched_label, PairOutcome::Unmatched);
                }
                for route in wanted_by {
                    pairs.push(self.run_pair(index, event.clone(), route, delivery, received, depth));
                }
            }
            let pairs = self.record(join_all(pairs).await).await;
            let mut verdict = Verdict::from_pairs(pairs);
            verdict.unmatched = unmatched;
            verdict
        }
        .boxed()
    }

    fn routes_for(&self, target: &Target) -> Result<Vec<&Route>, RequestError> {
        match target {
            Target::All => Ok(self.routes.iter().collect()),
            Target::Handler(name) => self
                .routes
                .iter()
                .find(|r| r.config.name == *name)
                .map(|r| vec![r])
                .ok_or_else(|| RequestError::UnknownHandler((*name).to_owned())),
        }
    }

    /// One (event, handler) pair: claim it, run it in fresh instances until
    /// it succeeds, rejects, or its local retries are used up, send what a
    /// successful run published, and dead-letter a rejection. Recording it as
    /// done is left to [`Host::record`].
    async fn run_pair(
        &self,
        index: usize,
        event: Arc<Event>,
        route: &Route,
        delivery: &DeliveryInfo,
        received: &Received,
        depth: u32,
    ) -> PairRun {
        let handler = route.handler();
        let key = DedupKey { handler: handler.name.clone(), source: event.source.clone(), id: event.id.clone() };
        // A copy already running gets as long as its deadline to finish, and a
        // lease outlives every local attempt, so no other host starts it meanwhile.
        let wait = handler.timeout() + Duration::from_secs(1);
        let lease_for = LOCAL_RETRY_BUDGET + handler.timeout() * 2;
        let lease = match self.dedup.claim(key, wait, lease_for).await {
            Claim::Run(lease) => lease,
            Claim::Done => return PairRun::new(index, &event, &handler, None, None),
            Claim::Busy => {
                let reason = "another copy of this event is still running".to_owned();
                return PairRun::new(index, &event, &handler, Some(Outcome::Retry { reason, after: None }), None);
            }
            Claim::Failed(error) => {
                let reason = format!("could not check whether the event was handled: {error}");
                return PairRun::new(index, &event, &handler, Some(Outcome::Retry { reason, after: None }), None);
            }
        };

        let mut delivery = delivery.clone();
        let mut tries = 1;
        let Invocation { outcome, published } = loop {
            let run = self.invoke(route, &handler, &event, &delivery).await;
            let Outcome::Retry { after, reason } = &run.outcome else { break run };
            let Some(delay) = route.config.retry.delay_before(tries + 1, *after) else { break run };
            if received.at.elapsed() + delay + handler.timeout() > LOCAL_RETRY_BUDGET {
                break run;
            }
            tracing::info!(handler = %handler.name, event_id = %event.id, "retrying locally in {delay:?}: {reason}");
            tokio::time::sleep(delay).await;
            tries += 1;
            delivery.attempt += 1;
        };
        let outcome = match outcome {
            Outcome::Success if !published.is_empty() => {
                self.publish(route, &handler, published, received, depth).await
            }
            other => other,
        };
        let outcome = match outcome {
            Outcome::Reject { reason } => self.dead_letter(&event, &handler, &delivery, &reason, received).await,
            other => other,
        };
        if matches!(outcome, Outcome::Success | Outcome::Reject { .. }) {
            lease.mark_done();
        }
        PairRun::new(index, &event, &handler, Some(outcome), Some(lease))
    }

    /// Sends the events a handler published after it succeeded: through this
    /// host's own routing (the local topic, one hop deeper), or to an Event
    /// Grid topic. The handler's success stands only if they were accepted;
    /// otherwise the event is retried and the handler publishes them again,
    /// with the same ids, so downstream deduplication drops what got through.
    async fn publish(
        &self,
        route: &Route,
        handler: &LoadedHandler,
        events: Vec<Published>,
        received: &Received,
        depth: u32,
    ) -> Outcome {
        let count = events.len();
        match &route.config.capabilities.publish {
            None => unreachable!("a handler without the publish grant cannot publish"),
            Some(Topic::Local) if depth + 1 >= MAX_LOCAL_DEPTH => Outcome::Reject {
                reason: format!(
                    "published events went {MAX_LOCAL_DEPTH} local hops deep; handlers are probably publishing events that route back to themselves"
                ),
            },
            Some(Topic::Local) => {
                let delivery =
                    DeliveryInfo { attempt: 0, subscription: Some(LOCAL_TOPIC_SUBSCRIPTION.into()), replay: false };
                let events = crate::publish::local_events(&events);
                let routes: Vec<&Route> = self.routes.iter().collect();
                let verdict = self.dispatch(&routes, UNMATCHED_LABEL, events, &delivery, received, depth + 1).await;
                match verdict.retry.first() {
                    None => Outcome::Success,
                    Some(first) => Outcome::Retry {
                        reason: format!(
                            "{} of the {count} events it published must be retried (first: {} in {}: {})",
                            verdict.retry.len(),
                            first.id,
                            first.handler,
                            first.reason
                        ),
                        after: verdict.retry_after,
                    },
                }
            }
            Some(Topic::EventGrid { endpoint, key }) => {
                match crate::publish::send_to_event_grid(&self.publisher, endpoint, key, &events).await {
                    Ok(()) => {
                        tracing::debug!(handler = %handler.name, "published {count} events to {endpoint}");
                        Outcome::Success
                    }
                    Err(error) => Outcome::Retry {
                        reason: format!("handler succeeded but publishing its {count} events failed: {error:#}"),
                        after: None,
                    },
                }
            }
        }
    }

    /// Runs the handler once, when one of its `max_concurrency` slots is free
    /// (waiting in its bounded queue), taking turns on the CPU with the others.
    async fn invoke(
        &self,
        route: &Route,
        handler: &Arc<LoadedHandler>,
        event: &Arc<Event>,
        delivery: &DeliveryInfo,
    ) -> Invocation {
        let _permit = match route.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let queue = route.config.queue;
                let Some(_place) = QueuePlace::take(&route.waiting, queue) else {
                    let reason = format!("{} is at max_concurrency and its queue of {queue} is full", handler.name);
                    return Invocation::failed(Outcome::Retry { reason, after: Some(Duration::from_secs(1)) });
                };
                route.slots.acquire().await.expect("handler semaphores are never closed")
            }
        };
        let _instance = self.instances.acquire().await.expect("the instance semaphore is never closed");
        let started = Instant::now();
        // The handler runs right here, on this task. A panic in gridfn's own
        // host code must not take the connection down with it.
        let run = AssertUnwindSafe(handler.invoke(event, delivery)).catch_unwind();
        match route.on_cpu.run(run).await {
            Ok(invocation) => {
                self.metrics.observe_run(&handler.name, started.elapsed().as_secs_f64());
                invocation
            }
            Err(panic) => {
                let panic =
                    panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
                let reason = format!("gridfn failed running the handler: {}", panic.unwrap_or("panic"));
                Invocation::failed(Outcome::Retry { reason, after: None })
            }
        }
    }

    /// Writes a rejected event to the dead-letter store; only a durable write
    /// makes the rejection final, otherwise the event is retried.
    async fn dead_letter(
        &self,
        event: &Event,
        handler: &LoadedHandler,
        delivery: &DeliveryInfo,
        reason: &str,
        received: &Received,
    ) -> Outcome {
        let rejection = Rejection {
            subscription: delivery.subscription.as_deref().unwrap_or(&handler.name),
            handler: &handler.name,
            reason,
            attempts: delivery.attempt + 1,
            received: received.time,
        };
        match self.deadletter.write(event, &rejection).await {
            Ok(location) => {
                tracing::warn!(handler = %handler.name, event_id = %event.id, blob = %location, "event rejected and dead-lettered: {reason}");
                Outcome::Reject { reason: reason.to_owned() }
            }
            Err(e) => Outcome::Retry {
                reason: format!("handler rejected the event ({reason}) but dead-lettering it failed: {e:#}"),
                after: None,
            },
        }
    }

    /// Records every done pair in one durable write (releasing the rest), and
    /// counts each pair's outcome. If the write fails, no pair is done.
    async fn record(&self, runs: Vec<PairRun>) -> Vec<PairRun> {
        let (mut done, mut not_done) = (Vec::new(), Vec::new());
        let mut runs = runs;
        for run in &mut runs {
            if let Some(lease) = run.lease.take() {
                let is_done = matches!(run.outcome, Some(Outcome::Success | Outcome::Reject { .. }));
                if is_done { done.push(lease) } else { not_done.push(lease) }
            }
        }
        let had_done = !done.is_empty();
        if let Err(error) = self.dedup.settle(done, not_done).await {
            tracing::error!("recording done events failed: {error}; asking Event Grid to retry them");
            if had_done {
                for run in &mut runs {
                    if matches!(run.outcome, Some(Outcome::Success | Outcome::Reject { .. })) {
                        let reason = format!("the handler finished but recording it failed: {error}");
                        run.outcome = Some(Outcome::Retry { reason, after: None });
                    }
                }
            }
        }
        for run in &runs {
            let counted = match &run.outcome {
                None => PairOutcome::Duplicate,
                Some(Outcome::Success) => PairOutcome::Success,
                Some(Outcome::Reject { .. }) => PairOutcome::Reject,
                Some(Outcome::Retry { reason, .. }) => {
                    tracing::warn!(handler = %run.handler, event_id = %run.event_id, "event will be retried: {reason}");
                    PairOutcome::Retry
                }
            };
            self.metrics.count(&run.handler, counted);
        }
        runs
    }
}

/// How many instances of one handler may be on CPU at once: every core, or
/// every core but one when other handlers need a core too. (Handlers run on
/// the runtime's worker threads, one per core, so nothing else needs bounding.)
fn cpu_share(handlers: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    if handlers > 1 { cores.saturating_sub(1).max(1) } else { cores }
}

/// A place in a handler's queue, given back when dropped (also when the
/// request is cancelled).
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(waiting: &'a AtomicUsize, queue: usize) -> Option<Self> {
        waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < queue).then_some(n + 1)).ok()?;
        Some(QueuePlace(waiting))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When the delivery arrived: a monotonic instant for budgets, wall-clock
/// time for records.
struct Received {
    at: Instant,
    time: OffsetDateTime,
}

impl Route {
    /// The version running now.
    pub(crate) fn handler(&self) -> Arc<LoadedHandler> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this handler's filter lets `event` through; `json` holds the
    /// event parsed, shared by every handler's filter.
    fn wants(&self, event: &Event, json: &std::cell::OnceCell<serde_json::Value>) -> bool {
        let Some(filter) = &self.config.filter else { return true };
        let json = json.get_or_init(|| serde_json::from_str(event.raw.get()).unwrap_or(serde_json::Value::Null));
        filter.matches(json, event.schema)
    }
}

/// What became of one (event, handler) pair.
struct PairRun {
    index: usize,
    event_id: String,
    handler: String,
    /// `None`: done before, not run again.
    outcome: Option<Outcome>,
    /// Held until the delivery's outcomes are recorded.
    lease: Option<Lease>,
}

impl PairRun {
    fn new(
        index: usize,
        event: &Event,
        handler: &LoadedHandler,
        outcome: Option<Outcome>,
        lease: Option<Lease>,
    ) -> Self {
        PairRun { index, event_id: event.id.clone(), handler: handler.name.to_string(), outcome, lease }
    }
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
    fn from_pairs(pairs: Vec<PairRun>) -> Self {
        let mut verdict =
            Verdict { succeeded: 0, duplicates: 0, rejected: 0, unmatched: 0, retry: Vec::new(), retry_after: None };
        for pair in pairs {
            match pair.outcome {
                None => verdict.duplicates += 1,
                Some(Outcome::Success) => verdict.succeeded += 1,
                Some(Outcome::Reject { .. }) => verdict.rejected += 1,
                Some(Outcome::Retry { reason, after }) => {
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
