//! Namespace topics served by gridfn, driven by Azure's Python SDK unchanged
//! (`EventGridPublisherClient` / `EventGridConsumerClient` with
//! `namespace_topic=`, through tests/python/namespace.py): the lab's
//! scenario from samples/namespaces, every settle call, the errors Azure
//! answers, and durability across a `kill -9`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::protocol::azure_sdk_python;
use crate::support::{Gridfn, KEY, repo};

const TOPIC: &str = "moderation-events";

/// Starts the sample's namespace as written, with the test's key and folders.
fn start_sample() -> Gridfn {
    let text = std::fs::read_to_string(repo("samples/namespaces/gridfn.toml")).unwrap();
    let mut manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest.remove("server");
    Gridfn::start(&toml::to_string(&manifest).unwrap())
}

/// One SDK call with the key: `namespace.py … ARGS`; its exit code and JSON output.
fn sdk(gridfn: &Gridfn, subscription: Option<&str>, args: &[&str]) -> (i32, Value) {
    let (code, value, _) = sdk_as(gridfn, &["--key", KEY], subscription, args);
    (code, value)
}

/// One SDK call with `credential` (`--key KEY` or `--token JWT`): its exit
/// code, JSON output and stderr.
fn sdk_as(gridfn: &Gridfn, credential: &[&str], subscription: Option<&str>, args: &[&str]) -> (i32, Value, String) {
    let mut command = std::process::Command::new(azure_sdk_python());
    command.arg(repo("tests/python/namespace.py")).args(["--endpoint", &gridfn.base, "--topic", TOPIC]);
    command.args(credential);
    if let Some(subscription) = subscription {
        command.args(["--subscription", subscription]);
    }
    let output = command.args(args).output().unwrap();
    let code = output.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|_| panic!("namespace.py {args:?} exited {code}:\n{stdout}\n{stderr}"));
    (code, value, stderr)
}

fn receive(gridfn: &Gridfn, subscription: &str, max_events: u32, max_wait: u32) -> Vec<Value> {
    let (code, received) = sdk(
        gridfn,
        Some(subscription),
        &["receive", "--max-events", &max_events.to_string(), "--max-wait", &max_wait.to_string()],
    );
    assert_eq!(code, 0, "{received}");
    received.as_array().unwrap().clone()
}

fn settle(gridfn: &Gridfn, subscription: &str, operation: &[&str], tokens: &[&str]) -> Value {
    let args: Vec<&str> = operation.iter().chain(tokens).copied().collect();
    let (code, settled) = sdk(gridfn, Some(subscription), &args);
    assert_eq!(code, 0, "{settled}");
    settled
}

fn tokens(received: &[Value]) -> Vec<&str> {
    received.iter().map(|r| r["lockToken"].as_str().unwrap()).collect()
}

fn ids(received: &[Value]) -> Vec<&str> {
    received.iter().map(|r| r["id"].as_str().unwrap()).collect()
}

/// Every dead-letter blob under the test's state folder.
fn dead_letters(gridfn: &Gridfn) -> Vec<(PathBuf, Value)> {
    fn walk(dir: &std::path::Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "json") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&gridfn.dir.path().join("state/deadletter"), &mut found);
    found.into_iter().map(|p| (p.clone(), serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap())).collect()
}

#[test]
fn the_labs_scenario_runs_against_gridfn_with_the_azure_sdk() {
    let gridfn = start_sample();
    let (code, published) =
        sdk(&gridfn, None, &["publish", repo("samples/content-moderation/moderation_events.json").to_str().unwrap()]);
    assert_eq!(code, 0, "{published}");
    let published: Vec<&str> = published["ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap()).collect();
    assert_eq!(published.len(), 5);

    // The lab's counts, each in publish order, each a first delivery.
    let flagged = receive(&gridfn, "sub-flagged", 10, 10);
    let approved = receive(&gridfn, "sub-approved", 10, 10);
    let all = receive(&gridfn, "sub-all-events", 10, 10);
    assert_eq!(ids(&flagged), [published[0], published[2]]);
    assert_eq!(ids(&approved), [published[1], published[3]]);
    assert_eq!(ids(&all), published);
    for received in flagged.iter().chain(&approved).chain(&all) {
        assert_eq!(received["deliveryCount"], 1);
    }
    assert!(flagged.iter().all(|r| r["type"] == "com.contoso.ai.ContentFlagged"));
    assert_eq!(flagged[0]["subject"], "/content/images/img-4821");
    assert_eq!(flagged[0]["data"]["confidence"], 0.97);

    // Acknowledged events are gone; a rejected one is gone and dead-lettered.
    let acked = settle(&gridfn, "sub-flagged", &["acknowledge"], &tokens(&flagged));
    assert_eq!(acked, json!({"succeeded": tokens(&flagged), "failed": []}));
    let rejected = settle(&gridfn, "sub-approved", &["reject"], &tokens(&approved)[..1]);
    assert_eq!(rejected, json!({"succeeded": [tokens(&approved)[0]], "failed": []}));
    let acked = settle(&gridfn, "sub-approved", &["acknowledge"], &tokens(&approved)[1..]);
    assert_eq!(acked["succeeded"], json!([tokens(&approved)[1]]));

    // A settled token is spent: Azure answers 200 with TokenLost.
    let again = settle(&gridfn, "sub-flagged", &["acknowledge"], &tokens(&flagged)[..1]);
    assert_eq!(
        again,
        json!({"succeeded": [], "failed": [{"lockToken": tokens(&flagged)[0], "code": "TokenLost", "message": "Token has expired."}]})
    );

    // sub-all-events: renew one lock, release one with a delay, acknowledge the rest.
    let renewed = settle(&gridfn, "sub-all-events", &["renew"], &tokens(&all)[..1]);
    assert_eq!(renewed["succeeded"], json!([tokens(&all)[0]]));
    let released = settle(&gridfn, "sub-all-events", &["release", "--delay", "10"], &tokens(&all)[4..]);
    assert_eq!(released["succeeded"], json!([tokens(&all)[4]]));
    let released_at = Instant::now();
    assert_eq!(settle(&gridfn, "sub-all-events", &["acknowledge"], &tokens(&all)[..4])["failed"], json!([]));

    // Receiving again: nothing for flagged and approved; the released event
    // comes back to sub-all-events after its delay, as its second delivery.
    let (nothing_flagged, nothing_approved, redelivered) = std::thread::scope(|s| {
        let flagged = s.spawn(|| receive(&gridfn, "sub-flagged", 10, 10));
        let approved = s.spawn(|| receive(&gridfn, "sub-approved", 10, 10));
        let all = s.spawn(|| receive(&gridfn, "sub-all-events", 10, 30));
        (flagged.join().unwrap(), approved.join().unwrap(), all.join().unwrap())
    });
    assert_eq!((nothing_flagged.len(), nothing_approved.len()), (0, 0));
    assert_eq!(ids(&redelivered), [published[4]]);
    assert_eq!(redelivered[0]["deliveryCount"], 2);
    assert!(released_at.elapsed() >= Duration::from_secs(9), "released with a 10 s delay");
    assert_eq!(settle(&gridfn, "sub-all-events", &["acknowledge"], &tokens(&redelivered))["failed"], json!([]));

    // The rejected event, in the namespace dead-letter record shape.
    let dead = dead_letters(&gridfn);
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let (path, blob) = &dead[0];
    let relative = path.strip_prefix(gridfn.dir.path().join("state/deadletter")).unwrap();
    assert!(relative.starts_with("moderation-ns/moderation-events/SUB-APPROVED"), "{}", relative.display());
    assert_eq!(blob[0]["event"]["id"], published[1]);
    assert_eq!(blob[0]["event"]["type"], "com.contoso.ai.ContentApproved");
    assert_eq!(blob[0]["deadletterProperties"]["deadletterreason"], "Rejected");
    assert_eq!(blob[0]["deadletterProperties"]["deliveryattempts"], 1);
}

/// A raw data-plane call with the key as `AzureKeyCredential` sends it.
fn call(gridfn: &Gridfn, path: &str, body: &str, content_type: &str) -> reqwest::blocking::Response {
    gridfn.post(
        path,
        body.as_bytes().to_vec(),
        &[("authorization", &format!("SharedAccessKey {KEY}")), ("content-type", content_type)],
    )
}

#[test]
fn errors_and_edge_cases_are_answered_as_azure_answers_them() {
    let gridfn = start_sample();
    let v = "api-version=2024-06-01";
    let error = |response: reqwest::blocking::Response| {
        let status = response.status().as_u16();
        let header = response.headers().get("broker-errorcode").map(|h| h.to_str().unwrap().to_owned());
        let body: Value = response.json().unwrap();
        assert_eq!(header.as_deref(), body["error"]["code"].as_str(), "{body}");
        (status, body["error"]["code"].as_str().unwrap().to_owned())
    };
    let event =
        r#"{"specversion":"1.0","id":"one","source":"/s","type":"com.contoso.ai.ContentFlagged","data":{"n":1}}"#;

    // One structured CloudEvent (not a batch), with aeg-sas-key.
    let single = gridfn.post(
        &format!("/topics/{TOPIC}:publish?{v}"),
        event.as_bytes().to_vec(),
        &[("aeg-sas-key", KEY), ("content-type", "application/cloudevents+json; charset=utf-8")],
    );
    assert_eq!(single.status(), 200);
    assert_eq!(single.json::<Value>().unwrap(), json!({}));

    let cases = [
        (format!("/topics/nowhere:publish?{v}"), event, (404, "NotFound")),
        (format!("/topics/{TOPIC}/eventsubscriptions/nobody:receive?{v}"), "", (404, "NotFound")),
        (format!("/topics/{TOPIC}:publish"), event, (400, "BadRequest")),
        (format!("/topics/{TOPIC}:publish?api-version=2018-01-01"), event, (400, "BadRequest")),
        (format!("/topics/{TOPIC}:publish?{v}"), r#"{"id":"x","type":"t","specversion":"1.0"}"#, (400, "BadRequest")),
        (
            format!("/topics/{TOPIC}/eventsubscriptions/sub-flagged:receive?{v}&maxWaitTime=5"),
            "",
            (400, "ArgumentInvalid"),
        ),
        (
            format!("/topics/{TOPIC}/eventsubscriptions/sub-flagged:receive?{v}&maxWaitTime=121"),
            "",
            (400, "ArgumentInvalid"),
        ),
        (
            format!("/topics/{TOPIC}/eventsubscriptions/sub-flagged:receive?{v}&maxEvents=101"),
            "",
            (400, "ArgumentInvalid"),
        ),
        (
            format!("/topics/{TOPIC}/eventsubscriptions/sub-flagged:release?{v}&releaseDelayInSeconds=30"),
            r#"{"lockTokens":["x"]}"#,
            (400, "ArgumentInvalid"),
        ),
        (
            format!("/topics/{TOPIC}/eventsubscriptions/sub-flagged:acknowledge?{v}"),
            r#"{"tokens":["x"]}"#,
            (400, "BadRequest"),
        ),
    ];
    for (path, body, expected) in cases {
        let got = error(call(&gridfn, &path, body, "application/cloudevents-batch+json"));
        assert_eq!((got.0, got.1.as_str()), expected, "{path}");
    }
    let unauthorized = gridfn.post(
        &format!("/topics/{TOPIC}:publish?{v}"),
        event.as_bytes().to_vec(),
        &[("authorization", "SharedAccessKey wrong")],
    );
    assert_eq!(error(unauthorized), (401, "Unauthorized".to_owned()));
    let no_key = gridfn.post(&format!("/topics/{TOPIC}:publish?{v}"), event.as_bytes().to_vec(), &[]);
    assert_eq!(error(no_key).0, 401);

    // A token that was never handed out fails inside a 200; names ignore case.
    let bogus = call(
        &gridfn,
        &format!("/topics/MODERATION-EVENTS/eventsubscriptions/Sub-Flagged:acknowledge?{v}"),
        r#"{"lockTokens":["bogus"]}"#,
        "application/json",
    );
    assert_eq!(bogus.status(), 200);
    assert_eq!(
        bogus.json::<Value>().unwrap(),
        json!({"succeededLockTokens": [], "failedLockTokens": [{"lockToken": "bogus", "error": {"code": "TokenLost", "message": "Token has expired."}}]})
    );

    // The SDK sees the same: a 404 for an unknown topic, a 401 for a wrong key.
    let mut command = std::process::Command::new(azure_sdk_python());
    let output = command
        .arg(repo("tests/python/namespace.py"))
        .args([
            "--endpoint",
            &gridfn.base,
            "--key",
            KEY,
            "--topic",
            "nowhere",
            "--subscription",
            "sub-flagged",
            "receive",
        ])
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((output.status.code(), &answer["status"], &answer["code"]), (Some(3), &json!(404), &json!("NotFound")));

    // The single event reached sub-flagged and sub-all-events only.
    let received: Value = call(
        &gridfn,
        &format!("/topics/{TOPIC}/eventsubscriptions/sub-flagged:receive?{v}&maxEvents=5&maxWaitTime=10"),
        "",
        "application/json",
    )
    .json()
    .unwrap();
    let value = received["value"].as_array().unwrap();
    assert_eq!(value.len(), 1, "{received}");
    assert_eq!(value[0]["event"], serde_json::from_str::<Value>(event).unwrap(), "the event as published");
    assert_eq!(value[0]["brokerProperties"]["deliveryCount"], 1);
    assert!(value[0]["brokerProperties"]["lockToken"].as_str().is_some_and(|t| !t.is_empty()));
}

#[test]
fn a_kill_9_loses_no_published_event_brings_back_no_acknowledged_one_and_keeps_locks() {
    let gridfn = start_sample();
    let events = tempfile::NamedTempFile::new().unwrap();
    let three: Vec<Value> = (1..=3)
        .map(|i| json!({"id": format!("k-{i}"), "type": "com.contoso.ai.ContentFlagged", "source": "/kill", "data": {"i": i}}))
        .collect();
    std::fs::write(events.path(), serde_json::to_vec(&three).unwrap()).unwrap();
    assert_eq!(sdk(&gridfn, None, &["publish", events.path().to_str().unwrap()]).0, 0);
    let first_two = receive(&gridfn, "sub-flagged", 2, 10);
    assert_eq!(ids(&first_two), ["k-1", "k-2"]);
    assert_eq!(settle(&gridfn, "sub-flagged", &["acknowledge"], &tokens(&first_two)[..1])["failed"], json!([]));

    let gridfn = gridfn.crash_and_restart();
    // k-1 was acknowledged, k-2 is still locked to its token, k-3 is waiting.
    let after = receive(&gridfn, "sub-flagged", 10, 10);
    assert_eq!(ids(&after), ["k-3"]);
    assert_eq!(after[0]["deliveryCount"], 1);
    let held = settle(&gridfn, "sub-flagged", &["acknowledge"], &[tokens(&first_two)[1], tokens(&after)[0]]);
    assert_eq!(held["failed"], json!([]), "a lock taken before the crash still settles");
    assert_eq!(receive(&gridfn, "sub-flagged", 10, 10).len(), 0);
    // sub-all-events never received: all three are still there.
    assert_eq!(ids(&receive(&gridfn, "sub-all-events", 10, 10)), ["k-1", "k-2", "k-3"]);
}

// ---------------------------------------------------------------------------
// gridfn as a consumer: [[pull]] from a namespace (here another gridfn).
// ---------------------------------------------------------------------------

/// A gridfn serving topic `jobs` with the subscription `runner`.
fn broker() -> Gridfn {
    Gridfn::start(
        "[namespace]\nname = \"jobs-ns\"\n[[namespace.topic]]\nname = \"jobs\"\n\
         [[namespace.topic.subscription]]\nname = \"runner\"\nmax_delivery_count = 3\n",
    )
}

/// A gridfn running the scripted handler on what it pulls from `broker`'s `runner`.
fn consumer(broker: &Gridfn) -> Gridfn {
    Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {:?}\ntimeout = \"3s\"\n\n\
         [[pull]]\nendpoint = {:?}\ntopic = \"jobs\"\nsubscription = \"runner\"\nkey = {KEY:?}\n\
         handler = \"scripted\"\nmax_wait = \"10s\"\n",
        crate::support::component("scripted"),
        broker.base
    ))
}

fn publish_jobs(broker: &Gridfn, jobs: &[(&str, &str)]) {
    let events: Vec<Value> = (jobs.iter())
        .map(
            |(id, act)| json!({"specversion": "1.0", "id": id, "source": "/jobs", "type": "job", "data": {"act": act}}),
        )
        .collect();
    let response = call(
        broker,
        "/topics/jobs:publish?api-version=2024-06-01",
        &serde_json::to_string(&events).unwrap(),
        "application/cloudevents-batch+json; charset=utf-8",
    );
    assert_eq!(response.status(), 200);
}

/// Waits up to `limit` for a log line containing `needle`.
fn wait_for_log(gridfn: &Gridfn, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while gridfn.log_count(needle) == 0 {
        assert!(Instant::now() < deadline, "no {needle:?} within {limit:?}; log:\n{}", gridfn.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pulled_events_run_in_handlers_and_each_outcome_becomes_its_settle_call() {
    let broker = broker();
    let consumer = consumer(&broker);
    publish_jobs(&broker, &[("ok-1", ""), ("rej-1", "reject"), ("retry-1", "retry-first")]);

    // Success → acknowledged; reject → rejected (dead-lettered by both); a
    // retry → released with Event Grid's 10 s, then delivered again as attempt 1.
    wait_for_log(&consumer, "scripted ran ok-1 act= attempt=0", Duration::from_secs(30));
    wait_for_log(&consumer, "scripted ran rej-1 act=reject attempt=0", Duration::from_secs(30));
    wait_for_log(&consumer, "scripted ran retry-1 act=retry-first attempt=0", Duration::from_secs(30));
    let released = Instant::now();
    wait_for_log(&consumer, "scripted ran retry-1 act=retry-first attempt=1", Duration::from_secs(40));
    assert!(released.elapsed() >= Duration::from_secs(8), "released with a delay: {:?}", released.elapsed());

    // The broker dead-lettered the rejected event; gridfn's own store has it too.
    let namespace_dead = dead_letters(&broker);
    assert_eq!(namespace_dead.len(), 1, "{namespace_dead:#?}");
    assert_eq!(namespace_dead[0].1[0]["event"]["id"], "rej-1");
    assert_eq!(namespace_dead[0].1[0]["deadletterProperties"]["deadletterreason"], "Rejected");
    let own_dead = dead_letters(&consumer);
    assert_eq!(own_dead.len(), 1);
    assert_eq!(own_dead[0].1[0]["id"], "rej-1");

    // The same event again (at least once): acknowledged without running.
    publish_jobs(&broker, &[("ok-1", "")]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(consumer.log_count("scripted ran ok-1 "), 1, "{}", consumer.log_text());
    // Everything was settled: nothing is left for a receiver, and nothing ran twice.
    let left = call(
        &broker,
        "/topics/jobs/eventsubscriptions/runner:receive?api-version=2024-06-01&maxWaitTime=10",
        "",
        "application/json",
    );
    assert_eq!(left.json::<Value>().unwrap(), json!({"value": []}));
    assert_eq!(consumer.log_count("scripted ran rej-1 "), 1);
    assert_eq!(consumer.log_count("scripted ran retry-1 "), 2);
    assert_eq!(consumer.log_count("failed for a token"), 0, "{}", consumer.log_text());
}

#[test]
fn a_consumer_killed_mid_event_gets_it_back_after_the_lock_expires_as_delivery_two() {
    let broker = broker();
    let consumer = consumer(&broker);
    // `loop` runs until the handler's 3 s deadline: kill -9 the consumer meanwhile.
    publish_jobs(&broker, &[("crash-1", "loop")]);
    wait_for_log(&consumer, "scripted ran crash-1 act=loop attempt=0", Duration::from_secs(30));
    let consumer = consumer.crash_and_restart();
    // The namespace still holds the lock (60 s); when it expires, the
    // restarted consumer receives the event again: deliveryCount 2, attempt 1.
    wait_for_log(&consumer, "scripted ran crash-1 act=loop attempt=1", Duration::from_secs(90));
}

#[test]
fn a_consumer_stopped_with_sigterm_settles_the_event_it_runs_before_it_exits() {
    let broker = broker();
    let mut consumer = consumer(&broker);
    publish_jobs(&broker, &[("stop-1", "loop")]);
    wait_for_log(&consumer, "scripted ran stop-1 act=loop attempt=0", Duration::from_secs(30));
    consumer.terminate();
    let status = consumer.wait_exit(Duration::from_secs(20)).expect("gridfn exits within its drain");
    assert!(status.success(), "{status:?}");
    // The handler ran into its 3 s deadline (a retry), and the consumer
    // released the event before exiting: it is back after the 10 s release
    // delay, well before its 60 s lock would have expired.
    let started = Instant::now();
    let path = "/topics/jobs/eventsubscriptions/runner:receive?api-version=2024-06-01&maxWaitTime=30";
    let back: Value = call(&broker, path, "", "application/json").json().unwrap();
    assert_eq!(back["value"][0]["event"]["id"], "stop-1", "{back}");
    assert_eq!(back["value"][0]["brokerProperties"]["deliveryCount"], 2);
    assert!(started.elapsed() < Duration::from_secs(25), "released, not expired: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Push subscriptions: gridfn runs a handler on a namespace topic's events.
// ---------------------------------------------------------------------------

/// A gridfn serving topic `jobs` whose subscription `runner` pushes to the
/// scripted handler (two deliveries at most), beside the queue subscription `audit`.
fn pushing() -> Gridfn {
    Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {:?}\ntimeout = \"3s\"\n\n\
         [namespace]\nname = \"push-ns\"\n[[namespace.topic]]\nname = \"jobs\"\n\
         [[namespace.topic.subscription]]\nname = \"runner\"\ndelivery = \"push\"\nhandler = \"scripted\"\n\
         max_delivery_count = 2\n\
         [[namespace.topic.subscription]]\nname = \"audit\"\n",
        crate::support::component("scripted"),
    ))
}

fn pull_metric(gridfn: &Gridfn, series: &str, source: &str, operation: Option<&str>) -> f64 {
    let labels = match operation {
        Some(operation) => format!("{{source=\"{source}\",operation=\"{operation}\"}}"),
        None => format!("{{source=\"{source}\"}}"),
    };
    gridfn.metric(&format!("gridfn_pull_{series}_total{labels}"))
}

#[test]
fn a_push_subscription_runs_its_handler_retries_by_schedule_and_dead_letters() {
    let gridfn = pushing();
    // Series exist before the first event.
    assert!(
        gridfn.get("/metrics").text().unwrap().contains(r#"gridfn_pull_received_events_total{source="jobs/runner"} 0"#)
    );
    publish_jobs(&gridfn, &[("ok-1", ""), ("rej-1", "reject"), ("retry-1", "retry-first"), ("again-1", "retry")]);

    wait_for_log(&gridfn, "scripted ran ok-1 act= attempt=0", Duration::from_secs(30));
    wait_for_log(&gridfn, "scripted ran rej-1 act=reject attempt=0", Duration::from_secs(30));
    // A retry without `after`: released by the schedule's first entry (10 s).
    wait_for_log(&gridfn, "scripted ran retry-1 act=retry-first attempt=0", Duration::from_secs(30));
    let released = Instant::now();
    // A retry asking 2 s: released at once (the nearest allowed delay, 0),
    // then out of deliveries (max_delivery_count = 2): dead-lettered.
    wait_for_log(&gridfn, "scripted ran again-1 act=retry attempt=1", Duration::from_secs(30));
    wait_for_log(&gridfn, "scripted ran retry-1 act=retry-first attempt=1", Duration::from_secs(40));
    assert!(released.elapsed() >= Duration::from_secs(8), "released for 10 s: {:?}", released.elapsed());

    let deadline = Instant::now() + Duration::from_secs(10);
    let namespace_dead = loop {
        let dead: Vec<_> = (dead_letters(&gridfn).into_iter())
            .filter(|(path, _)| path.to_string_lossy().contains("push-ns/jobs/RUNNER"))
            .collect();
        if dead.len() >= 2 || Instant::now() > deadline {
            break dead;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut reasons: Vec<(String, String, u64)> = (namespace_dead.iter())
        .map(|(_, blob)| {
            let properties = &blob[0]["deadletterProperties"];
            (
                blob[0]["event"]["id"].as_str().unwrap().to_owned(),
                properties["deadletterreason"].as_str().unwrap().to_owned(),
                properties["deliveryattempts"].as_u64().unwrap(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [("again-1".into(), "MaxDeliveryCountExceeded".into(), 2), ("rej-1".into(), "Rejected".into(), 1)]
    );
    for (needle, runs) in [("ok-1 ", 1), ("rej-1 ", 1), ("retry-1 ", 2), ("again-1 ", 2)] {
        assert_eq!(gridfn.log_count(&format!("scripted ran {needle}")), runs, "{needle}");
    }
    // The rejected event has the handler's own record too (written before the rejection was
    // recorded: the safety net if the namespace's write had failed).
    let everything = dead_letters(&gridfn);
    assert_eq!(everything.len(), 3, "{everything:#?}");
    // `gridfn replay` takes every record back to the handler the subscription runs: the
    // namespace's through the push subscription's `handler` (a dry run opens no store, so it
    // works beside the running gridfn).
    let dry = std::process::Command::new(env!("CARGO_BIN_EXE_gridfn"))
        .arg("replay")
        .arg(gridfn.dir.path().join("state/deadletter"))
        .args(["--dry-run", "--json", "--config"])
        .arg(gridfn.dir.path().join("gridfn.toml"))
        .output()
        .unwrap();
    let plan: Value =
        serde_json::from_slice(&dry.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&dry.stderr)));
    let rows = plan["rows"].as_array().unwrap();
    assert!(rows.iter().all(|row| row["action"] == "replay" && row["destination"] == "scripted"), "{plan:#}");
    let mut ids: Vec<&str> = rows.iter().map(|row| row["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["again-1", "rej-1"], "{plan:#}");
    // The queue subscription beside it got every event, untouched by the push.
    let audit = call(
        &gridfn,
        "/topics/jobs/eventsubscriptions/audit:receive?api-version=2024-06-01&maxEvents=10&maxWaitTime=10",
        "",
        "application/json",
    );
    assert_eq!(audit.json::<Value>().unwrap()["value"].as_array().unwrap().len(), 4);
    // A push subscription is gridfn's to deliver: no client receives from it.
    let refused = call(
        &gridfn,
        "/topics/jobs/eventsubscriptions/runner:receive?api-version=2024-06-01&maxWaitTime=10",
        "",
        "application/json",
    );
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.headers()["broker-errorcode"], "BadRequest");

    let source = "jobs/runner";
    assert_eq!(pull_metric(&gridfn, "received_events", source, None), 6.0);
    assert_eq!(pull_metric(&gridfn, "settled_events", source, Some("acknowledge")), 2.0, "ok-1, retry-1");
    assert_eq!(pull_metric(&gridfn, "settled_events", source, Some("reject")), 1.0);
    assert_eq!(pull_metric(&gridfn, "settled_events", source, Some("release")), 3.0);
    assert_eq!(pull_metric(&gridfn, "failed_lock_tokens", source, Some("release")), 0.0);
}

#[test]
fn a_push_delivery_cut_by_kill_9_is_retried_at_restart_and_a_succeeded_one_is_not() {
    let gridfn = pushing();
    publish_jobs(&gridfn, &[("done-1", "")]);
    wait_for_log(&gridfn, "scripted ran done-1 act= attempt=0", Duration::from_secs(30));
    // `loop` runs into the handler's 3 s deadline: kill -9 meanwhile.
    publish_jobs(&gridfn, &[("cut-1", "loop")]);
    wait_for_log(&gridfn, "scripted ran cut-1 act=loop attempt=0", Duration::from_secs(30));
    let restarted_at = Instant::now();
    let gridfn = gridfn.crash_and_restart();
    // Not after the 60 s lock: the lock died with the process that held it.
    wait_for_log(&gridfn, "scripted ran cut-1 act=loop attempt=1", Duration::from_secs(40));
    assert!(restarted_at.elapsed() < Duration::from_secs(50), "{:?}", restarted_at.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(gridfn.log_count("scripted ran done-1 "), 1, "{}", gridfn.log_text());
}

// ---------------------------------------------------------------------------
// Entra ID: bearer tokens on the namespace API, client credentials for [[pull]].
// ---------------------------------------------------------------------------

/// The `[namespace.entra]` table trusting the test key (tests/e2e/entra).
fn namespace_entra() -> String {
    format!(
        "[namespace.entra]\ntenant_id = {:?}\njwks_file = {:?}\n",
        crate::protocol::TENANT,
        repo("tests/e2e/entra/jwks.json")
    )
}

/// A token for the namespace audience, issued to the application `app`.
fn namespace_token(app: &str) -> String {
    crate::protocol::entra_token(|claims| {
        claims["aud"] = json!("https://eventgrid.azure.net");
        claims["appid"] = json!(app);
        claims["roles"] = json!([]);
    })
}

#[test]
fn the_azure_sdk_with_a_token_credential_publishes_receives_and_settles() {
    let text = std::fs::read_to_string(repo("samples/namespaces/gridfn.toml")).unwrap();
    let mut manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest.remove("server");
    let gridfn = Gridfn::start(&format!("{}\n{}", toml::to_string(&manifest).unwrap(), namespace_entra()));
    let token = namespace_token("11111111-2222-3333-4444-555555555555");
    let as_app = ["--token", token.as_str()];

    let (code, published, stderr) = sdk_as(
        &gridfn,
        &as_app,
        None,
        &["publish", repo("samples/content-moderation/moderation_events.json").to_str().unwrap()],
    );
    assert_eq!(code, 0, "{published}\n{stderr}");
    assert!(stderr.contains("scopes: https://eventgrid.azure.net/.default"), "{stderr}");
    let (code, received, _) =
        sdk_as(&gridfn, &as_app, Some("sub-flagged"), &["receive", "--max-events", "10", "--max-wait", "10"]);
    assert_eq!(code, 0, "{received}");
    let received = received.as_array().unwrap().clone();
    assert_eq!(received.len(), 2);
    let mut args = vec!["acknowledge"];
    args.extend(tokens(&received));
    let (code, acked, _) = sdk_as(&gridfn, &as_app, Some("sub-flagged"), &args);
    assert_eq!((code, &acked["failed"]), (0, &json!([])), "{acked}");
    assert_eq!(acked["succeeded"].as_array().unwrap().len(), 2);

    // A token for another audience, or an expired one: 401, which the SDK raises.
    let wrong_audience = crate::protocol::entra_token(|c| c["roles"] = json!([]));
    let expired = crate::protocol::entra_token(|c| {
        c["aud"] = json!("https://eventgrid.azure.net");
        c["exp"] = json!(1_000_000_000);
    });
    for bad in [wrong_audience, expired] {
        let (code, answer, _) =
            sdk_as(&gridfn, &["--token", &bad], Some("sub-flagged"), &["receive", "--max-wait", "10"]);
        assert_eq!((code, &answer["status"], &answer["code"]), (3, &json!(401), &json!("Unauthorized")), "{answer}");
    }
    // The key still works beside tokens.
    assert_eq!(receive(&gridfn, "sub-approved", 10, 10).len(), 2);
}

#[test]
fn a_namespace_without_entra_refuses_bearer_tokens() {
    let gridfn = start_sample();
    let response = gridfn.post(
        &format!("/topics/{TOPIC}/eventsubscriptions/sub-flagged:receive?api-version=2024-06-01&maxWaitTime=10"),
        Vec::new(),
        &[("authorization", &format!("Bearer {}", namespace_token("someone")))],
    );
    assert_eq!(response.status(), 401);
    let body: Value = response.json().unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("[namespace.entra]"), "{body}");
}

/// A stand-in for Entra's token endpoint on loopback: answers every POST
/// with `token` (valid an hour) and keeps each request's path and form body.
struct TokenEndpoint {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

fn token_endpoint(token: String) -> TokenEndpoint {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
            seen.lock().unwrap().push((path, String::from_utf8(body).unwrap()));
            let answer = json!({"token_type": "Bearer", "expires_in": 3599, "access_token": token}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    TokenEndpoint { url, requests }
}

/// One test for two expensive things (a 35 s handler): the consumer gets
/// its token from the authority by client credentials, once, and renews the
/// lock of an event that runs past half its 60 s lock (60 s is Azure's
/// minimum, and gridfn's). A handler past the whole lock would take 70 s of
/// a busy core; the broker's own tests show a renewed lock outliving its
/// first expiry, so renewing in time is what is left to show here.
#[test]
fn a_consumer_with_entra_client_credentials_renews_the_lock_of_a_slow_handler() {
    let broker = Gridfn::start(&format!(
        "[namespace]\nname = \"jobs-ns\"\n{}[[namespace.topic]]\nname = \"jobs\"\n\
         [[namespace.topic.subscription]]\nname = \"runner\"\n",
        namespace_entra()
    ));
    let client_id = "6a1f4e3c-0000-4000-8000-00000000c0de";
    let authority = token_endpoint(namespace_token(client_id));
    let consumer = Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {:?}\ntimeout = \"35s\"\n\n\
         [[pull]]\nendpoint = {:?}\ntopic = \"jobs\"\nsubscription = \"runner\"\nhandler = \"scripted\"\nmax_wait = \"10s\"\n\
         entra = {{ tenant_id = {:?}, client_id = {client_id:?}, client_secret = \"s3cret\", authority_host = {:?} }}\n",
        crate::support::component("scripted"),
        broker.base,
        crate::protocol::TENANT,
        authority.url,
    ));
    publish_jobs(&broker, &[("quick-1", ""), ("slow-1", "loop")]);
    wait_for_log(&consumer, "scripted ran quick-1 act= attempt=0", Duration::from_secs(30));
    wait_for_log(&consumer, "scripted ran slow-1 act=loop attempt=0", Duration::from_secs(30));
    // slow-1 runs into its 35 s deadline (a retry): one renewal at 30 s, then a release.
    let source = "jobs/runner";
    let deadline = Instant::now() + Duration::from_secs(60);
    while pull_metric(&consumer, "settled_events", source, Some("release")) < 1.0 {
        assert!(Instant::now() < deadline, "slow-1 was never released:\n{}", consumer.log_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    // One renewal every 30 s while it runs: once or twice in 35 s, depending on where the ticks fall.
    let renewals = pull_metric(&consumer, "lock_renewals", source, None);
    assert!((1.0..=2.0).contains(&renewals), "{renewals} renewals");
    assert_eq!(pull_metric(&consumer, "failed_lock_tokens", source, Some("renew_lock")), 0.0);
    assert_eq!(pull_metric(&consumer, "settled_events", source, Some("acknowledge")), 1.0);
    assert_eq!(consumer.log_count("scripted ran slow-1 "), 1, "not delivered twice while it ran");

    // Every call carried a bearer token from one client-credentials request.
    let requests = authority.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "the token is cached: {requests:?}");
    let (path, form) = &requests[0];
    assert_eq!(path, &format!("/{}/oauth2/v2.0/token", crate::protocol::TENANT));
    for field in [
        "grant_type=client_credentials",
        &format!("client_id={client_id}"),
        "client_secret=s3cret",
        "scope=https%3A%2F%2Feventgrid.azure.net%2F.default",
    ] {
        assert!(form.split('&').any(|pair| pair == field), "{field} in {form}");
    }
    assert_eq!(broker.log_count("Unauthorized"), 0);
}
