//! The in-memory store: fastest, per process, forgotten on restart. Bounded:
//! when full, the oldest records are forgotten first (their events would run
//! again if redelivered: at-least-once is kept, memory is not unbounded).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Begin, DedupKey, DedupStore, StoreError};

pub struct MemoryStore {
    max_records: usize,
    records: Mutex<Records>,
}

#[derive(Default)]
struct Records {
    /// Expiry per pair.
    expires: HashMap<String, Instant>,
    /// Pairs in the order they were recorded; with one TTL for all, that is
    /// also the order in which they expire.
    order: VecDeque<(Instant, String)>,
    /// The recorded pairs that were done by a rejection.
    rejected: HashSet<String>,
}

impl MemoryStore {
    pub fn new(max_records: usize) -> Self {
        MemoryStore { max_records: max_records.max(1), records: Mutex::new(Records::default()) }
    }

    pub fn len(&self) -> usize {
        self.lock().expires.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Records {
    /// Drops expired records from the front; with `room_for`, also the oldest
    /// live ones until that many more fit under `max`.
    fn evict(&mut self, now: Instant, max: usize, room_for: usize) {
        while let Some((expiry, key)) = self.order.front() {
            let over = self.expires.len() + room_for > max;
            if *expiry > now && !over {
                break;
            }
            // A pair recorded again has a newer entry further back; only the
            // entry matching its current expiry removes it.
            if self.expires.get(key) == Some(expiry) {
                self.expires.remove(key);
                self.rejected.remove(key);
            }
            self.order.pop_front();
        }
    }
}

#[async_trait::async_trait]
impl DedupStore for MemoryStore {
    async fn begin_as(&self, key: &DedupKey, _lease_for: Duration, replay: bool) -> Result<Begin, StoreError> {
        let records = self.lock();
        let key = key.storage_key();
        match records.expires.get(&key) {
            Some(_) if replay && records.rejected.contains(&key) => Ok(Begin::Run),
            Some(expiry) if *expiry > Instant::now() => Ok(Begin::Done),
            _ => Ok(Begin::Run),
        }
    }

    async fn commit_all(&self, succeeded: &[DedupKey], rejected: &[DedupKey], ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let expiry = now + ttl;
        let mut records = self.lock();
        let count = succeeded.len() + rejected.len();
        records.evict(now, self.max_records, count.min(self.max_records));
        for (keys, was_rejected) in [(succeeded, false), (rejected, true)] {
            for key in keys {
                let key = key.storage_key();
                if was_rejected {
                    records.rejected.insert(key.clone());
                } else {
                    records.rejected.remove(&key);
                }
                records.expires.insert(key.clone(), expiry);
                records.order.push_back((expiry, key));
            }
        }
        Ok(())
    }

    async fn release(&self, _keys: &[DedupKey]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn sweep(&self) -> Result<(), StoreError> {
        self.lock().evict(Instant::now(), usize::MAX, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> DedupKey {
        DedupKey { handler: "h".into(), source: "/s".into(), id: id.into() }
    }

    const LEASE: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn keeps_the_store_contract() {
        crate::dedup::contract::check("memory", &MemoryStore::new(1000)).await;
    }

    #[tokio::test]
    async fn done_is_remembered_per_pair() {
        let store = MemoryStore::new(10);
        store.commit(&[key("1")], Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.begin(&key("1"), LEASE).await.unwrap(), Begin::Done);
        assert_eq!(store.begin(&key("2"), LEASE).await.unwrap(), Begin::Run);
        let other_handler = DedupKey { handler: "g".into(), ..key("1") };
        let other_source = DedupKey { source: "/t".into(), ..key("1") };
        assert_eq!(store.begin(&other_handler, LEASE).await.unwrap(), Begin::Run);
        assert_eq!(store.begin(&other_source, LEASE).await.unwrap(), Begin::Run);
    }

    #[tokio::test]
    async fn records_expire_after_the_ttl() {
        let store = MemoryStore::new(10);
        store.commit(&[key("1")], Duration::from_millis(10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.begin(&key("1"), LEASE).await.unwrap(), Begin::Run);
        store.sweep().await.unwrap();
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn when_full_the_oldest_records_go_first() {
        let store = MemoryStore::new(3);
        for id in ["1", "2", "3", "4"] {
            store.commit(&[key(id)], Duration::from_secs(60)).await.unwrap();
        }
        assert_eq!(store.len(), 3);
        assert_eq!(store.begin(&key("1"), LEASE).await.unwrap(), Begin::Run, "the oldest was forgotten");
        assert_eq!(store.begin(&key("4"), LEASE).await.unwrap(), Begin::Done);
    }
}
