//! Where a served namespace keeps its events and their delivery state: one
//! fjall database (`<state_dir>/namespace`), one record per (subscription,
//! event), so a `kill -9` loses nothing that was answered.
//!
//! Durability: every change a client is answered about (`:publish`, a
//! receive's lock, `:acknowledge`, `:release`, `:reject`, `:renewLock`, a
//! dead-letter) is one atomic batch, `fdatasync`ed before the answer goes
//! out. So an event whose `:publish` got 200 survives a crash, an
//! acknowledged event never comes back, and a lock handed out before a crash
//! is still honoured (its token still settles it) after a restart.
//!
//! A record's key is `topic \0 subscription \0 sequence` (names in lower
//! case, the sequence big-endian, so a subscription's records come back in
//! publish order); its value is JSON (a [`Record`]). The event is copied into
//! each subscription's record: a local namespace holds few events, and a
//! record that owns its event can be deleted without counting references.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::{Deserialize, Serialize};

/// One event as one subscription holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The CloudEvent as published (one JSON object).
    pub event: Box<serde_json::value::RawValue>,
    /// When `:publish` accepted it (Unix milliseconds).
    pub published: u64,
    /// Receives so far: the next receive answers `deliveryCount` + 1.
    pub deliveries: u32,
    pub state: State,
}

/// Who may receive the event now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Anyone, from `at` on (Unix milliseconds; a release may delay it).
    Available { at: u64 },
    /// Only the holder of `token` until `until` (Unix milliseconds); after
    /// that the lock has expired and the event is available again.
    Locked { token: String, until: u64 },
}

/// Which record: topic and subscription (lower case) and publish sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub topic: String,
    pub subscription: String,
    pub sequence: u64,
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.topic.len() + self.subscription.len() + 10);
        key.extend_from_slice(self.topic.as_bytes());
        key.push(0);
        key.extend_from_slice(self.subscription.as_bytes());
        key.push(0);
        key.extend_from_slice(&self.sequence.to_be_bytes());
        key
    }

    fn parse(bytes: &[u8]) -> Option<Key> {
        let (names, sequence) = bytes.split_at_checked(bytes.len().checked_sub(8)?)?;
        let names = std::str::from_utf8(names.strip_suffix(&[0])?).ok()?;
        let (topic, subscription) = names.split_once('\0')?;
        Some(Key {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
            sequence: u64::from_be_bytes(sequence.try_into().ok()?),
        })
    }
}

/// A change to one record.
pub enum Change {
    Put(Key, Record),
    Delete(Key),
}

/// The database; cheap to clone, so calls can run on tokio's blocking pool.
#[derive(Clone)]
pub struct Store {
    db: Database,
    records: Keyspace,
}

impl Store {
    /// Opens (or creates) the store in `path`; fails if another process has it.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(path)?;
        let shown = path.display();
        let db = Database::builder(path).open().map_err(|e| match e {
            fjall::Error::Locked => anyhow::anyhow!("namespace store {shown}: another running gridfn has it open"),
            e => anyhow::anyhow!("namespace store {shown}: cannot open: {e}"),
        })?;
        let records = db
            .keyspace("records", KeyspaceCreateOptions::default)
            .map_err(|e| anyhow::anyhow!("namespace store {shown}: {e}"))?;
        Ok(Store { db, records })
    }

    /// Every record, in key order. A record that does not parse is reported
    /// and skipped (never silently).
    pub fn load(&self) -> anyhow::Result<Vec<(Key, Record)>> {
        let mut records = Vec::new();
        for item in self.records.iter() {
            let (key, value) = item.into_inner()?;
            match (Key::parse(&key), serde_json::from_slice::<Record>(&value)) {
                (Some(key), Ok(record)) => records.push((key, record)),
                (_, Err(e)) => tracing::error!("namespace store: a record that does not parse is skipped: {e}"),
                (None, _) => tracing::error!("namespace store: a record with a malformed key is skipped"),
            }
        }
        Ok(records)
    }

    /// Applies `changes` as one atomic batch, synced to disk before it returns.
    /// Blocking: call it from the blocking pool.
    pub fn commit(&self, changes: &[Change]) -> anyhow::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
        for change in changes {
            match change {
                Change::Put(key, record) => batch.insert(&self.records, key.bytes(), serde_json::to_vec(record)?),
                Change::Delete(key) => batch.remove(&self.records, key.bytes()),
            }
        }
        Ok(batch.commit()?)
    }

    /// [`Store::commit`] on the blocking pool.
    pub async fn commit_async(&self, changes: Vec<Change>) -> anyhow::Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.commit(&changes)).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &str, state: State) -> Record {
        Record {
            event: serde_json::value::RawValue::from_string(event.into()).unwrap(),
            published: 7,
            deliveries: 1,
            state,
        }
    }

    #[test]
    fn records_survive_reopening_in_publish_order_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let key = |sequence| Key { topic: "orders".into(), subscription: "all".into(), sequence };
        {
            let store = Store::open(dir.path()).unwrap();
            // 256 sorts before 2 as text; big-endian keys keep publish order.
            let changes = [256, 2, 3]
                .map(|n| Change::Put(key(n), record(&format!("{{\"id\":\"{n}\"}}"), State::Available { at: 0 })));
            store.commit(&changes).unwrap();
            let locked = State::Locked { token: "t".into(), until: 99 };
            store.commit(&[Change::Delete(key(3)), Change::Put(key(2), record("{\"id\":\"2\"}", locked))]).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        let sequences: Vec<u64> = loaded.iter().map(|(k, _)| k.sequence).collect();
        assert_eq!(sequences, [2, 256]);
        assert_eq!(loaded[0].0, key(2));
        assert_eq!(loaded[0].1.state, State::Locked { token: "t".into(), until: 99 });
        assert_eq!(loaded[1].1.event.get(), "{\"id\":\"256\"}");
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path()).err().expect("locked");
        assert!(second.to_string().contains("another running gridfn"), "{second}");
    }
}
