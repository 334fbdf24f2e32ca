//! The `kv` capability: one key space per handler, kept in the dedup store
//! (in memory, in the embedded store's fjall database, or in the same Redis),
//! and written together with the dedup records.
//!
//! # When writes take effect
//!
//! A run's `set`, `delete` and `increment` go to its [`KvWrites`], not to the
//! store. The run reads through them (`get` sees its own writes; `increment`
//! answers the stored value plus the run's deltas). When the pipeline records
//! the pair done (succeeded or dead-lettered), the dedup store applies the
//! run's writes in the same atomic write as the done record
//! ([`crate::dedup::DedupStore::record`]); a run that is retried (locally or
//! by the source), traps, times out, or dies with its host leaves no trace.
//! So the store holds the writes of exactly the runs that were recorded, one
//! per (handler, event) pair, even across `kill -9`. Increments are committed
//! as deltas (`INCRBY`), so runs on several hosts counting the same key all
//! count. The cost: a run does not see another run's writes until that run is
//! recorded (after its whole delivery ran).
//!
//! Handlers run on the async task that delivers their event, and their kv
//! reads are async host functions: a read suspends the handler's instance
//! while the store works, and never holds the runtime worker it runs on. So
//! Redis is read through its async connection, and fjall on tokio's blocking
//! pool.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

/// Longest key a handler may use, in bytes.
pub const MAX_KEY: usize = 512;
/// Largest value a handler may store, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most bytes (keys and values) one run may hold unrecorded: its writes wait
/// in the host's memory until the run is recorded.
pub const MAX_RUN_WRITES: usize = 16 << 20;

/// One handler's keys never meet another's: every key is stored under its
/// handler's name, length-prefixed.
pub fn scoped(handler: &str, key: &str) -> String {
    format!("{}:{handler}{key}", handler.len())
}

/// The handler's own key, from a stored one that [`scoped`] made for it.
fn unscoped<'a>(handler: &str, stored: &'a str) -> Option<&'a str> {
    stored.strip_prefix(&scoped(handler, ""))
}

/// A key as the handler wrote it, and its value.
pub type KeyValue = (String, Vec<u8>);

/// Reads of the recorded state. Writes go through a run's [`KvWrites`] and
/// are applied by the dedup store when the run is recorded.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync {
    async fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// The first `limit` of `handler`'s keys that start with `prefix`, in
    /// byte order, with their values. Not a handler capability: it is how a
    /// person reads a handler's state (an audit trail) from outside, through
    /// the admin API, while gridfn runs.
    async fn list(&self, handler: &str, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, String>;
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

/// One key's pending change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Set(Vec<u8>),
    Delete,
    /// Add to whatever the store holds when the run is recorded (0 when
    /// absent). Never `i64::MIN`, so a store can always undo it.
    Add(i64),
}

impl Write {
    /// The value `current` becomes; `None` deletes it. Fails when an `Add`
    /// meets a value that is not a counter, or overflows.
    pub fn applied_to(&self, current: Option<&[u8]>) -> Result<Option<Vec<u8>>, String> {
        match self {
            Write::Set(value) => Ok(Some(value.clone())),
            Write::Delete => Ok(None),
            Write::Add(delta) => Ok(Some(incremented(current, *delta)?.to_string().into_bytes())),
        }
    }
}

/// Why a run's write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The run holds more than [`MAX_RUN_WRITES`] unrecorded.
    TooLarge,
    /// The store failed, or the key is no counter.
    Store(String),
}

/// One run's writes, by key, waiting for the run to be recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvWrites {
    handler: Arc<str>,
    pending: BTreeMap<String, Write>,
    /// Keys and values held, against [`MAX_RUN_WRITES`].
    bytes: usize,
}

impl KvWrites {
    pub fn new(handler: Arc<str>) -> Self {
        KvWrites { handler, pending: BTreeMap::new(), bytes: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The handler whose key space they are in.
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// Each write with its key as stored ([`scoped`]), in key order.
    pub fn scoped(&self) -> impl Iterator<Item = (String, &Write)> {
        self.pending.iter().map(|(key, write)| (scoped(&self.handler, key), write))
    }

    fn put(&mut self, key: &str, write: Write) -> Result<(), Refused> {
        let size = |write: &Write| match write {
            Write::Set(value) => value.len(),
            _ => 8,
        };
        let added = size(&write) + key.len();
        let freed = self.pending.get(key).map_or(0, |old| size(old) + key.len());
        let bytes = self.bytes - freed + added;
        if bytes > MAX_RUN_WRITES {
            return Err(Refused::TooLarge);
        }
        self.bytes = bytes;
        self.pending.insert(key.to_owned(), write);
        Ok(())
    }

    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), Refused> {
        self.put(key, Write::Set(value))
    }

    pub fn delete(&mut self, key: &str) -> Result<(), Refused> {
        self.put(key, Write::Delete)
    }

    /// The value at `key` as this run sees it: its own write, else the store's
    /// (plus its own deltas).
    pub async fn get(&self, store: &dyn KvStore, key: &str) -> Result<Option<Vec<u8>>, Refused> {
        match self.pending.get(key) {
            Some(Write::Set(value)) => Ok(Some(value.clone())),
            Some(Write::Delete) => Ok(None),
            Some(Write::Add(delta)) => {
                let stored = store.get(&self.handler, key).await.map_err(Refused::Store)?;
                let value = incremented(stored.as_deref(), *delta).map_err(Refused::Store)?;
                Ok(Some(value.to_string().into_bytes()))
            }
            None => store.get(&self.handler, key).await.map_err(Refused::Store),
        }
    }

    /// Adds `delta` to the counter at `key` as this run sees it, and answers
    /// the new value. After this run's own `set` or `delete` of the key the
    /// result is known here; otherwise it is held as a delta, applied to
    /// whatever the store holds when the run is recorded.
    pub async fn increment(&mut self, store: &dyn KvStore, key: &str, delta: i64) -> Result<i64, Refused> {
        let overflow = || Refused::Store("counter overflow".to_owned());
        match self.pending.get(key) {
            Some(Write::Set(value)) => {
                let value = incremented(Some(value), delta).map_err(Refused::Store)?;
                self.put(key, Write::Set(value.to_string().into_bytes()))?;
                Ok(value)
            }
            Some(Write::Delete) => {
                self.put(key, Write::Set(delta.to_string().into_bytes()))?;
                Ok(delta)
            }
            held => {
                let held = match held {
                    Some(Write::Add(held)) => *held,
                    _ => 0,
                };
                let total = held.checked_add(delta).filter(|total| *total != i64::MIN).ok_or_else(overflow)?;
                let stored = store.get(&self.handler, key).await.map_err(Refused::Store)?;
                let value = incremented(stored.as_deref(), total).map_err(Refused::Store)?;
                self.put(key, Write::Add(total))?;
                Ok(value)
            }
        }
    }
}

/// A run's writes, shared by the pairs of one `handle-batch` call: the first
/// of them recorded done takes them, so a call's writes are applied once,
/// with its first recorded outcome.
#[derive(Debug, Clone, Default)]
pub struct RunWrites(Arc<Mutex<Option<KvWrites>>>);

impl RunWrites {
    pub fn new(writes: KvWrites) -> Self {
        RunWrites(Arc::new(Mutex::new((!writes.is_empty()).then_some(writes))))
    }

    /// The writes, if no other pair took them yet.
    pub fn take(&self) -> Option<KvWrites> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The keys of the in-memory dedup store ([`crate::dedup::memory`]), which
/// applies runs' writes to the same map.
#[derive(Clone, Default)]
pub struct MemoryKv(pub Arc<DashMap<String, Vec<u8>>>);

#[async_trait::async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(&scoped(handler, key)).map(|value| value.clone()))
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

/// The `kv` keyspace of the embedded dedup store's fjall database
/// ([`crate::dedup::embedded`]), whose writer applies runs' writes in the
/// batch that records them. Reads run on tokio's blocking pool.
#[derive(Clone)]
pub struct EmbeddedKv {
    pub values: fjall::Keyspace,
}

impl EmbeddedKv {
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&fjall::Keyspace) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let values = self.values.clone();
        tokio::task::spawn_blocking(move || work(&values)).await.map_err(|e| format!("kv store task failed: {e}"))?
    }
}

#[async_trait::async_trait]
impl KvStore for EmbeddedKv {
    async fn get(&self, handler: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        let key = scoped(handler, key);
        self.blocking(move |values| values.get(key).map(|v| v.map(|v| v.to_vec())).map_err(|e| e.to_string())).await
    }
    async fn list(&self, handler: &str, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, String> {
        let (handler, wanted) = (handler.to_owned(), scoped(handler, prefix));
        self.blocking(move |values| {
            let mut entries = Vec::new();
            for item in values.prefix(&wanted).take(limit) {
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

/// In Redis, shared by every host that shares the dedup store, under
/// `<key_prefix>kv:`, through the same kind of reconnecting async connection
/// as the dedup store's (which writes them: [`crate::dedup::redis`]).
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

    fn stored(entries: &[(&str, &str)]) -> MemoryKv {
        let store = MemoryKv::default();
        for (key, value) in entries {
            store.0.insert(scoped("h", key), value.as_bytes().to_vec());
        }
        store
    }

    fn value(text: &str) -> Option<Vec<u8>> {
        Some(text.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_run_reads_its_own_writes_and_the_store_sees_none_of_them() {
        let store = stored(&[("kept", "old"), ("gone", "x")]);
        let mut run = KvWrites::new("h".into());
        assert_eq!(run.get(&store, "kept").await, Ok(value("old")), "untouched keys read the store");
        run.set("kept", b"new".to_vec()).unwrap();
        run.delete("gone").unwrap();
        run.set("fresh", b"1".to_vec()).unwrap();
        assert_eq!(run.get(&store, "kept").await, Ok(value("new")));
        assert_eq!(run.get(&store, "gone").await, Ok(None));
        assert_eq!(run.get(&store, "fresh").await, Ok(value("1")));
        assert_eq!(store.get("h", "kept").await.unwrap(), value("old"), "nothing reaches the store before the record");
        assert_eq!(store.get("h", "fresh").await.unwrap(), None);
        let writes: Vec<(String, Write)> = run.scoped().map(|(key, write)| (key, write.clone())).collect();
        assert_eq!(
            writes,
            vec![
                ("1:hfresh".to_owned(), Write::Set(b"1".to_vec())),
                ("1:hgone".to_owned(), Write::Delete),
                ("1:hkept".to_owned(), Write::Set(b"new".to_vec())),
            ]
        );
    }

    #[tokio::test]
    async fn increments_answer_the_store_plus_the_runs_deltas_and_are_held_as_one_delta() {
        let store = stored(&[("n", "10"), ("text", "hello")]);
        let mut run = KvWrites::new("h".into());
        assert_eq!(run.increment(&store, "n", 2).await, Ok(12));
        assert_eq!(run.increment(&store, "n", 3).await, Ok(15));
        assert_eq!(run.get(&store, "n").await, Ok(value("15")));
        // Another run is recorded meanwhile: this one's deltas go on top of it.
        store.0.insert(scoped("h", "n"), b"100".to_vec());
        assert_eq!(run.get(&store, "n").await, Ok(value("105")));
        assert_eq!(run.increment(&store, "absent", -4).await, Ok(-4), "a counter starts at 0");
        let held: Vec<Write> = run.scoped().map(|(_, write)| write.clone()).collect();
        assert_eq!(held, vec![Write::Add(-4), Write::Add(5)], "deltas, not values: concurrent runs all count");
        assert!(matches!(run.increment(&store, "text", 1).await, Err(Refused::Store(_))), "not a counter");
        assert!(run.scoped().all(|(key, _)| key != "1:htext"), "a refused increment holds nothing");
        store.0.insert(scoped("h", "max"), i64::MAX.to_string().into_bytes());
        assert!(run.increment(&store, "max", 1).await.is_err(), "overflow is an error");
        assert!(run.increment(&store, "min", i64::MIN).await.is_err(), "a delta a store could not undo");
    }

    #[tokio::test]
    async fn after_a_runs_own_set_or_delete_an_increment_is_a_known_value() {
        let store = stored(&[("n", "10")]);
        let mut run = KvWrites::new("h".into());
        run.set("n", b"7".to_vec()).unwrap();
        assert_eq!(run.increment(&store, "n", 1).await, Ok(8));
        run.delete("m").unwrap();
        assert_eq!(run.increment(&store, "m", 5).await, Ok(5), "deleted: from 0, not from the store");
        run.set("text", b"x".to_vec()).unwrap();
        assert!(run.increment(&store, "text", 1).await.is_err());
        let held: Vec<Write> = run.scoped().map(|(_, write)| write.clone()).collect();
        assert_eq!(held, vec![Write::Set(b"5".to_vec()), Write::Set(b"8".to_vec()), Write::Set(b"x".to_vec())]);
        run.increment(&store, "n", 1).await.unwrap();
        run.set("n", b"0".to_vec()).unwrap();
        assert_eq!(run.get(&store, "n").await, Ok(value("0")), "the last write wins");
    }

    #[test]
    fn a_run_holds_a_bounded_amount() {
        let mut run = KvWrites::new("h".into());
        for i in 0..MAX_RUN_WRITES / MAX_VALUE - 1 {
            run.set(&format!("k{i}"), vec![0; MAX_VALUE]).unwrap();
        }
        // Overwriting a key frees what it held.
        run.set("k0", vec![0; MAX_VALUE]).unwrap();
        assert_eq!(run.set("one-more", vec![0; MAX_VALUE]), Err(Refused::TooLarge));
        run.delete("k0").unwrap();
        run.set("one-more", vec![0; MAX_VALUE]).unwrap();
    }

    #[test]
    fn writes_apply_to_stored_values() {
        assert_eq!(Write::Set(b"v".to_vec()).applied_to(Some(b"old")), Ok(Some(b"v".to_vec())));
        assert_eq!(Write::Delete.applied_to(Some(b"old")), Ok(None));
        assert_eq!(Write::Add(2).applied_to(None), Ok(Some(b"2".to_vec())));
        assert_eq!(Write::Add(-2).applied_to(Some(b"5")), Ok(Some(b"3".to_vec())));
        assert!(Write::Add(1).applied_to(Some(b"text")).is_err());
        assert!(Write::Add(1).applied_to(Some(i64::MAX.to_string().as_bytes())).is_err());
    }

    #[test]
    fn a_calls_writes_go_to_one_pair_only() {
        let mut writes = KvWrites::new("h".into());
        writes.set("k", b"v".to_vec()).unwrap();
        let shared = RunWrites::new(writes.clone());
        let other = shared.clone();
        assert_eq!(shared.take(), Some(writes));
        assert_eq!(other.take(), None);
        assert_eq!(RunWrites::new(KvWrites::new("h".into())).take(), None, "nothing written, nothing to apply");
    }
}
