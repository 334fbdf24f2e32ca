//! The embedded, on-disk dedup store: gridfn's default. Crash-safe, survives restarts, one host.
//!
//! Engine: [fjall](https://docs.rs/fjall), a pure-Rust LSM tree, chosen by measurement (a commit is one
//! append to a write-ahead journal plus one `fdatasync`, whatever the key order, so 100 random keys cost
//! about what 1 does, where B-tree engines rewrite a page per key).
//!
//! Layout: the store's path is a folder holding one fjall database with two keyspaces, written
//! together in one atomic batch:
//! - `records`: record key → expiry (unix millis, big-endian u64), followed by `R` when the pair was
//!   done by a rejection (a replay may run it again); records written before that byte existed are
//!   successes, which never run again;
//! - `kv`: the handlers' kv ([`crate::kv::scoped`] key → value). A commit applies its runs' kv writes
//!   in the batch that writes their records, so both survive a crash, or neither. Earlier versions kept
//!   kv in a database of its own (`<state_dir>/kv`); [`EmbeddedStore::take_in_legacy_kv`] moves it in.
//!
//! Expiry: a lookup treats a record whose expiry has passed as absent, so records expire on time
//! whatever is on disk; compaction ([`DropExpired`], a compaction filter on `records`) leaves them out
//! of the tables it writes. Under writes every table is rewritten sooner or later (its level fills and
//! spills into the next), so expired records leave the disk at the pace records arrive, with no
//! writes of their own; a store that stops taking writes keeps its files as they were (it has stopped
//! growing too). Earlier versions kept an expiry index (keyspace `expiry`: expiry ++ record key) and
//! swept it every minute, deleting each expired record with two tombstones: that index doubled every
//! commit's writes, its memtables and its compactions. A store that still has it drops it on open.
//!
//! A record key is 17 bytes whatever the event's source and id ([`record_key`]): `0x01`, then the first
//! 16 bytes of the SHA-256 of the pair's [`DedupKey::storage_key`] (a collision among 10¹² records has a
//! probability below 10⁻¹⁴), where the storage key itself (an Azure resource path and an id: 130 bytes
//! and more) was stored twice, in the record and in the expiry index of that time, and in their memtables.
//! Stores written before kept the storage key itself (it starts with an ASCII digit, so the two cannot
//! be confused): while any such record is left, a lookup that misses tries that form too, and
//! compaction drops them as they expire.
//!
//! The writer reads a pair's current record only when its run wrote kv (whose first record wins).
//! Otherwise the commit writes blind: the database is this process's alone (fjall locks it) and the
//! coordinator ([`super::Dedup`]) lets one copy of a pair run at a time, from its `begin` to its
//! commit or release, so what the commit replaces is what its `begin` saw and let run (nothing, a
//! rejection being replayed, or an expired record), never a success.
//!
//! All writes go through one writer thread that owns the write side. Group commit: every `commit` that
//! arrives while the writer is busy (writing and syncing the last group) waits in its queue, and the
//! next write takes all of them: one journal append and one `fdatasync` for the lot, each caller
//! answered only once that sync has returned. Nothing waits on purpose, so at low load each commit
//! gets its own sync at once, and under load one sync serves as many commits as arrived during the
//! previous one: the disk's syncs per second bound the groups, not the commits. fjall flushes
//! memtables and compacts on a thread of its own. Reads run in place, on the caller's thread.
//!
//! [`DedupSync`] chooses when a commit is durable: `always` (the default) as above, or `interval`, where a
//! commit is answered once it is in the operating system's page cache (it survives the process being
//! killed) and the journal is synced once a second (a power loss or kernel crash can lose the last
//! second's records, whose events then run again when Event Grid redelivers them).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fjall::compaction::Leveled;
use fjall::compaction::filter::{CompactionFilter, CompactionFilterResult, Context, Factory, ItemAccessor, Verdict};
use fjall::config::{PartitioningPolicy, PinningPolicy};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::oneshot;

use super::{Begin, DedupKey, DedupStore, Done, StoreError};
use crate::config::DedupSync;
use crate::kv::{EmbeddedKv, Write};

/// Most keys one group-commit write carries; later callers wait for the next write.
const MAX_KEYS_PER_WRITE: usize = 8192;
/// How often `DedupSync::Interval` syncs the journal (as Redis' `appendfsync everysec`).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Bounds the journal replayed on open (and so reopen time); fjall's minimum.
const MAX_JOURNALING_BYTES: u64 = 64 << 20;
/// Items (inserts and removals, both keyspaces together) the writer puts in the memtables before it
/// rotates `records`' (`Writer::commit_batch`): about 32,000 records, 2-3 MiB of memtable as fjall
/// counts it.
///
/// gridfn rotates them itself because fjall's own rotation can deadlock with one background thread
/// (fjall 3.1.13, fjall-rs/fjall#323): once a memtable is over its size, every commit sends the
/// worker another rotation request on its bounded queue (1,000); while the worker compacts, they
/// fill it, and when it then rotates, it blocks sending itself the flush, on its own full queue.
/// Nothing is flushed again: the memtables and the journal grow without bound (seen in a soak at
/// 30,000 events/s: 1.5 GB RSS after 4 minutes). Rotated here, once per 32,000 records, no memtable
/// reaches fjall's size, so fjall never floods its queue.
///
/// Smaller memtables also keep gridfn small: a keyspace holds its active memtable and up to four
/// sealed ones waiting for a flush, and a memtable's skiplist takes 2-3 times its nominal size. At
/// 8 MiB they were ~20 MiB of gridfn's peak RSS at batch 100 (115 MB in a 10 s run; 90 MB at half
/// that, and 5-8 MB less again at 2 MiB; throughput the same).
const MEMTABLE_ITEMS: usize = 32_768;
/// fjall's own rotation threshold per keyspace (its default: 64 MiB): reached only by `kv` (which
/// the writer leaves to fjall: its writes are rare) or if the writer's rotation fails. Like the
/// pinning below, fjall keeps the size a keyspace was created with.
const MAX_MEMTABLE_BYTES: u64 = 8 << 20;
/// Size of the tables compaction writes (fjall's default: 64 MiB). Writing a table keeps a hash of
/// each of its keys for its bloom filter until the table is done: 8 bytes (16 while the buffer
/// grows) per record, so 64 MiB tables of 30-byte records held tens of megabytes for a moment.
const TABLE_TARGET_BYTES: u64 = 8 << 20;
/// Block cache (fjall's default: 32 MiB), for data blocks: lookups of new events miss, and a miss
/// is answered by the bloom filters, which are pinned in memory beside it (see `start`).
const CACHE_BYTES: u64 = 8 << 20;

/// fjall's flush and compaction threads (its default: one per core, up to 4). One: with more, the
/// first leaves compactions to the others by sending each back to the shared queue, so while one
/// compacts the first spins on that queue, a core's worth of CPU under load on a 2-core machine.
const BACKGROUND_THREADS: usize = 1;

/// The keyspace earlier versions kept their expiry index in; dropped on open.
const OLD_EXPIRY_INDEX: &str = "expiry";

/// First byte of a [`record_key`]; a legacy key (the storage key itself) starts with an ASCII digit.
const HASHED: u8 = 0x01;
/// Bytes of a [`record_key`].
const RECORD_KEY_LEN: usize = 17;

/// The marker after a rejected pair's expiry.
const REJECTED: u8 = b'R';

/// One record to write, and the kv writes of its run (stored key, write).
struct Entry {
    key: [u8; RECORD_KEY_LEN],
    expiry: u64,
    rejected: bool,
    writes: Vec<(Vec<u8>, Write)>,
}

/// A commit: its records, and who waits for them to be durable.
struct Commit {
    entries: Vec<Entry>,
    done: oneshot::Sender<Result<(), String>>,
}

/// What the embedded stores of this process did since it started: how many commits were answered,
/// in how many group writes, with how many `fdatasync`s. Commits per sync is how well group commit
/// shares the disk's syncs; the benchmark prints it beside events/s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub commits: u64,
    pub writes: u64,
    pub syncs: u64,
}

static COMMITS: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);
static SYNCS: AtomicU64 = AtomicU64::new(0);

/// The process-wide [`Stats`] of every embedded store so far.
pub fn stats() -> Stats {
    Stats {
        commits: COMMITS.load(Ordering::Relaxed),
        writes: WRITES.load(Ordering::Relaxed),
        syncs: SYNCS.load(Ordering::Relaxed),
    }
}

/// The embedded dedup store. Dropping it waits for the writer thread to finish its current write and
/// closes the database (releasing its lock), syncing what `DedupSync::Interval` had not synced yet.
pub struct EmbeddedStore {
    path: PathBuf,
    records: Keyspace,
    /// The handlers' kv, read by their runs; only the writer writes it.
    kv: Keyspace,
    db: Database,
    /// Records under legacy keys (the storage key itself) may be left: a lookup that misses tries that
    /// key too. Cleared once a sweep finds none left (compaction drops them as they expire).
    legacy: AtomicBool,
    commits: Option<mpsc::Sender<Commit>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn decode_expiry(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// A record's expiry, and whether it was done by a rejection.
fn decode_record(value: &[u8]) -> Option<(u64, bool)> {
    Some((decode_expiry(value)?, value.get(8) == Some(&REJECTED)))
}

/// The key a pair's record is stored under: [`HASHED`], then its [`DedupKey::digest`].
fn record_key(key: &DedupKey) -> [u8; RECORD_KEY_LEN] {
    let mut out = [0; RECORD_KEY_LEN];
    out[0] = HASHED;
    out[1..].copy_from_slice(&key.digest());
    out
}

/// Whether `records` holds records under the storage key itself, as stores written before
/// [`record_key`] did (those keys start with an ASCII digit, after every hashed key).
fn has_legacy_records(records: &Keyspace) -> fjall::Result<bool> {
    match records.range(&b"0"[..]..).next() {
        Some(item) => item.key().map(|_| true),
        None => Ok(false),
    }
}

/// The compaction filter of `records`: each compaction leaves out the records expired when it began.
struct DropExpired;

impl Factory for DropExpired {
    fn name(&self) -> &str {
        "gridfn-drop-expired"
    }

    fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
        Box::new(ExpiredBy(now_ms()))
    }
}

/// Drops records whose expiry is at or before this instant (unix millis), as `begin` ignores them.
struct ExpiredBy(u64);

impl CompactionFilter for ExpiredBy {
    fn filter_item(&mut self, item: ItemAccessor<'_>, _: &Context) -> CompactionFilterResult {
        // A tombstone, not a silent drop: an older version of the key in a deeper level must not
        // come back (fjall drops the tombstone itself once it reaches the last level).
        Ok(match decode_expiry(&item.value()?) {
            Some(expiry) if expiry <= self.0 => Verdict::Remove,
            _ => Verdict::Keep,
        })
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, a folder (its parents are created too), syncing every
    /// commit before answering it.
    ///
    /// Fails with an error naming `path` if another process (or another store in this process) has it
    /// open, or if what is there is not a readable store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, DedupSync::Always)
    }

    /// [`EmbeddedStore::open`], with commits made durable as `sync` says.
    pub fn open_with(path: &Path, sync: DedupSync) -> Result<Self, StoreError> {
        Self::start(path, sync, None)
    }

    fn start(path: &Path, sync: DedupSync, hook: Option<WriteHook>) -> Result<Self, StoreError> {
        let shown = path.display();
        if path.is_file() {
            return Err(StoreError(format!("{shown}: is a file, not a dedup store folder (corrupt or wrong path?)")));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError(format!("{}: cannot create folder: {e}", parent.display())))?;
        }
        let builder = Database::builder(path)
            .max_journaling_size(MAX_JOURNALING_BYTES)
            .cache_size(CACHE_BYTES)
            .worker_threads(BACKGROUND_THREADS)
            .with_compaction_filter_factories(Arc::new(|keyspace| {
                (keyspace == "records").then(|| Arc::new(DropExpired) as Arc<dyn Factory>)
            }));
        let db = builder.open().map_err(|e| match e {
            fjall::Error::Locked => {
                StoreError(format!("{shown}: locked: another running process (or store) has it open"))
            }
            e => StoreError(format!("{shown}: cannot open (corrupt or not a dedup store?): {e}")),
        })?;
        // Lookups are mostly of new events, which miss: a miss must be answered by the filters
        // without reading data. The first two levels (L1 holds ~1.3 M records with 8 MiB tables) keep
        // their filter and index blocks in memory whole; deeper levels, which hold all the rest, split
        // them into partitions behind a small pinned index, so a miss there reads one partition
        // (a few KiB, through the block cache) instead of the level's whole filter. Pinning every
        // level instead cost ~1.3 bytes of memory per live record, growing for the whole TTL (a day
        // of records at 30,000/s: 3.4 GB); not pinning and not partitioning read and checksummed a
        // deeper level's whole filter, megabytes, on every lookup once the store outgrew the cache
        // (throughput fell tenfold). fjall keeps a keyspace's options from its creation: a store
        // created before this keeps the pinning it had.
        let whole_in_memory = || PinningPolicy::new([true, true, false]);
        let partitioned = || PartitioningPolicy::new([false, false, true]);
        let opts = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MAX_MEMTABLE_BYTES)
                .compaction_strategy(Arc::new(Leveled::default().with_table_target_size(TABLE_TARGET_BYTES)))
                .filter_block_pinning_policy(whole_in_memory())
                .index_block_pinning_policy(whole_in_memory())
                .filter_block_partitioning_policy(partitioned())
                .index_block_partitioning_policy(partitioned())
        };
        let keyspace = |name: &str| {
            db.keyspace(name, opts)
                .map_err(|e| StoreError(format!("{shown}: cannot open keyspace {name} (corrupt?): {e}")))
        };
        let records = keyspace("records")?;
        let kv = keyspace("kv")?;
        if db.keyspace_exists(OLD_EXPIRY_INDEX) {
            keyspace(OLD_EXPIRY_INDEX).and_then(|index| {
                db.delete_keyspace(index)
                    .map_err(|e| StoreError(format!("{shown}: cannot drop the old expiry index: {e}")))
            })?;
            tracing::info!(
                "dedup store {shown}: dropped the expiry index of an earlier gridfn (compaction expires records now)"
            );
        }
        let legacy = has_legacy_records(&records)
            .map_err(|e| StoreError(format!("{shown}: cannot read keyspace records (corrupt?): {e}")))?;
        let (commits, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            records: records.clone(),
            kv: kv.clone(),
            sync,
            unsynced: false,
            unrotated: 0,
            hook,
        };
        let writer = std::thread::Builder::new()
            .name("dedup-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError(format!("{shown}: cannot start writer thread: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            records,
            kv,
            db,
            legacy: AtomicBool::new(legacy),
            commits: Some(commits),
            writer: Some(writer),
        })
    }

    /// The handlers' kv, as their runs and the admin API read it.
    pub fn kv(&self) -> EmbeddedKv {
        EmbeddedKv { values: self.kv.clone() }
    }

    /// Moves the kv that an earlier gridfn kept in a database of its own at `legacy` (its keyspace
    /// `values`) into this store, synced, then renames that folder to `<legacy>.moved-into-dedup` so it
    /// is taken in once. A key this store already holds keeps its value (a crash between the two
    /// steps takes the same keys in again). Nothing there: nothing to do. Call it before serving.
    pub fn take_in_legacy_kv(&self, legacy: &Path) -> Result<(), StoreError> {
        if !legacy.is_dir() {
            return Ok(());
        }
        let shown = legacy.display();
        let moved = legacy.with_extension("moved-into-dedup");
        let refuse = |what: String| {
            StoreError(format!(
                "{shown} holds the handlers' kv from an earlier gridfn, which now lives in the dedup store {};                  {what}. Move it aside to start without it (its keys are then lost)",
                self.path.display()
            ))
        };
        if moved.exists() {
            return Err(refuse(format!("cannot take it in: {} exists already", moved.display())));
        }
        let (taken, kept) = (|| -> Result<(usize, usize), String> {
            let old = Database::builder(legacy).open().map_err(|e| e.to_string())?;
            let values = old.keyspace("values", KeyspaceCreateOptions::default).map_err(|e| e.to_string())?;
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
            let (mut taken, mut kept) = (0, 0);
            for item in values.iter() {
                let (key, value) = item.into_inner().map_err(|e| e.to_string())?;
                if self.kv.contains_key(&key).map_err(|e| e.to_string())? {
                    kept += 1;
                } else {
                    batch.insert(&self.kv, key, value);
                    taken += 1;
                }
            }
            batch.commit().map_err(|e| e.to_string())?;
            self.db.persist(PersistMode::SyncData).map_err(|e| e.to_string())?;
            Ok((taken, kept))
        })()
        .map_err(|e| refuse(format!("reading or moving it failed: {e}")))?;
        std::fs::rename(legacy, &moved)
            .map_err(|e| refuse(format!("renaming it to {} failed: {e}", moved.display())))?;
        tracing::warn!(
            "moved the handlers' kv from {shown} into the dedup store {} ({taken} keys; {kept} it already held kept \
             their value); the old folder is now {} and can be deleted",
            self.path.display(),
            moved.display()
        );
        Ok(())
    }

    /// The folder this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, commit: Commit) -> Result<(), StoreError> {
        self.commits
            .as_ref()
            .and_then(|commits| commits.send(commit).ok())
            .ok_or_else(|| StoreError(format!("{}: writer thread has stopped", self.path.display())))
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("{}: {what}: {e}", self.path.display()))
    }

    /// What [`DedupStore::begin_as`] answers, read in place: a lookup is a few microseconds (recent
    /// records are in the memtable and block cache, at worst a block read from an SSD), cheaper than
    /// handing it to another thread for every event. One process owns the store: there are no leases.
    fn begin_now(&self, key: &DedupKey, replay: bool) -> Result<Begin, StoreError> {
        let found = self.lookup(key).map_err(|e| self.failed("lookup", e))?;
        Ok(match found.as_deref().and_then(decode_record) {
            Some((_, true)) if replay => Begin::Run,
            Some((expiry, _)) if expiry > now_ms() => Begin::Done,
            _ => Begin::Run,
        })
    }

    /// The record of `key`: under its [`record_key`], or under its legacy key while there may be any.
    fn lookup(&self, key: &DedupKey) -> fjall::Result<Option<fjall::Slice>> {
        match self.records.get(record_key(key))? {
            None if self.legacy.load(Ordering::Relaxed) => self.records.get(key.storage_key().as_bytes()),
            found => Ok(found),
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.commits.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        let Stats { commits, writes, syncs } = stats();
        let per_sync = if syncs == 0 { 0.0 } else { commits as f64 / syncs as f64 };
        tracing::info!(
            "dedup store {} closed: {commits} commits in {writes} writes, {syncs} fdatasyncs ({per_sync:.2} commits per sync)",
            self.path.display()
        );
    }
}

#[async_trait::async_trait]
impl DedupStore for EmbeddedStore {
    async fn begin_as(&self, key: &DedupKey, _lease_for: Duration, replay: bool) -> Result<Begin, StoreError> {
        self.begin_now(key, replay)
    }

    async fn begin_all(&self, keys: &[&DedupKey], _: Duration, replay: bool) -> Vec<Result<Begin, StoreError>> {
        keys.iter().map(|key| self.begin_now(key, replay)).collect()
    }

    async fn record(&self, done: &[Done], ttl: Duration) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let expiry = now_ms().saturating_add(ttl_ms(ttl));
        let entries = done
            .iter()
            .map(|pair| Entry {
                key: record_key(&pair.key),
                expiry,
                rejected: pair.rejected,
                writes: pair.writes.scoped().map(|(key, write)| (key.into_bytes(), write.clone())).collect(),
            })
            .collect();
        let (done, rx) = oneshot::channel();
        self.send(Commit { entries, done })?;
        rx.await.map_err(|e| self.failed("commit", e))?.map_err(|e| self.failed("commit", e))
    }

    /// Nothing to drop: one process owns this store, and its coordinator ([`super::Dedup`]) holds
    /// the claims.
    async fn release(&self, _: &[DedupKey]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Compaction expires records; what is left to do is noticing that no legacy record is left.
    async fn sweep(&self) -> Result<(), StoreError> {
        if self.legacy.load(Ordering::Relaxed)
            && !has_legacy_records(&self.records).map_err(|e| self.failed("sweep", e))?
        {
            self.legacy.store(false, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Called by the writer right before each group write, with the number of commits in it (tests hold
/// a write back with it, to see that no commit is answered before its sync).
type WriteHook = Box<dyn Fn(usize) + Send>;

/// Owns the write side; runs on its own thread until every sender is gone.
struct Writer {
    db: Database,
    records: Keyspace,
    kv: Keyspace,
    sync: DedupSync,
    /// `DedupSync::Interval` wrote something the last sync does not cover.
    unsynced: bool,
    /// Items written to the memtables since the writer last rotated them ([`MEMTABLE_ITEMS`]).
    unrotated: usize,
    hook: Option<WriteHook>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Commit>) {
        let mut synced = Instant::now();
        loop {
            let commit = match self.unsynced {
                true => match rx.recv_timeout(SYNC_INTERVAL.saturating_sub(synced.elapsed())) {
                    Ok(commit) => Some(commit),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
                false => match rx.recv() {
                    Ok(commit) => Some(commit),
                    Err(_) => break,
                },
            };
            if let Some(commit) = commit {
                self.group_commit(commit, &rx);
            }
            if self.unsynced && synced.elapsed() >= SYNC_INTERVAL {
                synced = Instant::now();
                // A failed periodic sync poisons the database: every later commit fails, and says so.
                if let Err(e) = self.db.persist(PersistMode::SyncData) {
                    tracing::error!("dedup store: syncing the journal failed: {e}");
                }
                self.unsynced = false;
                SYNCS.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.unsynced && self.db.persist(PersistMode::SyncData).is_ok() {
            SYNCS.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes `first` and every commit already queued behind it (up to a bound) in one write, and
    /// answers each once it is durable.
    fn group_commit(&mut self, first: Commit, rx: &mpsc::Receiver<Commit>) {
        let mut count = first.entries.len();
        let mut commits = vec![(first.entries, first.done)];
        while count < MAX_KEYS_PER_WRITE {
            let Ok(Commit { entries, done }) = rx.try_recv() else { break };
            count += entries.len();
            commits.push((entries, done));
        }
        if let Some(hook) = &self.hook {
            hook(commits.len());
        }
        let (entries, waiting): (Vec<Vec<Entry>>, Vec<_>) = commits.into_iter().unzip();
        let results = match self.commit(&entries) {
            Ok(results) => {
                WRITES.fetch_add(1, Ordering::Relaxed);
                COMMITS.fetch_add(waiting.len() as u64, Ordering::Relaxed);
                match self.sync {
                    DedupSync::Always => drop(SYNCS.fetch_add(1, Ordering::Relaxed)),
                    DedupSync::Interval => self.unsynced = true,
                }
                results
            }
            Err(e) => vec![Err(e.to_string()); waiting.len()],
        };
        for (done, result) in waiting.into_iter().zip(results) {
            let _ = done.send(result);
        }
    }

    /// One atomic batch over the keyspaces for every commit given: `fdatasync`ed before it returns
    /// (`DedupSync::Always`), or handed to the operating system (`DedupSync::Interval`). Each commit's
    /// pairs are recorded with their kv writes, except pairs already recorded as a success (kept, their
    /// writes dropped); a commit whose kv writes cannot apply (an increment of a value that is no
    /// counter) is left out of the batch whole, and answered with why.
    fn commit(&mut self, commits: &[Vec<Entry>]) -> fjall::Result<Vec<Result<(), String>>> {
        let mode = match self.sync {
            DedupSync::Always => PersistMode::SyncData,
            DedupSync::Interval => PersistMode::Buffer,
        };
        let now = now_ms();
        // What the batch will hold, read through by later commits of the same batch: each record's
        // expiry and rejection.
        let mut records: HashMap<&[u8], (u64, bool)> = HashMap::new();
        let mut kv: HashMap<&[u8], Option<Vec<u8>>> = HashMap::new();
        let mut results = Vec::with_capacity(commits.len());
        for entries in commits {
            let mut staged_kv: HashMap<&[u8], Option<Vec<u8>>> = HashMap::new();
            let mut staged: Vec<&Entry> = Vec::new();
            let mut failed = None;
            'entries: for entry in entries {
                let current = match records.get(entry.key.as_slice()) {
                    Some(&record) => Some(record),
                    // Only a run with kv writes reads what the store holds (see the module's docs).
                    None if !entry.writes.is_empty() => self.records.get(entry.key)?.as_deref().and_then(decode_record),
                    None => None,
                };
                if current.is_some_and(|(expiry, rejected)| expiry > now && !rejected) {
                    continue;
                }
                for (key, write) in &entry.writes {
                    let value = match staged_kv.get(key.as_slice()).or_else(|| kv.get(key.as_slice())) {
                        Some(value) => value.clone(),
                        None => self.kv.get(key)?.map(|v| v.to_vec()),
                    };
                    match write.applied_to(value.as_deref()) {
                        Ok(value) => drop(staged_kv.insert(key, value)),
                        Err(e) => {
                            failed = Some(format!("kv key {}: {e}", String::from_utf8_lossy(key)));
                            break 'entries;
                        }
                    }
                }
                staged.push(entry);
            }
            if let Some(why) = failed {
                results.push(Err(why));
                continue;
            }
            for entry in staged {
                records.insert(&entry.key[..], (entry.expiry, entry.rejected));
            }
            kv.extend(staged_kv);
            results.push(Ok(()));
        }
        let mut batch = self.db.batch().durability(Some(mode));
        for (key, (expiry, rejected)) in records {
            let mut value = expiry.to_be_bytes().to_vec();
            if rejected {
                value.push(REJECTED);
            }
            batch.insert(&self.records, key, value);
        }
        for (key, value) in kv {
            match value {
                Some(value) => batch.insert(&self.kv, key, value),
                None => batch.remove(&self.kv, key),
            }
        }
        self.commit_batch(batch)?;
        Ok(results)
    }

    /// Commits `batch`, then rotates `records`' memtable if it is full ([`MEMTABLE_ITEMS`]).
    fn commit_batch(&mut self, batch: fjall::OwnedWriteBatch) -> fjall::Result<()> {
        let items = batch.len();
        batch.commit()?;
        self.unrotated += items;
        if self.unrotated >= MEMTABLE_ITEMS {
            self.unrotated = 0;
            // Failing only costs memory until fjall's own rotation: not worth failing a commit.
            if let Err(e) = self.records.rotate_memtable() {
                tracing::warn!("dedup store: rotating the memtable of records failed: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::{KvStore, KvWrites};

    const CRASH_DIR_ENV: &str = "GRIDFN_DEDUP_CRASH_TEST_DIR";
    const CRASH_INTERVAL_ENV: &str = "GRIDFN_DEDUP_CRASH_TEST_INTERVAL";

    fn key(handler: &str, source: &str, id: &str) -> DedupKey {
        DedupKey::new(handler, source, id)
    }

    fn batch(n: usize) -> Vec<DedupKey> {
        (0..n)
            .map(|i| {
                key(
                    "orders",
                    "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st",
                    &format!("event-{i}"),
                )
            })
            .collect()
    }

    const LEASE: Duration = Duration::from_secs(30);
    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test]
    async fn keeps_the_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("dedup")).unwrap();
        crate::dedup::contract::check("embedded", &store).await;
        crate::dedup::contract::check_kv("embedded", &store, &store.kv()).await;
    }

    /// Runs recorded in one group write (many deliveries at once) that count the same key all count,
    /// and their kv survives reopening.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kv_writes_of_a_group_write_all_apply_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup");
        {
            let store = Arc::new(EmbeddedStore::open(&path).unwrap());
            let tasks: Vec<_> = (0..32)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let mut writes = KvWrites::new(Arc::from("h"));
                        writes.increment(&store.kv(), "n", 1).await.unwrap();
                        writes.set(&format!("run/{t}"), b"ran".to_vec()).unwrap();
                        let done = Done { key: key("h", "/s", &t.to_string()), rejected: false, writes };
                        store.record(&[done], DAY).await.unwrap();
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
        let kv = EmbeddedStore::open(&path).unwrap().kv();
        assert_eq!(kv.get("h", "n").await.unwrap(), Some(b"32".to_vec()));
        assert_eq!(kv.list("h", "run/", 100).await.unwrap().len(), 32);
    }

    /// Writes a kv folder as gridfn 0.x did: its own fjall database, keyspace `values`.
    fn legacy_kv(path: &Path, entries: &[(&str, &str)]) {
        let db = Database::builder(path).open().unwrap();
        let values = db.keyspace("values", KeyspaceCreateOptions::default).unwrap();
        for (key, value) in entries {
            values.insert(crate::kv::scoped("h", key), *value).unwrap();
        }
        db.persist(PersistMode::SyncAll).unwrap();
    }

    #[tokio::test]
    async fn an_earlier_kv_folder_is_taken_in_once_and_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("kv");
        legacy_kv(&legacy, &[("kept", "old"), ("count", "7")]);
        let path = dir.path().join("dedup");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let mut writes = KvWrites::new(Arc::from("h"));
            writes.set("kept", b"newer".to_vec()).unwrap();
            store.record(&[Done { key: key("h", "/s", "1"), rejected: false, writes }], DAY).await.unwrap();
            store.take_in_legacy_kv(&legacy).unwrap();
            let kv = store.kv();
            assert_eq!(kv.get("h", "count").await.unwrap(), Some(b"7".to_vec()), "taken in");
            assert_eq!(kv.get("h", "kept").await.unwrap(), Some(b"newer".to_vec()), "the store's own value wins");
        }
        assert!(!legacy.exists() && dir.path().join("kv.moved-into-dedup").is_dir(), "renamed, not deleted");
        let store = EmbeddedStore::open(&path).unwrap();
        store.take_in_legacy_kv(&legacy).unwrap();
        assert_eq!(store.kv().get("h", "count").await.unwrap(), Some(b"7".to_vec()), "and kept on reopen");
        // A second old folder beside the renamed one: refused, with what to do.
        legacy_kv(&legacy, &[("other", "1")]);
        let err = store.take_in_legacy_kv(&legacy).unwrap_err().to_string();
        assert!(err.contains(&legacy.display().to_string()) && err.contains("exists already"), "{err}");
    }

    #[tokio::test]
    async fn done_is_remembered_and_pairs_are_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("dedup")).unwrap();
        let k = key("h", "/s", "1");
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Run);
        // Never Busy on a single host: a second begin before commit also runs.
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Run);
        store.commit(std::slice::from_ref(&k), DAY).await.unwrap();
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Done);
        assert_eq!(store.begin(&key("other", "/s", "1"), LEASE).await.unwrap(), Begin::Run);
        assert_eq!(store.begin(&key("h", "/other", "1"), LEASE).await.unwrap(), Begin::Run);
        assert_eq!(store.begin(&key("h", "/s", "2"), LEASE).await.unwrap(), Begin::Run);
        // Length-prefixed keys: moving a character between parts is another pair.
        assert_eq!(store.begin(&key("h/", "s", "1"), LEASE).await.unwrap(), Begin::Run);
        store.release(std::slice::from_ref(&k)).await.unwrap();
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Done);
        store.commit(&[], DAY).await.unwrap();
    }

    #[tokio::test]
    async fn records_expire_after_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("dedup")).unwrap();
        let k = key("h", "/s", "1");
        // Long enough that a sync on a loaded machine does not outlast it.
        store.commit(std::slice::from_ref(&k), Duration::from_millis(500)).await.unwrap();
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Done);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Run);
        // Committing again after expiry remembers it again.
        store.commit(std::slice::from_ref(&k), DAY).await.unwrap();
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Done);
    }

    /// Flushes `records`' memtable and compacts every table into one, as fjall's own compactions
    /// do bit by bit under writes.
    fn compact(store: &EmbeddedStore) {
        store.records.rotate_memtable_and_wait().unwrap();
        store.records.major_compact().unwrap();
    }

    #[tokio::test]
    async fn compaction_drops_expired_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("dedup")).unwrap();
        // More than a memtable's worth, so some are in tables before the compaction.
        let short = batch(MEMTABLE_ITEMS + 5_000);
        let long = key("h", "/s", "keep");
        store.commit(&short, Duration::from_millis(300)).await.unwrap();
        store.commit(std::slice::from_ref(&long), DAY).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Running an expired pair again (its begin finds the record, and lets it run) and recording it
        // with a longer ttl renews the record: compaction must keep it.
        for k in &short[..5] {
            assert_eq!(store.begin(k, LEASE).await.unwrap(), Begin::Run);
        }
        store.commit(&short[..5], DAY).await.unwrap();
        compact(&store);
        assert_eq!(store.records.len().unwrap(), 6, "the expired records left the disk");
        assert_eq!(store.begin(&long, LEASE).await.unwrap(), Begin::Done);
        for k in &short[..5] {
            assert_eq!(store.begin(k, LEASE).await.unwrap(), Begin::Done);
        }
        for k in &short[5..100] {
            assert_eq!(store.begin(k, LEASE).await.unwrap(), Begin::Run);
        }
    }

    /// A rejection being replayed is written over, not read first: the success replaces it.
    #[tokio::test]
    async fn a_replayed_rejection_is_replaced_by_its_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("dedup")).unwrap();
        let k = key("h", "/s", "rejected");
        store.commit_all(&[], std::slice::from_ref(&k), DAY).await.unwrap();
        assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Done, "a push does not run a rejection again");
        assert_eq!(store.begin_as(&k, LEASE, true).await.unwrap(), Begin::Run, "a replay does");
        store.commit(std::slice::from_ref(&k), DAY).await.unwrap();
        assert_eq!(store.begin_as(&k, LEASE, true).await.unwrap(), Begin::Done, "a success is never run again");
    }

    #[tokio::test]
    async fn concurrent_commits_are_all_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("dedup")).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    let keys: Vec<_> = (0..10).map(|i| key("h", &format!("/s{t}"), &i.to_string())).collect();
                    store.commit(&keys, DAY).await.unwrap();
                    keys
                })
            })
            .collect();
        for task in tasks {
            for k in task.await.unwrap() {
                assert_eq!(store.begin(&k, LEASE).await.unwrap(), Begin::Done);
            }
        }
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/folders/dedup");
        let keys = batch(100);
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.commit(&keys, DAY).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        for k in &keys {
            assert_eq!(store.begin(k, LEASE).await.unwrap(), Begin::Done);
        }
        assert_eq!(store.begin(&key("h", "/s", "new"), LEASE).await.unwrap(), Begin::Run);
    }

    /// Counts each group write's commits; with `hold`, keeps every write waiting until the test
    /// lets it go (one `release` per write).
    struct Writes {
        entered: std::sync::mpsc::Receiver<usize>,
        release: Option<std::sync::mpsc::Sender<()>>,
    }

    fn store_with_writes(path: &Path, hold: bool) -> (EmbeddedStore, Writes) {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = std::sync::Mutex::new(release_rx);
        let hook: WriteHook = Box::new(move |commits| {
            let _ = entered_tx.send(commits);
            if hold {
                // A test that failed dropped its sender: let the writer go.
                let _ = release_rx.lock().unwrap().recv();
            }
        });
        let store = EmbeddedStore::start(path, DedupSync::Always, Some(hook)).unwrap();
        (store, Writes { entered, release: hold.then_some(release) })
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_sync_serves_every_commit_waiting_and_none_is_answered_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writes) = store_with_writes(&dir.path().join("dedup"), true);
        let store = Arc::new(store);
        let commit = |k: DedupKey| {
            let store = store.clone();
            tokio::spawn(async move { store.commit(std::slice::from_ref(&k), DAY).await })
        };
        let first = commit(key("h", "/s", "first"));
        assert_eq!(writes.entered.recv_timeout(WAIT), Ok(1), "the first commit is written alone, at once");
        // Twenty deliveries finish while the first one's write and sync are held up.
        let rest: Vec<_> = (0..20).map(|i| commit(key("h", "/s", &i.to_string()))).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!first.is_finished(), "a commit was answered before its write and sync returned");
        assert!(rest.iter().all(|c| !c.is_finished()), "a queued commit was answered before any sync");
        assert_eq!(store.begin(&key("h", "/s", "first"), LEASE).await.unwrap(), Begin::Run);
        let release = writes.release.as_ref().unwrap();
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(writes.entered.recv_timeout(WAIT), Ok(20), "the twenty waiting commits share the next sync");
        release.send(()).unwrap();
        for commit in rest {
            commit.await.unwrap().unwrap();
        }
        for i in 0..20 {
            assert_eq!(store.begin(&key("h", "/s", &i.to_string()), LEASE).await.unwrap(), Begin::Done);
        }
        assert!(writes.entered.try_recv().is_err(), "two syncs for 21 commits, no more");
    }

    #[tokio::test]
    async fn at_low_load_each_commit_is_synced_at_once_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writes) = store_with_writes(&dir.path().join("dedup"), false);
        for i in 0..10 {
            let started = Instant::now();
            store.commit(&[key("h", "/s", &i.to_string())], DAY).await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(2), "a lone commit waited for company");
        }
        let groups: Vec<usize> = writes.entered.try_iter().collect();
        assert_eq!(groups, vec![1; 10], "one write (and sync) per commit when they come one at a time");
    }

    #[tokio::test]
    async fn a_record_is_small_whatever_the_source_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup");
        let long = |i: usize| {
            key("orders", &format!("/subscriptions/{}/x", "0".repeat(400)), &format!("{i}-{}", "e".repeat(200)))
        };
        let keys: Vec<_> = (0..2_000).map(long).collect();
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.commit(&keys, DAY).await.unwrap();
            for k in keys.iter().take(10) {
                assert_eq!(store.begin(k, LEASE).await.unwrap(), Begin::Done);
            }
            assert_eq!(store.begin(&long(2_000), LEASE).await.unwrap(), Begin::Run);
            for item in store.records.iter() {
                assert_eq!(item.key().unwrap().len(), RECORD_KEY_LEN, "a 600-byte pair is stored under a short key");
            }
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert!(!store.legacy.load(Ordering::Relaxed));
        assert_eq!(store.begin(&keys[1_999], LEASE).await.unwrap(), Begin::Done);
    }

    /// Issue 14: records keyed by the storage key cost 100 bytes each on disk once compacted (with their
    /// expiry index; measured with this test's keys on the old encoding); hashed keys, 44; without the
    /// expiry index, about 25.
    #[tokio::test]
    async fn a_compacted_record_costs_under_30_bytes_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup");
        // Event Grid's shape: a resource path as source, a random GUID as id.
        let source = "/subscriptions/6f4c7a2e-0000-4a55-9d1c-2b7f8e1d3c44/resourceGroups/orders-prod/providers/Microsoft.Storage/storageAccounts/ordersblobs";
        let keys: Vec<_> = (0..20_000).map(|_| key("orders", source, &uuid::Uuid::new_v4().to_string())).collect();
        let store = EmbeddedStore::open(&path).unwrap();
        for chunk in keys.chunks(1_000) {
            store.commit(chunk, DAY).await.unwrap();
        }
        compact(&store);
        let per_record = store.records.disk_space() as f64 / keys.len() as f64;
        assert!(per_record < 30.0, "{per_record:.1} bytes per record on disk");
    }

    /// The writer rotates the memtables itself, every [`MEMTABLE_ITEMS`] items, long before fjall's
    /// own threshold, whose per-commit rotation requests can deadlock fjall's one worker (see
    /// [`MEMTABLE_ITEMS`]): 40,000 records are a few MiB of memtable, under `MAX_MEMTABLE_BYTES`, so
    /// only the writer's rotation can have flushed them to a table.
    #[tokio::test]
    async fn the_writer_rotates_memtables_before_fjall_would() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with(&dir.path().join("dedup"), DedupSync::Interval).unwrap();
        for chunk in batch(40_000).chunks(1_000) {
            store.commit(chunk, DAY).await.unwrap();
        }
        let flushed = Instant::now();
        while store.records.table_count() == 0 {
            assert!(flushed.elapsed() < Duration::from_secs(30), "40,000 records and no memtable flushed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes a record as stores did before [`record_key`]: under the storage key itself, with its
    /// entry in the expiry index they kept.
    fn write_legacy(path: &Path, k: &DedupKey, expiry: u64) {
        let db = Database::builder(path).open().unwrap();
        let records = db.keyspace("records", KeyspaceCreateOptions::default).unwrap();
        let by_expiry = db.keyspace(OLD_EXPIRY_INDEX, KeyspaceCreateOptions::default).unwrap();
        let mut batch = db.batch().durability(Some(PersistMode::SyncData));
        batch.insert(&records, k.storage_key().into_bytes(), expiry.to_be_bytes().to_vec());
        let mut index_key = expiry.to_be_bytes().to_vec();
        index_key.extend_from_slice(k.storage_key().as_bytes());
        batch.insert(&by_expiry, index_key, []);
        batch.commit().unwrap();
    }

    #[tokio::test]
    async fn records_of_a_store_written_before_hashed_keys_are_honoured_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup");
        let (old, expiring) = (key("h", "/s", "old"), key("h", "/s", "expiring"));
        write_legacy(&path, &old, now_ms() + 86_400_000);
        write_legacy(&path, &expiring, now_ms() + 300);
        let store = EmbeddedStore::open(&path).unwrap();
        assert!(!store.db.keyspace_exists(OLD_EXPIRY_INDEX), "the old expiry index is dropped on open");
        assert_eq!(store.begin(&old, LEASE).await.unwrap(), Begin::Done, "a legacy record still counts");
        assert_eq!(store.begin(&expiring, LEASE).await.unwrap(), Begin::Done);
        assert_eq!(store.begin(&key("h", "/s", "new"), LEASE).await.unwrap(), Begin::Run);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.begin(&expiring, LEASE).await.unwrap(), Begin::Run);
        compact(&store);
        store.sweep().await.unwrap();
        assert!(store.legacy.load(Ordering::Relaxed), "one legacy record is left");
        assert_eq!(store.records.len().unwrap(), 1, "compaction dropped the expired one");
        // The other one's day has passed.
        let db = store.db.clone();
        drop(store);
        drop(db);
        write_legacy(&path, &old, now_ms() - 1);
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.begin(&old, LEASE).await.unwrap(), Begin::Run);
        compact(&store);
        store.sweep().await.unwrap();
        assert!(!store.legacy.load(Ordering::Relaxed), "no legacy record left: lookups stop trying them");
    }

    #[tokio::test]
    async fn interval_commits_survive_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup");
        let keys = batch(50);
        {
            let store = EmbeddedStore::open_with(&path, DedupSync::Interval).unwrap();
            store.commit(&keys, DAY).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        for k in &keys {
            assert_eq!(store.begin(k, LEASE).await.unwrap(), Begin::Done);
        }
    }

    /// Runs only as the child of `committed_batch_survives_crash`: commits, then aborts at once.
    #[tokio::test]
    #[ignore = "child process of committed_batch_survives_crash"]
    async fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        let sync = if std::env::var_os(CRASH_INTERVAL_ENV).is_some_and(|v| !v.is_empty()) {
            DedupSync::Interval
        } else {
            DedupSync::Always
        };
        let store = EmbeddedStore::open_with(Path::new(&dir), sync).unwrap();
        store.commit(&batch(100), DAY).await.unwrap();
        std::process::abort();
    }

    #[tokio::test]
    async fn committed_batch_survives_crash() {
        crash_and_check(DedupSync::Always).await;
    }

    /// `interval` answers before the sync, but after the write: a killed process loses nothing.
    #[tokio::test]
    async fn interval_committed_batch_survives_a_killed_process() {
        crash_and_check(DedupSync::Interval).await;
    }

    async fn crash_and_check(sync: DedupSync) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup");
        // The test's name without the crate's: what the harness filters on.
        let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([&format!("{module}::crash_child"), "--exact", "--ignored", "--test-threads=1", "--nocapture"])
            .env(CRASH_DIR_ENV, &path)
            .env(CRASH_INTERVAL_ENV, if sync == DedupSync::Interval { "1" } else { "" })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(6), "the child must die by SIGABRT right after commit: {status}");
        }
        assert!(!status.success(), "the child must die by abort, not exit: {status}");
        let store = EmbeddedStore::open(&path).unwrap();
        let keys = batch(100);
        for k in &keys {
            assert_eq!(store.begin(k, LEASE).await.unwrap(), Begin::Done, "lost {k:?}");
        }
    }

    #[tokio::test]
    async fn locked_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dedup");
        let first = EmbeddedStore::open(&path).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("locked") && err.contains(&path.display().to_string()), "{err}");
        drop(first);
        EmbeddedStore::open(&path).unwrap();
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        // A plain file where the store's folder should be.
        let file = dir.path().join("dedup-file");
        std::fs::write(&file, b"not a database").unwrap();
        let err = EmbeddedStore::open(&file).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        // A store whose files were overwritten with garbage.
        let path = dir.path().join("dedup");
        drop(EmbeddedStore::open(&path).unwrap());
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() && entry.file_name() != "lock" {
                std::fs::write(entry.path(), b"garbage garbage garbage").unwrap();
            }
        }
        let err = EmbeddedStore::open(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("corrupt"), "{err}");
    }
}
