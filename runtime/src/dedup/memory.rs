//! The in-memory store: fastest, per process, forgotten on restart. Bounded:
//! when full, the oldest records are forgotten first (their events would run
//! again if redelivered: at-least-once is kept, memory is not unbounded).
//! The handlers' kv lives beside the records, and a run's writes are applied
//! under the same lock as its record.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{Begin, DedupKey, DedupStore, Done, StoreError};
use crate::kv::MemoryKv;

/// Every event's `begin` reads the records; once per delivery a `commit`
/// writes them and evicts. The records are a concurrent map, so those reads
/// never wait for a commit; the writers take turns on `order`, which keeps the
/// map and the order in step and the bound exact.
pub struct MemoryStore {
    max_records: usize,
    /// Each recorded pair, by its [`DedupKey::digest`] (16 bytes, whatever
    /// the event's source and id): when it expires, and whether it was done
    /// by a rejection (which a replay may run again).
    expires: DashMap<[u8; 16], Record, foldhash::fast::RandomState>,
    order: Mutex<Order>,
    /// The handlers' kv: read by their runs at any time, written only by
    /// `record`, holding `order`.
    kv: MemoryKv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    expiry: Instant,
    rejected: bool,
}

/// Pairs in the order they were recorded; with one TTL for all, that is also
/// the order in which they expire.
#[derive(Default)]
struct Order {
    queue: VecDeque<(Instant, [u8; 16])>,
    /// How many pairs `expires` holds (only writers, holding this, change it).
    records: usize,
}

impl MemoryStore {
    /// What [`DedupStore::begin_as`] answers: the store is this process's, so there are no leases.
    fn begin_now(&self, key: &DedupKey, replay: bool) -> Begin {
        match self.expires.get(&key.digest()).map(|record| *record) {
            Some(record) if record.expiry <= Instant::now() => Begin::Run,
            Some(record) if replay && record.rejected => Begin::Run,
            Some(_) => Begin::Done,
            None => Begin::Run,
        }
    }

    pub fn new(max_records: usize) -> Self {
        MemoryStore {
            max_records: max_records.max(1),
            expires: DashMap::default(),
            order: Mutex::default(),
            kv: MemoryKv::default(),
        }
    }

    /// The handlers' kv, as their runs and the admin API read it.
    pub fn kv(&self) -> MemoryKv {
        self.kv.clone()
    }

    pub fn len(&self) -> usize {
        self.order().records
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn order(&self) -> std::sync::MutexGuard<'_, Order> {
        self.order.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops expired records from the front; with `room_for`, also the oldest
    /// live ones until that many more fit under `max`.
    fn evict(&self, order: &mut Order, now: Instant, max: usize, room_for: usize) {
        while let Some((expiry, key)) = order.queue.front() {
            let over = order.records + room_for > max;
            if *expiry > now && !over {
                break;
            }
            // A pair recorded again has a newer entry further back; only the
            // entry matching its current expiry removes it.
            if self.expires.remove_if(key, |_, current| current.expiry == *expiry).is_some() {
                order.records -= 1;
            }
            order.queue.pop_front();
        }
    }
}

#[async_trait::async_trait]
impl DedupStore for MemoryStore {
    async fn begin_as(&self, key: &DedupKey, _lease_for: Duration, replay: bool) -> Result<Begin, StoreError> {
        Ok(self.begin_now(key, replay))
    }

    async fn begin_all(&self, keys: &[&DedupKey], _: Duration, replay: bool) -> Vec<Result<Begin, StoreError>> {
        keys.iter().map(|key| Ok(self.begin_now(key, replay))).collect()
    }

    async fn record(&self, done: &[Done], ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let expiry = now + ttl;
        let mut order = self.order();
        // A pair recorded as a success meanwhile keeps its record; its late
        // run's writes are dropped. (A rejected one is recorded again: only a
        // replay runs it, and the replay's outcome replaces the rejection.)
        let recorded = |key: &[u8; 16]| self.expires.get(key).is_some_and(|r| r.expiry > now && !r.rejected);
        let fresh: Vec<([u8; 16], &Done)> =
            done.iter().map(|d| (d.key.digest(), d)).filter(|(key, _)| !recorded(key)).collect();
        // Every kv write is computed before any is applied: one that cannot
        // apply fails the whole record.
        let mut values: std::collections::HashMap<String, Option<Vec<u8>>> = std::collections::HashMap::new();
        for (key, write) in fresh.iter().flat_map(|(_, d)| d.writes.scoped()) {
            let current = match values.get(&key) {
                Some(value) => value.clone(),
                None => self.kv.0.get(&key).map(|v| v.clone()),
            };
            let value = write.applied_to(current.as_deref()).map_err(|e| StoreError(format!("kv {key}: {e}")))?;
            values.insert(key, value);
        }
        self.evict(&mut order, now, self.max_records, fresh.len().min(self.max_records));
        for (key, done) in fresh {
            if self.expires.insert(key, Record { expiry, rejected: done.rejected }).is_none() {
                order.records += 1;
            }
            order.queue.push_back((expiry, key));
        }
        for (key, value) in values {
            match value {
                Some(value) => self.kv.0.insert(key, value),
                None => self.kv.0.remove(&key).map(|(_, v)| v),
            };
        }
        Ok(())
    }

    async fn release(&self, _keys: &[DedupKey]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn sweep(&self) -> Result<(), StoreError> {
        let mut order = self.order();
        self.evict(&mut order, Instant::now(), usize::MAX, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> DedupKey {
        DedupKey::new("h", "/s", id)
    }

    const LEASE: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn keeps_the_store_contract() {
        crate::dedup::contract::check("memory", &MemoryStore::new(1000)).await;
        let store = MemoryStore::new(1000);
        crate::dedup::contract::check_kv("memory", &store, &store.kv()).await;
    }

    #[tokio::test]
    async fn done_is_remembered_per_pair() {
        let store = MemoryStore::new(10);
        store.commit(&[key("1")], Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.begin(&key("1"), LEASE).await.unwrap(), Begin::Done);
        assert_eq!(store.begin(&key("2"), LEASE).await.unwrap(), Begin::Run);
        let other_handler = DedupKey::new("g", "/s", "1");
        let other_source = DedupKey::new("h", "/t", "1");
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
