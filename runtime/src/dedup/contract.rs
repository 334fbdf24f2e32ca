//! The contract every [`DedupStore`] keeps, as one test suite each store's
//! tests run against a fresh instance of it.

use std::sync::Arc;
use std::time::Duration;

use super::{Begin, DedupKey, DedupStore};

fn key(handler: &str, source: &str, id: &str) -> DedupKey {
    DedupKey { handler: Arc::from(handler), source: source.to_owned(), id: id.to_owned() }
}

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(600);

/// Runs every case; `label` names the store in failures. Keys are unique
/// per call, so stores shared between tests (one Redis) are fine.
pub async fn check(label: &str, store: &dyn DedupStore) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let k = |handler: &str, source: &str, id: &str| key(handler, source, &format!("{run}-{id}"));

    // A new pair runs; once committed it is done, for this and later begins.
    assert_eq!(store.begin(&k("h", "/s", "1"), LEASE).await.unwrap(), Begin::Run, "{label}: new pair");
    store.commit(&[k("h", "/s", "1")], TTL).await.unwrap();
    assert_eq!(store.begin(&k("h", "/s", "1"), LEASE).await.unwrap(), Begin::Done, "{label}: committed pair");

    // The same event for another handler, or from another source, is another pair.
    assert_eq!(store.begin(&k("g", "/s", "1"), LEASE).await.unwrap(), Begin::Run, "{label}: other handler");
    assert_eq!(store.begin(&k("h", "/t", "1"), LEASE).await.unwrap(), Begin::Run, "{label}: other source");
    store.release(&[k("g", "/s", "1"), k("h", "/t", "1")]).await.unwrap();

    // A released pair runs again; releasing a done pair keeps it done.
    assert_eq!(store.begin(&k("h", "/s", "2"), LEASE).await.unwrap(), Begin::Run);
    store.release(&[k("h", "/s", "2")]).await.unwrap();
    assert_eq!(store.begin(&k("h", "/s", "2"), LEASE).await.unwrap(), Begin::Run, "{label}: released pair");
    store.release(&[k("h", "/s", "1"), k("h", "/s", "2")]).await.unwrap();
    assert_eq!(store.begin(&k("h", "/s", "1"), LEASE).await.unwrap(), Begin::Done, "{label}: release keeps done");
    store.release(&[k("h", "/s", "2")]).await.unwrap();

    // One commit records a whole delivery.
    let batch: Vec<DedupKey> = (0..100).map(|i| k("h", "/batch", &i.to_string())).collect();
    for pair in &batch {
        assert_eq!(store.begin(pair, LEASE).await.unwrap(), Begin::Run);
    }
    store.commit(&batch, TTL).await.unwrap();
    for pair in &batch {
        assert_eq!(store.begin(pair, LEASE).await.unwrap(), Begin::Done, "{label}: {pair:?} of a batch commit");
    }

    // Empty commits and releases are fine.
    store.commit(&[], TTL).await.unwrap();
    store.release(&[]).await.unwrap();

    // Records expire after their TTL; sweeping is safe at any time.
    assert_eq!(store.begin(&k("h", "/s", "short"), LEASE).await.unwrap(), Begin::Run);
    store.commit(&[k("h", "/s", "short")], Duration::from_millis(50)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    store.sweep().await.unwrap();
    assert_eq!(store.begin(&k("h", "/s", "short"), LEASE).await.unwrap(), Begin::Run, "{label}: expired record");
    assert_eq!(store.begin(&k("h", "/s", "1"), LEASE).await.unwrap(), Begin::Done, "{label}: sweep keeps live records");

    // A rejected (dead-lettered) pair is done for redeliveries, runs again
    // on replay, and a success then replaces the rejection for good.
    let (ok, no) = (k("h", "/replay", "ok"), k("h", "/replay", "no"));
    for pair in [&ok, &no] {
        assert_eq!(store.begin(pair, LEASE).await.unwrap(), Begin::Run);
    }
    store.commit_all(std::slice::from_ref(&ok), std::slice::from_ref(&no), TTL).await.unwrap();
    assert_eq!(store.begin(&no, LEASE).await.unwrap(), Begin::Done, "{label}: rejected, redelivered");
    assert_eq!(store.begin_as(&no, LEASE, true).await.unwrap(), Begin::Run, "{label}: rejected, replayed");
    assert_eq!(store.begin_as(&ok, LEASE, true).await.unwrap(), Begin::Done, "{label}: succeeded, replayed");
    store.commit(std::slice::from_ref(&no), TTL).await.unwrap();
    assert_eq!(store.begin_as(&no, LEASE, true).await.unwrap(), Begin::Done, "{label}: replay succeeded");
    assert_eq!(store.begin(&no, LEASE).await.unwrap(), Begin::Done, "{label}: replay succeeded, redelivered");
    // A replay rejected again stays replayable.
    let again = k("h", "/replay", "again");
    assert_eq!(store.begin(&again, LEASE).await.unwrap(), Begin::Run);
    store.commit_all(&[], std::slice::from_ref(&again), TTL).await.unwrap();
    assert_eq!(store.begin_as(&again, LEASE, true).await.unwrap(), Begin::Run);
    store.commit_all(&[], std::slice::from_ref(&again), TTL).await.unwrap();
    assert_eq!(store.begin_as(&again, LEASE, true).await.unwrap(), Begin::Run, "{label}: rejected twice");
    // A replay that must be retried leaves the pair rejected: a redelivery
    // still does not run it, the next replay does.
    store.release(std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(store.begin(&again, LEASE).await.unwrap(), Begin::Done, "{label}: released replay, redelivered");
    assert_eq!(store.begin_as(&again, LEASE, true).await.unwrap(), Begin::Run, "{label}: released replay, replayed");
    // While a replay runs it, a redelivery is told it is done (rejected), not to run it.
    assert_eq!(store.begin(&again, LEASE).await.unwrap(), Begin::Done, "{label}: replay running, redelivered");
    store.release(std::slice::from_ref(&again)).await.unwrap();

    // A replay whose holder died (its lease ran out, nothing released it)
    // leaves the pair rejected too.
    let died = k("h", "/replay", "died");
    assert_eq!(store.begin(&died, LEASE).await.unwrap(), Begin::Run);
    store.commit_all(&[], std::slice::from_ref(&died), TTL).await.unwrap();
    assert_eq!(store.begin_as(&died, Duration::from_millis(50), true).await.unwrap(), Begin::Run);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.begin(&died, LEASE).await.unwrap(), Begin::Done, "{label}: dead replay, redelivered");
    assert_eq!(store.begin_as(&died, LEASE, true).await.unwrap(), Begin::Run, "{label}: dead replay, replayed");
    store.release(&[again, died]).await.unwrap();
}
