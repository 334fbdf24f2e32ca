//! Handlers written in Python (sdk/python, built by componentize-py into
//! `<name>_py.wasm`) run in the same sandbox, to the same contract, as Rust
//! ones: the moderation router keeps `crate::moderation`'s contract, the
//! audit log counts the lab's events, the capabilities work and deny alike, and a Python
//! handler that raises, loops or hoards memory is retried while the host
//! carries on.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::capabilities::PongServer;
use crate::support::{Gridfn, KEY, batch, component, event, repo};

/// The classic Event Grid lab's five moderation results (2 ContentFlagged,
/// 2 ContentApproved, 1 ReviewEscalated), as its publisher sends them.
fn lab_events() -> Vec<u8> {
    std::fs::read(repo("samples/events/moderation.json")).unwrap()
}

/// A Python component takes seconds to compile (a minute on a loaded
/// machine), and a gridfn with two new ones compiles both at once, which can
/// miss the 120 s start-up limit: the first test compiles each Python
/// component alone into the shared compile cache, and every start after that
/// finds them there.
static COMPILED: Mutex<bool> = Mutex::new(false);

const PYTHON_COMPONENTS: [&str; 3] = ["audit-log-py", "moderation-router-py", "scripted-py"];

fn compile_python_components() {
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if !*compiled {
        for name in PYTHON_COMPONENTS {
            drop(Gridfn::start(&handler("compile", name, "")));
        }
        *compiled = true;
    }
}

fn start(manifest: &str) -> Gridfn {
    compile_python_components();
    Gridfn::start(manifest)
}

fn post_cloudevents(gridfn: &Gridfn, path: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    let headers = [
        ("aeg-event-type", "Notification"),
        ("aeg-sas-key", KEY),
        ("content-type", "application/cloudevents-batch+json; charset=utf-8"),
    ];
    gridfn.post(path, body, &headers)
}

fn handler(name: &str, component_name: &str, rest: &str) -> String {
    format!("[[handler]]\nname = \"{name}\"\nmodule = {:?}\n{rest}\n", component(component_name))
}

/// The Python audit log on the lab's events: a line for each, and a count per
/// type in its kv (the router's part is `crate::moderation`'s contract).
#[test]
fn the_python_audit_log_logs_and_counts_the_labs_events() {
    let gridfn = start(&handler("audit-log", "audit-log-py", "capabilities = { kv = true }"));
    let response = post_cloudevents(&gridfn, "/api/events", lab_events());
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().unwrap()["succeeded"], 5, "{}", gridfn.log_text());
    for line in [
        "audit: com.contoso.ai.ReviewEscalated mod-0005 from /services/content-moderation \
         subject=/content/text/doc-3301 attempt=0 bytes=",
        "audit: com.contoso.ai.ContentFlagged mod-0003 from /services/content-moderation \
         subject=/content/text/doc-2054 attempt=0 bytes=",
    ] {
        assert_eq!(gridfn.log_count(line), 1, "{line}\n{}", gridfn.log_text());
    }
    // kv writes are recorded with the delivery, after all five ran side by
    // side: each run sees the count recorded before it (none) plus its own.
    assert_eq!(gridfn.log_count("seen=1"), 5, "{}", gridfn.log_text());
    // The same events with new ids: the counts recorded are 2 flagged, 2
    // approved, 1 escalated, and each run adds its own.
    let again = String::from_utf8(lab_events()).unwrap().replace("\"mod-", "\"again-");
    assert_eq!(post_cloudevents(&gridfn, "/api/events", again.into_bytes()).status(), 200);
    assert_eq!(gridfn.log_count("seen=3"), 4, "{}", gridfn.log_text());
    assert_eq!(gridfn.log_count("seen=2"), 1, "{}", gridfn.log_text());
}

#[test]
fn the_python_router_keeps_the_moderation_contract() {
    compile_python_components();
    crate::moderation::router_keeps_the_contract(&component("moderation-router-py"));
}

#[test]
fn the_python_router_escalates_onward_and_rejects_what_cannot_succeed() {
    let escalator = "filter = { includedEventTypes = [\"com.contoso.ai.ContentFlagged\", \"Test.Other\"] }\n\
                     [handler.capabilities]\nkv = true\npublish = \"local\"\nconfig = { action = \"escalate\" }";
    let gridfn = start(
        &[
            handler("escalator", "moderation-router-py", escalator),
            handler(
                "reviews",
                "audit-log-py",
                "filter = { includedEventTypes = [\"com.contoso.ai.ReviewEscalated\"] }",
            ),
            handler(
                "misconfigured",
                "moderation-router-py",
                "filter = { includedEventTypes = [\"Test.Misconfigured\"] }\ncapabilities = { config = { action = \"shred\" } }",
            ),
        ]
        .concat(),
    );
    let flagged = json!([{
        "specversion": "1.0", "id": "f-1", "source": "/services/content-moderation",
        "type": "com.contoso.ai.ContentFlagged", "subject": "/content/images/img-1",
        "data": {"contentId": "img-1", "confidence": 0.4, "severity": "high"}
    }]);
    let response = post_cloudevents(&gridfn, "/api/events", serde_json::to_vec(&flagged).unwrap());
    assert_eq!(response.status(), 200, "{}", gridfn.log_text());
    assert_eq!(gridfn.log_count("escalator: escalate img-1 for human review (confidence 0.40, severity high)"), 1);
    // Its ReviewEscalated went through the local topic to the reviews handler, and not back.
    assert_eq!(
        gridfn.log_count(
            "audit: com.contoso.ai.ReviewEscalated f-1:escalator:0 from /gridfn/moderation subject=/content/images/img-1"
        ),
        1,
        "{}",
        gridfn.log_text()
    );
    assert_eq!(gridfn.events("escalator", "success"), 1.0);

    let bad = json!([
        {"specversion": "1.0", "id": "b-1", "source": "/s", "type": "com.contoso.ai.ContentFlagged", "data": {"confidence": 0.5}},
        {"specversion": "1.0", "id": "b-2", "source": "/s", "type": "Test.Other", "data": {"contentId": "c", "confidence": 0.5}},
        {"specversion": "1.0", "id": "b-3", "source": "/s", "type": "Test.Misconfigured", "data": {"contentId": "c", "confidence": 0.5}}
    ]);
    let response = post_cloudevents(&gridfn, "/api/events", serde_json::to_vec(&bad).unwrap());
    assert_eq!(response.status(), 200, "rejections are dead-lettered, not retried");
    assert_eq!(response.json::<Value>().unwrap()["rejected"], 2, "{}", gridfn.log_text());
    assert_eq!(gridfn.log_count("not a moderation result: contentId is missing"), 1);
    assert_eq!(gridfn.log_count("unknown action shred"), 1);
    // With `action` configured the type does not matter: Test.Other escalates.
    assert_eq!(gridfn.log_count("escalator: escalate c for human review"), 1);
}

fn scripted_py(name: &str, rest: &str) -> String {
    handler(name, "scripted-py", &format!("timeout = \"3s\"\n{rest}"))
}

#[test]
fn a_python_handler_uses_kv_config_and_only_the_hosts_it_was_granted() {
    let server = PongServer::start();
    let port = server.port;
    let caller = format!(
        "[handler.capabilities]\nkv = true\nconfig = {{ greeting = \"hej\" }}\nallowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]"
    );
    // A fresh CPython instance making an HTTP call can take seconds on a
    // loaded 2-core machine: this test is about capabilities, not deadlines.
    let caller = handler("caller", "scripted-py", &format!("timeout = \"30s\"\n{caller}"));
    let gridfn = start(&format!("{caller}{}", scripted_py("ungranted", "")));
    let run = |handler: &str, id: &str, script: Value| {
        gridfn.notify(&format!("/api/events/{handler}"), batch(&[event(id, script)])).json::<Value>().unwrap()
    };

    assert_eq!(run("caller", "kv-1", json!({"act": "kv"}))["succeeded"], 1);
    assert_eq!(run("caller", "kv-2", json!({"act": "kv"}))["succeeded"], 1);
    assert_eq!(gridfn.log_count("kv count=2 missing=None"), 1, "{}", gridfn.log_text());
    assert_eq!(
        run("ungranted", "kv-3", json!({"act": "kv"}))["retry"][0]["reason"],
        "handler raised Denied: the manifest does not grant kv"
    );

    run("caller", "config-1", json!({"act": "config"}));
    run("ungranted", "config-2", json!({"act": "config"}));
    assert_eq!(gridfn.log_count("config greeting=hej"), 1);
    assert_eq!(gridfn.log_count("config greeting=None"), 1);

    let url = format!("http://127.0.0.1:{port}/ping?x=1");
    let verdict = run("caller", "http-ok", json!({"act": "http", "url": url}));
    assert_eq!(verdict["succeeded"], 1, "{verdict}");
    assert_eq!(gridfn.log_count("http status=200 body=pong"), 1, "{}", gridfn.log_text());
    let verdict = run("caller", "post-ok", json!({"act": "post", "url": url}));
    assert_eq!(verdict["succeeded"], 1, "{verdict}");
    assert_eq!(gridfn.log_count("post status=200 body=pong"), 1, "{}", gridfn.log_text());
    assert_eq!(server.requests(), vec!["GET /ping?x=1 HTTP/1.1".to_owned(), "POST /ping?x=1 HTTP/1.1".to_owned()]);

    for (handler, id, url) in [
        ("caller", "http-host", format!("http://localhost:{port}/ping")),
        ("caller", "http-port", format!("http://127.0.0.1:{}/ping", port.wrapping_add(1).max(1))),
        ("ungranted", "http-ungranted", url.clone()),
    ] {
        let verdict = run(handler, id, json!({"act": "http", "url": url}));
        assert_eq!(verdict["rejected"], 1, "{id}: {verdict}");
    }
    assert_eq!(server.requests().len(), 2, "denied requests never reach the server");
    assert_eq!(gridfn.log_count("failed: Denied: gridfn denied the request"), 3, "{}", gridfn.log_text());
}

#[test]
fn a_python_handler_that_raises_loops_or_hoards_memory_is_retried_and_the_host_carries_on() {
    let gridfn = start(&scripted_py("hostile", "instance_reuse = 10"));
    let reason = |id: &str, act: &str| {
        let response = gridfn.notify("/api/events/hostile", batch(&[event(id, json!({"act": act}))]));
        assert_eq!(response.status(), 503, "{act} is retried");
        response.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned()
    };
    assert_eq!(reason("h-raise", "raise"), "handler raised RuntimeError: scripted failure");
    let traceback = gridfn.log_lines().into_iter().filter(|l| l.contains("event_id=\"h-raise\"")).collect::<Vec<_>>();
    assert!(
        traceback.iter().any(|l| l.contains("handler::stdio") && l.contains("RuntimeError: scripted failure")),
        "the traceback reaches the host log: {traceback:?}"
    );
    assert_eq!(reason("h-loop", "loop"), "handler timed out after 3s");
    let oom = reason("h-oom", "oom");
    assert!(
        oom.contains("MemoryError") || oom.contains("memory limit"),
        "a memory hoard ends in MemoryError or the cap: {oom}"
    );

    assert_eq!(gridfn.get("/healthz").status(), 200);
    for i in 0..3 {
        let fine = gridfn.notify("/api/events/hostile", batch(&[event(&format!("h-fine-{i}"), json!({}))]));
        assert_eq!(fine.status(), 200, "{}", gridfn.log_text());
    }
    // Failures discarded their instances; the fine events share a fresh one.
    for (i, served) in [1, 2, 3].into_iter().enumerate() {
        assert_eq!(gridfn.log_count(&format!("scripted-py ran h-fine-{i} act= attempt=0 served={served}")), 1);
    }
}

/// Answers every request `delay` after it arrives, and remembers how many
/// it held at once.
struct SlowServer {
    port: u16,
    most_at_once: Arc<AtomicUsize>,
}

impl SlowServer {
    fn start(delay: Duration) -> SlowServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, most_at_once) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let most = most_at_once.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let (open, most) = (open.clone(), most.clone());
                std::thread::spawn(move || {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = stream.read(&mut [0; 4096]);
                    std::thread::sleep(delay);
                    open.fetch_sub(1, Ordering::SeqCst);
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow");
                });
            }
        });
        SlowServer { port, most_at_once }
    }
}

#[test]
fn a_hundred_python_instances_are_alive_at_once() {
    // Each instance of a Python component holds 14 core instances (a Rust
    // one 3): the pool must have room for them, or the ones beyond it fail
    // to start and are retried.
    let server = SlowServer::start(Duration::from_secs(3));
    let manifest = format!(
        "max_concurrency = 100\ntimeout = \"60s\"\n[handler.capabilities]\nallowed_outbound_hosts = [\"http://127.0.0.1:{}\"]",
        server.port
    );
    let gridfn = start(&handler("waiter", "scripted-py", &manifest));
    let url = format!("http://127.0.0.1:{}/wait", server.port);
    let events: Vec<Value> = (0..100).map(|i| event(&format!("w-{i}"), json!({"act": "http", "url": url}))).collect();
    let response = gridfn.notify("/api/events/waiter", batch(&events));
    let verdict: Value = response.json().unwrap();
    assert_eq!(verdict["succeeded"], 100, "{verdict}");
    let most = server.most_at_once.load(Ordering::SeqCst);
    assert!(most > 80, "the instances waited on the server together: {most} at once");
}
