//! Routing by subscription filters: the shared endpoint, per-handler
//! endpoints, and `gridfn explain`.

use std::ffi::OsStr;

use serde_json::{Value, json};

use crate::support::{Gridfn, KEY, batch, component, event, gridfn_command, repo, start_sample, vector};

#[test]
fn the_sample_routes_moderation_results_to_the_right_handlers() {
    let gridfn = start_sample();
    // The classic Event Grid lab's five events, as its publisher sends them:
    // 2 ContentFlagged, 2 ContentApproved, 1 ReviewEscalated.
    let body = std::fs::read(repo("samples/events/moderation.json")).unwrap();
    let response = gridfn.post(
        "/api/events",
        body,
        &[
            ("aeg-event-type", "Notification"),
            ("aeg-sas-key", KEY),
            ("content-type", "application/cloudevents-batch+json; charset=utf-8"),
        ],
    );
    assert_eq!(response.status(), 200);
    // 5 events for the audit log, 2 flagged, 2 approved; the escalation only
    // reaches the audit log, as in the lab.
    assert_eq!(response.json::<Value>().unwrap()["succeeded"], 9);

    assert_eq!(gridfn.events("audit-log", "success"), 5.0);
    assert_eq!(gridfn.events("moderation-flagged", "success"), 2.0);
    assert_eq!(gridfn.events("moderation-approved", "success"), 2.0);
    assert_eq!(gridfn.log_count("moderation-flagged: quarantine img-4821 (violence, high; confidence 0.97)"), 1);
    assert_eq!(gridfn.log_count("moderation-flagged: quarantine doc-2054 (hate-speech, medium; confidence 0.88)"), 1);
    assert_eq!(gridfn.log_count("moderation-approved: publish doc-1137"), 1);
    assert_eq!(gridfn.log_count("moderation-approved: publish img-7733"), 1);
    assert_eq!(gridfn.log_count("audit: com.contoso.ai.ReviewEscalated mod-0005 from /services/content-moderation"), 1);
    assert_eq!(gridfn.log_count("moderation-flagged: publish"), 0);
    assert_eq!(gridfn.log_count("moderation-approved: quarantine"), 0);
    assert_eq!(gridfn.log_count("doc-3301 for human review"), 0, "no moderation handler subscribes to escalations");

    // A per-handler endpoint applies that handler's filter too.
    let approved_to_flagged = serde_json::to_vec(&json!([{
        "id": "mod-9", "subject": "/content/text/doc-9", "eventType": "com.contoso.ai.ContentApproved",
        "data": {"contentId": "doc-9", "confidence": 0.1}
    }]))
    .unwrap();
    let response = gridfn.notify("/api/events/moderation-flagged", approved_to_flagged);
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().unwrap()["unmatched"], 1);
    assert_eq!(gridfn.events("moderation-flagged", "unmatched"), 1.0);
    assert_eq!(gridfn.log_count("doc-9"), 0, "nothing ran");
}

#[test]
fn an_event_no_handler_wants_is_counted_and_acknowledged() {
    let gridfn = Gridfn::start(&format!(
        r#"
[[handler]]
name = "markdown-only"
module = {audit:?}
filter = {{ subjectEndsWith = ".md", advancedFilters = [{{ operatorType = "NumberGreaterThan", key = "data.size", value = 100 }}] }}
"#,
        audit = component("audit-log")
    ));
    let mut small = event("u-1", json!({"size": 10}));
    let big = event("u-2", json!({"size": 1000}));
    small["subject"] = json!("/blobs/notes.md");
    let response = gridfn.notify("/api/events", batch(&[small, big]));
    assert_eq!(response.status(), 200);
    let verdict: Value = response.json().unwrap();
    assert_eq!(verdict["succeeded"], 1);
    assert_eq!(verdict["unmatched"], 1);
    assert_eq!(gridfn.events("*", "unmatched"), 1.0);
    assert_eq!(gridfn.log_count("audit: Microsoft.Storage.BlobCreated u-2 "), 1);
    assert_eq!(gridfn.log_count("u-1"), 0);
}

#[test]
fn explain_agrees_with_every_filter_vector() {
    let cases: Vec<Value> = serde_json::from_slice(&std::fs::read(vector("filters/cases.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = String::new();
    for (i, case) in cases.iter().enumerate() {
        let filter: toml::Value = serde_json::from_value(case["filter"].clone()).unwrap();
        let mut handler = toml::Table::new();
        handler.insert("name".into(), format!("case-{i}").into());
        handler.insert("module".into(), "unbuilt.wasm".into());
        handler.insert("filter".into(), filter);
        manifest.push_str("[[handler]]\n");
        manifest.push_str(&toml::to_string(&handler).unwrap().replace("[filter", "[handler.filter"));
        manifest.push('\n');
    }
    let config = dir.path().join("gridfn.toml");
    std::fs::write(&config, &manifest).unwrap();

    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let event_file = dir.path().join(format!("event-{i}.json"));
        std::fs::write(&event_file, serde_json::to_vec(&case["event"]).unwrap()).unwrap();
        let output = gridfn_command(&[
            OsStr::new("explain"),
            OsStr::new("--config"),
            config.as_os_str(),
            event_file.as_os_str(),
            OsStr::new("--json"),
        ]);
        assert!(output.status.success(), "case {i}: {}", String::from_utf8_lossy(&output.stderr));
        let routings: Value = serde_json::from_slice(&output.stdout).unwrap();
        let verdict =
            routings[0]["handlers"].as_array().unwrap().iter().find(|h| h["handler"] == format!("case-{i}")).unwrap();
        let matched = verdict["verdict"] == "match";
        if matched != case["expected"].as_bool().unwrap() {
            failures.push(format!("{}: expected {}, explain said {verdict}", case["name"], case["expected"]));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases disagree:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn explain_names_the_failed_condition_and_the_actual_value() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gridfn.toml");
    std::fs::write(
        &config,
        r#"
[[handler]]
name = "confident"
module = "x.wasm"
filter = { advancedFilters = [{ operatorType = "StringIn", key = "eventType", values = ["com.contoso.ai.ContentFlagged"] }, { operatorType = "NumberGreaterThan", key = "data.confidence", value = 0.8 }] }

[[handler]]
name = "everything"
module = "x.wasm"
"#,
    )
    .unwrap();
    let event_file = dir.path().join("event.json");
    std::fs::write(
        &event_file,
        r#"{"id":"e","subject":"s","eventType":"com.contoso.ai.ContentFlagged","data":{"confidence":0.42}}"#,
    )
    .unwrap();
    let output =
        gridfn_command(&[OsStr::new("explain"), OsStr::new("--config"), config.as_os_str(), event_file.as_os_str()]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("advancedFilters[1] NumberGreaterThan data.confidence: 0.42 is not > 0.8"), "{text}");
    assert!(text.contains("everything  match"), "{text}");

    let unreadable = gridfn_command(&[
        OsStr::new("explain"),
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("/nonexistent.json"),
    ]);
    assert!(!unreadable.status.success());
}

#[test]
fn check_lists_every_problem_with_its_key_and_serve_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gridfn.toml");
    std::fs::write(
        &config,
        r#"
[server]
allow_anonymous = true

[[handler]]
name = "a"
module = "missing.wasm"
timeout = "soon"
filter = { advancedFilters = [{ operatorType = "NumberIn", key = "data.n", values = ["one"] }] }
"#,
    )
    .unwrap();
    for command in ["check", "serve"] {
        let output = gridfn_command(&[OsStr::new(command), OsStr::new("--config"), config.as_os_str()]);
        assert!(!output.status.success(), "{command} must refuse");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for expected in
            ["handler[0] (a).module", "handler[0] (a).timeout", "handler[0] (a).filter.advancedFilters[0].values[0]"]
        {
            assert!(stderr.contains(expected), "{command}: {expected} in\n{stderr}");
        }
    }
}

#[test]
fn an_operand_event_grid_ignores_is_accepted_and_reported_by_check_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gridfn.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
allow_anonymous = true

[[handler]]
name = "has-user"
module = {audit:?}
filter = {{ advancedFilters = [{{ operatorType = "isnotnull", key = "data.user", values = ["ignored"] }}] }}
"#,
            audit = component("audit-log")
        ),
    )
    .unwrap();
    let warning = "advancedFilters[0].values: ignored: IsNotNull does not read `values`";

    let check = gridfn_command(&[OsStr::new("check"), OsStr::new("--config"), config.as_os_str()]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{stderr}");
    assert!(stderr.contains("WARN") && stderr.contains(warning), "{stderr}");

    let event_file = dir.path().join("event.json");
    std::fs::write(&event_file, r#"{"id":"e","subject":"s","eventType":"T","data":{"user":"ada"}}"#).unwrap();
    let explain =
        gridfn_command(&[OsStr::new("explain"), OsStr::new("--config"), config.as_os_str(), event_file.as_os_str()]);
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success());
    assert!(text.contains("has-user  match") && text.contains(&format!("note   filter.{warning}")), "{text}");
}
