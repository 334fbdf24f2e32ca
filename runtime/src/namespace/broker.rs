//! The broker: each subscription's queue of events and the lock-token rules
//! Event Grid namespaces apply to it.
//!
//! - Publishing copies each event into every subscription whose filter it
//!   passes, durably, before `:publish` is answered.
//! - A receive locks up to `maxEvents` available events to a new token each
//!   (`deliveryCount` is the number of receives so far, 1 the first time),
//!   waiting up to `maxWaitTime` for the first when none is available.
//! - A token is valid for one delivery, until its lock expires: settling it
//!   once (acknowledge, release, reject) ends it, and a renewal extends it
//!   by the subscription's lock duration. A token that is unknown, already
//!   settled or expired fails with `TokenLost`, as Azure answers.
//! - An expired lock makes the event available again; the next receive
//!   counts one more delivery. When a lock expires or a release comes after
//!   `max_delivery_count` deliveries, or an event not yet settled outlives
//!   its TTL, it is dead-lettered (or dropped, with `deadletter = false`).
//!   A rejected event is dead-lettered at once.
//!
//! A push subscription's queue works the same way; its consumer is gridfn
//! itself ([`crate::pull`] with the broker as its source), so its events
//! get the same locks, delivery counts, TTL and dead-lettering. Its locks
//! die with the process that held them: at start they are made available
//! again at once (a delivery counted, not yet succeeded, retried).
//!
//! Each subscription's queue sits behind an async mutex held across its
//! store commit, so changes reach the disk in the order they were made.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::config::{self, Name};
use super::store::{Change, Key, Record, State, Store};
use crate::deadletter::{self, DeadLetterStore};
use crate::event::{Event, Schema};

/// How often locks and TTLs are checked when nobody is receiving.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A served namespace: its topics, their subscriptions' queues, the store
/// behind them and where dead letters go.
pub struct Broker {
    /// The namespace's name, the first folder of its dead-letter blobs.
    name: String,
    /// Access keys, compared in constant time by [`Broker::authorized`].
    keys: Vec<Vec<u8>>,
    /// `[namespace.entra]`: checks bearer tokens, when configured.
    entra: Option<crate::entra::EntraValidator>,
    /// By lower-case name (Azure matches names ignoring case).
    topics: HashMap<String, Topic>,
    store: Store,
    deadletter: DeadLetterStore,
    /// The next publish sequence: orders each subscription's events.
    next_sequence: AtomicU64,
}

/// A namespace topic: the subscriptions a published event is offered to.
pub struct Topic {
    pub name: Name,
    subscriptions: Vec<Arc<Subscription>>,
}

/// One event subscription's queue.
pub struct Subscription {
    topic: Name,
    pub config: config::Subscription,
    queue: tokio::sync::Mutex<Queue>,
    /// Woken when an event becomes available (publish, release), so a
    /// waiting receive answers at once.
    available: Notify,
}

#[derive(Default)]
struct Queue {
    /// By publish sequence, so receives hand out the oldest first.
    records: BTreeMap<u64, Record>,
    /// Live lock tokens and the record each locks.
    tokens: HashMap<String, u64>,
}

/// One received event: what the receive answer lists.
pub struct Received {
    pub lock_token: String,
    pub delivery_count: u32,
    pub event: Box<RawValue>,
}

/// What a settle call does to each token's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Acknowledge,
    /// Available again after `delay`.
    Release {
        delay: Duration,
    },
    Reject,
    RenewLock,
}

/// A settle call's answer: tokens that worked, and those that did not with
/// the error code and message Azure gives.
#[derive(Debug, Default)]
pub struct Settled {
    pub succeeded: Vec<String>,
    pub failed: Vec<(String, &'static str, String)>,
}

/// Why an event left its queue without being acknowledged; the dead-letter
/// record's `deadletterreason` and `deliveryresult`.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Rejected,
    MaxDeliveryCountExceeded,
    TimeToLiveExceeded,
}

impl Ending {
    fn reason(self) -> &'static str {
        match self {
            Ending::Rejected => "Rejected",
            Ending::MaxDeliveryCountExceeded => "MaxDeliveryCountExceeded",
            Ending::TimeToLiveExceeded => "TimeToLiveExceeded",
        }
    }

    fn result(self) -> &'static str {
        match self {
            Ending::Rejected => "Rejected",
            Ending::MaxDeliveryCountExceeded | Ending::TimeToLiveExceeded => "LockExpiredOrReleased",
        }
    }
}

impl Broker {
    /// Opens the store at `path`, puts every stored event back in its
    /// subscription's queue (locks included), and starts the sweeper that
    /// expires locks and TTLs while nobody receives (it stops when the
    /// broker is dropped).
    pub fn start(
        config: &config::Namespace,
        path: &std::path::Path,
        deadletter: DeadLetterStore,
        entra: Option<crate::entra::EntraValidator>,
    ) -> anyhow::Result<Arc<Broker>> {
        let store = Store::open(path)?;
        let mut topics: HashMap<String, Topic> = HashMap::new();
        for topic in &config.topics {
            let subscriptions = (topic.subscriptions.iter())
                .map(|s| {
                    Arc::new(Subscription {
                        topic: topic.name.clone(),
                        config: s.clone(),
                        queue: Default::default(),
                        available: Notify::new(),
                    })
                })
                .collect();
            topics.insert(topic.name.key(), Topic { name: topic.name.clone(), subscriptions });
        }
        let mut next_sequence = 0;
        let mut orphans = 0;
        let mut released = Vec::new();
        for (key, mut record) in store.load()? {
            next_sequence = next_sequence.max(key.sequence + 1);
            let subscription = (topics.get(&key.topic))
                .and_then(|t| t.subscriptions.iter().find(|s| s.config.name.key() == key.subscription));
            let Some(subscription) = subscription else {
                orphans += 1;
                continue;
            };
            let mut queue = subscription.queue.try_lock().expect("nobody else has it yet");
            match (&record.state, subscription.pushes()) {
                (State::Locked { .. }, true) => {
                    record.state = State::Available { at: 0 };
                    released.push(Change::Put(key.clone(), record.clone()));
                }
                (State::Locked { token, .. }, false) => {
                    queue.tokens.insert(token.clone(), key.sequence);
                }
                (State::Available { .. }, _) => {}
            }
            queue.records.insert(key.sequence, record);
        }
        if orphans > 0 {
            tracing::warn!(
                "namespace store {}: {orphans} stored event(s) belong to subscriptions no longer in the manifest; kept, not served",
                path.display()
            );
        }
        if !released.is_empty() {
            tracing::info!("namespace: {} push deliveries cut by the last stop are retried now", released.len());
            store.commit(&released)?;
        }
        let broker = Arc::new(Broker {
            name: config.name.clone(),
            keys: config.keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            entra,
            topics,
            store,
            deadletter,
            next_sequence: AtomicU64::new(next_sequence),
        });
        tokio::spawn(sweep_while_alive(Arc::downgrade(&broker)));
        Ok(broker)
    }

    /// Whether `presented` is one of the namespace's keys.
    pub fn authorized(&self, presented: &[u8]) -> bool {
        crate::webhook::is_one_of(&self.keys, presented)
    }

    /// The bearer-token checker, when `[namespace.entra]` is configured.
    pub fn entra(&self) -> Option<&crate::entra::EntraValidator> {
        self.entra.as_ref()
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(&name.to_ascii_lowercase())
    }

    /// Every push subscription and the handler its events run in.
    pub fn push_subscriptions(&self) -> impl Iterator<Item = (&Arc<Subscription>, &str)> {
        (self.topics.values().flat_map(|t| &t.subscriptions)).filter_map(|s| match &s.config.delivery {
            config::Delivery::Push { handler } => Some((s, handler.as_str())),
            config::Delivery::Queue => None,
        })
    }

    /// Offers each event to every subscription of `topic` whose filter it
    /// passes; returns once that is on disk.
    pub async fn publish(&self, topic: &Topic, events: Vec<Event>) -> anyhow::Result<()> {
        let published = now_ms();
        let mut changes = Vec::new();
        let mut offers: Vec<(&Arc<Subscription>, u64, Record)> = Vec::new();
        for event in events {
            let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
            let json: serde_json::Value = serde_json::from_str(event.raw.get())?;
            for subscription in &topic.subscriptions {
                if subscription.config.filter.as_ref().is_some_and(|f| !f.matches(&json, Schema::CloudEvents)) {
                    continue;
                }
                let record = Record {
                    event: event.raw.to_raw_value(),
                    published,
                    deliveries: 0,
                    state: State::Available { at: published },
                };
                changes.push(Change::Put(subscription.key(sequence), record.clone()));
                offers.push((subscription, sequence, record));
            }
        }
        self.store.commit_async(changes).await?;
        for (subscription, sequence, record) in offers {
            subscription.queue.lock().await.records.insert(sequence, record);
            subscription.available.notify_waiters();
        }
        Ok(())
    }

    /// Locks up to `max_events` available events to new tokens; waits up to
    /// `max_wait` for the first when none is available.
    pub async fn receive(
        &self,
        subscription: &Subscription,
        max_events: usize,
        max_wait: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + max_wait;
        loop {
            let available = subscription.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();
            let (received, next_change) = {
                let mut queue = subscription.queue.lock().await;
                self.expire(subscription, &mut queue).await?;
                let received = self.lock(subscription, &mut queue, max_events).await?;
                (received, queue.next_change(&subscription.config, now_ms()))
            };
            if !received.is_empty() || Instant::now() >= deadline {
                return Ok(received);
            }
            let wake = next_change.map_or(deadline, |at| deadline.min(instant_at(at)));
            tokio::select! {
                () = available => {}
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// Applies `settle` to each token's event; a token that is not a live
    /// lock of this subscription fails with `TokenLost`.
    pub async fn settle(
        &self,
        subscription: &Subscription,
        settle: Settle,
        tokens: Vec<String>,
    ) -> anyhow::Result<Settled> {
        let mut guard = subscription.queue.lock().await;
        let queue = &mut *guard;
        self.expire(subscription, queue).await?;
        let now = now_ms();
        let mut settled = Settled::default();
        let mut changes = Vec::new();
        let mut endings = Vec::new();
        for token in tokens {
            let Some(sequence) = queue.live(&token, now) else {
                settled.failed.push((token, "TokenLost", "Token has expired.".to_owned()));
                continue;
            };
            let key = subscription.key(sequence);
            let record = queue.records.get_mut(&sequence).expect("a live token's record is queued");
            match settle {
                Settle::RenewLock => {
                    let until = now + millis(subscription.config.lock_duration);
                    record.state = State::Locked { token: token.clone(), until };
                    changes.push(Change::Put(key, record.clone()));
                }
                Settle::Release { .. } if record.deliveries >= subscription.config.max_delivery_count => {
                    queue.tokens.remove(&token);
                    let record = queue.records.remove(&sequence).expect("just found");
                    endings.push((sequence, record, Ending::MaxDeliveryCountExceeded, token.clone()));
                }
                Settle::Release { delay } => {
                    record.state = State::Available { at: now + millis(delay) };
                    changes.push(Change::Put(key, record.clone()));
                    queue.tokens.remove(&token);
                }
                Settle::Acknowledge => {
                    queue.records.remove(&sequence);
                    queue.tokens.remove(&token);
                    changes.push(Change::Delete(key));
                }
                Settle::Reject => {
                    queue.tokens.remove(&token);
                    let record = queue.records.remove(&sequence).expect("just found");
                    endings.push((sequence, record, Ending::Rejected, token.clone()));
                }
            }
            settled.succeeded.push(token);
        }
        // Dead letters are written before their events leave the store, so
        // a crash in between leaves a duplicate, never a loss.
        for (sequence, record, ending, token) in endings {
            match self.end(subscription, sequence, &record, ending).await {
                Ok(()) => changes.push(Change::Delete(subscription.key(sequence))),
                Err(e) => {
                    tracing::error!("namespace: dead-lettering failed; the event stays queued: {e:#}");
                    settled.succeeded.retain(|t| *t != token);
                    settled.failed.push((token, "InternalServerError", format!("dead-lettering failed: {e}")));
                    queue.records.insert(sequence, Record { state: State::Available { at: now }, ..record });
                }
            }
        }
        self.store.commit_async(changes).await?;
        drop(guard);
        if matches!(settle, Settle::Release { .. }) {
            subscription.available.notify_waiters();
        }
        Ok(settled)
    }

    /// Locks the oldest available events, at most `max`, to new tokens.
    async fn lock(&self, subscription: &Subscription, queue: &mut Queue, max: usize) -> anyhow::Result<Vec<Received>> {
        let now = now_ms();
        let until = now + millis(subscription.config.lock_duration);
        let ready: Vec<u64> =
            queue.records.iter().filter(|(_, r)| r.available(now)).map(|(sequence, _)| *sequence).take(max).collect();
        let mut received = Vec::with_capacity(ready.len());
        let mut changes = Vec::with_capacity(ready.len());
        for sequence in ready {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let record = queue.records.get_mut(&sequence).expect("listed above");
            if let State::Locked { token: expired, .. } = &record.state {
                queue.tokens.remove(expired);
            }
            record.deliveries += 1;
            record.state = State::Locked { token: token.clone(), until };
            changes.push(Change::Put(subscription.key(sequence), record.clone()));
            received.push(Received {
                lock_token: token.clone(),
                delivery_count: record.deliveries,
                event: record.event.clone(),
            });
            queue.tokens.insert(token, sequence);
        }
        self.store.commit_async(changes).await?;
        Ok(received)
    }

    /// Ends what has run out: an expired lock after the last allowed
    /// delivery, an unsettled event past its TTL.
    async fn expire(&self, subscription: &Subscription, queue: &mut Queue) -> anyhow::Result<()> {
        let now = now_ms();
        let config = &subscription.config;
        let ended: Vec<(u64, Ending)> = (queue.records.iter())
            .filter_map(|(sequence, record)| {
                let lock_expired = matches!(record.state, State::Locked { until, .. } if until <= now);
                let unlocked = lock_expired || matches!(record.state, State::Available { .. });
                if lock_expired && record.deliveries >= config.max_delivery_count {
                    Some((*sequence, Ending::MaxDeliveryCountExceeded))
                } else if unlocked && record.published + millis(config.event_ttl) <= now {
                    Some((*sequence, Ending::TimeToLiveExceeded))
                } else {
                    None
                }
            })
            .collect();
        let mut changes = Vec::new();
        for (sequence, ending) in ended {
            let record = queue.records.remove(&sequence).expect("listed above");
            if let State::Locked { token, .. } = &record.state {
                queue.tokens.remove(token);
            }
            match self.end(subscription, sequence, &record, ending).await {
                Ok(()) => changes.push(Change::Delete(subscription.key(sequence))),
                Err(e) => {
                    tracing::error!("namespace: dead-lettering failed; will try again: {e:#}");
                    queue.records.insert(sequence, record);
                }
            }
        }
        self.store.commit_async(changes).await
    }

    /// Dead-letters `record` (or drops it, with `deadletter = false`).
    async fn end(
        &self,
        subscription: &Subscription,
        sequence: u64,
        record: &Record,
        ending: Ending,
    ) -> anyhow::Result<()> {
        let (topic, name) = (&subscription.topic, &subscription.config.name);
        if !subscription.config.deadletter {
            tracing::warn!(topic = %topic, subscription = %name, sequence, "event dropped: {}", ending.reason());
            return Ok(());
        }
        let now = Utc::now();
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let published = DateTime::from_timestamp_millis(record.published as i64).unwrap_or(now);
        let body = serde_json::json!([{
            "event": record.event,
            "deadletterProperties": {
                "deadletterreason": ending.reason(),
                "deliveryattempts": record.deliveries,
                "deliveryresult": ending.result(),
                "publishutc": stamp(published),
                "deliveryattemptutc": stamp(now),
            }
        }]);
        let blob = format!("{}/{topic}/{}", self.name, deadletter::blob_name(name.as_str(), now));
        let written = self.deadletter.put(&blob, serde_json::to_vec_pretty(&body)?).await?;
        tracing::warn!(topic = %topic, subscription = %name, blob = %written, "event dead-lettered: {}", ending.reason());
        Ok(())
    }

    /// Expires locks and TTLs of every subscription.
    async fn sweep(&self) {
        for topic in self.topics.values() {
            for subscription in &topic.subscriptions {
                let mut queue = subscription.queue.lock().await;
                if let Err(e) = self.expire(subscription, &mut queue).await {
                    tracing::error!("namespace: expiring events failed: {e:#}");
                }
            }
        }
    }
}

impl Topic {
    pub fn subscription(&self, name: &str) -> Option<&Arc<Subscription>> {
        self.subscriptions.iter().find(|s| s.config.name.key() == name.to_ascii_lowercase())
    }
}

impl Subscription {
    /// `topic/subscription`, as logs and metrics name it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.topic, self.config.name)
    }

    /// Whether gridfn itself delivers this subscription's events (push).
    pub fn pushes(&self) -> bool {
        matches!(self.config.delivery, config::Delivery::Push { .. })
    }

    fn key(&self, sequence: u64) -> Key {
        Key { topic: self.topic.key(), subscription: self.config.name.key(), sequence }
    }
}

impl Queue {
    /// The record `token` locks, if that lock is live at `now`.
    fn live(&self, token: &str, now: u64) -> Option<u64> {
        let sequence = *self.tokens.get(token)?;
        match &self.records.get(&sequence)?.state {
            State::Locked { token: held, until } if held == token && *until > now => Some(sequence),
            _ => None,
        }
    }

    /// The next moment (Unix ms) after `now` something may become available
    /// or expire.
    fn next_change(&self, config: &config::Subscription, now: u64) -> Option<u64> {
        let ttl = millis(config.event_ttl);
        (self.records.values())
            .flat_map(|r| {
                let state = match r.state {
                    State::Available { at } => at,
                    State::Locked { until, .. } => until,
                };
                [state, r.published + ttl]
            })
            .filter(|&at| at > now)
            .min()
    }
}

impl Record {
    fn available(&self, now: u64) -> bool {
        match self.state {
            State::Available { at } => at <= now,
            State::Locked { until, .. } => until <= now,
        }
    }
}

/// Runs [`Broker::sweep`] every [`SWEEP_EVERY`] until the broker is gone.
async fn sweep_while_alive(broker: Weak<Broker>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        let Some(broker) = broker.upgrade() else { return };
        broker.sweep().await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// The monotonic instant of Unix time `at` (ms), never before now.
fn instant_at(at: u64) -> Instant {
    Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::read::{Shape, parse_records};

    const EVENT: &str = r#"{"specversion":"1.0","id":"e1","source":"/s","type":"T","data":{"n":1}}"#;

    fn namespace(max_delivery_count: u32, deadletter: bool) -> config::Namespace {
        let raw: config::RawNamespace = toml::from_str(&format!(
            "keys=[\"k\"]\n[[topic]]\nname=\"orders\"\n[[topic.subscription]]\nname=\"all\"\n\
             max_delivery_count={max_delivery_count}\ndeadletter={deadletter}\n"
        ))
        .unwrap();
        raw.parse(&|k| Ok(k.to_owned()), &|_| true).unwrap()
    }

    /// A store holding one event for orders/all in `state`, as a gridfn that
    /// stopped (or crashed) `age` ago left it.
    fn seeded(dir: &std::path::Path, deliveries: u32, state: State, age: Duration) {
        let record = Record {
            event: RawValue::from_string(EVENT.into()).unwrap(),
            published: now_ms() - millis(age),
            deliveries,
            state,
        };
        let key = Key { topic: "orders".into(), subscription: "all".into(), sequence: 7 };
        Store::open(dir).unwrap().commit(&[Change::Put(key, record)]).unwrap();
    }

    fn start(dir: &tempfile::TempDir, config: &config::Namespace) -> Arc<Broker> {
        let deadletter = DeadLetterStore::Dir(dir.path().join("deadletter"));
        Broker::start(config, &dir.path().join("store"), deadletter, None).unwrap()
    }

    fn blobs(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let mut found = Vec::new();
        let mut folders = vec![dir.to_owned()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                match entry.path().is_dir() {
                    true => folders.push(entry.path()),
                    false => found.push((
                        entry.path().strip_prefix(dir).unwrap().display().to_string(),
                        std::fs::read(entry.path()).unwrap(),
                    )),
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn an_expired_lock_makes_the_event_available_again_one_delivery_later() {
        let dir = tempfile::tempdir().unwrap();
        let expired = State::Locked { token: "old".into(), until: now_ms() - 1 };
        seeded(&dir.path().join("store"), 1, expired, Duration::from_secs(120));
        let broker = start(&dir, &namespace(10, true));
        let subscription = broker.topic("ORDERS").unwrap().subscription("All").unwrap();
        let received = broker.receive(subscription, 10, Duration::from_secs(10)).await.unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].delivery_count, 2);
        assert_eq!(received[0].event.get(), EVENT);
        let stale = broker.settle(subscription, Settle::Acknowledge, vec!["old".into()]).await.unwrap();
        assert_eq!((stale.succeeded.len(), stale.failed[0].1), (0, "TokenLost"), "the expired lock's token is spent");
        let fresh =
            broker.settle(subscription, Settle::Acknowledge, vec![received[0].lock_token.clone()]).await.unwrap();
        assert_eq!(fresh.succeeded, [received[0].lock_token.clone()]);
    }

    #[tokio::test]
    async fn the_last_delivery_expiring_dead_letters_the_event_in_the_namespace_shape() {
        let dir = tempfile::tempdir().unwrap();
        let expired = State::Locked { token: "old".into(), until: now_ms() - 1 };
        seeded(&dir.path().join("store"), 3, expired, Duration::from_secs(300));
        let broker = start(&dir, &namespace(3, true));
        let subscription = broker.topic("orders").unwrap().subscription("all").unwrap();
        let started = Instant::now();
        let received = broker.receive(subscription, 1, Duration::from_millis(200)).await.unwrap();
        assert!(received.is_empty() && started.elapsed() >= Duration::from_millis(200));

        let blobs = blobs(&dir.path().join("deadletter"));
        assert_eq!(blobs.len(), 1);
        let (name, body) = &blobs[0];
        assert!(name.starts_with("gridfn/orders/ALL/"), "{name}");
        let records = parse_records(name, Some("ALL"), body);
        let record = records[0].as_ref().expect("gridfn replay reads it");
        assert_eq!((record.shape, record.event.id.as_str()), (Shape::Namespace, "e1"));
        assert_eq!(record.attributes.reason.as_deref(), Some("MaxDeliveryCountExceeded"));
        assert_eq!(record.attributes.delivery_attempts, Some(3));
        drop(broker);
        // Gone from the store too: a restart does not bring it back.
        let broker = start(&dir, &namespace(3, true));
        let subscription = broker.topic("orders").unwrap().subscription("all").unwrap();
        assert!(broker.receive(subscription, 1, Duration::from_millis(50)).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_event_past_its_ttl_is_dropped_without_a_dead_letter_destination() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(7 * 24 * 3600);
        seeded(&dir.path().join("store"), 0, State::Available { at: 0 }, ttl + Duration::from_secs(1));
        let broker = start(&dir, &namespace(10, false));
        let subscription = broker.topic("orders").unwrap().subscription("all").unwrap();
        assert!(broker.receive(subscription, 1, Duration::from_millis(50)).await.unwrap().is_empty());
        assert!(blobs(&dir.path().join("deadletter")).is_empty());
    }

    #[tokio::test]
    async fn a_renewed_lock_outlives_its_first_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let soon = State::Locked { token: "held".into(), until: now_ms() + 300 };
        seeded(&dir.path().join("store"), 1, soon, Duration::from_secs(1));
        let broker = start(&dir, &namespace(10, true));
        let subscription = broker.topic("orders").unwrap().subscription("all").unwrap();
        let renewed = broker.settle(subscription, Settle::RenewLock, vec!["held".into()]).await.unwrap();
        assert_eq!(renewed.succeeded, ["held"]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Past the first expiry: still locked, so nobody else receives it and the token still settles.
        assert!(broker.receive(subscription, 1, Duration::from_millis(50)).await.unwrap().is_empty());
        let acked = broker.settle(subscription, Settle::Acknowledge, vec!["held".into()]).await.unwrap();
        assert_eq!(acked.succeeded, ["held"]);
    }

    #[tokio::test]
    async fn a_push_subscriptions_locks_die_with_the_process_that_held_them() {
        let dir = tempfile::tempdir().unwrap();
        let held = State::Locked { token: "gone".into(), until: now_ms() + 60_000 };
        seeded(&dir.path().join("store"), 1, held, Duration::from_secs(5));
        let raw: config::RawNamespace = toml::from_str(
            "keys=[\"k\"]\n[[topic]]\nname=\"orders\"\n[[topic.subscription]]\nname=\"all\"\ndelivery=\"push\"\nhandler=\"h\"\n",
        )
        .unwrap();
        let config = raw.parse(&|k| Ok(k.to_owned()), &|_| true).unwrap();
        let broker = start(&dir, &config);
        let (subscription, handler) = broker.push_subscriptions().next().expect("one push subscription");
        assert_eq!((subscription.label().as_str(), handler), ("orders/all", "h"));
        // Available at once (not after the 60 s lock), as its second delivery.
        let received = broker.receive(subscription, 1, Duration::from_millis(50)).await.unwrap();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].delivery_count, 2);
    }

    #[tokio::test]
    async fn a_waiting_receive_answers_as_soon_as_an_event_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let broker = start(&dir, &namespace(10, true));
        let waiting = {
            let broker = broker.clone();
            tokio::spawn(async move {
                let subscription = broker.topic("orders").unwrap().subscription("all").unwrap().clone();
                let started = Instant::now();
                let received = broker.receive(&subscription, 5, Duration::from_secs(30)).await.unwrap();
                (received.len(), started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let events = crate::event::decode_cloudevents(EVENT.as_bytes()).unwrap();
        broker.publish(broker.topic("orders").unwrap(), events).await.unwrap();
        let (count, waited) = waiting.await.unwrap();
        assert_eq!(count, 1);
        assert!(waited < Duration::from_secs(5), "answered on publish, not at maxWaitTime: {waited:?}");
    }
}
