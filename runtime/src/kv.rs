//! Storage behind the `kv` capability: one key space per handler, kept where
//! gridfn keeps its dedup records (in memory, on disk with fjall in
//! `<state_dir>/kv`, or in the same Redis), so a handler's state is as durable
//! and as shared as gridfn's own.
//!
//! Handlers run on the async task that delivers their event, and their kv
//! calls are async host functions: a call suspends the handler's instance
//! while the store works, and never holds the runtime worker it runs on. So
//! Redis is reached through its async connection, and fjall's reads, writes
//! and fsyncs run on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::config;

/// Longest key a handler may use, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value a handler may store, in bytes.
pub const MAX_VALUE: usize = 1 << 20;

/// One handler's keys never meet another's: every key is stored under its
/// handler's name, length-prefixed.
fn scoped(handler: &str, key: &str) -> String {
    format!("{}:{handler}{key}", handler.len())
}

/// The handler's own key, from a stored one that [`scoped`] made for it.
fn unscoped<'a>(handler: &str, stored: &'a str) -> Option<&'a str> {
    stored.strip_prefix(&scoped(handler, ""))
}

/// A key as the handler wrote it, and its value.
pub type KeyValue = (String, Vec<u8>);

#[async_trait::async_trait]
pub trait KvStore: Send + Sync {
    async fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String>;
    async fn delete(&self, handler: &str, key: &str) -> Result<(), String>;
    /// Adds `delta` to the integer at `key` (0 when absent), atomically.
    async fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String>;
    /// The first `limit` of `handler`'s keys that start with `prefix`, in
    /// byte order, with their values. Not a handler capability: it is how a
    /// person reads a handler's state (an audit trail) from outside, through
    /// the admin API, while gridfn runs.
    async fn list(&self, handler: &str, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, String>;
}

/// Opens the store that matches the dedup store.
pub async fn open(dedup: &config::DedupStore, state_dir: &Path) -> anyhow::Result<Arc<dyn KvStore>> {
    Ok(match dedup {
        config::DedupStore::Memory { .. } => Arc::new(MemoryKv::default()),
        config::DedupStore::Embedded { .. } => Arc::new(EmbeddedKv::open(&state_dir.join("kv"))?),
        config::DedupStore::Redis { url, key_prefix } => {
            Arc::new(RedisKv::connect(url, &format!("{key_prefix}kv:")).await?)
        }
    })
}

fn parse_counter(value: Option<&[u8]>) -> Result<i64, String> {
    match value {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| "the value at this key is not an integer counter".to_owned()),
    }
}

/// The counter stored as `value` (0 when absent) plus `delta`.
fn incremented(value: Option<&[u8]>, delta: i64) -> Result<i64, String> {
    parse_counter(value)?.checked_add(delta).ok_or_else(|| "counter overflow".to_owned())
}

/// In this process's memory. Handlers on many tasks touch their keys at once;
/// a concurrent map lets them, and its entry lock makes `increment` atomic.
#[derive(Default)]
pub struct MemoryKv(DashMap<String, Vec<u8>>);

#[async_trait::async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(&scoped(handler, key)).map(|value| value.clone()))
    }
    async fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.0.insert(scoped(handler, key), value.to_vec());
        Ok(())
    }
    async fn delete(&self, handler: &str, key: &str) -> Result<(), String> {
        self.0.remove(&scoped(handler, key));
        Ok(())
    }
    async fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String> {
        let entry = self.0.entry(scoped(handler, key));
        let current = match &entry {
            Entry::Occupied(stored) => Some(stored.get().as_slice()),
            Entry::Vacant(_) => None,
        };
        let value = incremented(current, delta)?;
        entry.insert(value.to_string().into_bytes());
        Ok(value)
    }
    async fn list(&self, handler: &str, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, String> {
        let wanted = scoped(handler, prefix);
        let mut entries: Vec<KeyValue> = self
            .0
            .iter()
            .filter(|stored| stored.key().starts_with(&wanted))
            .filter_map(|stored| Some((unscoped(handler, stored.key())?.to_owned(), stored.value().clone())))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries.truncate(limit);
        Ok(entries)
    }
}

/// On disk with fjall; every write is synced before it returns. Each call
/// runs on tokio's blocking pool (cheap clones of the handles go there).
#[derive(Clone)]
pub struct EmbeddedKv {
    db: fjall::Database,
    values: fjall::Keyspace,
    /// Makes `increment`'s read-modify-write atomic within this process
    /// (the folder is locked against other processes).
    counters: Arc<Mutex<()>>,
}

impl EmbeddedKv {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let db = fjall::Database::builder(path)
            .open()
            .map_err(|e| anyhow::anyhow!("kv store {}: cannot open: {e}", path.display()))?;
        let values = db
            .keyspace("values", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| anyhow::anyhow!("kv store {}: {e}", path.display()))?;
        Ok(EmbeddedKv { db, values, counters: Arc::default() })
    }

    /// Runs `work` on the blocking pool: fjall reads may wait for the disk,
    /// and every write waits for an fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&EmbeddedKv) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store)).await.map_err(|e| format!("kv store task failed: {e}"))?
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.values.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| e.to_string())
    }

    fn write(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.values.insert(key, value).map_err(|e| e.to_string())?;
        self.sync()
    }

    fn sync(&self) -> Result<(), String> {
        self.db.persist(fjall::PersistMode::SyncData).map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl KvStore for EmbeddedKv {
    async fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = scoped(handler, key);
        self.blocking(move |store| store.read(&key)).await
    }
    async fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String> {
        let (key, value) = (scoped(handler, key), value.to_vec());
        self.blocking(move |store| store.write(&key, &value)).await
    }
    async fn delete(&self, handler: &str, key: &str) -> Result<(), String> {
        let key = scoped(handler, key);
        self.blocking(move |store| {
            store.values.remove(key).map_err(|e| e.to_string())?;
            store.sync()
        })
        .await
    }
    async fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String> {
        let key = scoped(handler, key);
        self.blocking(move |store| {
            let _one_at_a_time = store.counters.lock().unwrap_or_else(|e| e.into_inner());
            let value = incremented(store.read(&key)?.as_deref(), delta)?;
            store.write(&key, value.to_string().as_bytes())?;
            Ok(value)
        })
        .await
    }
    async fn list(&self, handler: &str, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, String> {
        let (handler, wanted) = (handler.to_owned(), scoped(handler, prefix));
        self.blocking(move |store| {
            let mut entries = Vec::new();
            for item in store.values.prefix(&wanted).take(limit) {
                let (key, value) = item.into_inner().map_err(|e| e.to_string())?;
                // Keys come from handlers' strings; anything else is not theirs.
                if let Some(key) = std::str::from_utf8(&key).ok().and_then(|key| unscoped(&handler, key)) {
                    entries.push((key.to_owned(), value.to_vec()));
                }
            }
            Ok(entries)
        })
        .await
    }
}

/// In Redis, shared by every host that shares the dedup store, through the
/// same kind of reconnecting async connection as the dedup store's.
pub struct RedisKv {
    connection: redis::aio::ConnectionManager,
    prefix: String,
}

impl RedisKv {
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let (connection, _) =
            crate::dedup::redis::connection(url).await.map_err(|e| anyhow::anyhow!("kv store: {}", e.0))?;
        Ok(RedisKv { connection, prefix: prefix.to_owned() })
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, String> {
        command.query_async(&mut self.connection.clone()).await.map_err(|e| e.to_string())
    }

    fn key(&self, handler: &str, key: &str) -> String {
        format!("{}{}", self.prefix, scoped(handler, key))
    }
}

#[async_trait::async_trait]
impl KvStore for RedisKv {
    async fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.run(redis::cmd("GET").arg(self.key(handler, key))).await
    }
    async fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.run(redis::cmd("SET").arg(self.key(handler, key)).arg(value)).await
    }
    async fn delete(&self, handler: &str, key: &str) -> Result<(), String> {
        self.run::<i64>(redis::cmd("DEL").arg(self.key(handler, key))).await.map(|_| ())
    }
    async fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String> {
        self.run(redis::cmd("INCRBY").arg(self.key(handler, key)).arg(delta)).await
    }
    /// SCAN (which never blocks Redis, unlike KEYS) for the prefix, then one
    /// MGET for the first `limit` in key order; a key deleted in between is
    /// left out.
    async fn list(&self, handler: &str, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, String> {
        let stored_prefix = self.key(handler, "");
        let pattern = format!("{}*", glob_escaped(&self.key(handler, prefix)));
        let mut keys = std::collections::BTreeSet::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) =
                self.run(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000)).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let keys: Vec<String> = keys.into_iter().take(limit).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self.run(redis::cmd("MGET").arg(&keys)).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(key, value)| Some((key.strip_prefix(&stored_prefix)?.to_owned(), value?)))
            .collect())
    }
}

/// `text` matched literally by a Redis glob pattern.
fn glob_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every store keeps. Keys are unique per call, so stores
    /// shared between tests (one Redis) are fine.
    async fn contract(label: &str, store: &dyn KvStore) {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let (a, b) = (format!("a-{run}"), format!("b-{run}"));
        assert_eq!(store.get(&a, "k").await.unwrap(), None, "{label}: absent key");
        store.set(&a, "k", b"v1").await.unwrap();
        assert_eq!(store.get(&a, "k").await.unwrap().as_deref(), Some(&b"v1"[..]), "{label}: set then get");
        assert_eq!(store.get(&b, "k").await.unwrap(), None, "{label}: handlers do not see each other's keys");
        assert_eq!(store.get(&format!("{a}:"), "k").await.unwrap(), None, "{label}: scoping cannot be forged");
        store.set(&a, "k", b"v2").await.unwrap();
        assert_eq!(store.get(&a, "k").await.unwrap().as_deref(), Some(&b"v2"[..]), "{label}: overwrite");
        store.delete(&a, "k").await.unwrap();
        assert_eq!(store.get(&a, "k").await.unwrap(), None, "{label}: deleted");
        store.delete(&a, "never-set").await.unwrap();

        assert_eq!(store.increment(&a, "n", 2).await.unwrap(), 2, "{label}: a counter starts at 0");
        assert_eq!(store.increment(&a, "n", 3).await.unwrap(), 5);
        assert_eq!(store.increment(&a, "n", -6).await.unwrap(), -1);
        assert_eq!(store.get(&a, "n").await.unwrap().as_deref(), Some(&b"-1"[..]), "{label}: counters are text");
        store.set(&a, "text", b"hello").await.unwrap();
        assert!(store.increment(&a, "text", 1).await.is_err(), "{label}: not a counter");
        store.set(&a, "max", i64::MAX.to_string().as_bytes()).await.unwrap();
        assert!(store.increment(&a, "max", 1).await.is_err(), "{label}: overflow is an error");

        // Concurrent increments from many tasks all count.
        let increments = (0..50).map(|_| store.increment(&a, "shared", 1));
        let results = futures::future::join_all(increments).await;
        let mut seen: Vec<i64> = results.into_iter().map(Result::unwrap).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..=50).collect::<Vec<_>>(), "{label}: every increment saw its own value");

        listing(label, store, &run).await;
    }

    /// `list`: the handler's keys under a prefix, in key order, with their values.
    async fn listing(label: &str, store: &dyn KvStore, run: &str) {
        let (c, longer) = (format!("c-{run}"), format!("c-{run}x"));
        assert!(store.list(&c, "", 10).await.unwrap().is_empty(), "{label}: nothing written, nothing listed");
        for key in ["trail/0002", "trail/0010", "trail/0001", "trail", "trails/1", "tr*il/1", "other"] {
            store.set(&c, key, key.as_bytes()).await.unwrap();
        }
        store.set(&c, "trail/bytes", &[0xff, 0x00, 0x80]).await.unwrap();
        store.set(&longer, "trail/0000", b"not c's").await.unwrap();
        store.set(&format!("c-{run}"), "trail/0003", b"three").await.unwrap();
        store.delete(&c, "trail/0003").await.unwrap();

        let keys = |entries: Vec<KeyValue>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        let trail = store.list(&c, "trail/", 10).await.unwrap();
        assert_eq!(
            trail,
            vec![
                ("trail/0001".to_owned(), b"trail/0001".to_vec()),
                ("trail/0002".to_owned(), b"trail/0002".to_vec()),
                ("trail/0010".to_owned(), b"trail/0010".to_vec()),
                ("trail/bytes".to_owned(), vec![0xff, 0x00, 0x80]),
            ],
            "{label}: the prefix's keys in key order, values as stored, deleted keys gone, no other handler's"
        );
        assert_eq!(keys(store.list(&c, "trail/", 2).await.unwrap()), ["trail/0001", "trail/0002"], "{label}: limit");
        assert_eq!(keys(store.list(&c, "tr*", 10).await.unwrap()), ["tr*il/1"], "{label}: a prefix is literal");
        assert_eq!(
            keys(store.list(&c, "", 100).await.unwrap()),
            ["other", "tr*il/1", "trail", "trail/0001", "trail/0002", "trail/0010", "trail/bytes", "trails/1"],
            "{label}: the empty prefix lists every key of the handler"
        );
        assert!(store.list(&c, "nothing/", 10).await.unwrap().is_empty(), "{label}: no match");
    }

    #[tokio::test]
    async fn memory_keeps_the_contract() {
        contract("memory", &MemoryKv::default()).await;
    }

    #[tokio::test]
    async fn embedded_keeps_the_contract_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedKv::open(dir.path()).unwrap();
            contract("embedded", &store).await;
            store.set("a", "kept", b"yes").await.unwrap();
        }
        let store = EmbeddedKv::open(dir.path()).unwrap();
        assert_eq!(store.get("a", "kept").await.unwrap().as_deref(), Some(&b"yes"[..]));
    }

    #[tokio::test]
    async fn redis_keeps_the_contract_and_shares_keys_between_hosts() {
        let redis = crate::dedup::redis::test_server::test_redis();
        let prefix = format!("gridfn-test:kv:{}:", uuid::Uuid::new_v4().simple());
        let store = RedisKv::connect(&redis.url, &prefix).await.unwrap();
        contract("redis", &store).await;

        // A second host (its own connection, the same prefix) sees the same
        // keys, and the values sit in Redis under the prefix.
        let other = RedisKv::connect(&redis.url, &prefix).await.unwrap();
        store.set("h", "k", b"from one").await.unwrap();
        assert_eq!(other.get("h", "k").await.unwrap().as_deref(), Some(&b"from one"[..]));
        assert_eq!(other.increment("h", "n", 7).await.unwrap(), 7);
        let mut raw =
            redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
        let stored: Option<String> =
            redis::cmd("GET").arg(format!("{prefix}1:hn")).query_async(&mut raw).await.unwrap();
        assert_eq!(stored.as_deref(), Some("7"));
    }
}
