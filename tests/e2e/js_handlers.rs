//! Handlers written in JavaScript (sdk/js; `scripts/components` builds them
//! with componentize-js): the moderation router keeps the moderation
//! contract (the same outcomes and log lines as the Rust router), a
//! JavaScript handler reaches every capability it is granted and none it is
//! not, and one that throws, spins or hoards memory is contained like a Rust
//! one.

use std::sync::Mutex;

use serde_json::{Value, json};

use crate::capabilities::PongServer;
use crate::support::{Gridfn, KEY, batch, component, event};

/// The classic Event Grid lab's five content-moderation results
/// (`moderation_events.json`), as its publisher sends them: CloudEvents, 2
/// flagged, 2 approved, 1 escalated.
fn lab_events() -> Value {
    let result = |id: &str, kind: &str, model: &str, confidence: f64, category: &str, severity: &str| {
        json!({
            "contentId": id, "contentType": kind, "modelName": model, "modelVersion": "1.0",
            "confidence": confidence, "category": category, "severity": severity,
            "reviewRequired": severity != "none"
        })
    };
    let cloud_event = |n: u32, kind: &str, subject: &str, data: Value| {
        json!({
            "specversion": "1.0", "id": format!("mod-000{n}"), "source": "/services/content-moderation",
            "type": format!("com.contoso.ai.{kind}"), "subject": subject,
            "time": format!("2026-11-30T09:00:0{n}Z"), "data": data
        })
    };
    let mut escalated = result("doc-3301", "text", "text-moderator", 0.52, "self-harm", "high");
    escalated["escalationReason"] = json!("Low confidence requires human review");
    json!([
        cloud_event(
            1,
            "ContentFlagged",
            "/content/images/img-4821",
            result("img-4821", "image", "vision-moderator", 0.97, "violence", "high")
        ),
        cloud_event(
            2,
            "ContentApproved",
            "/content/text/doc-1137",
            result("doc-1137", "text", "text-moderator", 0.99, "safe", "none")
        ),
        cloud_event(
            3,
            "ContentFlagged",
            "/content/text/doc-2054",
            result("doc-2054", "text", "text-moderator", 0.88, "hate-speech", "medium")
        ),
        cloud_event(
            4,
            "ContentApproved",
            "/content/images/img-7733",
            result("img-7733", "image", "vision-moderator", 0.95, "safe", "none")
        ),
        cloud_event(5, "ReviewEscalated", "/content/text/doc-3301", escalated),
    ])
}

/// Compiling a 12 MB JavaScript component takes ~30 s of CPU (a Rust one
/// takes 1 s): these tests start one gridfn at a time, so each module is
/// compiled once, into the tests' shared cache, and every later start loads
/// it from there in well under a second.
static STARTING: Mutex<()> = Mutex::new(());

fn start(manifest: &str) -> Gridfn {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    Gridfn::start(manifest)
}

fn post_cloud_events(gridfn: &Gridfn, path: &str, events: &Value) -> Value {
    let headers = [
        ("aeg-event-type", "Notification"),
        ("aeg-sas-key", KEY),
        ("content-type", "application/cloudevents-batch+json; charset=utf-8"),
    ];
    let response = gridfn.post(path, serde_json::to_vec(events).unwrap(), &headers);
    assert_eq!(response.status(), 200, "{}", gridfn.log_text());
    response.json().unwrap()
}

/// The moderation contract, run through gridfn against the router in
/// `module` (a component name): the lab's events routed by type, an
/// advanced filter that escalates confident, severe flags through `config`,
/// the escalation it publishes handled by the review route, the counts kept
/// in kv (in a real Redis, to read them), and what the router rejects.
fn follows_the_moderation_contract(module: &str) {
    let m = component(module);
    let redis = crate::support::redis_server();
    let gridfn = start(&format!(
        r#"
[dedup]
store = "redis"
url = "{redis}"

[[handler]]
name = "moderation-flagged"
module = {m:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ContentFlagged"] }}

[[handler]]
name = "moderation-approved"
module = {m:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ContentApproved"] }}
capabilities = {{ kv = true }}

[[handler]]
name = "moderation-review"
module = {m:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ReviewEscalated"] }}
capabilities = {{ kv = true, publish = "local" }}

[[handler]]
name = "moderation-severe"
module = {m:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ContentFlagged"], advancedFilters = [{{ operatorType = "NumberGreaterThan", key = "data.confidence", value = 0.9 }}] }}
capabilities = {{ config = {{ action = "escalate" }}, publish = "local" }}

[[handler]]
name = "moderation-any"
module = {m:?}
filter = {{ includedEventTypes = ["com.contoso.ai.Other"] }}

[[handler]]
name = "moderation-misconfigured"
module = {m:?}
filter = {{ includedEventTypes = ["com.contoso.ai.Odd"] }}
capabilities = {{ config = {{ action = "delete" }} }}
"#,
        redis = redis.url
    ));

    let verdict = post_cloud_events(&gridfn, "/api/events", &lab_events());
    assert_eq!(verdict["succeeded"], 6, "{verdict}");
    for line in [
        "WARN handler: moderation-flagged: quarantine img-4821 (violence, high; confidence 0.97)",
        "WARN handler: moderation-flagged: quarantine doc-2054 (hate-speech, medium; confidence 0.88)",
        "INFO handler: moderation-approved: publish doc-1137",
        "INFO handler: moderation-approved: publish img-7733",
        "WARN handler: moderation-review: escalate doc-3301 for human review (Low confidence requires human review)",
        // Only img-4821 is over 0.9: escalated by config, and the
        // ReviewEscalated it publishes reaches the review route, reason and all.
        "WARN handler: moderation-severe: escalate img-4821 for human review (confidence 0.97, severity high)",
        "WARN handler: moderation-review: escalate img-4821 for human review (confidence 0.97, severity high)",
    ] {
        assert_eq!(gridfn.log_count(line), 1, "{line}\n{}", gridfn.log_text());
    }
    assert_eq!(gridfn.events("moderation-review", "success"), 2.0);
    assert_eq!(gridfn.log_count("for human review"), 3, "the review route publishes nothing: no loop");
    assert_eq!(gridfn.log_count("moderation-severe: quarantine doc-2054"), 0);
    // kv keys live under `<key_prefix>kv:` and the length-prefixed handler name;
    // the flagged route has no kv grant and counts nothing, without failing.
    let mut redis = redis::Client::open(redis.url.as_str()).unwrap().get_connection().unwrap();
    let mut count = |handler: &str, action: &str| -> Option<String> {
        let key = format!("gridfn:dedup:kv:{}:{handler}count/{action}", handler.len());
        redis::cmd("GET").arg(key).query(&mut redis).unwrap()
    };
    assert_eq!(count("moderation-approved", "publish").as_deref(), Some("2"));
    assert_eq!(count("moderation-review", "escalate").as_deref(), Some("2"));
    assert_eq!(count("moderation-flagged", "quarantine"), None);

    // What can never succeed is dead-lettered, not retried.
    let mut odd = lab_events()[0].clone();
    let mut rejected = Vec::new();
    for (n, (kind, data)) in [
        ("ContentFlagged", json!({"contentType": "image", "confidence": 0.9})),
        ("ContentApproved", json!({"contentId": 42, "confidence": 0.9})),
        ("ContentFlagged", json!({"contentId": "img-1", "confidence": "high"})),
        ("Other", json!({"contentId": "img-2", "confidence": 0.5})),
        ("Odd", json!({"contentId": "img-3", "confidence": 0.5})),
    ]
    .into_iter()
    .enumerate()
    {
        odd["id"] = json!(format!("odd-{n}"));
        odd["type"] = json!(format!("com.contoso.ai.{kind}"));
        odd["data"] = data;
        rejected.push(odd.clone());
    }
    let verdict = post_cloud_events(&gridfn, "/api/events", &Value::Array(rejected));
    assert_eq!(verdict["rejected"], 5, "{verdict}");
    assert!(verdict.get("retry").is_none(), "{verdict}");
    for reason in [
        "event rejected and dead-lettered: not a moderation result: contentId is missing handler=moderation-flagged",
        "event rejected and dead-lettered: not a moderation result: contentId is not a string handler=moderation-approved",
        "event rejected and dead-lettered: not a moderation result: confidence is not a number handler=moderation-flagged",
        "event rejected and dead-lettered: unexpected event type com.contoso.ai.Other handler=moderation-any",
        "event rejected and dead-lettered: unknown action delete handler=moderation-misconfigured",
    ] {
        assert_eq!(gridfn.log_count(reason), 1, "{reason}\n{}", gridfn.log_text());
    }
}

#[test]
fn the_javascript_moderation_router_keeps_the_moderation_contract() {
    follows_the_moderation_contract("moderation-router-js");
}

/// The contract test the Rust and Python routers run too.
#[test]
fn the_javascript_router_keeps_the_shared_moderation_contract() {
    let router = component("moderation-router-js");
    // Compiled alone first (into the shared cache), as `start` does.
    drop(start(&format!("[[handler]]\nname = \"compile\"\nmodule = {router:?}\n")));
    crate::moderation::router_keeps_the_contract(&router);
}

fn scripted_js(name: &str, extra: &str) -> String {
    format!("[[handler]]\nname = \"{name}\"\nmodule = {:?}\ntimeout = \"2s\"\n{extra}\n", component("scripted-js"))
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
                "filter = {{ includedEventTypes = [\"Microsoft.Storage.BlobCreated\"] }}\n\
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
