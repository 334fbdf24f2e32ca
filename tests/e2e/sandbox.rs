//! The sandbox: hostile handlers are contained, limits hold, instances can be
//! reused, and new versions deploy without a restart.

use std::ffi::OsStr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gridfn, batch, component, event, gridfn_command};

fn scripted(extra: &str) -> Gridfn {
    Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {:?}\ntimeout = \"2s\"\nmemory = \"16MiB\"\n{extra}\n",
        component("scripted")
    ))
}

fn retry_reason(response: reqwest::blocking::Response) -> String {
    assert_eq!(response.status(), 503);
    response.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned()
}

#[test]
fn hostile_handlers_are_contained_and_the_host_stays_healthy() {
    let gridfn = scripted("");
    let reason =
        retry_reason(gridfn.notify("/api/events/scripted", batch(&[event("h-recurse", json!({"act": "recurse"}))])));
    assert!(reason.contains("handler trapped"), "deep recursion: {reason}");

    let flood = gridfn.notify("/api/events/scripted", batch(&[event("h-flood", json!({"act": "log-flood"}))]));
    assert_eq!(flood.status(), 200, "a chatty handler still succeeds");
    assert_eq!(gridfn.log_count("log budget of 65536 bytes used up"), 1);
    let flood_lines = gridfn.log_lines().iter().filter(|l| l.contains("xxxxxxxxxxxxxxxx")).count();
    assert!(flood_lines < 200, "the host log holds only the budget, not 16 MiB: {flood_lines} lines");

    let escape = gridfn.notify("/api/events/scripted", batch(&[event("h-escape", json!({"act": "escape"}))]));
    assert_eq!(escape.status(), 200);
    let line = gridfn.log_lines().into_iter().find(|l| l.contains("escape file=")).expect("the escape report");
    assert!(line.contains("file=Err("), "no files: {line}");
    assert!(line.contains("dir=Err("), "no directories: {line}");
    assert!(line.contains("env=0"), "no environment: {line}");
    assert!(line.contains("net=Err("), "no network: {line}");

    assert_eq!(gridfn.get("/healthz").status(), 200);
    let fine = gridfn.notify("/api/events/scripted", batch(&[event("h-fine", json!({}))]));
    assert_eq!(fine.status(), 200);
}

#[test]
fn fuel_bounds_the_work_of_one_event() {
    let gridfn = Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {:?}\ntimeout = \"30s\"\nfuel = 5000000\n",
        component("scripted")
    ));
    let reason = retry_reason(gridfn.notify("/api/events/scripted", batch(&[event("f-loop", json!({"act": "loop"}))])));
    assert!(reason.contains("ran out of fuel (5000000 units)"), "{reason}");
    assert_eq!(gridfn.notify("/api/events/scripted", batch(&[event("f-ok", json!({}))])).status(), 200);
}

#[test]
fn events_beyond_max_concurrency_wait_in_a_bounded_queue() {
    let gridfn = scripted("max_concurrency = 1\nqueue = 1");
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let sends: Vec<_> = (0..3)
            .map(|i| {
                let gridfn = &gridfn;
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(30 * i));
                    let body = batch(&[event(&format!("q-{i}"), json!({"act": "sleep"}))]);
                    gridfn.notify("/api/events/scripted", body).status().as_u16()
                })
            })
            .collect();
        sends.into_iter().map(|s| s.join().unwrap()).collect()
    });
    // One runs, one waits in the queue of 1 and runs, one finds the queue full.
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, vec![200, 200, 503], "{statuses:?}");
    assert_eq!(gridfn.log_count("is at max_concurrency and its queue of 1 is full"), 1);
}

fn served_counts(gridfn: &Gridfn, prefix: &str) -> Vec<u32> {
    gridfn
        .log_lines()
        .iter()
        .filter(|l| l.contains(&format!("scripted ran {prefix}")))
        .map(|l| l.split("served=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn instances_are_fresh_by_default_and_reused_when_the_handler_opts_in() {
    let fresh = scripted("");
    for i in 0..3 {
        assert_eq!(fresh.notify("/api/events/scripted", batch(&[event(&format!("fr-{i}"), json!({}))])).status(), 200);
    }
    assert_eq!(served_counts(&fresh, "fr-"), vec![1, 1, 1]);

    let reused = scripted("instance_reuse = 3");
    for i in 0..5 {
        assert_eq!(reused.notify("/api/events/scripted", batch(&[event(&format!("re-{i}"), json!({}))])).status(), 200);
    }
    assert_eq!(served_counts(&reused, "re-"), vec![1, 2, 3, 1, 2], "one instance serves 3 events, then a new one");
    // A trap discards the instance: the next event gets a fresh one.
    retry_reason(reused.notify("/api/events/scripted", batch(&[event("re-trap", json!({"act": "trap"}))])));
    assert_eq!(reused.notify("/api/events/scripted", batch(&[event("re-after", json!({}))])).status(), 200);
    assert_eq!(served_counts(&reused, "re-after"), vec![1]);
}

fn admin(gridfn: &Gridfn, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--to"), OsStr::new(&gridfn.base), OsStr::new("--admin-key"), OsStr::new("admin-secret")]);
    gridfn_command(&all)
}

#[test]
fn a_new_version_deploys_without_a_restart_and_rolls_back() {
    let gridfn = Gridfn::start_with_server(
        "admin_keys = [\"admin-secret\"]",
        &format!("[[handler]]\nname = \"worker\"\nmodule = {:?}\n", component("audit-log")),
    );
    let send = |gridfn: &Gridfn, id: &str| gridfn.notify("/api/events/worker", batch(&[event(id, json!({}))])).status();
    assert_eq!(send(&gridfn, "v1-event"), 200);
    assert_eq!(gridfn.log_count("audit: Microsoft.Storage.BlobCreated v1-event "), 1);

    let listed = admin(&gridfn, &["handlers"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let before: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let v1 = before[0]["version"].as_str().unwrap().to_owned();

    // A module that is not a component is refused, and v1 keeps serving.
    let junk = gridfn.dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let refused = admin(&gridfn, &["deploy", junk.to_str().unwrap(), "--handler", "worker"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not a WebAssembly component"));

    let deployed = admin(&gridfn, &["deploy", component("scripted").to_str().unwrap(), "--handler", "worker"]);
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    let now: Value = serde_json::from_slice(&deployed.stdout).unwrap();
    assert_ne!(now["version"], v1.as_str());
    assert_eq!(now["previous_version"], v1.as_str());
    assert_eq!(send(&gridfn, "v2-event"), 200);
    assert_eq!(gridfn.log_count("scripted ran v2-event "), 1, "the new version handles new events");

    // A restart runs what was deployed last.
    let gridfn = gridfn.crash_and_restart();
    assert_eq!(send(&gridfn, "v2-after-restart"), 200);
    assert_eq!(gridfn.log_count("scripted ran v2-after-restart "), 1);

    let wrong_key = gridfn_command(&[
        OsStr::new("handlers"),
        OsStr::new("--to"),
        OsStr::new(&gridfn.base),
        OsStr::new("--admin-key"),
        OsStr::new("guess"),
    ]);
    assert!(!wrong_key.status.success());
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("401"));
}

#[test]
fn rollback_puts_the_previous_version_back() {
    let gridfn = Gridfn::start_with_server(
        "admin_keys = [\"admin-secret\"]",
        &format!("[[handler]]\nname = \"worker\"\nmodule = {:?}\n", component("audit-log")),
    );
    let deployed = admin(&gridfn, &["deploy", component("scripted").to_str().unwrap(), "--handler", "worker"]);
    assert!(deployed.status.success());
    let rolled = admin(&gridfn, &["rollback", "--handler", "worker"]);
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    assert_eq!(gridfn.notify("/api/events/worker", batch(&[event("rb-1", json!({}))])).status(), 200);
    assert_eq!(gridfn.log_count("audit: Microsoft.Storage.BlobCreated rb-1 "), 1, "the first version is back");
    let gridfn = gridfn.crash_and_restart();
    assert_eq!(gridfn.notify("/api/events/worker", batch(&[event("rb-2", json!({}))])).status(), 200);
    assert_eq!(gridfn.log_count("audit: Microsoft.Storage.BlobCreated rb-2 "), 1, "and stays back after a restart");
}

#[test]
fn without_admin_keys_there_is_no_admin_api() {
    let gridfn = scripted("");
    let response = gridfn.get("/admin/handlers");
    assert_eq!(response.status(), 404);
}

fn kv_line(gridfn: &Gridfn, id: &str) -> String {
    let needle = format!("handler=\"scripted\" event_id=\"{id}\"");
    gridfn.log_lines().into_iter().find(|l| l.contains("kv count=") && l.contains(&needle)).expect("the kv report")
}

#[test]
fn kv_is_granted_per_handler_scoped_and_survives_restarts() {
    let granted = scripted("capabilities = { kv = true }");
    for i in 1..=3 {
        let id = format!("kv-{i}");
        assert_eq!(granted.notify("/api/events/scripted", batch(&[event(&id, json!({"act": "kv"}))])).status(), 200);
        assert!(
            kv_line(&granted, &id).contains(&format!("count=Ok({i}) missing=Ok(None)")),
            "{}",
            kv_line(&granted, &id)
        );
    }
    let granted = granted.crash_and_restart();
    assert_eq!(granted.notify("/api/events/scripted", batch(&[event("kv-4", json!({"act": "kv"}))])).status(), 200);
    assert!(kv_line(&granted, "kv-4").contains("count=Ok(4)"), "kept across a restart: {}", kv_line(&granted, "kv-4"));

    let denied = scripted("");
    assert_eq!(denied.notify("/api/events/scripted", batch(&[event("kv-no", json!({"act": "kv"}))])).status(), 200);
    assert!(kv_line(&denied, "kv-no").contains("count=Err(Error::Denied)"), "{}", kv_line(&denied, "kv-no"));
}

#[test]
fn config_values_reach_only_the_handler_they_are_granted_to() {
    let gridfn = Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {m:?}\ncapabilities = {{ config = {{ greeting = \"hello\" }} }}\n\n\
         [[handler]]\nname = \"plain\"\nmodule = {m:?}\n",
        m = component("scripted")
    ));
    assert_eq!(gridfn.notify("/api/events/scripted", batch(&[event("c-1", json!({"act": "config"}))])).status(), 200);
    assert_eq!(gridfn.notify("/api/events/plain", batch(&[event("c-2", json!({"act": "config"}))])).status(), 200);
    assert_eq!(gridfn.log_count("config greeting=Some(\"hello\") handler=\"scripted\""), 1);
    assert_eq!(gridfn.log_count("config greeting=None handler=\"plain\""), 1);
}

#[test]
fn the_audit_log_counts_events_per_type_in_its_kv_store() {
    let gridfn = Gridfn::start(&format!(
        "[[handler]]\nname = \"audit-log\"\nmodule = {:?}\ncapabilities = {{ kv = true }}\n",
        component("audit-log")
    ));
    let body = batch(&[event("count-1", json!({})), event("count-2", json!({}))]);
    assert_eq!(gridfn.notify("/api/events/audit-log", body).status(), 200);
    let body = batch(&[event("count-3", json!({}))]);
    assert_eq!(gridfn.notify("/api/events/audit-log", body).status(), 200);
    let seen: Vec<String> = gridfn
        .log_lines()
        .iter()
        .filter(|l| l.contains("audit: Microsoft.Storage.BlobCreated count-"))
        .map(|l| l.split("seen=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned())
        .collect();
    // kv writes are recorded with the delivery: the first delivery's two runs
    // each see none recorded plus their own; the next sees both, and its own.
    let (mut first, next) = (seen[..2].to_vec(), &seen[2..]);
    first.sort();
    assert_eq!((first, next), (vec!["1".to_owned(), "1".to_owned()], &["3".to_owned()][..]));
}

#[test]
fn a_module_dropped_in_the_watched_folder_is_deployed() {
    let gridfn = Gridfn::start_with_server(
        "watch = \"incoming\"",
        &format!("[[handler]]\nname = \"worker\"\nmodule = {:?}\n", component("audit-log")),
    );
    let incoming = gridfn.dir.path().join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    // A broken module is refused and logged; the running version stays.
    std::fs::write(incoming.join("worker.wasm"), b"not wasm").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gridfn.log_count("not deploying worker.wasm") == 0 {
        assert!(std::time::Instant::now() < deadline, "the broken module was not noticed");
    }
    assert_eq!(gridfn.notify("/api/events/worker", batch(&[event("w-1", json!({}))])).status(), 200);
    assert_eq!(gridfn.log_count("audit: Microsoft.Storage.BlobCreated w-1 "), 1);

    // Written elsewhere and renamed in, as a deploy tool should.
    std::fs::copy(component("scripted"), incoming.join("worker.partial")).unwrap();
    std::fs::rename(incoming.join("worker.partial"), incoming.join("worker.wasm")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gridfn.log_count("deployed a new version") == 0 {
        assert!(std::time::Instant::now() < deadline, "the new module was not deployed");
    }
    assert_eq!(gridfn.notify("/api/events/worker", batch(&[event("w-2", json!({}))])).status(), 200);
    assert_eq!(gridfn.log_count("scripted ran w-2 "), 1);
}

/// Median client-side latency of one-event deliveries to `steady`, sent one
/// after another for `window`.
fn median_latency(gridfn: &Gridfn, tag: &str, window: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < window {
        let sent = std::time::Instant::now();
        let id = format!("{tag}-{}", samples.len());
        let response = gridfn.notify("/api/events/steady", batch(&[event(&id, json!({}))]));
        assert_eq!(response.status(), 200);
        samples.push(sent.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// The hostile handler is limited as an operator limits untrusted code
/// (`max_concurrency = 1`). Unlimited, it still gets at most every core but
/// one (here: one of two), but its queued traffic then crowds the core left
/// to everything else on a 2-core machine (this test's client included).
/// A median over 3 s on a shared 2-core machine still moves by half now and
/// then (about one run in six went past 2× with or without any change to
/// gridfn), so the comparison gets three tries: a gridfn that lets hostile
/// handlers slow the others fails all three.
#[test]
fn a_steady_handler_keeps_its_latency_while_hostile_handlers_run() {
    let _alone = crate::support::alone();
    let gridfn = Gridfn::start(&format!(
        "[[handler]]\nname = \"hostile\"\nmodule = {m:?}\ntimeout = \"500ms\"\nmemory = \"16MiB\"\nmax_concurrency = 1\n\
         [[handler]]\nname = \"steady\"\nmodule = {m:?}\n",
        m = component("scripted")
    ));
    median_latency(&gridfn, "warm", Duration::from_millis(300));
    let mut tries = Vec::new();
    for round in 0..3 {
        let baseline = median_latency(&gridfn, &format!("base{round}"), Duration::from_secs(2));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (under_load, hostile_sent) = std::thread::scope(|scope| {
            let attackers: Vec<_> = (0..2)
                .map(|thread| {
                    let (gridfn, stop) = (&gridfn, &stop);
                    scope.spawn(move || {
                        let acts = ["loop", "oom", "recurse", "log-flood", "trap", "escape"];
                        let mut sent = 0;
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            let act = acts[sent % acts.len()];
                            let id = format!("hostile-{round}-{thread}-{sent}");
                            gridfn.notify("/api/events/hostile", batch(&[event(&id, json!({"act": act}))]));
                            sent += 1;
                        }
                        sent
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let under_load = median_latency(&gridfn, &format!("load{round}"), Duration::from_secs(3));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (under_load, attackers.into_iter().map(|a| a.join().unwrap()).sum::<usize>())
        });
        assert!(hostile_sent >= 8, "the hostile handler kept running meanwhile ({hostile_sent} deliveries)");
        eprintln!(
            "steady's median latency: {baseline:?} alone, {under_load:?} beside {hostile_sent} hostile deliveries"
        );
        tries.push((baseline, under_load));
        if under_load <= baseline * 2 {
            break;
        }
    }
    assert!(gridfn.events("hostile", "retry") >= 4.0, "its loops, memory bombs and traps were contained");
    assert!(
        tries.iter().any(|(baseline, under_load)| *under_load <= *baseline * 2),
        "steady's median latency more than doubled while hostile handlers ran, in each of {} tries: {tries:?}",
        tries.len()
    );
    assert_eq!(gridfn.get("/healthz").status(), 200);
}

#[test]
fn one_deliverys_events_use_every_core() {
    // 8 events of one delivery, each a fixed amount of CPU work, against one
    // such event alone: 8 times as long one after another on the delivery's
    // task; their calls run on tasks of their own, side by side on the cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        eprintln!("skipped: one core");
        return;
    }
    let _alone = crate::support::alone();
    let gridfn = scripted("max_concurrency = 8");
    let work = |id: &str| event(id, json!({"act": "work", "ms": 100}));
    let timed = |events: Vec<Value>| {
        let started = std::time::Instant::now();
        assert_eq!(gridfn.notify("/api/events/scripted", batch(&events)).status(), 200);
        started.elapsed()
    };
    timed(vec![work("warm-up")]);
    // Up to three tries: another test's process busy on one of the two cores
    // (an Azurite or a replay, which `alone` does not wait for) makes the
    // eight look serial once in a while; calls that really ran one after
    // another are 7.5x every time.
    let mut tries = Vec::new();
    for round in 0..3 {
        let one = timed(vec![work(&format!("alone-{round}"))]);
        let eight = timed((0..8).map(|i| work(&format!("side-by-side-{round}-{i}"))).collect());
        tries.push((eight, one));
        if eight < one * 6 {
            return;
        }
    }
    panic!("8 events took 6x one alone or more, on {cores} cores, in each try (eight, one): {tries:?}");
}

#[test]
fn handlers_waiting_on_io_do_not_hold_the_cores() {
    // 16 events that each sleep 300 ms (a stand-in for an API call): they
    // wait together, not two at a time.
    let gridfn = scripted("max_concurrency = 16");
    let events: Vec<Value> = (0..16).map(|i| event(&format!("io-{i}"), json!({"act": "sleep"}))).collect();
    let started = std::time::Instant::now();
    assert_eq!(gridfn.notify("/api/events/scripted", batch(&events)).status(), 200);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "16 sleeping handlers took {took:?}");
}
