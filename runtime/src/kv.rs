//! Storage behind the `kv` capability: one key space per handler, kept where
//! gridfn keeps its dedup records (in memory, on disk with fjall in
//! `<state_dir>/kv`, or in the same Redis), so a handler's state is as durable
//! and as shared as gridfn's own.
//!
//! Handlers call it synchronously from their instance, which runs on a
//! blocking thread, so the stores are synchronous too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

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

pub trait KvStore: Send + Sync {
    fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String>;
    fn delete(&self, handler: &str, key: &str) -> Result<(), String>;
    /// Adds `delta` to the integer at `key` (0 when absent), atomically.
    fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String>;
}

/// Opens the store that matches the dedup store.
pub fn open(dedup: &config::DedupStore, state_dir: &Path) -> anyhow::Result<Arc<dyn KvStore>> {
    Ok(match dedup {
        config::DedupStore::Memory { .. } => Arc::new(MemoryKv::default()),
        config::DedupStore::Embedded { .. } => Arc::new(EmbeddedKv::open(&state_dir.join("kv"))?),
        config::DedupStore::Redis { url, key_prefix } => Arc::new(RedisKv::connect(url, &format!("{key_prefix}kv:"))?),
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

fn add(counter: i64, delta: i64) -> Result<i64, String> {
    counter.checked_add(delta).ok_or_else(|| "counter overflow".to_owned())
}

#[derive(Default)]
pub struct MemoryKv(Mutex<HashMap<String, Vec<u8>>>);

impl MemoryKv {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KvStore for MemoryKv {
    fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.map().get(&scoped(handler, key)).cloned())
    }
    fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.map().insert(scoped(handler, key), value.to_vec());
        Ok(())
    }
    fn delete(&self, handler: &str, key: &str) -> Result<(), String> {
        self.map().remove(&scoped(handler, key));
        Ok(())
    }
    fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String> {
        let mut map = self.map();
        let key = scoped(handler, key);
        let value = add(parse_counter(map.get(&key).map(Vec::as_slice))?, delta)?;
        map.insert(key, value.to_string().into_bytes());
        Ok(value)
    }
}

/// On disk with fjall; every write is synced before it returns.
pub struct EmbeddedKv {
    db: fjall::Database,
    values: fjall::Keyspace,
    /// Makes `increment`'s read-modify-write atomic within this process
    /// (the folder is locked against other processes).
    counters: Mutex<()>,
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
        Ok(EmbeddedKv { db, values, counters: Mutex::new(()) })
    }

    fn sync(&self) -> Result<(), String> {
        self.db.persist(fjall::PersistMode::SyncData).map_err(|e| e.to_string())
    }
}

impl KvStore for EmbeddedKv {
    fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.values.get(scoped(handler, key)).map(|v| v.map(|v| v.to_vec())).map_err(|e| e.to_string())
    }
    fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.values.insert(scoped(handler, key), value).map_err(|e| e.to_string())?;
        self.sync()
    }
    fn delete(&self, handler: &str, key: &str) -> Result<(), String> {
        self.values.remove(scoped(handler, key)).map_err(|e| e.to_string())?;
        self.sync()
    }
    fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String> {
        let _one_at_a_time = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.get(handler, key)?;
        let value = add(parse_counter(current.as_deref())?, delta)?;
        self.set(handler, key, value.to_string().as_bytes())?;
        Ok(value)
    }
}

/// In Redis, shared by every host that shares the dedup store.
pub struct RedisKv {
    connection: Mutex<redis::Connection>,
    prefix: String,
}

impl RedisKv {
    pub fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("kv store: bad redis URL: {e}"))?;
        let connection = client.get_connection().map_err(|e| anyhow::anyhow!("kv store: cannot reach redis: {e}"))?;
        Ok(RedisKv { connection: Mutex::new(connection), prefix: prefix.to_owned() })
    }

    fn run<T: redis::FromRedisValue>(&self, command: &mut redis::Cmd) -> Result<T, String> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        command.query(&mut *connection).map_err(|e| e.to_string())
    }

    fn key(&self, handler: &str, key: &str) -> String {
        format!("{}{}", self.prefix, scoped(handler, key))
    }
}

impl KvStore for RedisKv {
    fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.run(redis::cmd("GET").arg(self.key(handler, key)))
    }
    fn set(&self, handler: &str, key: &str, value: &[u8]) -> Result<(), String> {
        self.run(redis::cmd("SET").arg(self.key(handler, key)).arg(value))
    }
    fn delete(&self, handler: &str, key: &str) -> Result<(), String> {
        self.run::<i64>(redis::cmd("DEL").arg(self.key(handler, key))).map(|_| ())
    }
    fn increment(&self, handler: &str, key: &str, delta: i64) -> Result<i64, String> {
        self.run(redis::cmd("INCRBY").arg(self.key(handler, key)).arg(delta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(store: &dyn KvStore) {
        assert_eq!(store.get("a", "k").unwrap(), None);
        store.set("a", "k", b"v1").unwrap();
        assert_eq!(store.get("a", "k").unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(store.get("b", "k").unwrap(), None, "handlers do not see each other's keys");
        assert_eq!(store.get("a:", "k").unwrap(), None, "scoping cannot be forged with separators");
        store.delete("a", "k").unwrap();
        assert_eq!(store.get("a", "k").unwrap(), None);
        assert_eq!(store.increment("a", "n", 2).unwrap(), 2);
        assert_eq!(store.increment("a", "n", 3).unwrap(), 5);
        store.set("a", "text", b"hello").unwrap();
        assert!(store.increment("a", "text", 1).is_err());
    }

    #[test]
    fn memory_keeps_the_contract() {
        contract(&MemoryKv::default());
    }

    #[test]
    fn embedded_keeps_the_contract_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedKv::open(dir.path()).unwrap();
            contract(&store);
            store.set("a", "kept", b"yes").unwrap();
        }
        let store = EmbeddedKv::open(dir.path()).unwrap();
        assert_eq!(store.get("a", "kept").unwrap().as_deref(), Some(&b"yes"[..]));
    }
}
