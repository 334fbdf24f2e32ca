//! Remembers which (handler, event) pairs are done, so Event Grid's
//! at-least-once redeliveries never run a handler twice for an event it
//! already handled.
//!
//! A pair is *claimed* before its handler runs and *finished* after: marked
//! done on success (or once dead-lettered), released otherwise. A copy that
//! arrives while the first is running waits for it instead of running twice.
//! A lease dropped without being finished (a panic, a cancelled request) is
//! released, so a crash can cause a re-run, never a loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::sync::watch;

/// Identifies one (handler, event) pair: the event's source and id are unique
/// per Event Grid's contract.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    pub handler: Arc<str>,
    pub source: String,
    pub id: String,
}

/// The in-memory store: fast, per process, forgotten on restart.
pub struct MemoryDedup {
    entries: DashMap<DedupKey, State>,
    ttl: Duration,
}

enum State {
    /// A handler is running it; the receiver closes when it finishes.
    Running(watch::Receiver<()>),
    /// Done; remembered until the instant given.
    Done(Instant),
}

/// What [`MemoryDedup::claim`] found.
pub enum Claim {
    /// Nobody has handled it: run it, then finish the lease.
    Run(Lease),
    /// Already handled (or dead-lettered): don't run it again.
    Done,
    /// Another copy is still running after the wait: ask for a retry.
    Busy,
}

/// The right to run one pair; finish it with [`Lease::done`] or drop it to
/// release the pair for a later attempt.
pub struct Lease {
    store: Arc<MemoryDedup>,
    key: DedupKey,
    // Dropping the sender wakes every copy waiting on this pair.
    _running: watch::Sender<()>,
    finished: bool,
}

impl MemoryDedup {
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(MemoryDedup { entries: DashMap::new(), ttl })
    }

    /// Claims `key`, waiting up to `wait` for a copy already running.
    pub async fn claim(self: &Arc<Self>, key: DedupKey, wait: Duration) -> Claim {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut running = match self.entries.entry(key.clone()) {
                MapEntry::Occupied(mut entry) => match entry.get() {
                    State::Done(until) if *until > Instant::now() => return Claim::Done,
                    State::Running(receiver) => receiver.clone(),
                    State::Done(_) => {
                        let (lease, receiver) = self.lease(key);
                        entry.insert(State::Running(receiver));
                        return Claim::Run(lease);
                    }
                },
                MapEntry::Vacant(entry) => {
                    let (lease, receiver) = self.lease(key);
                    entry.insert(State::Running(receiver));
                    return Claim::Run(lease);
                }
            };
            // `changed` fails as soon as the holder's sender is gone, even if
            // it went before we got here: no lost wake-ups.
            if tokio::time::timeout_at(deadline, running.changed()).await.is_err() {
                return Claim::Busy;
            }
        }
    }

    fn lease(self: &Arc<Self>, key: DedupKey) -> (Lease, watch::Receiver<()>) {
        let (sender, receiver) = watch::channel(());
        (Lease { store: self.clone(), key, _running: sender, finished: false }, receiver)
    }

    /// Forgets done pairs older than the TTL; call it now and then.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.entries.retain(|_, state| !matches!(state, State::Done(until) if *until <= now));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Lease {
    /// Records the pair as done: later copies are duplicates until the TTL.
    pub fn done(mut self) {
        let until = Instant::now() + self.store.ttl;
        self.store.entries.insert(self.key.clone(), State::Done(until));
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.finished {
            self.store.entries.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> DedupKey {
        DedupKey { handler: "h".into(), source: "/s".into(), id: id.into() }
    }

    #[tokio::test]
    async fn a_done_pair_is_a_duplicate_and_a_released_one_runs_again() {
        let store = MemoryDedup::new(Duration::from_secs(60));
        let Claim::Run(lease) = store.claim(key("1"), Duration::ZERO).await else { panic!("first claim runs") };
        lease.done();
        assert!(matches!(store.claim(key("1"), Duration::ZERO).await, Claim::Done));

        let Claim::Run(lease) = store.claim(key("2"), Duration::ZERO).await else { panic!() };
        drop(lease);
        assert!(matches!(store.claim(key("2"), Duration::ZERO).await, Claim::Run(_)));
    }

    #[tokio::test]
    async fn other_handlers_and_sources_are_other_pairs() {
        let store = MemoryDedup::new(Duration::from_secs(60));
        let Claim::Run(lease) = store.claim(key("1"), Duration::ZERO).await else { panic!() };
        lease.done();
        let other_handler = DedupKey { handler: "g".into(), ..key("1") };
        let other_source = DedupKey { source: "/t".into(), ..key("1") };
        assert!(matches!(store.claim(other_handler, Duration::ZERO).await, Claim::Run(_)));
        assert!(matches!(store.claim(other_source, Duration::ZERO).await, Claim::Run(_)));
    }

    #[tokio::test]
    async fn a_copy_waits_for_the_running_one() {
        let store = MemoryDedup::new(Duration::from_secs(60));
        let Claim::Run(lease) = store.claim(key("1"), Duration::ZERO).await else { panic!() };
        assert!(matches!(store.claim(key("1"), Duration::from_millis(20)).await, Claim::Busy));
        let waiter = tokio::spawn({
            let store = store.clone();
            async move { matches!(store.claim(key("1"), Duration::from_secs(5)).await, Claim::Done) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        lease.done();
        assert!(waiter.await.unwrap(), "the waiting copy sees the first one's success");
    }

    #[tokio::test]
    async fn done_pairs_expire_after_the_ttl() {
        let store = MemoryDedup::new(Duration::from_millis(10));
        let Claim::Run(lease) = store.claim(key("1"), Duration::ZERO).await else { panic!() };
        lease.done();
        std::thread::sleep(Duration::from_millis(20));
        store.sweep();
        assert!(store.is_empty());
        assert!(matches!(store.claim(key("1"), Duration::ZERO).await, Claim::Run(_)));
    }
}
