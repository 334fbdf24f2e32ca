//! Content moderation, as the classic Event Grid lab does it: the sample in
//! samples/content-moderation, its events published with Azure's Python SDK,
//! the moderation router's contract (shared with its Python and JavaScript
//! ports: [`router_keeps_the_contract`] takes the component to check), and
//! the audit trail read back through the admin API and `gridfn kv list`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::Path;

use serde_json::{Value, json};

use crate::protocol::azure_sdk_python;
use crate::support::{Gridfn, KEY, component, gridfn_command, repo, start_manifest};

const ADMIN_KEY: &str = "admin-secret";

/// `GET /admin/kv/{handler}?prefix=…` with the admin key: the listing's entries.
fn kv_entries(gridfn: &Gridfn, handler: &str, prefix: &str) -> Vec<Value> {
    let response = reqwest::blocking::Client::new()
        .get(gridfn.url(&format!("/admin/kv/{handler}")))
        .query(&[("prefix", prefix)])
        .header("x-gridfn-admin-key", ADMIN_KEY)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "listing {handler}'s kv");
    let listing: Value = response.json().unwrap();
    assert_eq!(listing["truncated"], false);
    listing["entries"].as_array().unwrap().clone()
}

/// A handler's kv entries under `prefix` as (key, text) pairs.
fn kv_pairs(gridfn: &Gridfn, handler: &str, prefix: &str) -> Vec<(String, String)> {
    let entries = kv_entries(gridfn, handler, prefix);
    entries.iter().map(|e| (e["key"].as_str().unwrap().into(), e["value"].as_str().unwrap().into())).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_labs_events_published_with_the_python_sdk_reach_the_labs_subscriptions_and_the_audit_trail() {
    let gridfn = start_manifest("samples/content-moderation/gridfn.toml", &format!("admin_keys = [{ADMIN_KEY:?}]"));
    let published = std::process::Command::new(azure_sdk_python())
        .arg(repo("samples/content-moderation/publish.py"))
        .args(["--endpoint", &gridfn.url("/api/events"), "--key", KEY, "--json"])
        .output()
        .unwrap();
    assert!(published.status.success(), "publish.py: {}", String::from_utf8_lossy(&published.stderr));
    let published: Vec<Value> = serde_json::from_slice(&published.stdout).unwrap();
    let contents: Vec<&str> = published.iter().map(|e| e["content_id"].as_str().unwrap()).collect();
    assert_eq!(contents, ["img-4821", "doc-1137", "doc-2054", "img-7733", "doc-3301"], "the lab's five, in its order");

    // The lab's counts: flagged 2, approved 2, all 5; and the advanced filter
    // (confidence >= 0.9, severity high) picks img-4821 alone.
    assert_eq!(gridfn.events("sub-all-events", "success"), 5.0);
    assert_eq!(gridfn.events("sub-flagged", "success"), 2.0);
    assert_eq!(gridfn.events("sub-approved", "success"), 2.0);
    assert_eq!(gridfn.events("sub-escalate", "success"), 1.0);
    for outcome in ["retry", "reject"] {
        assert_eq!(gridfn.events("*", outcome) + gridfn.events("sub-flagged", outcome), 0.0, "{outcome}");
    }
    for line in [
        "WARN handler: sub-flagged: quarantine img-4821 (violence, high; confidence 0.97)",
        "WARN handler: sub-flagged: quarantine doc-2054 (hate-speech, medium; confidence 0.88)",
        "INFO handler: sub-approved: publish doc-1137",
        "INFO handler: sub-approved: publish img-7733",
        "WARN handler: sub-escalate: escalate img-4821 for human review (confidence 0.97, severity high)",
    ] {
        assert_eq!(gridfn.log_count(line), 1, "{line}");
    }
    assert_eq!(gridfn.log_count("for human review"), 1, "only the filter's match is escalated");

    // Each moderation handler counted its action in its own key space.
    assert_eq!(kv_pairs(&gridfn, "sub-flagged", "count/"), pairs(&[("count/quarantine", "2")]));
    assert_eq!(kv_pairs(&gridfn, "sub-approved", "count/"), pairs(&[("count/publish", "2")]));
    assert_eq!(kv_pairs(&gridfn, "sub-escalate", "count/"), pairs(&[("count/escalate", "1")]));

    // The audit trail: one entry per event, `trail/<seq>/<id>`, in the order
    // they were recorded (events recorded together share a seq).
    let trail = kv_entries(&gridfn, "sub-all-events", "trail/");
    assert_eq!(trail.len(), 5);
    let records: Vec<Value> = trail
        .iter()
        .map(|e| {
            assert_eq!(e["encoding"], "utf-8");
            serde_json::from_str(e["value"].as_str().unwrap()).unwrap()
        })
        .collect();
    let mut last_seq = 1;
    for (entry, record) in trail.iter().zip(&records) {
        let seq = record["seq"].as_u64().unwrap();
        assert!((last_seq..=5).contains(&seq), "seq {seq} after {last_seq}: {record}");
        last_seq = seq;
        assert_eq!(entry["key"], format!("trail/{seq:010}/{}", record["id"].as_str().unwrap()));
        assert_eq!(record["outcome"], "success");
        assert_eq!(record["source"], "/services/content-moderation");
        assert!(record["time"].as_str().is_some_and(|t| t.starts_with("20")), "{record}");
        let sent = published.iter().find(|e| e["id"] == record["id"]).expect("a published event");
        assert!(record["subject"].as_str().unwrap().ends_with(&format!("/{}", sent["content_id"].as_str().unwrap())));
        assert_eq!(record["type"], format!("com.contoso.ai.{}", sent["event_type"].as_str().unwrap()));
    }
    let ids: BTreeSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, published.iter().map(|e| e["id"].as_str().unwrap()).collect(), "every published event, once");

    // The same trail through the command line.
    let listed = gridfn_command(&[
        OsStr::new("kv"),
        OsStr::new("list"),
        OsStr::new("sub-all-events"),
        OsStr::new("--prefix"),
        OsStr::new("trail/"),
        OsStr::new("--to"),
        OsStr::new(&gridfn.base),
        OsStr::new("--admin-key"),
        OsStr::new(ADMIN_KEY),
    ]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let lines: Vec<String> = String::from_utf8(listed.stdout).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    for (line, entry) in lines.iter().zip(&trail) {
        assert_eq!(line, &format!("{} {}", entry["key"].as_str().unwrap(), entry["value"].as_str().unwrap()));
    }
}

#[test]
fn the_kv_listing_needs_the_admin_key_and_a_handler_granted_kv() {
    let gridfn = Gridfn::start_with_server(
        &format!("admin_keys = [{ADMIN_KEY:?}]"),
        &format!(
            "[[handler]]\nname = \"audit\"\nmodule = {audit:?}\ncapabilities = {{ kv = true }}\n\n\
             [[handler]]\nname = \"no-kv\"\nmodule = {audit:?}\n",
            audit = component("audit-log")
        ),
    );
    let get = |path: &str, key: Option<&str>| {
        let mut request = reqwest::blocking::Client::new().get(gridfn.url(path));
        if let Some(key) = key {
            request = request.header("x-gridfn-admin-key", key);
        }
        request.send().unwrap()
    };
    assert_eq!(get("/admin/kv/audit", None).status(), 401);
    assert_eq!(get("/admin/kv/audit", Some(KEY)).status(), 401, "a delivery key is not an admin key");
    assert_eq!(get("/admin/kv/nobody", Some(ADMIN_KEY)).status(), 404);
    let no_kv = get("/admin/kv/no-kv", Some(ADMIN_KEY));
    assert_eq!(no_kv.status(), 400);
    assert!(no_kv.text().unwrap().contains("not granted kv"));
    assert_eq!(get("/admin/kv/audit?limit=0", Some(ADMIN_KEY)).status(), 400);

    let empty: Value = get("/admin/kv/audit", Some(ADMIN_KEY)).json().unwrap();
    assert_eq!(empty, json!({"handler": "audit", "prefix": "", "entries": [], "truncated": false}));
    let events: Vec<Value> = (0..3).map(|i| crate::support::event(&format!("kv-{i}"), json!({}))).collect();
    assert_eq!(gridfn.notify("/api/events/audit", crate::support::batch(&events)).status(), 200);
    let first_two: Value = get("/admin/kv/audit?prefix=trail/&limit=2", Some(ADMIN_KEY)).json().unwrap();
    assert_eq!(first_two["entries"].as_array().unwrap().len(), 2);
    assert_eq!(first_two["truncated"], true, "a third entry exists");
    let all: Value = get("/admin/kv/audit", Some(ADMIN_KEY)).json().unwrap();
    let keys: Vec<&str> = all["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    // One delivery's three events ran side by side, each seeing the count
    // recorded before it (0): they share seq 1, and the counter counts 3.
    assert_eq!(
        keys,
        [
            "count/Microsoft.Storage.BlobCreated",
            "seq/trail",
            "trail/0000000001/kv-0",
            "trail/0000000001/kv-1",
            "trail/0000000001/kv-2"
        ]
    );
    let values: Vec<&str> = all["entries"].as_array().unwrap().iter().map(|e| e["value"].as_str().unwrap()).collect();
    assert_eq!(values[..2], ["3", "3"]);
}

#[test]
fn the_rust_router_keeps_the_moderation_contract() {
    router_keeps_the_contract(&component("moderation-router"));
}

/// The moderation router's contract (notes: the same behaviour in Rust,
/// Python and JavaScript), checked against the component at `router`: routed
/// by subject and configured action, then on the lab's own events.
pub fn router_keeps_the_contract(router: &Path) {
    routes_by_type_and_configured_action(router);
    routes_the_labs_events_as_the_lab_does(router);
}

/// Each action by event type or by `config`, the escalation published once
/// (and as published), every kind of rejection, the counts in kv.
fn routes_by_type_and_configured_action(router: &Path) {
    let gridfn = Gridfn::start_with_server(
        &format!("admin_keys = [{ADMIN_KEY:?}]"),
        &format!(
            r#"
# By event type, with kv.
[[handler]]
name = "by-type"
module = {router:?}
filter = {{ subjectBeginsWith = "/by-type/" }}
capabilities = {{ kv = true }}

# Escalates whatever reaches it, and publishes the escalation locally; it
# also receives what it publishes, which must not be published again.
[[handler]]
name = "escalator"
module = {router:?}
filter = {{ subjectBeginsWith = "/escalate/" }}
capabilities = {{ kv = true, publish = "local", config = {{ action = "escalate" }} }}

[[handler]]
name = "bogus"
module = {router:?}
filter = {{ subjectBeginsWith = "/bogus/" }}
capabilities = {{ config = {{ action = "delete" }} }}

# What the escalator published: counted by the audit log, and dead-lettered
# by a router with an unknown action, so that the test can read the event
# as it was published from its dead-letter record.
[[handler]]
name = "escalations"
module = {audit:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ReviewEscalated"], advancedFilters = [{{ operatorType = "StringIn", key = "source", values = ["/gridfn/moderation"] }}] }}

[[handler]]
name = "escalations-held"
module = {router:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ReviewEscalated"], advancedFilters = [{{ operatorType = "StringIn", key = "source", values = ["/gridfn/moderation"] }}] }}
capabilities = {{ config = {{ action = "hold" }} }}
"#,
            audit = component("audit-log")
        ),
    );
    let moderation = |id: &str, kind: &str, subject: &str, data: Value| {
        json!({"specversion": "1.0", "id": id, "source": "/services/content-moderation",
               "type": format!("com.contoso.ai.{kind}"), "subject": subject, "data": data})
    };
    let events = json!([
        moderation("c-1", "ContentFlagged", "/by-type/1", json!({"contentId": "c-1", "confidence": 0.5})),
        moderation("c-2", "ContentApproved", "/by-type/2", json!({"contentId": "c-2", "confidence": 0.994})),
        moderation(
            "c-3",
            "ReviewEscalated",
            "/by-type/3",
            json!({"contentId": "c-3", "confidence": 0.61, "severity": "high", "escalationReason": "needs a person"})
        ),
        moderation("c-4", "ReviewEscalated", "/by-type/4", json!({"contentId": "c-4", "confidence": 0.3})),
        moderation("c-5", "ContentDeleted", "/by-type/5", json!({"contentId": "c-5", "confidence": 0.9})),
        moderation("c-6", "ContentFlagged", "/by-type/6", json!({"confidence": 0.9})),
        moderation("c-7", "ContentFlagged", "/by-type/7", json!({"contentId": "c-7", "confidence": "high"})),
        moderation("c-8", "ContentFlagged", "/by-type/8", json!({"contentId": 8, "confidence": 0.9})),
        moderation("c-9", "ContentFlagged", "/bogus/9", json!({"contentId": "c-9", "confidence": 0.9})),
        moderation(
            "c-10",
            "ContentFlagged",
            "/escalate/10",
            json!({"contentId": "c-10", "confidence": 0.97, "category": "violence", "severity": "high"})
        ),
    ]);
    let response = gridfn.post(
        "/api/events",
        serde_json::to_vec(&events).unwrap(),
        &[("aeg-sas-key", KEY), ("content-type", "application/cloudevents-batch+json")],
    );
    assert_eq!(response.status(), 200);
    // c-5..c-9 are rejected, the rest succeed.
    let verdict: Value = response.json().unwrap();
    assert_eq!((&verdict["succeeded"], &verdict["rejected"]), (&json!(5), &json!(5)), "{verdict}");

    for line in [
        "WARN handler: by-type: quarantine c-1 (unknown, unknown; confidence 0.50)",
        "INFO handler: by-type: publish c-2",
        "WARN handler: by-type: escalate c-3 for human review (needs a person)",
        "WARN handler: by-type: escalate c-4 for human review (confidence 0.30, severity unknown)",
    ] {
        assert_eq!(gridfn.log_count(line), 1, "{line}\n{}", gridfn.log_text());
    }
    let rejection = |id: &str| {
        let lines: Vec<String> = gridfn
            .log_lines()
            .into_iter()
            .filter(|l| l.contains("event rejected and dead-lettered") && l.contains(&format!("event_id={id} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:#?}");
        lines[0].clone()
    };
    for (id, reason) in [
        ("c-5", "unexpected event type com.contoso.ai.ContentDeleted"),
        ("c-6", "not a moderation result: contentId is missing"),
        ("c-7", "not a moderation result: confidence is not a number"),
        ("c-8", "not a moderation result: contentId is not a string"),
        ("c-9", "unknown action delete"),
    ] {
        let line = rejection(id);
        assert!(line.contains(&format!("dead-lettered: {reason}")), "{id}: {line}");
    }

    // The escalation was published once: the escalator saw its own
    // ReviewEscalated come back, escalated it in the log, and stopped there.
    assert_eq!(gridfn.events("escalations", "success"), 1.0);
    assert_eq!(gridfn.events("escalator", "success"), 2.0, "c-10 and its escalation");
    let escalated = "WARN handler: escalator: escalate c-10 for human review (confidence 0.97, severity high)";
    assert_eq!(gridfn.log_count(&format!("{escalated} handler=\"escalator\" event_id=\"c-10\"")), 1);
    assert_eq!(gridfn.log_count(&format!("{escalated} handler=\"escalator\" event_id=\"c-10:escalator:0\"")), 1);
    assert_eq!(
        gridfn.log_count(
            "audit: com.contoso.ai.ReviewEscalated c-10:escalator:0 from /gridfn/moderation subject=/escalate/10 "
        ),
        1,
        "{}",
        gridfn.log_text()
    );
    // As published: the incoming data plus the reason.
    let held = rejection("c-10:escalator:0");
    assert!(held.contains("dead-lettered: unknown action hold"), "{held}");
    let blob = held.split("blob=").nth(1).unwrap().split_whitespace().next().unwrap();
    let record: Value = serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
    let published = &record[0];
    assert_eq!(published["type"], "com.contoso.ai.ReviewEscalated");
    assert_eq!(published["source"], "/gridfn/moderation");
    assert_eq!(published["subject"], "/escalate/10");
    assert_eq!(
        published["data"],
        json!({"contentId": "c-10", "confidence": 0.97, "category": "violence", "severity": "high",
               "escalationReason": "confidence 0.97, severity high"})
    );

    // Counts per action, in each handler's own key space.
    assert_eq!(
        kv_pairs(&gridfn, "by-type", "count/"),
        pairs(&[("count/escalate", "2"), ("count/publish", "1"), ("count/quarantine", "1")]),
        "rejected events count nothing"
    );
    assert_eq!(kv_pairs(&gridfn, "escalator", "count/"), pairs(&[("count/escalate", "2")]));
}

/// The classic Event Grid lab's five moderation results
/// (samples/events/moderation.json) through the lab's subscriptions, plus
/// one that escalates confident flags (an advanced filter and `config`) to
/// the review route: the lab's log lines, one escalation published and
/// reviewed without a loop, the counts in kv, nothing retried.
fn routes_the_labs_events_as_the_lab_does(router: &Path) {
    let gridfn = Gridfn::start_with_server(
        &format!("admin_keys = [{ADMIN_KEY:?}]"),
        &format!(
            r#"
[[handler]]
name = "moderation-flagged"
module = {router:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ContentFlagged"] }}

[[handler]]
name = "moderation-approved"
module = {router:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ContentApproved"] }}
capabilities = {{ kv = true }}

[[handler]]
name = "moderation-review"
module = {router:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ReviewEscalated"] }}
capabilities = {{ kv = true, publish = "local" }}

[[handler]]
name = "moderation-severe"
module = {router:?}
filter = {{ includedEventTypes = ["com.contoso.ai.ContentFlagged"], advancedFilters = [{{ operatorType = "NumberGreaterThan", key = "data.confidence", value = 0.9 }}] }}
capabilities = {{ config = {{ action = "escalate" }}, publish = "local" }}
"#
        ),
    );
    let headers = [("aeg-sas-key", KEY), ("content-type", "application/cloudevents-batch+json; charset=utf-8")];
    let response = gridfn.post("/api/events", std::fs::read(repo("samples/events/moderation.json")).unwrap(), &headers);
    assert_eq!(response.status(), 200, "{}", gridfn.log_text());
    let verdict: Value = response.json().unwrap();
    assert_eq!((&verdict["succeeded"], &verdict["rejected"]), (&json!(6), &json!(0)), "{verdict}");
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
    assert_eq!(gridfn.log_count("moderation-severe: quarantine"), 0);
    // The flagged route has no kv grant: it counts nothing, and does not fail.
    assert_eq!(gridfn.events("moderation-flagged", "success"), 2.0);
    assert_eq!(kv_pairs(&gridfn, "moderation-approved", "count/"), pairs(&[("count/publish", "2")]));
    assert_eq!(kv_pairs(&gridfn, "moderation-review", "count/"), pairs(&[("count/escalate", "2")]));
}
