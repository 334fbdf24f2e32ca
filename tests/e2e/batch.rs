//! Whole batches in one call (`batch` in the manifest, the component's
//! `handle-batch` export), and Event Grid's largest delivery in one attempt.
//!
//! The `batched` fixture logs the ids of every call (`batched call of N: ids
//! attempt=A`), so these tests see which events reached the handler. Its
//! Python and JavaScript twins (tests/fixtures/python/batched,
//! tests/fixtures/js/batched) do the same through their SDKs, and the tests
//! about one call's outcomes run against all three (`batch::rust::…`,
//! `batch::python::…`, `batch::js::…`).

use std::ffi::OsStr;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::support::{Gridfn, KEY, batch, component, event, gridfn_command};

/// A batch handler fixture built with one SDK; each behaves alike, so the
/// same assertions hold for all.
struct Fixture {
    /// Its component's name (see `support::component`).
    component: &'static str,
    /// The deadline of one call: a fresh Python or JavaScript instance can
    /// take seconds on a loaded 2-core machine.
    timeout: &'static str,
    /// What the retry reason says when the handler fails a whole call: a
    /// Rust panic traps, a Python exception or a JavaScript throw is caught
    /// by its SDK and answered as a retry for every event of the call.
    failure: &'static str,
}

const RUST: Fixture = Fixture { component: "batched", timeout: "2s", failure: "trapped" };
const PYTHON: Fixture = Fixture {
    component: "batched-py",
    timeout: "30s",
    failure: "handler raised RuntimeError: scripted trap in a batch",
};
const JS: Fixture =
    Fixture { component: "batched-js", timeout: "30s", failure: "handler threw: scripted trap in a batch" };

/// The tests that run against each SDK's fixture, as `batch::<sdk>::<test>`.
macro_rules! for_fixture {
    ($sdk:ident, $fixture:expr) => {
        mod $sdk {
            for_fixture!(@tests $fixture =>
                each_outcome_of_one_call_is_honoured_and_the_redelivery_runs_only_the_retried_event,
                events_done_before_are_left_out_of_the_call,
                a_failed_call_retries_the_events_of_that_call_only,
                an_answer_of_the_wrong_length_retries_the_whole_call_and_says_so,
                without_batch_in_the_manifest_each_event_is_a_batch_of_one,
            );
        }
    };
    (@tests $fixture:expr => $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                super::$test(&$fixture);
            }
        )*
    };
}

for_fixture!(rust, super::RUST);
for_fixture!(python, super::PYTHON);
for_fixture!(js, super::JS);

/// A Python or JavaScript component compiles for tens of seconds, and tests
/// run side by side: each fixture is compiled alone first, one at a time,
/// into the tests' shared compile cache (several gridfn compiling at once on
/// a loaded machine can miss the start-up limit), and later starts load it.
static COMPILED: Mutex<Vec<&str>> = Mutex::new(Vec::new());

/// `batched` takes whole deliveries, `pairs` two events per call, `single`
/// (no `batch`) one event per call through the component's `handle` (all
/// three the fixture's component), and `scripted` (a component with `handle`
/// only) and `v010` (one built against gridfn:handler@0.1.0) one event per
/// call.
fn host(fixture: &Fixture) -> Gridfn {
    let batched = component(fixture.component);
    {
        let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
        if !compiled.contains(&fixture.component) {
            drop(Gridfn::start(&format!("[[handler]]\nname = \"compile\"\nmodule = {batched:?}\n")));
            compiled.push(fixture.component);
        }
    }
    Gridfn::start(&format!(
        r#"
[[handler]]
name = "batched"
module = {batched:?}
batch = true
timeout = "{timeout}"

[[handler]]
name = "pairs"
module = {batched:?}
batch = 2
timeout = "{timeout}"

[[handler]]
name = "single"
module = {batched:?}
timeout = "{timeout}"

[[handler]]
name = "scripted"
module = {scripted:?}

[[handler]]
name = "v010"
module = {v010:?}
"#,
        timeout = fixture.timeout,
        scripted = component("scripted"),
        v010 = component("contract-v010"),
    ))
}

/// Event Grid's redelivery of `body`, with its delivery count.
fn redeliver(gridfn: &Gridfn, path: &str, body: Vec<u8>, count: u32) -> reqwest::blocking::Response {
    let count = count.to_string();
    gridfn.post(path, body, &[("aeg-event-type", "Notification"), ("aeg-sas-key", KEY), ("aeg-delivery-count", &count)])
}

fn retried_ids(verdict: &Value) -> Vec<&str> {
    let mut ids: Vec<&str> = verdict["retry"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids
}

fn each_outcome_of_one_call_is_honoured_and_the_redelivery_runs_only_the_retried_event(fixture: &Fixture) {
    let gridfn = host(fixture);
    let body = batch(&[
        event("p-1", json!({"act": "ok"})),
        event("p-2", json!({"act": "retry-first"})),
        event("p-3", json!({"act": "reject"})),
        event("p-4", json!({"act": "ok"})),
    ]);

    let first = gridfn.notify("/api/events/batched", body.clone());
    assert_eq!(first.status(), 503);
    let verdict: Value = first.json().unwrap();
    assert_eq!(retried_ids(&verdict), ["p-2"], "only the event that asked for a retry: {verdict}");
    assert_eq!(verdict["retry"][0]["event_index"], 1);
    assert_eq!((verdict["succeeded"].as_u64(), verdict["rejected"].as_u64()), (Some(2), Some(1)), "{verdict}");
    assert_eq!(gridfn.log_count("batched call of 4: p-1 p-2 p-3 p-4 attempt=0"), 1, "one call for the delivery");
    let written = r#"gridfn_dead_letter_writes_total{handler="batched",result="written"}"#;
    assert_eq!(gridfn.metric(written), 1.0, "the rejected event is dead-lettered");

    let second = redeliver(&gridfn, "/api/events/batched", body, 1);
    assert_eq!(second.status(), 200);
    assert_eq!(second.json::<Value>().unwrap()["duplicates"], 3);
    assert_eq!(gridfn.log_count("batched call of"), 2);
    assert_eq!(gridfn.log_count("batched call of 1: p-2 attempt=1"), 1, "the redelivery runs only what is left");
    assert_eq!(gridfn.events("batched", "success"), 3.0);
    assert_eq!(gridfn.events("batched", "reject"), 1.0);
}

fn events_done_before_are_left_out_of_the_call(fixture: &Fixture) {
    let gridfn = host(fixture);
    let first = gridfn.notify("/api/events/batched", batch(&[event("d-1", json!({})), event("d-2", json!({}))]));
    assert_eq!(first.status(), 200);

    let mixed = [event("d-1", json!({})), event("d-3", json!({})), event("d-2", json!({})), event("d-4", json!({}))];
    let second = gridfn.notify("/api/events/batched", batch(&mixed));
    assert_eq!(second.status(), 200);
    let verdict: Value = second.json().unwrap();
    assert_eq!((verdict["succeeded"].as_u64(), verdict["duplicates"].as_u64()), (Some(2), Some(2)), "{verdict}");
    assert_eq!(gridfn.log_count("batched call of 2: d-3 d-4 attempt=0"), 1, "the handler sees only the new events");
    assert_eq!(gridfn.log_count("batched call of"), 2);

    let again = gridfn.notify("/api/events/batched", batch(&mixed));
    assert_eq!(again.json::<Value>().unwrap()["duplicates"], 4);
    assert_eq!(gridfn.log_count("batched call of"), 2, "nothing left: no call at all");
}

/// A trap (Rust), an exception (Python) or a throw (JavaScript).
fn a_failed_call_retries_the_events_of_that_call_only(fixture: &Fixture) {
    let gridfn = host(fixture);
    // Two per call: [t-1 t-2] fails, [t-3 t-4] succeeds.
    let body = batch(&[
        event("t-1", json!({})),
        event("t-2", json!({"act": "trap"})),
        event("t-3", json!({})),
        event("t-4", json!({})),
    ]);

    let first = gridfn.notify("/api/events/pairs", body.clone());
    assert_eq!(first.status(), 503);
    let verdict: Value = first.json().unwrap();
    assert_eq!(retried_ids(&verdict), ["t-1", "t-2"], "{verdict}");
    assert!(verdict["retry"][0]["reason"].as_str().unwrap().contains(fixture.failure), "{verdict}");
    assert_eq!(verdict["succeeded"], 2);
    assert_eq!(gridfn.log_count("batched call of 2: t-1 t-2 attempt=0"), 1);
    assert_eq!(gridfn.log_count("batched call of 2: t-3 t-4 attempt=0"), 1);

    let second = redeliver(&gridfn, "/api/events/pairs", body, 1);
    assert_eq!(second.status(), 503, "t-2 still fails");
    assert_eq!(retried_ids(&second.json().unwrap()), ["t-1", "t-2"]);
    assert_eq!(gridfn.log_count("batched call of 2: t-1 t-2 attempt=1"), 1);
    assert_eq!(gridfn.log_count("t-3 t-4"), 1, "the call that succeeded is not run again");
}

fn an_answer_of_the_wrong_length_retries_the_whole_call_and_says_so(fixture: &Fixture) {
    let gridfn = host(fixture);
    let body = batch(&[event("w-1", json!({"act": "short"})), event("w-2", json!({}))]);
    let response = gridfn.notify("/api/events/batched", body);
    assert_eq!(response.status(), 503);
    let verdict: Value = response.json().unwrap();
    assert_eq!(retried_ids(&verdict), ["w-1", "w-2"], "{verdict}");
    assert_eq!(
        gridfn.log_count("handle-batch answered 1 outcomes for 2 events; every event of the call will be retried"),
        1
    );
}

/// Each SDK gives a batch handler's component a `handle` export too: the
/// one event as a batch of one, so it runs where the manifest has no `batch`.
fn without_batch_in_the_manifest_each_event_is_a_batch_of_one(fixture: &Fixture) {
    let gridfn = host(fixture);
    let response =
        gridfn.notify("/api/events/single", batch(&[event("o-1", json!({})), event("o-2", json!({"act": "reject"}))]));
    assert_eq!(response.status(), 200);
    let verdict: Value = response.json().unwrap();
    assert_eq!((verdict["succeeded"].as_u64(), verdict["rejected"].as_u64()), (Some(1), Some(1)), "{verdict}");
    assert_eq!(gridfn.log_count("batched call of 1: o-1 attempt=0"), 1, "{}", gridfn.log_text());
    assert_eq!(gridfn.log_count("batched call of 1: o-2 attempt=0"), 1);
}

#[test]
fn components_with_only_handle_still_run_per_event_beside_batch_handlers() {
    let gridfn = host(&RUST);
    let two = batch(&[event("h-1", json!({})), event("h-2", json!({}))]);
    let response = gridfn.notify("/api/events/scripted", two.clone());
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("scripted ran h-1 "), 1);
    assert_eq!(gridfn.log_count("scripted ran h-2 "), 1);

    let response = gridfn.notify("/api/events/v010", two);
    assert_eq!(response.status(), 200, "a component built against 0.1.0 links and runs unchanged");
    assert_eq!(gridfn.log_count("v0.1.0 handler ran h-1 attempt=0"), 1);
    assert_eq!(gridfn.log_count("v0.1.0 handler ran h-2 attempt=0"), 1);
}

#[test]
fn check_names_the_contract_and_refuses_batch_for_a_component_without_handle_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gridfn.toml");
    let manifest = |batch: &str| {
        format!(
            "[server]\nallow_anonymous = true\ncache_dir = {cache:?}\n\n\
             [[handler]]\nname = \"batched\"\nmodule = {batched:?}\nbatch = 100\n\n\
             [[handler]]\nname = \"v010\"\nmodule = {v010:?}\n\n\
             [[handler]]\nname = \"scripted\"\nmodule = {scripted:?}\n{batch}\n",
            cache = dir.path().join("cache"),
            batched = component("batched"),
            scripted = component("scripted"),
            v010 = component("contract-v010"),
        )
    };
    let check = || gridfn_command(&[OsStr::new("check"), OsStr::new("--config"), config.as_os_str()]);

    std::fs::write(&config, manifest("")).unwrap();
    let fine = check();
    let stdout = String::from_utf8_lossy(&fine.stdout);
    assert!(fine.status.success(), "{}", String::from_utf8_lossy(&fine.stderr));
    assert!(stdout.contains("batched: gridfn:handler@0.1.1, exports handle, handle-batch"), "{stdout}");
    assert!(stdout.contains("scripted: gridfn:handler@0.1.1, exports handle\n"), "{stdout}");
    assert!(stdout.contains("v010: gridfn:handler@0.1.0, exports handle\n"), "{stdout}");

    std::fs::write(&config, manifest("batch = true")).unwrap();
    let refused = check();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("handler scripted: the manifest sets `batch` but")
            && stderr.contains("does not export `handle-batch`"),
        "{stderr}"
    );
}

/// Event Grid's largest output batch: 5,000 events (small ones fit its 1 MiB
/// body limit), for a handler with the default `max_concurrency` (16) and
/// `queue` (1,024).
#[test]
fn five_thousand_events_in_one_delivery_finish_in_one_attempt_with_the_defaults() {
    let gridfn = host(&RUST);
    let events: Vec<Value> = (0..5000)
        .map(|n| {
            json!({"id": format!("big-{n}"), "subject": "s", "eventType": "T", "eventTime": "2026-11-30T10:00:00Z",
                   "data": {}, "dataVersion": "1"})
        })
        .collect();
    let body = batch(&events);
    assert!(body.len() < 1 << 20, "{} bytes", body.len());

    let response = gridfn.notify("/api/events/scripted", body);
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().unwrap()["succeeded"], 5000);
    assert_eq!(gridfn.events("scripted", "success"), 5000.0);
    assert_eq!(gridfn.log_count("scripted ran big-"), 5000, "each ran once");
}
