//! The pipeline every source feeds: events and how they arrived in, a
//! [`Verdict`] out. Transport-independent: Event Grid's push ([`crate::push`]),
//! a handler's publish to the local topic (below), and later replay and pull
//! delivery all call [`Pipeline::dispatch`] and turn the verdict into their
//! own answer.
//!
//! For each event: route it (filters), then for each (event, handler) pair:
//! claim it (dedup), run it (admission, sandbox, local retries), send what a
//! success published, dead-letter a rejection; then record every done pair in
//! one durable write.
//!
//! A handler whose manifest sets `batch` takes the same steps with one call
//! for many pairs: every pair of the delivery is claimed first, the claimed
//! events go to `handle-batch` together (at most `batch` per call, one fresh
//! instance each), and each event's outcome is then honoured on its own, as a
//! `handle` call's would be.
//!
//! A batch is all-or-none for Event Grid, so the verdict is done only when
//! every pair is done (succeeded now, succeeded before, or dead-lettered);
//! otherwise the pairs to retry are listed, and the pairs that did succeed are
//! remembered so the redelivery runs only what is left.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::{BoxFuture, join_all};
use futures::stream::FuturesOrdered;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::admission::{DeliveryGate, QueueFull};
use crate::deadletter::{DeadLetterStore, Rejection};
use crate::dedup::{Claim, Dedup, DedupKey, Lease};
use crate::event::{DeliveryInfo, Event, SUBSCRIPTION_DELETED_EVENT};
use crate::kv::{KvWrites, RunWrites};
use crate::metrics::{Destination, HandlerMetrics, Metrics, PairOutcome};
use crate::publish::{MAX_LOCAL_DEPTH, Published, Topic};
use crate::registry::{Registry, Route};
use crate::sandbox::{BatchInvocation, Invocation, LoadedHandler, Outcome};
use crate::trace::{current_pair, pair_span};

/// Retry-After when no handler asked for a specific delay: Event Grid's own
/// first retry interval.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Local retries stop once a delivery has run this long, so the answer goes
/// out well before Event Grid's 30 s timeout (after which it retries anyway).
const LOCAL_RETRY_BUDGET: Duration = Duration::from_secs(20);

pub use crate::metrics::UNMATCHED_LABEL;

/// What handlers see as `delivery.subscription` for events from the local topic.
pub const LOCAL_TOPIC_SUBSCRIPTION: &str = "gridfn-local-topic";

/// The stages every event goes through, built once at start.
pub struct Pipeline {
    registry: Arc<Registry>,
    dedup: Arc<Dedup>,
    deadletter: DeadLetterStore,
    metrics: Arc<Metrics>,
    /// Sends what handlers publish to Event Grid topics.
    publisher: reqwest::Client,
}

/// Which handlers a batch is for.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Every handler whose filter matches.
    All,
    /// This one handler (its filter still applies).
    Handler(&'a str),
}

/// What became of a batch: counts per outcome, and the pairs to retry.
/// (Deserialize: `gridfn replay --to` reads it back from a remote gridfn.)
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Verdict {
    pub succeeded: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// Events no handler's filter wanted: acknowledged, not run.
    pub unmatched: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<RetryItem>,
    /// For a replay only: what became of each event, so the replay's ledger
    /// knows which records are done and which stay (a push delivery's answer
    /// stays small).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<EventOutcome>,
    /// The longest delay a pair to retry asked for (else Event Grid's first
    /// retry interval); `None` when every pair is done.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// Whether a handler said when to retry (`retry_after` is then its
    /// `after`, not the default): the pull source picks its own schedule when none did.
    #[serde(skip)]
    pub retry_after_given: bool,
}

/// One (event, handler) pair that must be retried, and why.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetryItem {
    pub event_index: usize,
    pub id: String,
    pub handler: String,
    pub reason: String,
}

/// What became of one event of a replayed batch (for one handler).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventOutcome {
    pub event_index: usize,
    /// Empty when no handler's filter wanted the event.
    pub handler: String,
    pub outcome: ReplayOutcome,
}

/// A replayed pair's outcome, as the replay's ledger and summary count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayOutcome {
    Succeeded,
    /// Succeeded before: not run again.
    Duplicate,
    /// Rejected again; not dead-lettered a second time (the record replayed
    /// is still where it was).
    Rejected,
    /// To retry: the handler failed again, or could not run.
    Failed,
    /// The handler's filter does not want the event.
    Unmatched,
}

impl ReplayOutcome {
    /// Its name as JSON has it (`succeeded`, `duplicate`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayOutcome::Succeeded => "succeeded",
            ReplayOutcome::Duplicate => "duplicate",
            ReplayOutcome::Rejected => "rejected",
            ReplayOutcome::Failed => "failed",
            ReplayOutcome::Unmatched => "unmatched",
        }
    }
}

impl Pipeline {
    pub fn new(registry: Arc<Registry>, dedup: Arc<Dedup>, deadletter: DeadLetterStore, metrics: Arc<Metrics>) -> Self {
        Pipeline { registry, dedup, deadletter, metrics, publisher: reqwest::Client::new() }
    }

    /// Runs a batch through the handlers `target` names: the one entry point
    /// of every source. Fails only for a handler this gridfn does not have.
    /// Events may come shared (a replay keeps its own reference), so they are
    /// never copied.
    pub async fn dispatch(
        &self,
        events: Vec<impl Into<Arc<Event>>>,
        delivery: &DeliveryInfo,
        target: Target<'_>,
    ) -> Result<Verdict, UnknownHandler> {
        let (routes, unmatched_label) = self.routes_for(target)?;
        let received = Received { at: Instant::now(), time: Utc::now() };
        let events = events.into_iter().map(Into::into).collect();
        Ok(self.run_batch(&routes, unmatched_label, events, delivery, &received, 0).await)
    }

    /// Fails for a handler this gridfn does not have, as `dispatch` would.
    pub fn check_target(&self, target: Target<'_>) -> Result<(), UnknownHandler> {
        self.routes_for(target).map(drop)
    }

    /// The routes `target` names, and the metrics label for events none of
    /// them wants.
    fn routes_for<'t>(&self, target: Target<'t>) -> Result<(Vec<&Route>, &'t str), UnknownHandler> {
        match target {
            Target::All => Ok((self.registry.routes().iter().collect(), UNMATCHED_LABEL)),
            Target::Handler(name) => match self.registry.route(name) {
                Some(route) => Ok((vec![route], name)),
                None => Err(UnknownHandler(name.to_owned())),
            },
        }
    }

    /// Forgets expired dedup records; the server calls it periodically.
    pub async fn sweep(&self) {
        self.dedup.sweep().await;
    }

    /// Why the stores every pair needs (dedup, dead-letter) cannot be used
    /// now, each given `limit` to answer; empty when both do (`/readyz`).
    pub async fn unreachable_stores(&self, limit: Duration) -> Vec<String> {
        let (dedup, deadletter) = tokio::join!(
            tokio::time::timeout(limit, self.dedup.ping()),
            tokio::time::timeout(limit, self.deadletter.check())
        );
        let late = |_| anyhow::anyhow!("no answer within {limit:?}");
        // StoreError's own text starts with "dedup store".
        let dedup = dedup.map_err(late).and_then(|answer| answer.map_err(|e| anyhow::anyhow!(e.0)));
        let deadletter = deadletter.map_err(late).and_then(|answer| answer);
        [("dedup store", dedup), ("dead-letter store", deadletter)]
            .into_iter()
            .filter_map(|(store, answer)| answer.err().map(|e| format!("{store}: {e:#}")))
            .collect()
    }

    /// Routes each event to the handlers that want it, runs every pair, and
    /// records the done ones. `depth` counts local-topic hops: boxed, because
    /// publishing to the local topic comes back here.
    fn run_batch<'a>(
        &'a self,
        routes: &'a [&'a Route],
        unmatched_label: &'a str,
        events: Vec<Arc<Event>>,
        delivery: &'a DeliveryInfo,
        received: &'a Received,
        depth: u32,
    ) -> BoxFuture<'a, Verdict> {
        async move {
            // Each handler's way in for this delivery, beside its route.
            let lanes: Vec<Lane> = routes.iter().map(|route| self.lane(route)).collect();
            // Each pair's future goes straight where it is polled: every move
            // of one is a copy, and a delivery may hold thousands. (It is
            // small while it waits: `admitted` makes the sandbox call's.)
            let mut pairs = FuturesOrdered::new();
            // Per route, the events a handler that takes batches wants.
            let mut batches: Vec<Vec<(usize, Arc<Event>)>> = routes.iter().map(|_| Vec::new()).collect();
            let mut unmatched = Vec::new();
            // A second copy of an event in one delivery is not claimed: it
            // would wait for the first copy's record, which this delivery
            // writes only at its end. It takes the first copy's outcome.
            // foldhash (hashbrown's own, seeded per process), not SipHash: ~1k instructions less per event.
            let mut first_copies: HashMap<(usize, &str, &str), usize, foldhash::fast::RandomState> = HashMap::default();
            let mut repeats = Vec::new();
            for (index, event) in events.iter().enumerate() {
                if event.event_type == SUBSCRIPTION_DELETED_EVENT {
                    let (topic, subject) = (&event.source, &event.subject);
                    tracing::warn!(%topic, ?subject, "Event Grid says a subscription was deleted; not dispatched to handlers");
                    continue;
                }
                // Parsed once per event, and only if some handler has a filter.
                let json = std::cell::OnceCell::new();
                let mut wanted = false;
                for (r, route) in routes.iter().enumerate().filter(|(_, route)| route.wants(event, &json)) {
                    wanted = true;
                    if let Some(&first) = first_copies.get(&(r, event.source.as_str(), event.id.as_str())) {
                        repeats.push((index, first, &route.config.name));
                        continue;
                    }
                    first_copies.insert((r, &event.source, &event.id), index);
                    match route.config.batch {
                        None => pairs.push_back(self.run_pair(index, event.clone(), &lanes[r], delivery, received, depth)),
                        Some(_) => batches[r].push((index, event.clone())),
                    }
                }
                if !wanted {
                    unmatched.push(index);
                    self.metrics.count(unmatched_label, PairOutcome::Unmatched);
                }
            }
            let batched = (lanes.iter().zip(batches))
                .filter(|(_, events)| !events.is_empty())
                .map(|(lane, events)| self.run_batched(events, lane, delivery, received));
            let (pairs, batched) = tokio::join!(pairs.collect::<Vec<_>>(), join_all(batched));
            let mut pairs = self.record(pairs.into_iter().chain(batched.into_iter().flatten()).collect()).await;
            for (index, first, handler) in repeats {
                let first = pairs.iter().find(|run| run.index == first && *run.handler == **handler);
                let repeat = first.expect("a first copy runs before its repeats").repeated_at(index);
                self.metrics.count(&repeat.handler, counted(repeat.outcome.as_ref()));
                pairs.push(repeat);
            }
            let mut verdict = Verdict::from_pairs(pairs, delivery.replay);
            verdict.unmatched = unmatched.len();
            if delivery.replay {
                verdict.outcomes.extend(unmatched.into_iter().map(|event_index| EventOutcome {
                    event_index,
                    handler: String::new(),
                    outcome: ReplayOutcome::Unmatched,
                }));
            }
            verdict
        }
        .boxed()
    }

    /// One (event, handler) pair: claim it, run it until it succeeds, rejects,
    /// or its local retries are used up, send what a successful run
    /// published, and dead-letter a rejection. Recording it as done is left
    /// to [`Pipeline::record`]. Runs in the pair's span ([`crate::trace`]),
    /// off unless `gridfn::spans` is enabled at debug (see `main.rs`).
    #[tracing::instrument(name = "pair", target = "gridfn::spans", level = "debug", skip_all, fields(
        event_id = %event.id, event_type = %event.event_type, subject = event.subject.as_deref(),
        handler = %lane.route.config.name, delivery_count = delivery.attempt, attempt = tracing::field::Empty,
        outcome = tracing::field::Empty, trace_id = tracing::field::Empty, span_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
    ))]
    #[allow(clippy::too_many_arguments)]
    async fn run_pair(
        &self,
        index: usize,
        event: Arc<Event>,
        lane: &Lane<'_>,
        delivery: &DeliveryInfo,
        received: &Received,
        depth: u32,
    ) -> PairRun {
        let handler = lane.route.handler();
        // The pair's trace ids are needed only by its span, when spans are
        // on, and by the events it publishes: made then, not per event.
        let span = current_pair();
        let mut trace = (!span.is_none()).then(|| pair_span(&event, delivery.traceparent));
        let mut lease = match self.claim(index, &event, &handler, lane, delivery).await {
            Ok(lease) => lease,
            Err(not_run) => return not_run,
        };
        let (Invocation { outcome, mut published, writes, .. }, delivery) =
            self.run_with_local_retries(lane, &handler, &event, delivery, received).await;
        lease.attach_writes(RunWrites::new(writes));
        span.record("attempt", delivery.attempt + 1);
        if !published.is_empty() {
            let trace = *trace.get_or_insert_with(|| pair_span(&event, delivery.traceparent));
            published.iter_mut().for_each(|event| event.traceparent = Some(trace));
        }
        let outcome = match outcome {
            // Boxed, as in `conclude`: rare, and large futures.
            Outcome::Success if !published.is_empty() => {
                Box::pin(self.publish(lane, &handler, published, received, depth)).await
            }
            other => other,
        };
        self.conclude(index, &event, &handler, lane, outcome, lease, &delivery, received).await
    }

    /// The events of a delivery for a handler that takes batches: claims
    /// every pair, runs the claimed ones in calls of at most `batch` events
    /// (side by side, as admission allows), and concludes each pair with its
    /// own outcome. (A batch handler publishes nothing: the manifest refuses
    /// `publish` with `batch`.)
    async fn run_batched(
        &self,
        events: Vec<(usize, Arc<Event>)>,
        lane: &Lane<'_>,
        delivery: &DeliveryInfo,
        received: &Received,
    ) -> Vec<PairRun> {
        let handler = lane.route.handler();
        let keys = events.iter().map(|(_, event)| pair_key(&handler, event)).collect();
        let (wait, lease_for) = claim_times(&handler);
        let claims = self.dedup.claim_all(keys, wait, lease_for, delivery.replay).await;
        let mut runs = Vec::new();
        let mut claimed = Vec::new();
        for ((index, event), claim) in events.into_iter().zip(claims) {
            match claimed_or_not(index, &event, &handler, lane, claim) {
                Ok(lease) => claimed.push((index, event, lease)),
                Err(not_run) => runs.push(not_run),
            }
        }
        let size = lane.route.config.batch.unwrap_or(1);
        let to_run: Vec<Arc<Event>> = claimed.iter().map(|(_, event, _)| event.clone()).collect();
        let calls =
            to_run.chunks(size).map(|call| self.run_call_with_local_retries(lane, &handler, call, delivery, received));
        let outcomes = join_all(calls).await.into_iter().flatten();
        let handler = &handler;
        let finished = claimed.into_iter().zip(outcomes).map(
            |((index, event, mut lease), (outcome, reruns, writes))| async move {
                lease.attach_writes(writes);
                let seen = DeliveryInfo { attempt: delivery.attempt + reruns, ..delivery.clone() };
                self.conclude(index, &event, handler, lane, outcome, lease, &seen, received).await
            },
        );
        runs.extend(join_all(finished).await);
        runs
    }

    /// Claims a pair: its lease, or, when it must not run now (done before,
    /// running elsewhere, the store failed), what became of it.
    async fn claim(
        &self,
        index: usize,
        event: &Event,
        handler: &LoadedHandler,
        lane: &Lane<'_>,
        delivery: &DeliveryInfo,
    ) -> Result<Lease, PairRun> {
        let (wait, lease_for) = claim_times(handler);
        let claim = self.dedup.claim_as(pair_key(handler, event), wait, lease_for, delivery.replay).await;
        claimed_or_not(index, event, handler, lane, claim)
    }

    /// Ends a pair that ran: dead-letters a rejection (a replayed one stays
    /// where it is), and marks the lease done on a success or rejection.
    /// `delivery` is as the pair's last run saw it.
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        index: usize,
        event: &Event,
        handler: &LoadedHandler,
        lane: &Lane<'_>,
        outcome: Outcome,
        mut lease: Lease,
        delivery: &DeliveryInfo,
        received: &Received,
    ) -> PairRun {
        let outcome = match outcome {
            // A replayed record that is rejected again stays where it is (the
            // replay's ledger notes it): a second blob would replay it twice.
            Outcome::Reject { reason } if delivery.replay => {
                tracing::warn!(handler = %handler.name, event_id = %event.id, "replayed event rejected again: {reason}");
                Outcome::Reject { reason }
            }
            // Boxed: a dead-letter write's future is large, and rare.
            Outcome::Reject { reason } => {
                Box::pin(self.dead_letter(event, handler, lane, delivery, &reason, received)).await
            }
            other => other,
        };
        if let Outcome::Reject { .. } = outcome {
            lease.mark_rejected();
        }
        PairRun::new(index, event, handler, Some(outcome), Some(lease))
    }

    /// Runs the handler, and again after a pause while its outcome is a retry
    /// and its `retry` policy and the delivery's time budget allow. Returns
    /// the last run and the delivery as that run saw it (its attempt count).
    async fn run_with_local_retries(
        &self,
        lane: &Lane<'_>,
        handler: &Arc<LoadedHandler>,
        event: &Arc<Event>,
        delivery: &DeliveryInfo,
        received: &Received,
    ) -> (Invocation, DeliveryInfo) {
        let mut delivery = delivery.clone();
        let mut runs = 1;
        loop {
            let run = self.invoke(lane, handler, event, &delivery).await;
            let Outcome::Retry { after, reason } = &run.outcome else { return (run, delivery) };
            let Some(delay) = local_retry_delay(lane.route, handler, received, runs + 1, *after) else {
                return (run, delivery);
            };
            tracing::info!(handler = %handler.name, event_id = %event.id, "retrying locally in {delay:?}: {reason}");
            lane.metrics.retried_locally();
            tokio::time::sleep(delay).await;
            runs += 1;
            delivery.attempt += 1;
        }
    }

    /// [`Pipeline::run_with_local_retries`] for a call of `handle-batch`:
    /// calls again with only the events whose outcome was a retry. Each
    /// event's last outcome, how many times it ran again locally, and the kv
    /// writes of the call that gave it (shared by that call's events: they
    /// are applied with the first of them recorded done).
    async fn run_call_with_local_retries(
        &self,
        lane: &Lane<'_>,
        handler: &Arc<LoadedHandler>,
        events: &[Arc<Event>],
        delivery: &DeliveryInfo,
        received: &Received,
    ) -> Vec<(Outcome, u32, RunWrites)> {
        let mut delivery = delivery.clone();
        let mut last: Vec<Option<(Outcome, u32, RunWrites)>> = vec![None; events.len()];
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut runs = 1;
        loop {
            let call: Vec<Arc<Event>> = pending.iter().map(|&i| events[i].clone()).collect();
            let (outcomes, writes) = self.invoke_batch(lane, handler, call, &delivery).await;
            let writes = RunWrites::new(writes);
            for (&i, outcome) in pending.iter().zip(outcomes) {
                last[i] = Some((outcome, runs - 1, writes.clone()));
            }
            let retry_after = |i: &usize| match &last[*i] {
                Some((Outcome::Retry { after, .. }, _, _)) => Some(*after),
                _ => None,
            };
            pending.retain(|i| retry_after(i).is_some());
            let asked = pending.iter().filter_map(|i| retry_after(i).flatten()).max();
            let delay = match pending.is_empty() {
                true => None,
                false => local_retry_delay(lane.route, handler, received, runs + 1, asked),
            };
            let Some(delay) = delay else { break };
            let count = pending.len();
            tracing::info!(handler = %handler.name, "retrying {count} events of a batch locally in {delay:?}");
            (0..count).for_each(|_| lane.metrics.retried_locally());
            tokio::time::sleep(delay).await;
            runs += 1;
            delivery.attempt += 1;
        }
        last.into_iter().map(|outcome| outcome.expect("the first call runs every event")).collect()
    }

    /// Runs the handler once for one event.
    async fn invoke(
        &self,
        lane: &Lane<'_>,
        handler: &Arc<LoadedHandler>,
        event: &Arc<Event>,
        delivery: &DeliveryInfo,
    ) -> Invocation {
        let (called, event, delivery) = (handler.clone(), event.clone(), delivery.clone());
        match self.admitted(lane, handler, move || async move { called.invoke(&event, &delivery).await }).await {
            Ok(invocation) => {
                observe_instantiation(lane, invocation.instantiation);
                invocation
            }
            Err(outcome) => Invocation::failed(outcome),
        }
    }

    /// Runs `handle-batch` once for `events`: an outcome per event, and the
    /// call's kv writes.
    async fn invoke_batch(
        &self,
        lane: &Lane<'_>,
        handler: &Arc<LoadedHandler>,
        events: Vec<Arc<Event>>,
        delivery: &DeliveryInfo,
    ) -> (Vec<Outcome>, KvWrites) {
        let count = events.len();
        let (called, delivery) = (handler.clone(), delivery.clone());
        let call = move || async move { called.invoke_batch(&events, &delivery).await };
        match self.admitted(lane, handler, call).await {
            Ok(BatchInvocation { outcomes, writes, instantiation }) => {
                observe_instantiation(lane, instantiation);
                (outcomes, writes)
            }
            Err(outcome) => (vec![outcome; count], KvWrites::default()),
        }
    }

    /// Runs `call` (one call into the handler) when admission lets it,
    /// taking turns on the CPU with the others. The outcome to retry with
    /// when it could not run: the queue was full, or gridfn's own host code
    /// panicked (which must not take the connection down with it).
    ///
    /// The call runs on a task of its own, made only once admitted. A
    /// delivery's events all wait on the delivery's task, and admission lets
    /// them in first come, first served: with `max_concurrency` below the
    /// events in flight, the calls admitted were mostly one delivery's, and
    /// ran one at a time on its one thread (a replay of 8 batches of 100 at
    /// `max_concurrency = 64`: 1.5 of 2 cores busy, 24k events/s; on tasks
    /// of their own: 1.87 cores, 43k, and 43 µs of CPU per event instead of
    /// 60). The call's future is large (the sandbox's instantiate and call),
    /// and every event waiting in a queue would otherwise hold one (a
    /// delivery of 5,000 events, 5,000).
    async fn admitted<F>(
        &self,
        lane: &Lane<'_>,
        handler: &LoadedHandler,
        call: impl FnOnce() -> F,
    ) -> Result<F::Output, Outcome>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let metrics = lane.metrics;
        let queued = metrics.queued();
        let admitted = match lane.gate.admit().await {
            Ok(admitted) => admitted,
            Err(QueueFull { queue }) => {
                let reason = format!("{} is at max_concurrency and its queue of {queue} is full", handler.name);
                return Err(Outcome::Retry { reason, after: Some(QueueFull::RETRY_AFTER) });
            }
        };
        drop(queued);
        // Counted inside the task, so the count falls as the call ends, before
        // the task gives its admission back to the next event.
        let in_flight = metrics.in_flight();
        let started = Instant::now();
        let call = call();
        let counted = async move {
            let _in_flight = in_flight;
            call.await
        };
        // Cancelled with the delivery: the task is aborted, and its
        // admission given back once the call is dropped.
        let mut running =
            AbortOnDrop(tokio::spawn(admitted.run(AssertUnwindSafe(counted).catch_unwind()).in_current_span()));
        let ran = (&mut running.0).await.unwrap_or_else(|e| Err(Box::new(format!("its task ended: {e}"))));
        match ran {
            Ok(ran) => {
                metrics.observe_run(started.elapsed().as_secs_f64());
                Ok(ran)
            }
            Err(panic) => {
                let panic =
                    panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
                let reason = format!("gridfn failed running the handler: {}", panic.unwrap_or("panic"));
                Err(Outcome::Retry { reason, after: None })
            }
        }
    }

    /// A handler's way into the pipeline for one delivery: its route, its
    /// admission gate, and its metric handles, found once per delivery.
    fn lane<'r>(&'r self, route: &'r Route) -> Lane<'r> {
        Lane { route, gate: route.admission.for_delivery(), metrics: self.metrics.handler(&route.config.name) }
    }

    /// Sends the events a handler published after it succeeded: to the local
    /// topic, or to an Event Grid topic. The handler's success stands only if
    /// they were accepted; otherwise the event is retried and the handler
    /// publishes them again, with the same ids, so downstream deduplication
    /// drops what got through.
    async fn publish(
        &self,
        lane: &Lane<'_>,
        handler: &LoadedHandler,
        events: Vec<Published>,
        received: &Received,
        depth: u32,
    ) -> Outcome {
        let count = events.len();
        let metrics = lane.metrics;
        match &lane.route.config.capabilities.publish {
            None => unreachable!("a handler without the publish grant cannot publish"),
            Some(Topic::Local) => {
                metrics.published(Destination::Local, count);
                self.local_topic(events, received, depth).await
            }
            Some(Topic::EventGrid { endpoint, key }) => {
                match crate::publish::send_to_event_grid(&self.publisher, endpoint, key, &events).await {
                    Ok(()) => {
                        metrics.published(Destination::EventGrid, count);
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

    /// The local topic, a source of its own: published events go through
    /// this pipeline like a pushed delivery to every handler, one hop
    /// deeper, and the verdict becomes the publisher's outcome (success only
    /// if every published event is done).
    async fn local_topic(&self, events: Vec<Published>, received: &Received, depth: u32) -> Outcome {
        if depth + 1 >= MAX_LOCAL_DEPTH {
            return Outcome::Reject {
                reason: format!(
                    "published events went {MAX_LOCAL_DEPTH} local hops deep; handlers are probably publishing events that route back to themselves"
                ),
            };
        }
        let count = events.len();
        let delivery = DeliveryInfo { subscription: Some(LOCAL_TOPIC_SUBSCRIPTION.into()), ..Default::default() };
        let routes: Vec<&Route> = self.registry.routes().iter().collect();
        let events = crate::publish::local_events(&events).into_iter().map(Arc::new).collect();
        let verdict = self.run_batch(&routes, UNMATCHED_LABEL, events, &delivery, received, depth + 1).await;
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

    /// Writes a rejected event to the dead-letter store; only a durable write
    /// makes the rejection final, otherwise the event is retried.
    async fn dead_letter(
        &self,
        event: &Event,
        handler: &LoadedHandler,
        lane: &Lane<'_>,
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
        let written = self.deadletter.write(event, &rejection).await;
        lane.metrics.dead_lettered(written.is_ok());
        match written {
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

    /// Records every done pair, with its run's kv writes, in one durable write
    /// (releasing the rest, whose writes are dropped), and counts each pair's
    /// outcome. If the write fails, no pair is done and nothing is written.
    async fn record(&self, mut runs: Vec<PairRun>) -> Vec<PairRun> {
        let (mut done, mut not_done) = (Vec::new(), Vec::new());
        for run in &mut runs {
            if let Some(lease) = run.lease.take() {
                if run.is_done() { done.push(lease) } else { not_done.push(lease) }
            }
        }
        if let Err(error) = self.dedup.settle(done, not_done).await {
            tracing::error!("recording done events failed: {error}; asking for them to be retried");
            for run in runs.iter_mut().filter(|run| run.is_done()) {
                let reason = format!("the handler finished but recording it failed: {error}");
                run.outcome = Some(Outcome::Retry { reason, after: None });
            }
        }
        for run in &runs {
            if let Some(Outcome::Retry { reason, .. }) = &run.outcome {
                tracing::warn!(handler = %run.handler, event_id = %run.event_id, "event will be retried: {reason}");
            }
            self.metrics.count(&run.handler, counted(run.outcome.as_ref()));
        }
        runs
    }
}

/// A handler's `retry` policy: local retries of transient failures,
/// before the source is told to retry (Event Grid: 503). The schedule lives
/// here, beside [`Pipeline::run_with_local_retries`], the code that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included; 1 means no local retry (the default).
    pub attempts: u32,
    /// Whether the delay doubles from `initial` up to `max`, or stays at `initial`.
    pub exponential: bool,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        exponential: true,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };

    /// The pause before run number `run` (2 is the first retry), or `None`
    /// when the attempts are used up. A delay the handler asked for wins.
    pub fn delay_before(&self, run: u32, asked: Option<Duration>) -> Option<Duration> {
        if run > self.attempts {
            return None;
        }
        let computed = if self.exponential {
            self.initial.saturating_mul(1 << (run - 2).min(20)).min(self.max)
        } else {
            self.initial
        };
        Some(asked.unwrap_or(computed))
    }
}

/// The pause before local run number `run` (2 is the first retry), when the
/// handler's `retry` policy allows one and it still fits the delivery's time
/// budget (one more run included).
fn local_retry_delay(
    route: &Route,
    handler: &LoadedHandler,
    received: &Received,
    run: u32,
    asked: Option<Duration>,
) -> Option<Duration> {
    let delay = route.config.retry.delay_before(run, asked)?;
    (received.at.elapsed() + delay + handler.timeout() <= LOCAL_RETRY_BUDGET).then_some(delay)
}

/// The dedup key of `event` for `handler`.
fn pair_key(handler: &LoadedHandler, event: &Event) -> DedupKey {
    DedupKey::new(handler.name.clone(), event.source.as_str(), event.id.as_str())
}

/// How long a claim waits for a copy already running, and how long its lease
/// lasts: a copy already running gets as long as its deadline to finish, and
/// a lease outlives every local attempt, so no other host starts it meanwhile.
fn claim_times(handler: &LoadedHandler) -> (Duration, Duration) {
    (handler.timeout() + Duration::from_secs(1), LOCAL_RETRY_BUDGET + handler.timeout() * 2)
}

/// A pair's lease, or, when it must not run now (done before, running
/// elsewhere, the store failed), what became of it. A replay may run a pair
/// that was dead-lettered (never one that succeeded): dedup answers so.
// The `Err` is the pair's result, moved once into the delivery's list: as large as an `Ok` run's.
#[allow(clippy::result_large_err)]
fn claimed_or_not(
    index: usize,
    event: &Event,
    handler: &LoadedHandler,
    lane: &Lane<'_>,
    claim: Claim,
) -> Result<Lease, PairRun> {
    lane.metrics.claimed(&claim);
    let retry = |reason: String| Some(Outcome::Retry { reason, after: None });
    match claim {
        Claim::Run(lease) => Ok(lease),
        Claim::Done => Err(PairRun::new(index, event, handler, None, None)),
        Claim::Busy => {
            let reason = "another copy of this event is still running".to_owned();
            Err(PairRun::new(index, event, handler, retry(reason), None))
        }
        Claim::Failed(error) => {
            let reason = format!("could not check whether the event was handled: {error}");
            Err(PairRun::new(index, event, handler, retry(reason), None))
        }
    }
}

fn observe_instantiation(lane: &Lane<'_>, instantiation: Option<Duration>) {
    if let Some(instantiation) = instantiation {
        lane.metrics.observe_instantiation(instantiation.as_secs_f64());
    }
}

/// One handler's way in for one delivery ([`Pipeline::lane`]).
struct Lane<'a> {
    route: &'a Route,
    /// Its events wait here for an instance.
    gate: DeliveryGate<'a>,
    /// Its series, looked up once per delivery rather than per event.
    metrics: &'a HandlerMetrics,
}

/// A pair's outcome as metrics and spans count it (`None`: done before).
fn counted(outcome: Option<&Outcome>) -> PairOutcome {
    match outcome {
        None => PairOutcome::Duplicate,
        Some(Outcome::Success) => PairOutcome::Success,
        Some(Outcome::Reject { .. }) => PairOutcome::Reject,
        Some(Outcome::Retry { .. }) => PairOutcome::Retry,
    }
}

/// A batch named a handler this gridfn does not have.
#[derive(Debug)]
pub struct UnknownHandler(pub String);

/// When the batch arrived: a monotonic instant for budgets, wall-clock time
/// for records.
struct Received {
    at: Instant,
    time: DateTime<Utc>,
}

/// What became of one (event, handler) pair.
struct PairRun {
    index: usize,
    event_id: String,
    /// The handler's own name, shared (no copy per pair).
    handler: Arc<str>,
    /// `None`: done before, not run again.
    outcome: Option<Outcome>,
    /// Held until the batch's outcomes are recorded.
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
        // The pair's span (current here) says how it ended.
        current_pair().record("outcome", counted(outcome.as_ref()).label());
        PairRun { index, event_id: event.id.clone(), handler: handler.name.clone(), outcome, lease }
    }

    /// A second copy of this pair's event in the same delivery: a duplicate
    /// once this one is done, retried with it otherwise.
    fn repeated_at(&self, index: usize) -> PairRun {
        let outcome = match &self.outcome {
            Some(Outcome::Retry { reason, after }) => Some(Outcome::Retry { reason: reason.clone(), after: *after }),
            _ => None,
        };
        PairRun { index, event_id: self.event_id.clone(), handler: self.handler.clone(), outcome, lease: None }
    }

    /// Succeeded or dead-lettered now (not a duplicate, not a retry).
    fn is_done(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Success | Outcome::Reject { .. }))
    }
}

impl Verdict {
    /// Counts the pairs; `per_event` also lists each pair's outcome (replays).
    fn from_pairs(pairs: Vec<PairRun>, per_event: bool) -> Self {
        let mut verdict = Verdict::default();
        for pair in pairs {
            if per_event {
                let outcome = match &pair.outcome {
                    None => ReplayOutcome::Duplicate,
                    Some(Outcome::Success) => ReplayOutcome::Succeeded,
                    Some(Outcome::Reject { .. }) => ReplayOutcome::Rejected,
                    Some(Outcome::Retry { .. }) => ReplayOutcome::Failed,
                };
                let handler = pair.handler.to_string();
                verdict.outcomes.push(EventOutcome { event_index: pair.index, handler, outcome });
            }
            match pair.outcome {
                None => verdict.duplicates += 1,
                Some(Outcome::Success) => verdict.succeeded += 1,
                Some(Outcome::Reject { .. }) => verdict.rejected += 1,
                Some(Outcome::Retry { reason, after }) => {
                    verdict.retry_after_given |= after.is_some();
                    let after = after.unwrap_or(DEFAULT_RETRY_AFTER);
                    verdict.retry_after = Some(verdict.retry_after.map_or(after, |a| a.max(after)));
                    verdict.retry.push(RetryItem {
                        event_index: pair.index,
                        id: pair.event_id,
                        handler: pair.handler.to_string(),
                        reason,
                    });
                }
            }
        }
        verdict
    }
}

/// A spawned handler call, aborted if the delivery waiting for it is
/// dropped (a sender that hung up): it must not run on unobserved.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `make` returns, without calling it.
    fn future_size<F>(_make: impl FnOnce() -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every event of a delivery has its pair's future from the start, and
    /// waits in it for admission: a delivery of 5,000 events holds 5,000.
    /// The sandbox call's future (instantiate and call, the largest part)
    /// is made only once admitted, so a waiting pair must not contain one.
    #[test]
    #[allow(unreachable_code, clippy::diverging_sub_expression)]
    fn a_waiting_pair_holds_no_sandbox_call() {
        let pair = future_size(|| {
            let (pipeline, lane, event, delivery, received): (&Pipeline, &Lane, Arc<Event>, &DeliveryInfo, &Received) =
                unreachable!();
            pipeline.run_pair(0, event, lane, delivery, received, 0)
        });
        let call = future_size(|| {
            let (handler, event, delivery): (&LoadedHandler, &Event, &DeliveryInfo) = unreachable!();
            handler.invoke(event, delivery)
        });
        assert!(pair < call, "a pair's future is {pair} bytes, the sandbox call's {call}");
    }
}
