//! The pull source: events received from Event Grid namespace
//! subscriptions (`[[pull]]`), run through the pipeline like pushed ones,
//! and settled by their lock tokens according to the verdict:
//!
//! - done (succeeded, succeeded before, or no handler wanted it) → `:acknowledge`;
//! - to retry → `:release`, delayed by the allowed delay (0, 10, 60, 600 or
//!   3600 s) nearest the handler's `after` (Event Grid's 10 s when it gave none);
//! - rejected → `:reject` (the subscription dead-letters it), after the
//!   pipeline wrote it to gridfn's own dead-letter store.
//!
//! `brokerProperties.deliveryCount` becomes `delivery.attempt` as attempts
//! before this one (`deliveryCount - 1`, so a first delivery is attempt 0 as
//! for pushed events), and dedup applies as for pushed events: a redelivered
//! event that already succeeded is acknowledged without running. While an
//! event runs, its lock is renewed every half lock duration. Tokens a
//! settle call reports failed (in its 200) are logged; their events come
//! back when the lock expires, and dedup keeps a succeeded one from running
//! twice. Receive errors back off from 1 s to 30 s.
//!
//! - [`config`]: `[[pull]]` in the manifest.
//! - [`client`]: the data-plane calls.

pub mod client;
pub mod config;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::event::DeliveryInfo;
use crate::namespace::broker::Settle;
use crate::pipeline::{Pipeline, Target, Verdict};
use client::{Client, Delivery};
use config::Pull;

/// The delays `:release` allows, in seconds.
const RELEASE_DELAYS: [u64; 5] = [0, 10, 60, 600, 3600];

/// Event Grid's first retry interval, for a retry without `after`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);

const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One `[[pull]]` source: its client, the pipeline, and the locks it holds.
struct Consumer {
    config: Pull,
    client: Client,
    pipeline: Arc<Pipeline>,
    /// Tokens of events running now: the renewer extends their locks.
    running: Mutex<HashSet<String>>,
    /// Events received and not yet settled: shutdown waits for them.
    unsettled: tokio::sync::watch::Sender<usize>,
}

/// The running `[[pull]]` consumers: a receive loop and a lock renewer each.
pub struct Consumers {
    consumers: Vec<Arc<Consumer>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Set at shutdown: the receive loops stop receiving.
    stopping: tokio::sync::watch::Sender<bool>,
}

/// How often shutdown checks whether the running events have finished.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Starts a receive loop and a lock renewer per `[[pull]]`.
pub fn start(pulls: &[Pull], pipeline: &Arc<Pipeline>) -> Consumers {
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut consumers = Consumers { consumers: Vec::new(), tasks: Vec::new(), stopping };
    for pull in pulls {
        let consumer = Arc::new(Consumer {
            config: pull.clone(),
            client: Client::new(pull),
            pipeline: pipeline.clone(),
            running: Mutex::default(),
            unsettled: tokio::sync::watch::Sender::new(0),
        });
        tracing::info!(source = %pull.label(), "pulling events from {}", pull.endpoint);
        let stop = consumers.stopping.subscribe();
        consumers.tasks.push(tokio::spawn(consumer.clone().receive_loop(stop)));
        consumers.tasks.push(tokio::spawn(consumer.clone().renew_loop()));
        consumers.consumers.push(consumer);
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
                tracing::warn!(source = %consumer.config.label(), "shutting down: releasing {} running event(s)", tokens.len());
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
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut backoff = BACKOFF_FIRST;
        loop {
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                _ = stop.wait_for(|stopping| *stopping) => return,
            };
            let mut permits = vec![first];
            while permits.len() < self.config.max_events as usize {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            // Stopping cuts a waiting receive: events it would have locked
            // stay with the namespace, which offers them again after the lock.
            let received = tokio::select! {
                received = self.client.receive(permits.len() as u32, self.config.max_wait) => received,
                _ = stop.wait_for(|stopping| *stopping) => return,
            };
            let deliveries = match received {
                Ok(deliveries) => deliveries,
                Err(e) => {
                    tracing::warn!(source = %self.config.label(), "receiving failed; trying again in {backoff:?}: {e:#}");
                    drop(permits);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_FIRST;
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
        let settle = match crate::event::decode_cloudevents(delivery.event.get().as_bytes()) {
            Err(e) => {
                tracing::warn!(source = %self.config.label(), "rejecting an event that is not a valid CloudEvent: {e}");
                Settle::Reject
            }
            Ok(events) => {
                let info = DeliveryInfo {
                    attempt: delivery.broker.delivery_count.saturating_sub(1),
                    subscription: Some(self.config.subscription.clone()),
                    replay: false,
                    // Each event's own `traceparent` extension is its parent.
                    traceparent: None,
                };
                let target = self.config.handler.as_deref().map_or(Target::All, Target::Handler);
                self.running.lock().expect("not poisoned").insert(token.clone());
                let verdict = self.pipeline.dispatch(events, &info, target).await;
                self.running.lock().expect("not poisoned").remove(&token);
                match verdict {
                    Ok(verdict) => settle_for(&verdict),
                    // The manifest names only handlers that exist; one that is
                    // gone later is a retry, as for a push.
                    Err(unknown) => {
                        tracing::error!(source = %self.config.label(), "no handler named {}", unknown.0);
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
        let mut every = tokio::time::interval(self.config.lock_duration / 2);
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
    /// 200) are logged: the events come back when their locks expire.
    async fn settle(&self, settle: Settle, tokens: Vec<String>) {
        let source = self.config.label();
        match self.client.settle(settle, &tokens).await {
            Ok(settled) => {
                for failed in &settled.failed_lock_tokens {
                    tracing::warn!(%source, lock_token = %failed.lock_token, "{settle:?} failed for a token: {} {}", failed.error.code, failed.error.message);
                }
                tracing::debug!(%source, "{settle:?}: {} succeeded", settled.succeeded_lock_tokens.len());
            }
            Err(e) => {
                tracing::warn!(%source, "{settle:?} failed; the locks will expire and the events come back: {e:#}")
            }
        }
    }
}

/// What the namespace is told about an event, from its verdict.
fn settle_for(verdict: &Verdict) -> Settle {
    if !verdict.retry.is_empty() {
        let after = verdict.retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
        Settle::Release { delay: nearest_release_delay(after) }
    } else if verdict.rejected > 0 {
        Settle::Reject
    } else {
        Settle::Acknowledge
    }
}

/// The allowed release delay nearest `after` (the shorter one on a tie).
fn nearest_release_delay(after: Duration) -> Duration {
    let wanted = after.as_secs_f64();
    let nearest = RELEASE_DELAYS
        .into_iter()
        .min_by(|a, b| (*a as f64 - wanted).abs().total_cmp(&(*b as f64 - wanted).abs()))
        .expect("not empty");
    Duration::from_secs(nearest)
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
        let retry = RetryItem { event_index: 0, id: "e".into(), handler: "h".into(), reason: "r".into() };
        let done = Verdict { succeeded: 1, ..Verdict::default() };
        assert_eq!(settle_for(&done), Settle::Acknowledge);
        assert_eq!(settle_for(&Verdict { duplicates: 1, ..Verdict::default() }), Settle::Acknowledge);
        assert_eq!(settle_for(&Verdict { unmatched: 1, ..Verdict::default() }), Settle::Acknowledge);
        assert_eq!(settle_for(&Verdict { rejected: 1, ..Verdict::default() }), Settle::Reject);
        let to_retry = Verdict { retry: vec![retry], retry_after: Some(Duration::from_secs(2)), ..Verdict::default() };
        assert_eq!(settle_for(&to_retry), Settle::Release { delay: Duration::ZERO });
        let no_after = Verdict {
            retry: vec![RetryItem { event_index: 0, id: "e".into(), handler: "h".into(), reason: "r".into() }],
            rejected: 1,
            ..Verdict::default()
        };
        assert_eq!(
            settle_for(&no_after),
            Settle::Release { delay: Duration::from_secs(10) },
            "a retry wins over a reject"
        );
    }
}
