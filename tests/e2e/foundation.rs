//! The host foundation: handshake, auth, decode, dedup, sandbox, verdict.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gridfn, KEY, batch, component, event, vector};

fn host() -> Gridfn {
    Gridfn::start(&format!(
        r#"
[[handler]]
name = "audit-log"
module = {audit:?}

[[handler]]
name = "scripted"
module = {scripted:?}
timeout = "1s"
memory = "16MiB"
"#,
        audit = component("audit-log"),
        scripted = component("scripted"),
    ))
}

#[test]
fn validation_handshake_answers_with_the_code_on_both_endpoints() {
    let gridfn = host();
    let body = std::fs::read(vector("eventgrid/handshake/docs-SubscriptionValidationEvent.json")).unwrap();
    let expected: Value = serde_json::from_slice(
        &std::fs::read(vector("eventgrid/handshake/docs-SubscriptionValidationResponse.expected.json")).unwrap(),
    )
    .unwrap();
    for path in ["/api/events/audit-log", "/runtime/webhooks/eventgrid?functionName=audit-log&code=test-key"] {
        let headers: &[(&str, &str)] = if path.contains("code=") {
            &[("aeg-event-type", "SubscriptionValidation")]
        } else {
            &[("aeg-event-type", "SubscriptionValidation"), ("aeg-sas-key", KEY)]
        };
        let response = gridfn.post(path, body.clone(), headers);
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().get("content-length").is_some(), "{path}: the answer has a Content-Length");
        assert!(response.headers().get("transfer-encoding").is_none(), "{path}: never chunked");
        assert_eq!(response.json::<Value>().unwrap(), expected, "{path}");
    }
    assert_eq!(gridfn.log_count("scripted ran"), 0);
    assert_eq!(gridfn.events("audit-log", "success"), 0.0, "the handshake is not an event");
}

#[test]
fn a_delivery_runs_each_event_once_and_a_redelivery_is_all_duplicates() {
    let gridfn = host();
    let body = batch(&[event("a-1", json!({"n": 1})), event("a-2", json!({"n": 2})), event("a-3", json!({"n": 3}))]);

    let response = gridfn.notify("/api/events/audit-log", body.clone());
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().unwrap()["succeeded"], 3);
    for id in ["a-1", "a-2", "a-3"] {
        assert_eq!(gridfn.log_count(&format!("audit: Microsoft.Storage.BlobCreated {id} ")), 1, "{id} ran once");
    }

    let again = gridfn.notify("/api/events/audit-log", body);
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().unwrap()["duplicates"], 3);
    assert_eq!(gridfn.log_count("audit: Microsoft.Storage.BlobCreated a-"), 3, "no new runs");
    assert_eq!(gridfn.events("audit-log", "success"), 3.0);
    assert_eq!(gridfn.events("audit-log", "duplicate"), 3.0);
    let metrics = gridfn.get("/metrics").text().unwrap();
    assert!(metrics.contains("gridfn_handler_duration_seconds_count{handler=\"audit-log\"} 3"), "{metrics}");
}

#[test]
fn a_retry_answers_503_and_the_redelivery_runs_only_that_event() {
    let gridfn = host();
    let body = batch(&[
        event("r-1", json!({"act": "ok"})),
        event("r-2", json!({"act": "retry-first"})),
        event("r-3", json!({"act": "ok"})),
    ]);

    let first = gridfn.notify("/api/events/scripted", body.clone());
    assert_eq!(first.status(), 503);
    let retry_after: u64 = first.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "Retry-After is a positive number of seconds");
    let verdict: Value = first.json().unwrap();
    assert_eq!(verdict["retry"][0]["id"], "r-2");
    assert_eq!(verdict["retry"][0]["event_index"], 1);

    // Event Grid redelivers the whole batch, with its delivery count.
    let second = gridfn.post(
        "/api/events/scripted",
        body,
        &[("aeg-event-type", "Notification"), ("aeg-sas-key", KEY), ("aeg-delivery-count", "1")],
    );
    assert_eq!(second.status(), 200);
    assert_eq!(gridfn.log_count("scripted ran r-1 "), 1);
    assert_eq!(gridfn.log_count("scripted ran r-2 "), 2, "only the retried event runs again");
    assert_eq!(gridfn.log_count("scripted ran r-3 "), 1);
    assert_eq!(gridfn.events("scripted", "retry"), 1.0);
    assert_eq!(gridfn.events("scripted", "duplicate"), 2.0);
}

#[test]
fn a_handler_asking_for_a_delay_sets_retry_after() {
    let gridfn = host();
    let response = gridfn.notify("/api/events/scripted", batch(&[event("d-1", json!({"act": "retry"}))]));
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2");
}

#[test]
fn a_rejected_event_is_dead_lettered_in_event_grids_format_and_acknowledged() {
    let gridfn = host();
    let sent = event("x-1", json!({"act": "reject", "order": 42}));
    let response = gridfn.post(
        "/api/events/scripted",
        batch(&[sent.clone(), event("x-2", json!({}))]),
        &[("aeg-event-type", "Notification"), ("aeg-sas-key", KEY), ("aeg-subscription-name", "orders-sub")],
    );
    assert_eq!(response.status(), 200, "a dead-lettered event is done");
    assert_eq!(response.json::<Value>().unwrap()["rejected"], 1);

    let root = gridfn.dir.path().join("state/deadletter");
    let blobs: Vec<_> = walk(&root);
    assert_eq!(blobs.len(), 1, "one blob: {blobs:?}");
    let relative: Vec<String> =
        blobs[0].strip_prefix(&root).unwrap().iter().map(|p| p.to_string_lossy().into_owned()).collect();
    assert_eq!(relative.len(), 6, "<SUB>/<yyyy>/<m>/<d>/<h>/<uuid>.json: {relative:?}");
    assert_eq!(relative[0], "ORDERS-SUB");
    for part in &relative[1..5] {
        assert!(part.parse::<u32>().is_ok() && !(part.starts_with('0') && part.len() > 1), "{relative:?}");
    }
    let records: Vec<Value> = serde_json::from_slice(&std::fs::read(&blobs[0]).unwrap()).unwrap();
    let record = records[0].as_object().unwrap();
    for (name, value) in sent.as_object().unwrap() {
        assert_eq!(&record[name], value, "original field {name} kept");
    }
    for field in
        ["deadLetterReason", "deliveryAttempts", "lastDeliveryOutcome", "publishTime", "lastDeliveryAttemptTime"]
    {
        assert!(record.contains_key(field), "{field} in {record:?}");
    }
    assert_eq!(record["deadLetterDescription"], "scripted rejection");
    assert_eq!(record["deliveryAttempts"], 1);

    let again = gridfn.notify("/api/events/scripted", batch(&[sent]));
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().unwrap()["duplicates"], 1, "a dead-lettered event is not run again");
    assert_eq!(walk(&root).len(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn only_the_configured_key_gets_in() {
    let gridfn = host();
    let body = batch(&[event("k-1", json!({}))]);
    let notification = ("aeg-event-type", "Notification");
    for headers in
        [vec![notification], vec![notification, ("aeg-sas-key", "wrong")], vec![notification, ("x-functions-key", "")]]
    {
        let response = gridfn.post("/api/events/audit-log", body.clone(), &headers);
        assert_eq!(response.status(), 401, "{headers:?}");
        assert_eq!(response.json::<Value>().unwrap()["error"]["code"], "unauthorized");
    }
    assert_eq!(gridfn.post("/api/events/audit-log?code=nope", body.clone(), &[notification]).status(), 401);
    assert_eq!(gridfn.log_count("audit: "), 0, "nothing ran");

    assert_eq!(gridfn.post("/api/events/audit-log?code=test-key", body.clone(), &[notification]).status(), 200);
    assert_eq!(
        gridfn.post("/api/events/audit-log", body.clone(), &[notification, ("x-functions-key", KEY)]).status(),
        200
    );
    assert_eq!(gridfn.post("/api/events/audit-log", body, &[notification, ("aeg-sas-key", KEY)]).status(), 200);
}

#[test]
fn bad_requests_get_400_with_the_problem_named_and_nothing_runs() {
    let gridfn = host();
    let malformed = gridfn.notify("/api/events/audit-log", "[{\"id\": \"m-1\", ");
    assert_eq!(malformed.status(), 400);
    let error: Value = malformed.json().unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("not valid JSON"), "{error}");

    let missing_type = gridfn
        .notify("/api/events/audit-log", r#"[{"id":"m-2","subject":"s","eventType":"t"},{"id":"m-3","subject":"s"}]"#);
    assert_eq!(missing_type.status(), 400);
    let error: Value = missing_type.json().unwrap();
    assert_eq!(error["error"]["event_index"], 1);
    assert_eq!(error["error"]["field"], "eventType");
    assert_eq!(gridfn.log_count("audit: "), 0, "a refused batch runs nothing, not even its good events");

    let unknown_kind = gridfn.post(
        "/api/events/audit-log",
        batch(&[event("m-4", json!({}))]),
        &[("aeg-event-type", "Gossip"), ("aeg-sas-key", KEY)],
    );
    assert_eq!(unknown_kind.status(), 400);

    assert_eq!(gridfn.notify("/api/events/nobody", batch(&[event("m-5", json!({}))])).status(), 404);
    assert_eq!(gridfn.notify("/runtime/webhooks/eventgrid", batch(&[event("m-6", json!({}))])).status(), 400);
}

#[test]
fn a_stuck_handler_is_retried_after_its_deadline_while_others_are_served() {
    let gridfn = host();
    let stuck = std::thread::spawn({
        let base = gridfn.base.clone();
        move || {
            let started = Instant::now();
            let response = reqwest::blocking::Client::new()
                .post(format!("{base}/api/events/scripted"))
                .header("aeg-sas-key", KEY)
                .body(batch(&[event("l-1", json!({"act": "loop"}))]))
                .send()
                .unwrap();
            (response.status(), started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let other = gridfn.notify("/api/events/audit-log", batch(&[event("l-2", json!({}))]));
    assert_eq!(other.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(900), "served while the loop runs: {:?}", started.elapsed());

    let (status, took) = stuck.join().unwrap();
    assert_eq!(status, 503);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "deadline of 1s: {took:?}");
    assert_eq!(gridfn.log_count("handler timed out after 1s"), 1, "{}", gridfn.log_text());
    assert_eq!(gridfn.get("/healthz").status(), 200);
}

#[test]
fn traps_and_memory_bombs_become_retries_and_the_host_carries_on() {
    let gridfn = host();
    let trap = gridfn.notify("/api/events/scripted", batch(&[event("t-1", json!({"act": "trap"}))]));
    assert_eq!(trap.status(), 503);
    let reason = trap.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("handler trapped"), "{reason}");

    let oom = gridfn.notify("/api/events/scripted", batch(&[event("t-2", json!({"act": "oom"}))]));
    assert_eq!(oom.status(), 503);
    let reason = oom.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("memory limit of 16 MiB"), "{reason}");

    let fine = gridfn.notify("/api/events/scripted", batch(&[event("t-3", json!({"act": "print"}))]));
    assert_eq!(fine.status(), 200);
    assert_eq!(gridfn.log_count("to stdout from t-3"), 1, "guest stdout reaches the host log");
}

#[test]
fn every_event_grid_vector_is_accepted_by_the_audit_log() {
    let gridfn = host();
    let mut total = 0;
    let mut files: Vec<_> = std::fs::read_dir(vector("eventgrid")).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|x| x == "json")) {
        let body = std::fs::read(path).unwrap();
        let count = serde_json::from_slice::<Vec<Value>>(&body).unwrap().len();
        let response = gridfn.notify("/api/events/audit-log", body);
        assert!(response.status().is_success(), "{}: {}", path.display(), response.status());
        let verdict: Value = response.json().unwrap();
        let handled = verdict["succeeded"].as_u64().unwrap() + verdict["duplicates"].as_u64().unwrap();
        // A subscription-deleted notice is acknowledged, never dispatched.
        let notices = if path.ends_with("EventGridSubscriptionDeletedEvent.json") { count } else { 0 };
        assert_eq!(handled as usize, count - notices, "{}: {verdict}", path.display());
        total += count;
    }
    assert_eq!(total, 55);
    // Several vectors share the placeholder id "<id>" with the same topic, so
    // some are duplicates; every event either ran or was recognised as done.
    assert_eq!(gridfn.events("audit-log", "success") + gridfn.events("audit-log", "duplicate"), 54.0);
}

#[test]
fn every_relative_path_resolves_once_against_the_manifests_folder() {
    // `gridfn serve --config app/gridfn.toml`, typed in the folder above the
    // manifest's, with every path in the manifest relative and every store
    // in its default place.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let app = root.join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(component("audit-log"), app.join("audit.wasm")).unwrap();
    std::fs::copy(component("scripted"), app.join("scripted.wasm")).unwrap();
    let manifest = format!(
        r#"
[server]
keys = ["{KEY}"]

[[handler]]
name = "audit-log"
module = "audit.wasm"
capabilities = {{ kv = true }}

[[handler]]
name = "scripted"
module = "scripted.wasm"
"#
    );
    std::fs::write(app.join("gridfn.toml"), manifest).unwrap();
    let gridfn = Gridfn::start_in(dir, &root, Path::new("app/gridfn.toml"));

    let counted = gridfn.notify("/api/events/audit-log", batch(&[event("p-1", json!({}))]));
    assert_eq!(counted.json::<Value>().unwrap()["succeeded"], 1);
    assert_eq!(gridfn.log_count("audit: Microsoft.Storage.BlobCreated p-1 "), 1);
    assert_eq!(gridfn.log_count("seen=1"), 1, "the kv store counted the event");
    let rejected = gridfn.notify("/api/events/scripted", batch(&[event("p-2", json!({"act": "reject"}))]));
    assert_eq!(rejected.json::<Value>().unwrap()["rejected"], 1);

    let listing = || {
        let mut found: Vec<String> =
            walk(&root).iter().map(|p| p.strip_prefix(&root).unwrap().display().to_string()).collect();
        found.sort();
        found.join("\n")
    };
    // The handlers' kv lives inside the dedup store's database.
    for store in ["dedup", "cache", "deadletter"] {
        assert!(app.join(".gridfn").join(store).is_dir(), "{store} is not in app/.gridfn; the files:\n{}", listing());
    }
    assert!(!app.join("app").exists(), "a path was resolved twice; the files:\n{}", listing());
}

#[test]
fn the_default_log_shows_gridfn_and_its_handlers_but_not_its_dependencies_chatter() {
    let gridfn = host();
    gridfn.notify("/api/events/audit-log", batch(&[event("l-1", json!({}))]));
    let lines = gridfn.log_lines();
    assert!(lines.iter().any(|line| line.contains("gridfn listening on")), "{lines:#?}");
    assert!(lines.iter().any(|line| line.contains("audit: Microsoft.Storage.BlobCreated l-1 ")), "{lines:#?}");
    let chatter: Vec<_> = lines
        .iter()
        .filter(|line| line.contains(" INFO ") && (line.contains("fjall") || line.contains("lsm_tree")))
        .collect();
    assert!(chatter.is_empty(), "dependencies' INFO lines in the default log: {chatter:#?}");
}

/// Every repository file the run command and the sample manifest point a new
/// user to exists (`samples/README.md` once did not).
#[test]
fn the_files_the_sample_points_to_exist() {
    for pointer in ["scripts/sample", "samples/gridfn.toml", "README.md"] {
        let text = std::fs::read_to_string(crate::support::repo(pointer)).unwrap();
        let named = text
            .split(|c: char| c.is_whitespace() || "`'\"()[]".contains(c))
            .map(|word| word.trim_end_matches(['.', ',', ';', ':']).trim_end_matches("'s"))
            .filter(|word| word.starts_with("samples/") && word.ends_with(".md"));
        for file in named {
            assert!(crate::support::repo(file).is_file(), "{pointer} points to {file}, which does not exist");
        }
    }
}
