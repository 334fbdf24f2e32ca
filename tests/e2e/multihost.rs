//! More than one host: three gridfn hosts behind a real haproxy
//! (`tests/multihost/haproxy.cfg`), sharing one real redis-server for dedup
//! and kv. A load with duplicates goes through the balancer, one host is
//! killed with `kill -9` in the middle of it, and every delivery not answered
//! 200 is redelivered through the balancer, as Event Grid would. Then the
//! handler's own record of its runs (kv counters in the shared Redis, one per
//! host and event) is read back.
//!
//! What gridfn promises, and so what is asserted: every event ran exactly
//! once in total, as the handler's kv shows: a run's kv writes take effect
//! in the same Redis script call as its done record, so a run is in kv if
//! and only if it was recorded. An event whose success was recorded (before
//! the 200) never runs again, on any host; nothing is lost. The window the
//! kill hits is made to happen on purpose: a delivery held open by one slow
//! event is on the host it kills, so its other events ran there (the host's
//! log says so) but were never recorded; a copy of one of them is sent there
//! and must never get a 200. Those events run again on a live host once the
//! dead host's lease expires (20 s + 2 × the handler's timeout), and kv
//! counts only that run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gridfn, KEY, batch, component, event, free_port, haproxy, redis_server, repo};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const EVENTS: usize = 3000;
const PER_BATCH: usize = 50;
/// How long the handler works per load event, so deliveries overlap.
const WORK_MS: u64 = 5;
/// Deliveries in flight at once, through the balancer.
const SENDERS: usize = 8;
/// Events of the delivery held open on the host that is killed.
const HELD: usize = 20;
/// How long its first event works: the delivery cannot be committed before.
const HELD_FOR_MS: u64 = 2000;
/// How long a pair claimed by a host stays leased to it if it dies: gridfn's
/// local retry budget (20 s) + 2 × the handler's timeout (3 s here).
const LEASE: Duration = Duration::from_secs(26);
/// The load, the kill and the redeliveries may not take longer.
const LIMIT: Duration = Duration::from_secs(55);

/// One pushed delivery and the event ids in it.
struct Delivery {
    body: Vec<u8>,
    ids: Vec<String>,
}

impl Delivery {
    fn new(ids: Vec<String>, work_ms: impl Fn(usize) -> u64) -> Delivery {
        let events: Vec<Value> =
            ids.iter().enumerate().map(|(at, id)| event(id, json!({"act": "tally", "ms": work_ms(at)}))).collect();
        Delivery { body: batch(&events), ids }
    }
}

/// The load: every event in its own batch of 50, then again in a batch that
/// straddles two of those (the same ids on whichever hosts the balancer
/// picks, at nearly the same time), every third batch sent twice in a row
/// (two senders take the copies at once: two hosts race on the same ids),
/// and every fifth straddling batch holds its first event twice.
fn load() -> Vec<Delivery> {
    let id = |n: usize| format!("load-{:04}", n % EVENTS);
    let mut deliveries = Vec::new();
    for b in 0..EVENTS / PER_BATCH {
        let own: Vec<String> = (b * PER_BATCH..(b + 1) * PER_BATCH).map(id).collect();
        let mut straddling: Vec<String> =
            (b * PER_BATCH + PER_BATCH / 2..(b + 1) * PER_BATCH + PER_BATCH / 2).map(id).collect();
        if b % 5 == 0 {
            straddling.push(straddling[0].clone());
        }
        if b % 3 == 0 {
            deliveries.push(Delivery::new(own.clone(), |_| WORK_MS));
        }
        deliveries.push(Delivery::new(own, |_| WORK_MS));
        deliveries.push(Delivery::new(straddling, |_| WORK_MS));
    }
    deliveries
}

/// What the sender saw of one delivery that was answered 200.
struct Acknowledged {
    delivery: usize,
    /// The host that answered (haproxy's `x-served-by`).
    by: String,
    /// Acknowledged before the kill was decided.
    before_kill: bool,
    at: Instant,
    duplicates: u64,
}

/// Everything the senders saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<Acknowledged>,
    /// Answers other than 200, and failed requests, by what they were.
    failures: BTreeMap<String, usize>,
}

/// POSTs `delivery` through the balancer until it is answered 200.
fn deliver(
    client: &reqwest::blocking::Client,
    url: &str,
    index: usize,
    delivery: &Delivery,
    seen: &Mutex<Seen>,
    killed: &AtomicBool,
    started: Instant,
) {
    loop {
        assert!(started.elapsed() < LIMIT, "delivery {index} was never acknowledged");
        let sent = client
            .post(url)
            .header("aeg-event-type", "Notification")
            .header("aeg-sas-key", KEY)
            .header("content-type", "application/json")
            .body(delivery.body.clone())
            .send();
        let failure = match sent {
            Ok(response) if response.status() == 200 => {
                let before_kill = !killed.load(Ordering::SeqCst);
                let by = response.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
                let verdict: Value = response.json().unwrap_or_default();
                let duplicates = verdict["duplicates"].as_u64().unwrap_or(0);
                let acknowledged = Acknowledged { delivery: index, by, before_kill, at: Instant::now(), duplicates };
                seen.lock().unwrap().acknowledged.push(acknowledged);
                return;
            }
            Ok(response) => response.status().to_string(),
            Err(error) if error.is_timeout() => "timeout".to_owned(),
            // reqwest's message is only "error sending request": the cause is in its sources.
            Err(error) => match std::error::Error::source(&error) {
                Some(cause) => format!("no answer: {cause}"),
                None => format!("no answer: {error}"),
            },
        };
        *seen.lock().unwrap().failures.entry(failure).or_default() += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the handler `tally` counts its runs in the shared Redis: its kv key
/// `ran/<host>/<id>`, under `<dedup key_prefix>kv:` and its length-prefixed name.
const RAN: &str = "gridfn:dedup:kv:5:tallyran/";

/// The handler's record: runs per event id, per host.
fn runs(redis: &mut redis::Connection) -> HashMap<String, HashMap<String, u64>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{RAN}*")).query(redis).unwrap();
    let mut runs: HashMap<String, HashMap<String, u64>> = HashMap::new();
    for chunk in keys.chunks(500) {
        let counts: Vec<u64> = redis::cmd("MGET").arg(chunk).query(redis).unwrap();
        for (key, count) in chunk.iter().zip(counts) {
            let (host, id) = key[RAN.len()..].split_once('/').unwrap();
            runs.entry(id.to_owned()).or_default().insert(host.to_owned(), count);
        }
    }
    runs
}

/// The handler's log line for a run of `id` (its kv writes wait for the
/// record; its log does not).
fn ran_line(id: &str) -> String {
    format!("scripted ran {id} act=tally")
}

/// The host (index into `HOSTS`) whose log shows runs of every one of `ids`, once one does.
fn host_that_ran(hosts: &[Gridfn], ids: &[String], started: Instant) -> usize {
    loop {
        for (index, host) in hosts.iter().enumerate() {
            let log = host.log_text();
            if ids.iter().all(|id| log.contains(&ran_line(id))) {
                return index;
            }
        }
        assert!(started.elapsed() < LIMIT, "the held delivery never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn three_hosts_behind_haproxy_run_every_event_exactly_once_in_total_across_a_kill_9() {
    let redis = redis_server();
    let mut hosts: Vec<Gridfn> = HOSTS
        .iter()
        .map(|name| {
            Gridfn::start(&format!(
                "[dedup]\nstore = \"redis\"\nurl = \"{}\"\n\n[[handler]]\nname = \"tally\"\nmodule = {:?}\n\
                 timeout = \"3s\"\n[handler.capabilities]\nkv = true\nconfig = {{ host = \"{name}\" }}\n",
                redis.url,
                component("scripted")
            ))
        })
        .collect();
    let port = free_port();
    let mut config = std::fs::read_to_string(repo("tests/multihost/haproxy.cfg")).unwrap();
    config = config.replace("@LISTEN@", &format!("127.0.0.1:{port}"));
    for (name, host) in HOSTS.iter().zip(&hosts) {
        config = config.replace(&format!("@{}@", name.to_uppercase()), host.addr());
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("haproxy.cfg"), &config).unwrap();
    let mut connection = redis::Client::open(redis.url.as_str()).unwrap().get_connection().unwrap();
    let balancer = haproxy(&dir.path().join("haproxy.cfg"), port);
    let url = format!("{}/api/events/tally", balancer.url);
    let started = Instant::now();

    let deliveries = load();
    let held_ids: Vec<String> = (0..HELD).map(|i| format!("held-{i:02}")).collect();
    let held = Delivery::new(held_ids.clone(), |at| if at == 0 { HELD_FOR_MS } else { 0 });
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(40)).build().unwrap();
    let seen = Mutex::new(Seen::default());
    let (next, acknowledged) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let killed = AtomicBool::new(false);
    let held_index = deliveries.len();

    let (killed_host, acknowledged_at_kill, held_sent, kill_after) = std::thread::scope(|scope| {
        for _ in 0..SENDERS {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(delivery) = deliveries.get(index) else { return };
                    deliver(&client, &url, index, delivery, &seen, &killed, started);
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        // A third of the way in, a delivery whose first event works for
        // 2 s: its other events run at once, and it cannot be committed
        // before the first is done. Once all of them ran, the host that
        // has them is killed: they ran, and nobody recorded it.
        while acknowledged.load(Ordering::SeqCst) < deliveries.len() / 3 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let held_sent = Instant::now();
        scope.spawn(|| deliver(&client, &url, held_index, &held, &seen, &killed, started));
        let victim = host_that_ran(&hosts, &held_ids, started);
        // A copy of one of them, straight to that host (where the balancer
        // could have sent it): its run is done but not recorded, so the copy
        // waits for the record, which the kill below prevents.
        let copy = Delivery::new(vec![held_ids[1].clone()], |_| 0);
        let copy_url = hosts[victim].url("/api/events/tally");
        let copy_answer = scope.spawn(|| {
            let sent = (client.post(copy_url))
                .header("aeg-event-type", "Notification")
                .header("aeg-sas-key", KEY)
                .header("content-type", "application/json")
                .body(copy.body)
                .send();
            sent.map(|answer| answer.status()).ok()
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!copy_answer.is_finished(), "the copy was answered before the run it copies was recorded");
        // Marked first: a delivery acknowledged from here on may race the
        // kill, so only those acknowledged before count as recorded before.
        killed.store(true, Ordering::SeqCst);
        let acknowledged_at_kill = acknowledged.load(Ordering::SeqCst);
        hosts[victim].kill();
        let kill_after = held_sent.elapsed();
        let copy_status = copy_answer.join().unwrap();
        assert!(copy_status != Some(reqwest::StatusCode::OK), "the copy of an unrecorded run got a 200");
        assert!(kill_after < Duration::from_millis(HELD_FOR_MS), "killed too late ({kill_after:?}) to hit the window");
        (victim, acknowledged_at_kill, held_sent, kill_after)
    });
    let took = started.elapsed();
    let seen = seen.into_inner().unwrap();
    let victim = HOSTS[killed_host];
    let runs = runs(&mut connection);

    let all: Vec<&Delivery> = deliveries.iter().chain([&held]).collect();
    let ids: HashSet<&String> = all.iter().flat_map(|d| &d.ids).collect();
    // Successes recorded before the kill: every event of a delivery
    // acknowledged before it, by any host, its duplicates too (a copy is a
    // duplicate only once the run it copies is recorded).
    let recorded_before_kill: HashSet<&String> =
        seen.acknowledged.iter().filter(|a| a.before_kill).flat_map(|a| &all[a.delivery].ids).collect();
    let on = |id: &String, host: &str| runs.get(id).and_then(|by| by.get(host)).copied().unwrap_or(0);
    let total = |id: &String| runs.get(id).map_or(0, |by| by.values().sum::<u64>());

    let missing: Vec<&&String> = ids.iter().filter(|id| total(id) == 0).collect();
    assert!(missing.is_empty(), "never ran: {missing:?}");
    assert_eq!(runs.len(), ids.len(), "runs of events never sent: {:?}", runs.keys().filter(|id| !ids.contains(id)));
    for id in &ids {
        if recorded_before_kill.contains(id) {
            let by: Vec<(&str, bool, u64)> = seen
                .acknowledged
                .iter()
                .filter(|a| all[a.delivery].ids.contains(id))
                .map(|a| (a.by.as_str(), a.before_kill, a.duplicates))
                .collect();
            assert_eq!(
                total(id),
                1,
                "{id} was recorded (acknowledged by, before the kill, duplicates: {by:?}) and ran again: {:?}",
                runs[*id]
            );
        }
        assert_eq!(total(id), 1, "{id} did not run exactly once in total: {:?}", runs[*id]);
    }
    // The window, made to happen: every event of the held delivery ran on
    // the killed host (its log says so), unrecorded, so kv holds nothing of
    // that run; it holds the one run on a live host after the lease.
    let victim_log = hosts[killed_host].log_text();
    for id in &held_ids {
        assert!(victim_log.contains(&ran_line(id)), "{id} never ran on {victim}");
        assert_eq!((on(id, victim), total(id)), (0, 1), "{id}: {:?}", runs[id]);
    }
    // ...and not before the dead host's lease expired, nor long after: the
    // redelivery waits out the lease, then runs them (the first for 2 s).
    let held_acknowledged = seen.acknowledged.iter().find(|a| a.delivery == held_index).unwrap().at - held_sent;
    assert!(
        held_acknowledged > LEASE - Duration::from_millis(500) && held_acknowledged < LEASE + Duration::from_secs(8),
        "the held delivery was acknowledged {held_acknowledged:?} after it was sent; the lease is {LEASE:?}"
    );
    // Runs the kill undid: in the dead host's log, not in kv.
    let undone = ids.iter().filter(|id| victim_log.contains(&ran_line(id)) && on(id, victim) == 0).count();
    let load_undone = undone - held_ids.len();
    let on_victim = ids.iter().filter(|id| on(id, victim) == 1).count();
    let copies: usize = all.iter().map(|d| d.ids.len()).sum();
    let duplicates: u64 = seen.acknowledged.iter().map(|a| a.duplicates).sum();
    let redeliveries: usize = seen.failures.values().sum();
    assert!(acknowledged_at_kill < deliveries.len(), "the kill came after the load");
    let by_host: BTreeMap<&str, usize> =
        HOSTS.iter().map(|h| (*h, seen.acknowledged.iter().filter(|a| a.by == *h).count())).collect();
    assert_eq!(by_host.values().sum::<usize>(), seen.acknowledged.len(), "every 200 names its host");
    assert!(by_host.values().all(|n| *n > 0), "the balancer used every host: {by_host:?}");
    assert!(duplicates > 0, "no copy was found done by another delivery");
    eprintln!(
        "multihost: {} events in {} deliveries ({copies} copies), {SENDERS} senders, 3 hosts behind haproxy (200s by host: {by_host:?}); \
         killed {victim} {kill_after:?} after the held delivery was sent, which was acknowledged {held_acknowledged:?} after, with {acknowledged_at_kill} deliveries acknowledged; \
         non-200 answers redelivered: {redeliveries} {:?}; copies answered as duplicates: {duplicates}; \
         {victim} has {on_victim} recorded runs in kv, {} of them recorded before the kill; \
         runs the kill undid (in {victim}'s log, not in kv, run again elsewhere): {undone} ({HELD} held + {load_undone} of the load); \
         every event exactly once in kv; load to last acknowledgement {took:?}",
        ids.len(),
        all.len(),
        seen.failures,
        ids.iter().filter(|id| on(id, victim) == 1 && recorded_before_kill.contains(*id)).count(),
    );
}
