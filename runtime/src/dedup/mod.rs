//! Remembers which (handler, event) pairs are done, so Event Grid's
//! at-least-once redeliveries never run a handler twice for an event it
//! already handled, on one host or on several.
//!
//! Two layers:
//! - a [`DedupStore`] keeps the done records (and, when shared by several
//!   hosts, leases on pairs running somewhere): [`memory`], [`embedded`] (on
//!   disk, the default) or [`redis`];
//! - the [`Dedup`] coordinator in front of it makes a copy that arrives while
//!   the first is claimed on this host wait until the first's delivery is
//!   recorded (or released) instead of running twice, and groups a
//!   delivery's done records into one durable write.
//!
//! A pair is *claimed* before its handler runs. After the delivery, every done
//! pair (succeeded or dead-lettered) is committed in one write before the 2xx
//! goes out; every other pair is released. A crash can cause a re-run, never a
//! loss; and a copy counts as a duplicate only once the run it copies is
//! recorded, so a 200 for a duplicate never covers a run a crash could undo.
//!
//! The same write applies each done run's `kv` writes ([`crate::kv`]), so the
//! handlers' kv holds the writes of the recorded runs and of no other: a run
//! a crash undid, or one that was retried, left nothing there. A pair already
//! recorded when its commit arrives (another host recorded a run of it after
//! this host's lease ran out) keeps its first record, and the late run's kv
//! writes are dropped: first record wins, so kv counts each pair once.
//!
//! A done pair is remembered with how it was done. A dead-lettered
//! (rejected) pair is done for Event Grid's redeliveries, but a replay of the
//! dead-lettered event (`gridfn replay`) may run it again, and a success then
//! replaces the rejection; a succeeded pair never runs again, replay or not.

#[cfg(test)]
mod contract;
pub mod embedded;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::future::join_all;
use tokio::sync::watch;

use crate::kv::{KvStore, KvWrites, RunWrites};

/// Identifies one (handler, event) pair: the event's source and id are unique
/// per Event Grid's contract. Shared, not copied: a claim keeps the key in the
/// coordinator's map, in its lease and in the record it commits.
#[derive(Debug, Clone)]
pub struct DedupKey {
    handler: Arc<str>,
    source: Arc<str>,
    id: Arc<str>,
    /// [`DedupKey::digest`], made once: the claim asks the store with it, and
    /// the commit (a clone of the lease's key) records under it.
    digest: std::sync::OnceLock<[u8; 16]>,
}

impl PartialEq for DedupKey {
    fn eq(&self, other: &Self) -> bool {
        (&self.handler, &self.source, &self.id) == (&other.handler, &other.source, &other.id)
    }
}

impl Eq for DedupKey {}

impl std::hash::Hash for DedupKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (&self.handler, &self.source, &self.id).hash(state);
    }
}

impl DedupKey {
    pub fn new(handler: impl Into<Arc<str>>, source: impl Into<Arc<str>>, id: impl Into<Arc<str>>) -> Self {
        DedupKey { handler: handler.into(), source: source.into(), id: id.into(), digest: Default::default() }
    }

    /// One unambiguous string for the pair, for stores keyed by strings:
    /// length-prefixed parts, so no choice of names can make two pairs collide.
    pub fn storage_key(&self) -> String {
        use std::fmt::Write;
        let mut key = String::with_capacity(self.handler.len() + self.source.len() + self.id.len() + 12);
        let _ = write!(key, "{}:{}{}:{}{}", self.handler.len(), self.handler, self.source.len(), self.source, self.id);
        key
    }

    /// The first 16 bytes of the SHA-256 of the [`DedupKey::storage_key`]: a
    /// fixed-size name for the pair, for stores that keep many (a record then
    /// costs the same whatever the event's source and id). No two pairs share
    /// one by chance (128 bits), and no sender can make two collide on purpose
    /// (SHA-256), which would make gridfn skip an event as a duplicate.
    pub fn digest(&self) -> [u8; 16] {
        *self.digest.get_or_init(|| {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(self.storage_key().as_bytes());
            digest[..16].try_into().expect("SHA-256 is 32 bytes")
        })
    }
}

/// What a store says about a pair at the start of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Neither done nor leased elsewhere (or, for a replay, only rejected):
    /// this host now holds the lease; run it.
    Run,
    /// Done (succeeded, or dead-lettered and this is no replay) within the TTL: do not run it.
    Done,
    /// Another host holds a live lease on it: it is running there.
    Busy,
}

#[derive(Debug, thiserror::Error)]
#[error("dedup store: {0}")]
pub struct StoreError(pub String);

/// A pair to record done: how it was done, and its run's kv writes, which the
/// store applies in the same atomic write as the record, unless the pair is
/// already recorded (then neither changes).
#[derive(Debug, Clone)]
pub struct Done {
    pub key: DedupKey,
    /// Dead-lettered, not succeeded: only a replay runs it again.
    pub rejected: bool,
    pub writes: KvWrites,
}

impl Done {
    /// Done with no kv writes.
    pub fn bare(key: &DedupKey, rejected: bool) -> Self {
        Done { key: key.clone(), rejected, writes: KvWrites::default() }
    }
}

/// Where done (handler, event) pairs are remembered, and, for stores shared
/// by several hosts, who is running which pair right now.
///
/// gridfn calls `begin_as` before running a pair, then, once the whole delivery
/// has run, `commit_all` with every pair that is done (one durable write per
/// delivery: when it returns Ok the records survive a crash, and only then does
/// the 2xx go out), and `release` with the pairs that must be retried.
/// Copies of one pair on the same host never reach the store concurrently:
/// the [`Dedup`] coordinator serialises them.
#[async_trait::async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Is the pair done (for a `replay`: succeeded)? If not, and no other
    /// host holds a live lease, take the lease for `lease_for` (a crashed
    /// holder's lease expires after that).
    async fn begin_as(&self, key: &DedupKey, lease_for: Duration, replay: bool) -> Result<Begin, StoreError>;
    /// [`DedupStore::begin_as`] for a delivery's pairs, each answered on its
    /// own, in their order: one call per delivery, not one per pair. A store
    /// in this process looks them up in one loop; the default asks about
    /// each in turn.
    async fn begin_all(&self, keys: &[&DedupKey], lease_for: Duration, replay: bool) -> Vec<Result<Begin, StoreError>> {
        let mut begins = Vec::with_capacity(keys.len());
        for key in keys {
            begins.push(self.begin_as(key, lease_for, replay).await);
        }
        begins
    }
    /// Records the pairs done for `ttl`, durably, in one atomic write with
    /// their kv writes: a succeeded pair for good, a rejected one so that only
    /// a replay runs it again. A pair already recorded (and not held by this
    /// store for a replay) keeps its record and its writes are dropped. Fails,
    /// recording nothing, when a write cannot apply (an increment of a value
    /// that is no counter, or overflows).
    async fn record(&self, done: &[Done], ttl: Duration) -> Result<(), StoreError>;
    /// [`DedupStore::record`] without kv writes.
    async fn commit_all(&self, succeeded: &[DedupKey], rejected: &[DedupKey], ttl: Duration) -> Result<(), StoreError> {
        let done: Vec<Done> = succeeded
            .iter()
            .map(|k| Done::bare(k, false))
            .chain(rejected.iter().map(|k| Done::bare(k, true)))
            .collect();
        self.record(&done, ttl).await
    }
    /// `begin_as` for a delivery that is not a replay.
    async fn begin(&self, key: &DedupKey, lease_for: Duration) -> Result<Begin, StoreError> {
        self.begin_as(key, lease_for, false).await
    }
    /// `commit_all` of succeeded pairs only.
    async fn commit(&self, keys: &[DedupKey], ttl: Duration) -> Result<(), StoreError> {
        self.commit_all(keys, &[], ttl).await
    }
    /// Drops this host's leases on pairs that were not done, so a redelivery can run them at once.
    async fn release(&self, keys: &[DedupKey]) -> Result<(), StoreError>;
    /// Forgets records older than their TTL; gridfn calls it every minute.
    async fn sweep(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether the store answers now (`/readyz`); a store in this process always does.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Opens the store the manifest names, and the handlers' kv in it (read
/// side; the store writes it). `state_dir` is where an earlier gridfn kept
/// the embedded kv in a database of its own (`<state_dir>/kv`), which the
/// embedded store takes in once.
pub async fn open(
    config: &crate::config::DedupStore,
    state_dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn DedupStore>, Arc<dyn KvStore>)> {
    use crate::config::DedupStore as Config;
    Ok(match config {
        Config::Memory { max_records } => {
            let store = memory::MemoryStore::new(*max_records);
            let kv = Arc::new(store.kv());
            (Arc::new(store), kv)
        }
        Config::Embedded { path, sync } => {
            let store = embedded::EmbeddedStore::open_with(path, *sync)?;
            store.take_in_legacy_kv(&state_dir.join("kv"))?;
            let kv = Arc::new(store.kv());
            (Arc::new(store), kv)
        }
        Config::Redis { url, key_prefix } => {
            let store = redis::RedisStore::connect(url, key_prefix).await?;
            let kv = Arc::new(crate::kv::RedisKv::connect(url, &store.kv_prefix()).await?);
            (Arc::new(store), kv)
        }
    })
}

/// How often a copy of a pair leased by another host asks again.
const BUSY_POLL: Duration = Duration::from_millis(50);

/// The coordinator: local in-flight tracking in front of a store.
pub struct Dedup {
    store: Arc<dyn DedupStore>,
    ttl: Duration,
    /// Pairs claimed on this host until their delivery is recorded or
    /// released; the receiver closes then (nothing is ever sent on it).
    /// Every event of every delivery claims and unmarks a pair here, from
    /// many tasks at once, and no operation spans two pairs: a sharded
    /// concurrent map, so claims of different pairs rarely wait for each other.
    running: DashMap<DedupKey, watch::Receiver<()>, foldhash::fast::RandomState>,
}

/// What [`Dedup::claim`] found.
pub enum Claim {
    /// Nobody has handled it: run it, then hand the lease to
    /// [`Dedup::settle`].
    Run(Lease),
    /// Already handled (or dead-lettered): don't run it again.
    Done,
    /// Another copy is still running (here or on another host) after the
    /// wait: ask for a retry.
    Busy,
    /// The store failed: ask for a retry.
    Failed(StoreError),
}

/// The right to run one pair. Dropping it releases the pair (locally at once,
/// in the store in the background), so a panic or a cancelled request can
/// cause a re-run, never a stuck pair.
pub struct Lease {
    dedup: Arc<Dedup>,
    key: DedupKey,
    // Held only to be dropped when the lease ends (recorded or released):
    // that wakes every local copy waiting on this pair.
    _ended: watch::Sender<()>,
    settled: bool,
    /// Done by a rejection (dead-lettered), not a success.
    rejected: bool,
    /// The run's kv writes: applied with the pair's record, dropped if it is
    /// released.
    writes: RunWrites,
}

impl Dedup {
    pub fn new(store: Arc<dyn DedupStore>, ttl: Duration) -> Arc<Self> {
        Arc::new(Dedup { store, ttl, running: DashMap::default() })
    }

    /// Claims a pair, waiting up to `wait` for a copy already claimed here
    /// (until its delivery is recorded) or running elsewhere. `lease_for` bounds how long another host waits if this one
    /// crashes mid-run.
    pub async fn claim(self: &Arc<Self>, key: DedupKey, wait: Duration, lease_for: Duration) -> Claim {
        self.claim_as(key, wait, lease_for, false).await
    }

    /// [`Dedup::claim`]; for a `replay`, a pair done by a rejection runs again.
    pub async fn claim_as(self: &Arc<Self>, key: DedupKey, wait: Duration, lease_for: Duration, replay: bool) -> Claim {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let lease = match self.claim_locally(&key) {
                Ok(lease) => lease,
                Err(mut claimed) => {
                    // `changed` returns once the holder's lease has ended,
                    // even if it ended before we got here: no lost wake-ups.
                    // Then the store says whether that run was recorded.
                    if tokio::time::timeout_at(deadline, claimed.changed()).await.is_err() {
                        return Claim::Busy;
                    }
                    continue;
                }
            };
            // The lease's copy of the key: the digest a store makes of it stays with it, for the commit.
            let begin = self.store.begin_as(&lease.key, lease_for, replay).await;
            if let Some(claim) = answered(lease, begin) {
                return claim;
            }
            if tokio::time::Instant::now() + BUSY_POLL > deadline {
                return Claim::Busy;
            }
            tokio::time::sleep(BUSY_POLL).await;
        }
    }

    /// [`Dedup::claim_as`] for many pairs (a delivery's, for one handler), in
    /// their order. The store is asked about every pair no copy of which is
    /// claimed here in one [`DedupStore::begin_all`]; a pair that must wait
    /// (a copy claimed here, or leased by another host) then waits on its own,
    /// beside the others, as [`Dedup::claim_as`] does. Keys must be distinct.
    pub async fn claim_all(
        self: &Arc<Self>,
        keys: Vec<DedupKey>,
        wait: Duration,
        lease_for: Duration,
        replay: bool,
    ) -> Vec<Claim> {
        let mut claims: Vec<Option<Claim>> = keys.iter().map(|_| None).collect();
        let (mut asking, mut waiting) = (Vec::new(), Vec::new());
        for (at, key) in keys.iter().enumerate() {
            match self.claim_locally(key) {
                Ok(lease) => asking.push((at, lease)),
                Err(_) => waiting.push(at),
            }
        }
        let asked: Vec<&DedupKey> = asking.iter().map(|(_, lease)| &lease.key).collect();
        let begins = self.store.begin_all(&asked, lease_for, replay).await;
        for ((at, lease), begin) in asking.into_iter().zip(begins) {
            match answered(lease, begin) {
                Some(claim) => claims[at] = Some(claim),
                None => waiting.push(at),
            }
        }
        let waited = join_all(waiting.iter().map(|&at| self.claim_as(keys[at].clone(), wait, lease_for, replay))).await;
        for (at, claim) in waiting.into_iter().zip(waited) {
            claims[at] = Some(claim);
        }
        claims.into_iter().map(|claim| claim.expect("every pair claimed")).collect()
    }

    fn claim_locally(self: &Arc<Self>, key: &DedupKey) -> Result<Lease, watch::Receiver<()>> {
        match self.running.entry(key.clone()) {
            Entry::Occupied(running) => Err(running.get().clone()),
            Entry::Vacant(free) => {
                let (ended, receiver) = watch::channel(());
                free.insert(receiver);
                Ok(Lease {
                    dedup: self.clone(),
                    key: key.clone(),
                    _ended: ended,
                    settled: false,
                    rejected: false,
                    writes: RunWrites::default(),
                })
            }
        }
    }

    fn unmark(&self, key: &DedupKey) {
        self.running.remove(key);
    }

    /// Ends a delivery's leases: commits the `done` ones, with their runs' kv
    /// writes, in one durable write, releases the others (whose writes are
    /// dropped). On a failed commit nothing is done or written and everything
    /// is released; the error says why, and the caller answers with a retry.
    pub async fn settle(&self, done: Vec<Lease>, not_done: Vec<Lease>) -> Result<(), StoreError> {
        // A `handle-batch` call's writes go with the first of its pairs here.
        let records: Vec<Done> = done
            .iter()
            .map(|l| Done { key: l.key.clone(), rejected: l.rejected, writes: l.writes.take().unwrap_or_default() })
            .collect();
        let committed = if done.is_empty() { Ok(()) } else { self.store.record(&records, self.ttl).await };
        let mut release: Vec<DedupKey> = not_done.iter().map(|l| l.key.clone()).collect();
        if committed.is_err() {
            release.extend(records.into_iter().map(|done| done.key));
        }
        if !release.is_empty()
            && let Err(e) = self.store.release(&release).await
        {
            tracing::warn!("releasing {} lease(s) failed ({e}); they expire on their own", release.len());
        }
        for lease in done.into_iter().chain(not_done) {
            lease.forget();
        }
        committed
    }

    /// Whether the store answers now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Forgets expired records.
    pub async fn sweep(&self) {
        if let Err(e) = self.store.sweep().await {
            tracing::warn!("dedup sweep failed: {e}");
        }
    }
}

impl Lease {
    /// The run was rejected (and dead-lettered): recorded so that only a
    /// replay runs it again.
    pub fn mark_rejected(&mut self) {
        self.rejected = true;
    }

    /// The kv writes of the run that ended the pair, to apply with its record.
    pub fn attach_writes(&mut self, writes: RunWrites) {
        self.writes = writes;
    }

    /// Ends the local claim without touching the store (the caller has).
    fn forget(mut self) {
        self.settled = true;
        self.dedup.unmark(&self.key);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.dedup.unmark(&self.key);
        let (store, key) = (self.dedup.store.clone(), self.key.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { store.release(&[key]).await });
        }
    }
}

/// What the store's answer makes of a pair claimed here: run it (the lease
/// kept), done before or a failure (the lease forgotten), or `None` while
/// another host holds it (the lease forgotten; the caller waits or gives up).
fn answered(lease: Lease, begin: Result<Begin, StoreError>) -> Option<Claim> {
    let claim = match begin {
        Ok(Begin::Run) => return Some(Claim::Run(lease)),
        Ok(Begin::Done) => Some(Claim::Done),
        Ok(Begin::Busy) => None,
        Err(error) => Some(Claim::Failed(error)),
    };
    lease.forget();
    claim
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvStore;

    fn key(id: &str) -> DedupKey {
        DedupKey::new("h", "/s", id)
    }

    fn dedup() -> Arc<Dedup> {
        Dedup::new(Arc::new(memory::MemoryStore::new(1000)), Duration::from_secs(60))
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_settled_pair_is_done_and_a_released_one_runs_again() {
        let dedup = dedup();
        let Claim::Run(one) = dedup.claim(key("1"), Duration::ZERO, LEASE).await else { panic!("first claim runs") };
        let Claim::Run(two) = dedup.claim(key("2"), Duration::ZERO, LEASE).await else { panic!() };
        dedup.settle(vec![one], vec![two]).await.unwrap();
        assert!(matches!(dedup.claim(key("1"), Duration::ZERO, LEASE).await, Claim::Done));
        assert!(matches!(dedup.claim(key("2"), Duration::ZERO, LEASE).await, Claim::Run(_)));
    }

    #[tokio::test]
    async fn a_rejected_pair_runs_again_only_on_replay_and_a_success_never() {
        let dedup = dedup();
        let Claim::Run(mut rejected) = dedup.claim(key("r"), Duration::ZERO, LEASE).await else { panic!() };
        let Claim::Run(succeeded) = dedup.claim(key("s"), Duration::ZERO, LEASE).await else { panic!() };
        rejected.mark_rejected();
        dedup.settle(vec![rejected, succeeded], vec![]).await.unwrap();
        assert!(matches!(dedup.claim(key("r"), Duration::ZERO, LEASE).await, Claim::Done), "redelivery");
        assert!(matches!(dedup.claim(key("s"), Duration::ZERO, LEASE).await, Claim::Done));
        assert!(
            matches!(dedup.claim_as(key("s"), Duration::ZERO, LEASE, true).await, Claim::Done),
            "replay of a success"
        );
        let Claim::Run(replayed) = dedup.claim_as(key("r"), Duration::ZERO, LEASE, true).await else {
            panic!("a replay runs a rejected pair")
        };
        dedup.settle(vec![replayed], vec![]).await.unwrap();
        assert!(matches!(dedup.claim_as(key("r"), Duration::ZERO, LEASE, true).await, Claim::Done));
    }

    /// A delivery's pairs claimed at once come back in order, each as if
    /// claimed alone: one done before is a duplicate, one a copy of which
    /// another delivery holds here waits for it (and runs once it is
    /// released), a new one runs.
    #[tokio::test]
    async fn claiming_a_deliverys_pairs_at_once_answers_each_as_alone() {
        let dedup = dedup();
        let Claim::Run(done) = dedup.claim(key("done"), Duration::ZERO, LEASE).await else { panic!() };
        dedup.settle(vec![done], vec![]).await.unwrap();
        let Claim::Run(held) = dedup.claim(key("held"), Duration::ZERO, LEASE).await else { panic!() };
        let other = dedup.clone();
        let releasing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            other.settle(vec![], vec![held]).await
        });
        let keys = vec![key("new"), key("done"), key("held")];
        let claims = dedup.claim_all(keys, Duration::from_secs(10), LEASE, false).await;
        assert!(matches!(claims[..], [Claim::Run(_), Claim::Done, Claim::Run(_)]), "{:?}", claims.len());
        releasing.await.unwrap().unwrap();
        // Without waiting, a copy held elsewhere is busy.
        let Claim::Run(_held_again) = dedup.claim(key("again"), Duration::ZERO, LEASE).await else { panic!() };
        let claims = dedup.claim_all(vec![key("again"), key("fresh")], Duration::ZERO, LEASE, false).await;
        assert!(matches!(claims[..], [Claim::Busy, Claim::Run(_)]));
    }

    /// A run's writes, attached to its lease, reach kv only if the pair is
    /// recorded done; a released (retried) run leaves nothing.
    #[tokio::test]
    async fn only_recorded_runs_write_kv_and_a_calls_writes_apply_once() {
        let store = Arc::new(memory::MemoryStore::new(1000));
        let kv = store.kv();
        let dedup = Dedup::new(store, Duration::from_secs(60));
        let run = |id: &str| {
            let mut writes = KvWrites::new("h".into());
            writes.set(&format!("ran/{id}"), b"1".to_vec()).unwrap();
            writes
        };
        let Claim::Run(mut done) = dedup.claim(key("done"), Duration::ZERO, LEASE).await else { panic!() };
        let Claim::Run(mut retried) = dedup.claim(key("retried"), Duration::ZERO, LEASE).await else { panic!() };
        done.attach_writes(RunWrites::new(run("done")));
        retried.attach_writes(RunWrites::new(run("retried")));
        dedup.settle(vec![done], vec![retried]).await.unwrap();
        assert_eq!(kv.get("h", "ran/done").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get("h", "ran/retried").await.unwrap(), None, "a retried run left no trace");

        // One handle-batch call ran three events: its writes go with the first recorded one, once.
        let mut call = KvWrites::new("h".into());
        call.increment(&kv, "calls", 1).await.unwrap();
        let call = RunWrites::new(call);
        let mut leases = Vec::new();
        for id in ["b1", "b2", "b3"] {
            let Claim::Run(mut lease) = dedup.claim(key(id), Duration::ZERO, LEASE).await else { panic!() };
            lease.attach_writes(call.clone());
            leases.push(lease);
        }
        let first = leases.remove(0);
        dedup.settle(leases, vec![first]).await.unwrap();
        assert_eq!(kv.get("h", "calls").await.unwrap(), Some(b"1".to_vec()), "applied once, with b2");
    }

    #[tokio::test]
    async fn a_dropped_lease_releases_the_pair() {
        let dedup = dedup();
        let Claim::Run(lease) = dedup.claim(key("1"), Duration::ZERO, LEASE).await else { panic!() };
        drop(lease);
        assert!(matches!(dedup.claim(key("1"), Duration::ZERO, LEASE).await, Claim::Run(_)));
    }

    #[tokio::test]
    async fn a_copy_is_a_duplicate_only_once_the_run_it_copies_is_recorded() {
        let dedup = dedup();
        let Claim::Run(lease) = dedup.claim(key("1"), Duration::ZERO, LEASE).await else { panic!() };
        assert!(matches!(dedup.claim(key("1"), Duration::from_millis(20), LEASE).await, Claim::Busy));
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim(key("1"), Duration::from_secs(5), LEASE).await, Claim::Done) }
        });
        // The run has finished, but until its delivery is recorded a crash
        // would undo it: the copy keeps waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a copy answered before the run it copies was recorded");
        dedup.settle(vec![lease], vec![]).await.unwrap();
        assert!(waiter.await.unwrap(), "the waiting copy is a duplicate once the record is committed");
    }

    #[tokio::test]
    async fn a_copy_waiting_on_a_run_whose_record_failed_runs_it() {
        let dedup = Dedup::new(Arc::new(FailingCommits(memory::MemoryStore::new(10))), Duration::from_secs(60));
        let Claim::Run(lease) = dedup.claim(key("1"), Duration::ZERO, LEASE).await else { panic!() };
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim(key("1"), Duration::from_secs(5), LEASE).await, Claim::Run(_)) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(dedup.settle(vec![lease], vec![]).await.is_err());
        assert!(waiter.await.unwrap(), "nothing was recorded, so the copy runs");
    }

    #[tokio::test]
    async fn a_copy_waiting_on_a_released_pair_runs_it() {
        let dedup = dedup();
        let Claim::Run(lease) = dedup.claim(key("1"), Duration::ZERO, LEASE).await else { panic!() };
        let waiter = tokio::spawn({
            let dedup = dedup.clone();
            async move { matches!(dedup.claim(key("1"), Duration::from_secs(5), LEASE).await, Claim::Run(_)) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        dedup.settle(vec![], vec![lease]).await.unwrap();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn of_many_copies_claimed_at_once_exactly_one_runs() {
        let dedup = dedup();
        for round in 0..50 {
            let copies = (0..8).map(|_| {
                let dedup = dedup.clone();
                tokio::spawn(async move { dedup.claim(key(&round.to_string()), Duration::ZERO, LEASE).await })
            });
            // Every claim is kept until the round ends, so no lease is released meanwhile.
            let claims: Vec<Claim> = futures::future::join_all(copies).await.into_iter().map(Result::unwrap).collect();
            let runs = claims.iter().filter(|claim| matches!(claim, Claim::Run(_))).count();
            assert_eq!(runs, 1, "round {round}: one copy runs, the others are told it is busy");
        }
    }

    /// A store whose commits fail, to check that nothing counts as done then.
    struct FailingCommits(memory::MemoryStore);

    #[async_trait::async_trait]
    impl DedupStore for FailingCommits {
        async fn begin_as(&self, key: &DedupKey, lease_for: Duration, replay: bool) -> Result<Begin, StoreError> {
            self.0.begin_as(key, lease_for, replay).await
        }
        async fn record(&self, _: &[Done], _: Duration) -> Result<(), StoreError> {
            Err(StoreError("disk full".into()))
        }
        async fn release(&self, keys: &[DedupKey]) -> Result<(), StoreError> {
            self.0.release(keys).await
        }
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_the_pairs_to_run_again() {
        let dedup = Dedup::new(Arc::new(FailingCommits(memory::MemoryStore::new(10))), Duration::from_secs(60));
        let Claim::Run(lease) = dedup.claim(key("1"), Duration::ZERO, LEASE).await else { panic!() };
        assert!(dedup.settle(vec![lease], vec![]).await.is_err());
        assert!(matches!(dedup.claim(key("1"), Duration::ZERO, LEASE).await, Claim::Run(_)));
    }

    #[test]
    fn storage_keys_cannot_collide() {
        let a = DedupKey::new("h", "a:1", "x");
        let b = DedupKey::new("h", "a", "1:x");
        assert_ne!(a.storage_key(), b.storage_key());
    }
}
