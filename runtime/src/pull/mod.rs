//! The pull source: events received from Event Grid namespace
//! subscriptions, run through the pipeline like pushed ones, and settled by
//! their lock tokens according to the verdict. Its sources are `[[pull]]`
//! (a namespace over HTTP: Azure's, or another gridfn's) and the push
//! subscriptions of the namespace this gridfn serves (`delivery = "push"`,
//! taken from its broker in-process), handled alike:
//!
//! - done (succeeded, succeeded before, or no handler wanted it) → `:acknowledge`;
//! - to retry → `:release`, delayed by the allowed delay (0, 10, 60, 600 or
//!   3600 s) nearest the handler's `after`, or, when it gave none, by the
//!   source's `release_schedule` entry for the event's `deliveryCount`;
//! - rejected → `:reject` (the subscription dead-letters it), after the
//!   pipeline wrote it to gridfn's own dead-letter store.
//!
//! `brokerProperties.deliveryCount` becomes `delivery.attempt` as attempts
//! before this one (`deliveryCount - 1`, so a first delivery is attempt 0 as
//! for pushed events), and dedup applies as for pushed events: a redelivered
//! event that already succeeded is acknowledged without running. While an
//! event runs, its lock is renewed every half lock duration. Tokens a
//! settle call reports failed (in its 200) are logged and counted
//! ([`metrics`]); their events come back when the lock expires, and dedup
//! keeps a succeeded one from running twice. Receive errors back off from
//! 1 s to 30 s.
//!
//! - [`config`]: `[[pull]]` in the manifest.
//! - [`client`]: the data-plane calls over HTTP.
//! - [`token`]: Entra tokens by client credentials, for `[[pull]] entra`.
//! - [`source`]: HTTP or the local broker, behind one receive and settle.
//! - [`metrics`]: received, settled, renewed and failed tokens per source.

pub mod client;
pub mod config;
pub mod metrics;
pub mod source;
pub mod token;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Manifest;
use crate::event::DeliveryInfo;
use crate::metrics::Metrics;
use crate::namespace::broker::{Broker, Settle};
use crate::pipeline::{Pipeline, Target, Verdict};
use client::{Client, Delivery};
use config::{Pull, nearest_release_delay, scheduled_delay};
use source::Source;

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Events a push subscription's consumer receives at once, and runs at once.
const PUSH_BATCH: u32 = 10;

/// How long a push subscription's consumer waits in one receive (the
/// broker wakes it at once when an event is published).
const PUSH_WAIT: Duration = Duration::from_secs(60);

/// How a consumer receives and runs: from `[[pull]]`, or a push subscription's settings.
struct Settings {
    /// `topic/subscription`: the name in logs and the metrics' `source`.
    label: String,
    subscription: String,
    handler: Option<String>,
    max_events: u32,
    max_wait: Duration,
    lock_duration: Duration,
    concurrency: usize,
    release_schedule: Vec<Duration>,
}

/// One source: where its events come from, the pipeline, and the locks it holds.
struct Consumer {
    settings: Settings,
    source: Source,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    /// Tokens of events running now: the renewer extends their locks.
    running: Mutex<HashSet<String>>,
    /// Events received and not yet settled: shutdown waits for them.
    unsettled: tokio::sync::watch::Sender<usize>,
}

/// The running consumers: a receive loop and a lock renewer each.
pub struct Consumers {
    consumers: Vec<Arc<Consumer>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Set at shutdown: the receive loops stop receiving.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// How often shutdown checks whether the running events have finished.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The `source` label of every consumer the manifest starts, so their
/// metrics exist from the start.
pub fn sources(manifest: &Manifest) -> Vec<String> {
    let pulls = manifest.pull.iter().map(Pull::label);
    let topics = manifest.namespace.iter().flat_map(|n| &n.topics);
    let pushes = topics.flat_map(|t| {
        (t.subscriptions.iter())
            .filter(|s| matches!(s.delivery, crate::namespace::config::Delivery::Push { .. }))
            .map(move |s| format!("{}/{}", t.name, s.name))
    });
    pulls.chain(pushes).collect()
}

/// Starts a receive loop and a lock renewer per `[[pull]]` and per push
/// subscription of `namespace`.
pub fn start(
    pulls: &[Pull],
    namespace: Option<&Arc<Broker>>,
    pipeline: &Arc<Pipeline>,
    metrics: &Arc<Metrics>,
) -> Consumers {
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut consumers = Consumers { consumers: Vec::new(), tasks: Vec::new(), stopping };
    let mut start = |settings: Settings, source: Source| {
        let consumer = Arc::new(Consumer {
            settings,
            source,
            pipeline: pipeline.clone(),
            metrics: metrics.clone(),
            running: Mutex::default(),
            unsettled: tokio::sync::watch::Sender::new(0),
        });
        let stop = consumers.stopping.subscribe();
        consumers.tasks.push(tokio::spawn(consumer.clone().receive_loop(stop)));
        consumers.tasks.push(tokio::spawn(consumer.clone().renew_loop()));
        consumers.consumers.push(consumer);
    };
    for pull in pulls {
        tracing::info!(source = %pull.label(), "pulling events from {}", pull.endpoint);
        let settings = Settings {
            label: pull.label(),
            subscription: pull.subscription.clone(),
            handler: pull.handler.clone(),
            max_events: pull.max_events,
            max_wait: pull.max_wait,
            lock_duration: pull.lock_duration,
            concurrency: pull.concurrency,
            release_schedule: pull.release_schedule.clone(),
        };
        start(settings, Source::Remote(Box::new(Client::new(pull))));
    }
    for (subscription, handler) in namespace.into_iter().flat_map(|b| b.push_subscriptions()) {
        tracing::info!(source = %subscription.label(), "pushing namespace events to handler {handler}");
        let settings = Settings {
            label: subscription.label(),
            subscription: subscription.config.name.to_string(),
            handler: Some(handler.to_owned()),
            max_events: PUSH_BATCH,
            max_wait: PUSH_WAIT,
            lock_duration: subscription.config.lock_duration,
            concurrency: PUSH_BATCH as usize,
            release_schedule: config::default_release_schedule(),
        };
        let broker = namespace.expect("iterating its subscriptions").clone();
        start(settings, Source::Local { broker, subscription: subscription.clone() });
    }
    consumers
}

impl Consumers {
    /// Clean shutdown: stop receiving, give the running events up to
    /// `within` to finish and settle, then release what is still held (so
    /// another consumer gets it now, not when the lock expires).
    pub async fn stop(self, within: Duration) {
        if self.consumers.is_empty() {
            return;
        }
        self.stopping.send_replace(true);
        let deadline = tokio::time::Instant::now() + within;
        while self.consumers.iter().any(|c| *c.unsettled.borrow() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(STOP_POLL).await;
        }
        for consumer in &self.consumers {
            let tokens: Vec<String> = consumer.running.lock().expect("not poisoned").iter().cloned().collect();
            if !tokens.is_empty() {
                tracing::warn!(source = %consumer.settings.label, "shutting down: releasing {} running event(s)", tokens.len());
                consumer.settle(Settle::Release { delay: Duration::ZERO }, tokens).await;
            }
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

impl Consumer {
    /// Receives as many events as there are free slots, and runs each,
    /// until `stop` says to stop.
    async fn receive_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut backoff = BACKOFF_FIRST;
        loop {
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                _ = stop.wait_for(|stopping| *stopping) => return,
            };
            let mut permits = vec![first];
            while permits.len() < self.settings.max_events as usize {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            // Stopping cuts a waiting receive: events it would have locked
            // stay with the namespace, which offers them again after the lock.
            let received = tokio::select! {
                received = self.source.receive(permits.len() as u32, self.settings.max_wait) => received,
                _ = stop.wait_for(|stopping| *stopping) => return,
            };
            let deliveries = match received {
                Ok(deliveries) => deliveries,
                Err(e) => {
                    tracing::warn!(source = %self.settings.label, "receiving failed; trying again in {backoff:?}: {e:#}");
                    drop(permits);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_FIRST;
            self.metrics.pull(&self.settings.label).received(deliveries.len());
            for delivery in deliveries {
                // More events than asked for still run, each once a slot frees.
                let permit = match permits.pop() {
                    Some(permit) => permit,
                    None => slots.clone().acquire_owned().await.expect("never closed"),
                };
                tokio::spawn(self.clone().run(delivery, permit));
            }
        }
    }

    /// Runs one event through the pipeline and settles it by the verdict.
    async fn run(self: Arc<Self>, delivery: Delivery, _slot: OwnedSemaphorePermit) {
        self.unsettled.send_modify(|n| *n += 1);
        let token = delivery.broker.lock_token;
        let delivery_count = delivery.broker.delivery_count;
        let settle = match crate::event::decode_cloudevents(delivery.event.get().as_bytes()) {
            Err(e) => {
                tracing::warn!(source = %self.settings.label, "rejecting an event that is not a valid CloudEvent: {e}");
                Settle::Reject
            }
            Ok(events) => {
                let info = DeliveryInfo {
                    attempt: delivery_count.saturating_sub(1),
                    subscription: Some(self.settings.subscription.clone()),
                    replay: false,
                    // Each event's own `traceparent` extension is its parent.
                    traceparent: None,
                };
                let target = self.settings.handler.as_deref().map_or(Target::All, Target::Handler);
                self.running.lock().expect("not poisoned").insert(token.clone());
                let verdict = self.pipeline.dispatch(events, &info, target).await;
                self.running.lock().expect("not poisoned").remove(&token);
                match verdict {
                    Ok(verdict) => settle_for(&verdict, delivery_count, &self.settings.release_schedule),
                    // The manifest names only handlers that exist; one that is
                    // gone later is a retry, as for a push.
                    Err(unknown) => {
                        tracing::error!(source = %self.settings.label, "no handler named {}", unknown.0);
                        Settle::Release { delay: Duration::from_secs(60) }
                    }
                }
            }
        };
        self.settle(settle, vec![token]).await;
        self.unsettled.send_modify(|n| *n -= 1);
    }

    /// Renews the locks of running events every half lock duration.
    async fn renew_loop(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.settings.lock_duration / 2);
        every.tick().await;
        loop {
            every.tick().await;
            let tokens: Vec<String> = self.running.lock().expect("not poisoned").iter().cloned().collect();
            if !tokens.is_empty() {
                self.settle(Settle::RenewLock, tokens).await;
            }
        }
    }

    /// One settle call; failures (a call that fails, tokens that fail in a
    /// 200) are logged and counted: the events come back when their locks expire.
    async fn settle(&self, settle: Settle, tokens: Vec<String>) {
        let source = &self.settings.label;
        let metrics = self.metrics.pull(source);
        match self.source.settle(settle, &tokens).await {
            Ok(settled) => {
                for failed in &settled.failed_lock_tokens {
                    tracing::warn!(%source, lock_token = %failed.lock_token, "{settle:?} failed for a token: {} {}", failed.error.code, failed.error.message);
                }
                tracing::debug!(%source, "{settle:?}: {} succeeded", settled.succeeded_lock_tokens.len());
                metrics.settled(settle, settled.succeeded_lock_tokens.len(), settled.failed_lock_tokens.len());
            }
            Err(e) => {
                tracing::warn!(%source, "{settle:?} failed; the locks will expire and the events come back: {e:#}");
                metrics.settled(settle, 0, tokens.len());
            }
        }
    }
}

/// What the namespace is told about the `delivery_count`th delivery of an
/// event, from its verdict.
fn settle_for(verdict: &Verdict, delivery_count: u32, schedule: &[Duration]) -> Settle {
    if !verdict.retry.is_empty() {
        let delay = match (verdict.retry_after_given, verdict.retry_after) {
            (true, Some(after)) => nearest_release_delay(after),
            _ => scheduled_delay(schedule, delivery_count),
        };
        Settle::Release { delay }
    } else if verdict.rejected > 0 {
        Settle::Reject
    } else {
        Settle::Acknowledge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::RetryItem;

    #[test]
    fn release_delays_are_the_allowed_ones_nearest_the_handlers_after() {
        let cases = [
            (0, 0),
            (4, 0),
            (6, 10),
            (10, 10),
            (34, 10),
            (36, 60),
            (300, 60),
            (400, 600),
            (2000, 600),
            (2200, 3600),
            (86400, 3600),
        ];
        for (after, expected) in cases {
            assert_eq!(nearest_release_delay(Duration::from_secs(after)), Duration::from_secs(expected), "{after}");
        }
    }

    #[test]
    fn verdicts_map_to_settle_calls() {
        let retry = || vec![RetryItem { event_index: 0, id: "e".into(), handler: "h".into(), reason: "r".into() }];
        let schedule = [10, 60, 600].map(Duration::from_secs);
        let settle = |verdict: &Verdict| settle_for(verdict, 1, &schedule);
        assert_eq!(settle(&Verdict { succeeded: 1, ..Verdict::default() }), Settle::Acknowledge);
        assert_eq!(settle(&Verdict { duplicates: 1, ..Verdict::default() }), Settle::Acknowledge);
        assert_eq!(settle(&Verdict { unmatched: 1, ..Verdict::default() }), Settle::Acknowledge);
        assert_eq!(settle(&Verdict { rejected: 1, ..Verdict::default() }), Settle::Reject);
        let asked = Verdict {
            retry: retry(),
            retry_after: Some(Duration::from_secs(2)),
            retry_after_given: true,
            ..Verdict::default()
        };
        assert_eq!(settle(&asked), Settle::Release { delay: Duration::ZERO }, "the handler's after, rounded");
        let unasked =
            Verdict { retry: retry(), rejected: 1, retry_after: Some(Duration::from_secs(10)), ..Verdict::default() };
        assert_eq!(settle(&unasked), Settle::Release { delay: Duration::from_secs(10) }, "a retry wins over a reject");
    }

    #[test]
    fn a_retry_without_after_is_released_by_the_schedule_for_its_delivery_count() {
        let schedule = [0, 60, 3600].map(Duration::from_secs);
        let unasked = Verdict {
            retry: vec![RetryItem { event_index: 0, id: "e".into(), handler: "h".into(), reason: "r".into() }],
            retry_after: Some(Duration::from_secs(10)),
            ..Verdict::default()
        };
        let delays: Vec<Settle> = (1..=5).map(|count| settle_for(&unasked, count, &schedule)).collect();
        let expected = [0, 60, 3600, 3600, 3600].map(|s| Settle::Release { delay: Duration::from_secs(s) });
        assert_eq!(delays, expected);
    }
}
