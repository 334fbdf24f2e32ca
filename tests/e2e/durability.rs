//! Never lose an event, never run one twice: duplicates inside a batch,
//! local retries.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gridfn, batch, component, event};

fn scripted(extra: &str) -> Gridfn {
    Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {:?}\ntimeout = \"2s\"\n{extra}\n",
        component("scripted")
    ))
}

#[test]
fn the_same_event_twice_in_one_batch_runs_once() {
    let gridfn = scripted("");
    let copy = event("twin-1", json!({}));
    let response = gridfn.notify("/api/events/scripted", batch(&[copy.clone(), copy]));
    assert_eq!(response.status(), 200);
    let verdict: Value = response.json().unwrap();
    assert_eq!((verdict["succeeded"].as_u64(), verdict["duplicates"].as_u64()), (Some(1), Some(1)));
    assert_eq!(gridfn.log_count("scripted ran twin-1 "), 1);
}

#[test]
fn transient_failures_are_retried_locally_before_answering() {
    let gridfn = scripted("retry = { attempts = 3, backoff = \"exponential\", initial = \"50ms\", max = \"1s\" }");
    let response = gridfn.notify("/api/events/scripted", batch(&[event("local-1", json!({"act": "retry-first"}))]));
    assert_eq!(response.status(), 200, "the second, local attempt succeeded");
    assert_eq!(gridfn.log_count("scripted ran local-1 act=retry-first attempt=0"), 1);
    assert_eq!(gridfn.log_count("scripted ran local-1 act=retry-first attempt=1"), 1);
    assert_eq!(gridfn.events("scripted", "success"), 1.0);
}

#[test]
fn a_handlers_retry_delay_is_honoured_and_attempts_are_bounded() {
    let gridfn = scripted("retry = { attempts = 2, initial = \"10ms\" }");
    let started = Instant::now();
    // `retry` asks for 2 s; one local retry, then 503.
    let response = gridfn.notify("/api/events/scripted", batch(&[event("slow-1", json!({"act": "retry"}))]));
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(took >= Duration::from_secs(2), "waited the 2 s the handler asked for: {took:?}");
    assert_eq!(gridfn.log_count("scripted ran slow-1 "), 2);
}

fn runs_per_id(lines: &[String]) -> std::collections::HashMap<String, usize> {
    let mut runs = std::collections::HashMap::new();
    for line in lines {
        if let Some(rest) = line.split("scripted ran ").nth(1) {
            let id = rest.split_whitespace().next().unwrap_or_default().to_owned();
            *runs.entry(id).or_insert(0) += 1;
        }
    }
    runs
}

#[test]
fn done_events_survive_a_crash_with_the_embedded_store() {
    let gridfn = scripted("");
    let body = batch(&[event("keep-1", json!({})), event("keep-2", json!({}))]);
    assert_eq!(gridfn.notify("/api/events/scripted", body.clone()).status(), 200);
    let gridfn = gridfn.crash_and_restart();
    let again = gridfn.notify("/api/events/scripted", body);
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().unwrap()["duplicates"], 2, "remembered across the crash");
    assert_eq!(runs_per_id(&gridfn.log_lines())["keep-1"], 1);
}

/// Kill -9 in the middle of 5,000 events; restart on the same store; the
/// sender redelivers every batch, acknowledged or not (as Event Grid might).
/// From the handler's own log: every event ran at least once, and no event
/// of a batch acknowledged before the kill ran again.
#[test]
fn a_kill_in_the_middle_of_a_load_loses_nothing_and_reruns_nothing_acknowledged() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const BATCHES: usize = 100;
    const PER_BATCH: usize = 50;
    let gridfn = scripted("");
    let bodies: Vec<Vec<u8>> = (0..BATCHES)
        .map(|b| batch(&(0..PER_BATCH).map(|i| event(&format!("load-{b}-{i}"), json!({}))).collect::<Vec<_>>()))
        .collect();
    let acknowledged = Mutex::new(vec![false; BATCHES]);
    let acked_count = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    let acked_before_kill = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let base = gridfn.base.clone();
    let gridfn = std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let b = next.fetch_add(1, Ordering::SeqCst);
                    if b >= BATCHES {
                        break;
                    }
                    let sent = client
                        .post(format!("{base}/api/events/scripted"))
                        .header("aeg-sas-key", crate::support::KEY)
                        .header("content-type", "application/json")
                        .body(bodies[b].clone())
                        .send();
                    if sent.is_ok_and(|r| r.status() == 200) {
                        acknowledged.lock().unwrap()[b] = true;
                        acked_count.fetch_add(1, Ordering::SeqCst);
                        if !killed.load(Ordering::SeqCst) {
                            acked_before_kill.lock().unwrap().push(b);
                        }
                    }
                }
            });
        }
        while acked_count.load(Ordering::SeqCst) < BATCHES * 2 / 5 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Mark first: a batch acknowledged from here on may race the kill,
        // so only those acknowledged before it count as "recorded before".
        killed.store(true, Ordering::SeqCst);
        gridfn.crash_and_restart()
    });
    let acked_before_kill = acked_before_kill.into_inner().unwrap();
    assert!(acked_before_kill.len() >= BATCHES * 2 / 5 && acked_before_kill.len() < BATCHES, "the kill hit mid-load");

    // Event Grid redelivers what it did not see acknowledged; to be strict,
    // redeliver every batch.
    for (b, body) in bodies.iter().enumerate() {
        let status = gridfn.notify("/api/events/scripted", body.clone()).status();
        assert_eq!(status, 200, "batch {b} after the restart");
    }

    let runs = runs_per_id(&gridfn.log_lines());
    for b in 0..BATCHES {
        for i in 0..PER_BATCH {
            let id = format!("load-{b}-{i}");
            let count = runs.get(&id).copied().unwrap_or(0);
            assert!(count >= 1, "{id} never ran");
            if acked_before_kill.contains(&b) {
                assert_eq!(count, 1, "{id} was acknowledged before the kill and ran again");
            }
        }
    }
}

/// Two hosts share one real redis-server; every event is sent to both (and a
/// third copy to the first at the same time): each runs exactly once in all.
#[test]
fn two_hosts_sharing_redis_run_each_event_exactly_once() {
    let redis = crate::support::redis_server();
    let manifest = format!(
        "[dedup]\nstore = \"redis\"\nurl = \"{}\"\n[[handler]]\nname = \"scripted\"\nmodule = {:?}\n",
        redis.url,
        component("scripted")
    );
    let (a, b) = (Gridfn::start(&manifest), Gridfn::start(&manifest));
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|n| batch(&(0..10).map(|i| event(&format!("shared-{n}-{i}"), json!({}))).collect::<Vec<_>>()))
        .collect();
    std::thread::scope(|scope| {
        for body in &bodies {
            for host in [&a, &b, &a] {
                scope.spawn(move || {
                    // A copy still running on the other host asks for a retry
                    // at worst; Event Grid would redeliver, so do we.
                    for _ in 0..20 {
                        if host.notify("/api/events/scripted", body.clone()).status() == 200 {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    panic!("a delivery never succeeded");
                });
            }
        }
    });
    let mut lines = a.log_lines();
    lines.extend(b.log_lines());
    let runs = runs_per_id(&lines);
    assert_eq!(runs.len(), 200, "every event ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    // Which host wins each race is up to timing; between them, each event
    // succeeded once, and every one of B's copies ended done one way or another
    // (more than once when a Busy retry re-sent a whole batch).
    assert_eq!(a.events("scripted", "success") + b.events("scripted", "success"), 200.0);
    assert!(b.events("scripted", "success") + b.events("scripted", "duplicate") >= 200.0, "B took part");
}

/// Rejections go to a real Azure Storage API (Azurite) in Event Grid's
/// blob naming and format.
#[test]
fn rejected_events_are_dead_lettered_to_azure_blob_storage() {
    let azurite = crate::support::azurite();
    let gridfn = scripted(&format!(
        r#"
[deadletter]
store = "azure-blob"
container = "deadletter"
account = "devstoreaccount1"
access_key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
endpoint = "{}"
create_container = true
"#,
        azurite.url
    ));
    let sent = event("azure-reject-1", json!({"act": "reject"}));
    let response = gridfn.post(
        "/api/events/scripted",
        batch(std::slice::from_ref(&sent)),
        &[("aeg-sas-key", crate::support::KEY), ("aeg-subscription-name", "orders-sub")],
    );
    assert_eq!(response.status(), 200);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config: gridfn::deadletter::azure::AzureBlobConfig = toml::from_str(&format!(
        "container = \"deadletter\"\naccount = \"devstoreaccount1\"\naccess_key = \"Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==\"\nendpoint = \"{}\"",
        azurite.url
    ))
    .unwrap();
    let store = gridfn::deadletter::azure::AzureBlobDeadLetter::new(&config).unwrap();
    let names = runtime.block_on(store.list("ORDERS-SUB")).unwrap();
    assert_eq!(names.len(), 1, "{names:?}");
    let parts: Vec<&str> = names[0].split('/').collect();
    assert_eq!(parts.len(), 6, "<SUB>/<yyyy>/<m>/<d>/<h>/<uuid>.json: {names:?}");
    let records: Vec<Value> = serde_json::from_slice(&runtime.block_on(store.get(&names[0])).unwrap()).unwrap();
    assert_eq!(records[0]["id"], "azure-reject-1");
    assert_eq!(records[0]["data"], sent["data"]);
    assert_eq!(records[0]["deadLetterReason"], "HandlerRejected");
    assert_eq!(records[0]["deadLetterDescription"], "scripted rejection");
}

/// When the dead-letter store cannot take the event, it is not done: 503,
/// and the redelivery runs it again.
#[test]
fn a_failed_dead_letter_write_is_a_retry_not_a_loss() {
    let gridfn = scripted("[deadletter]\npath = \"/proc/gridfn-cannot-write-here\"\n");
    let body = batch(&[event("nowhere-1", json!({"act": "reject"}))]);
    let response = gridfn.notify("/api/events/scripted", body.clone());
    assert_eq!(response.status(), 503);
    let reason = response.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("dead-lettering it failed"), "{reason}");
    assert_eq!(gridfn.notify("/api/events/scripted", body).status(), 503);
    assert_eq!(runs_per_id(&gridfn.log_lines())["nowhere-1"], 2, "not recorded as done");
}
