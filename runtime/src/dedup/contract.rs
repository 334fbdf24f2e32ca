//! The contract every [`DedupStore`] keeps, as one test suite each store's
//! tests run against a fresh instance of it.

use std::sync::Arc;
use std::time::Duration;

use super::{Begin, DedupKey, DedupStore, Done};
use crate::kv::{KeyValue, KvStore, KvWrites};

fn key(handler: &str, source: &str, id: &str) -> DedupKey {
    DedupKey::new(handler, source, id)
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

    // A delivery's pairs asked about at once: each answered as alone, in order.
    let half: Vec<DedupKey> = (0..10).map(|i| k("h", "/all", &i.to_string())).collect();
    store.begin_all(&half.iter().step_by(2).collect::<Vec<_>>(), LEASE, false).await;
    store.commit(&half.iter().step_by(2).cloned().collect::<Vec<_>>(), TTL).await.unwrap();
    let begins: Vec<Begin> =
        store.begin_all(&half.iter().collect::<Vec<_>>(), LEASE, false).await.into_iter().map(Result::unwrap).collect();
    let alone: Vec<Begin> = (0..10).map(|i| if i % 2 == 0 { Begin::Done } else { Begin::Run }).collect();
    assert_eq!(begins, alone, "{label}: begin_all");
    store.release(&half).await.unwrap();

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

/// The handlers' kv as every store keeps it: a run's writes are applied with
/// its pair's record, in the same write, and never otherwise. `kv` reads the
/// same store.
pub async fn check_kv(label: &str, store: &dyn DedupStore, kv: &dyn KvStore) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let handler = format!("kv-{run}");
    let h = handler.as_str();
    let pair = |id: &str| key(h, "/kv", id);
    let value = |text: &str| Some(text.as_bytes().to_vec());
    let writes = || KvWrites::new(Arc::from(h));
    let record = |key: DedupKey, writes: KvWrites| Done { key, rejected: false, writes };

    // A run's writes reach the store with its record, not before.
    assert_eq!(store.begin(&pair("1"), LEASE).await.unwrap(), Begin::Run);
    let mut first = writes();
    first.set("a", b"1".to_vec()).unwrap();
    assert_eq!(first.increment(kv, "n", 2).await.unwrap(), 2);
    first.set("gone", b"x".to_vec()).unwrap();
    assert_eq!(kv.get(h, "a").await.unwrap(), None, "{label}: nothing written before the record");
    store.record(&[record(pair("1"), first)], TTL).await.unwrap();
    assert_eq!(store.begin(&pair("1"), LEASE).await.unwrap(), Begin::Done, "{label}: recorded");
    assert_eq!(kv.get(h, "a").await.unwrap(), value("1"), "{label}: set");
    assert_eq!(kv.get(h, "n").await.unwrap(), value("2"), "{label}: counters are text");
    assert_eq!(kv.get(&format!("{h}x"), "a").await.unwrap(), None, "{label}: handlers do not see each other's keys");
    assert_eq!(kv.get(&format!("{h}:"), "a").await.unwrap(), None, "{label}: scoping cannot be forged");

    // Two runs count the same key at once: both see 2 + 1, and both count.
    let (mut one, mut two) = (writes(), writes());
    assert_eq!(one.increment(kv, "n", 1).await.unwrap(), 3);
    assert_eq!(two.increment(kv, "n", 1).await.unwrap(), 3);
    two.delete("gone").unwrap();
    store.record(&[record(pair("2"), one)], TTL).await.unwrap();
    store.record(&[record(pair("3"), two)], TTL).await.unwrap();
    assert_eq!(kv.get(h, "n").await.unwrap(), value("4"), "{label}: increments of two runs both count");
    assert_eq!(kv.get(h, "gone").await.unwrap(), None, "{label}: delete");
    // ...and so do those of runs recorded in one write.
    let mut counted = Vec::new();
    for i in 0..5u8 {
        let mut w = writes();
        w.set("last", vec![i]).unwrap();
        assert_eq!(w.increment(kv, "n", 10).await.unwrap(), 14);
        counted.push(record(pair(&format!("many-{i}")), w));
    }
    store.record(&counted, TTL).await.unwrap();
    assert_eq!(kv.get(h, "n").await.unwrap(), value("54"), "{label}: one write, five runs' increments");
    assert_eq!(kv.get(h, "last").await.unwrap(), Some(vec![4]), "{label}: runs apply in the order given");

    // A run whose pair is already recorded (another run of it was, first) adds nothing.
    let mut late = writes();
    late.set("a", b"late".to_vec()).unwrap();
    late.increment(kv, "n", 100).await.unwrap();
    store.record(&[record(pair("1"), late)], TTL).await.unwrap();
    assert_eq!(kv.get(h, "a").await.unwrap(), value("1"), "{label}: first record wins");
    assert_eq!(kv.get(h, "n").await.unwrap(), value("54"), "{label}: a late run's increment is dropped");

    // A released run (retried, or its delivery failed) leaves nothing.
    assert_eq!(store.begin(&pair("released"), LEASE).await.unwrap(), Begin::Run);
    store.release(&[pair("released")]).await.unwrap();
    assert_eq!(store.begin(&pair("released"), LEASE).await.unwrap(), Begin::Run, "{label}: released");
    store.release(&[pair("released")]).await.unwrap();

    // A rejected (dead-lettered) run's writes are recorded with it.
    let mut rejected = writes();
    rejected.set("rejected", b"yes".to_vec()).unwrap();
    store.record(&[Done { key: pair("rejected"), rejected: true, writes: rejected }], TTL).await.unwrap();
    assert_eq!(kv.get(h, "rejected").await.unwrap(), value("yes"), "{label}: a rejection is a recorded outcome");

    // A record whose increment cannot apply (the key stopped being a
    // counter) fails whole: no record, no write, not even the ones before it.
    let mut bad = writes();
    bad.increment(kv, "text", 1).await.unwrap();
    let mut text = writes();
    text.set("text", b"hello".to_vec()).unwrap();
    store.record(&[record(pair("text"), text)], TTL).await.unwrap();
    let mut before = writes();
    before.set("before", b"1".to_vec()).unwrap();
    before.increment(kv, "n", 1).await.unwrap();
    let failed = store.record(&[record(pair("before"), before), record(pair("bad"), bad)], TTL).await;
    assert!(failed.is_err(), "{label}: an increment of text fails the record");
    assert_eq!(kv.get(h, "before").await.unwrap(), None, "{label}: a failed record writes nothing");
    assert_eq!(kv.get(h, "n").await.unwrap(), value("54"), "{label}: ...and undoes increments");
    assert_eq!(kv.get(h, "text").await.unwrap(), value("hello"));
    assert_eq!(store.begin(&pair("before"), LEASE).await.unwrap(), Begin::Run, "{label}: ...and records nothing");
    store.release(&[pair("before")]).await.unwrap();

    listing(label, store, kv, &run).await;
}

/// `list`: the handler's keys under a prefix, in key order, with their values.
async fn listing(label: &str, store: &dyn DedupStore, kv: &dyn KvStore, run: &str) {
    let (c, longer) = (format!("c-{run}"), format!("c-{run}x"));
    assert!(kv.list(&c, "", 10).await.unwrap().is_empty(), "{label}: nothing written, nothing listed");
    let mut writes = KvWrites::new(Arc::from(c.as_str()));
    for key in ["trail/0002", "trail/0010", "trail/0001", "trail", "trails/1", "tr*il/1", "other", "trail/0003"] {
        writes.set(key, key.as_bytes().to_vec()).unwrap();
    }
    writes.set("trail/bytes", vec![0xff, 0x00, 0x80]).unwrap();
    let mut other = KvWrites::new(Arc::from(longer.as_str()));
    other.set("trail/0000", b"not c's".to_vec()).unwrap();
    let mut deleting = KvWrites::new(Arc::from(c.as_str()));
    deleting.delete("trail/0003").unwrap();
    for (id, writes) in [("list-1", writes), ("list-2", other), ("list-3", deleting)] {
        store.record(&[Done { key: key(&c, "/kv", id), rejected: false, writes }], TTL).await.unwrap();
    }

    let keys = |entries: Vec<KeyValue>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let trail = kv.list(&c, "trail/", 10).await.unwrap();
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
    assert_eq!(keys(kv.list(&c, "trail/", 2).await.unwrap()), ["trail/0001", "trail/0002"], "{label}: limit");
    assert_eq!(keys(kv.list(&c, "tr*", 10).await.unwrap()), ["tr*il/1"], "{label}: a prefix is literal");
    assert_eq!(
        keys(kv.list(&c, "", 100).await.unwrap()),
        ["other", "tr*il/1", "trail", "trail/0001", "trail/0002", "trail/0010", "trail/bytes", "trails/1"],
        "{label}: the empty prefix lists every key of the handler"
    );
    assert!(kv.list(&c, "nothing/", 10).await.unwrap().is_empty(), "{label}: no match");
}
