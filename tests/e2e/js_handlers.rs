//! Handlers written in JavaScript (sdk/js; `scripts/components` builds them
//! with componentize-js): the moderation router keeps the moderation
//! contract (`crate::moderation`'s, which the Rust and Python routers run), a
//! JavaScript handler reaches every capability it is granted and none it is
//! not, and one that throws, spins or hoards memory is contained like a Rust
//! one.

use std::sync::Mutex;

use serde_json::{Value, json};

use crate::capabilities::PongServer;
use crate::support::{Gridfn, batch, component, event};

/// Compiling a 12 MB JavaScript component takes ~30 s of CPU (a Rust one
/// takes 1 s): these tests start one gridfn at a time, so each module is
/// compiled once, into the tests' shared cache, and every later start loads
/// it from there in well under a second.
static STARTING: Mutex<()> = Mutex::new(());

fn start(manifest: &str) -> Gridfn {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    Gridfn::start(manifest)
}

/// The contract test the Rust and Python routers run too.
#[test]
fn the_javascript_router_keeps_the_moderation_contract() {
    let router = component("moderation-router-js");
    // Compiled alone first (into the shared cache), as `start` does.
    drop(start(&format!("[[handler]]\nname = \"compile\"\nmodule = {router:?}\n")));
    crate::moderation::router_keeps_the_contract(&router);
}

/// The scripted JavaScript fixture with a 2 s deadline (the loop test's), or
/// `extra`'s own `timeout`: a fresh SpiderMonkey instance making HTTP calls can
/// take seconds on a loaded 2-core machine.
fn scripted_js(name: &str, extra: &str) -> String {
    let timeout = if extra.contains("timeout =") { "" } else { "timeout = \"2s\"\n" };
    format!("[[handler]]\nname = \"{name}\"\nmodule = {:?}\n{timeout}{extra}\n", component("scripted-js"))
}

fn caps_line(gridfn: &Gridfn, id: &str) -> String {
    let needle = format!("scripted-js caps {id} ");
    gridfn.log_lines().into_iter().find(|l| l.contains(&needle)).unwrap_or_else(|| panic!("{}", gridfn.log_text()))
}

#[test]
fn a_javascript_handler_uses_what_it_is_granted_and_nothing_else() {
    let server = PongServer::start();
    let port = server.port;
    let gridfn = start(&format!(
        "{}{}{}",
        scripted_js(
            "granted",
            &format!(
                "timeout = \"30s\"\nfilter = {{ includedEventTypes = [\"Microsoft.Storage.BlobCreated\"] }}\n\
                 [handler.capabilities]\nconfig = {{ greeting = \"hej\" }}\nkv = true\npublish = \"local\"\n\
                 allowed_outbound_hosts = [\"http://127.0.0.1:{port}\"]"
            )
        ),
        scripted_js("bare", "filter = { includedEventTypes = [\"Test.Bare\"] }"),
        scripted_js("next", "filter = { includedEventTypes = [\"Test.Next\"] }"),
    ));

    for id in ["c-1", "c-2"] {
        let response = gridfn.notify("/api/events", batch(&[event(id, json!({"act": "capabilities"}))]));
        assert_eq!(response.status(), 200, "{}", gridfn.log_text());
    }
    let line = caps_line(&gridfn, "c-2");
    assert!(line.contains("INFO handler: scripted-js caps c-2 greeting=hej count=ok:2"), "{line}");
    assert!(line.contains("stored=ok:undefined published=ok:undefined attempt=0"), "{line}");
    assert!(line.contains(r#"handler="granted" event_id="c-2""#), "{line}");
    // The published event ran through the local topic, with gridfn's own id.
    assert_eq!(gridfn.log_count("scripted-js ran c-1:granted:0 act=ok"), 1, "{}", gridfn.log_text());
    assert_eq!(gridfn.events("next", "success"), 2.0);

    let mut bare = event("c-3", json!({"act": "capabilities"}));
    bare["eventType"] = json!("Test.Bare");
    assert_eq!(gridfn.notify("/api/events", batch(&[bare])).status(), 200);
    let line = caps_line(&gridfn, "c-3");
    assert!(line.contains("greeting=none count=denied stored=denied published=denied"), "{line}");

    let http = json!({"act": "http", "url": format!("http://127.0.0.1:{port}/ping?from=js")});
    let response = gridfn.notify("/api/events", batch(&[event("h-1", http.clone())]));
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("scripted-js http status=200 body=pong"), 1, "{}", gridfn.log_text());

    let mut ungranted = event("h-2", http);
    ungranted["eventType"] = json!("Test.Bare");
    let response = gridfn.notify("/api/events", batch(&[ungranted]));
    assert_eq!(response.json::<Value>().unwrap()["rejected"], 1, "the handler rejects when its fetch fails");
    assert_eq!(gridfn.log_count("outbound request denied"), 1);
    assert_eq!(gridfn.log_count("scripted-js fetch failed"), 1);
    assert_eq!(server.requests(), vec!["GET /ping?from=js HTTP/1.1".to_owned()], "the refused request never left");
}

fn retry_reason(gridfn: &Gridfn, id: &str, act: &str) -> String {
    let response = gridfn.notify("/api/events", batch(&[event(id, json!({"act": act}))]));
    assert_eq!(response.status(), 503, "{act}: {}", gridfn.log_text());
    response.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned()
}

/// Default memory (64 MiB) and the default pool: a JavaScript handler needs
/// no settings to run, and these limits still hold it.
#[test]
fn a_javascript_handler_that_throws_spins_or_hoards_is_retried_and_the_host_carries_on() {
    let gridfn = start(&scripted_js("scripted-js", ""));
    assert_eq!(retry_reason(&gridfn, "x-throw", "throw"), "handler threw: scripted-js threw on purpose");
    assert_eq!(gridfn.log_count("ERROR handler: handler threw: scripted-js threw on purpose"), 1, "with its stack");
    assert_eq!(retry_reason(&gridfn, "x-loop", "loop"), "handler timed out after 2s");
    assert_eq!(retry_reason(&gridfn, "x-hog", "hog"), "handler exceeded its memory limit of 64 MiB");
    assert!(retry_reason(&gridfn, "x-nothing", "nothing").starts_with("handle returned undefined, not success()"));

    assert_eq!(gridfn.get("/healthz").status(), 200);
    let fine = gridfn.notify("/api/events", batch(&[event("x-fine", json!({}))]));
    assert_eq!(fine.status(), 200);
    assert_eq!(gridfn.log_count("scripted-js ran x-fine act=ok served=1"), 1);
    // A retry outcome keeps its delay.
    let response = gridfn.notify("/api/events", batch(&[event("x-later", json!({"then": "retry"}))]));
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "2", "1500 ms, rounded up to whole seconds");
}

#[test]
fn a_javascript_instance_is_reused_when_the_handler_opts_in() {
    let gridfn = start(&scripted_js("scripted-js", "instance_reuse = 3"));
    for i in 0..5 {
        let response = gridfn.notify("/api/events", batch(&[event(&format!("r-{i}"), json!({}))]));
        assert_eq!(response.status(), 200);
    }
    let served: Vec<String> = gridfn
        .log_lines()
        .iter()
        .filter_map(|l| l.split("scripted-js ran r-").nth(1))
        .map(|rest| rest.split("served=").nth(1).unwrap().split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(served, ["1", "2", "3", "1", "2"], "module state lives as long as the instance");
}
