//! The whole delivery protocol: CloudEvents in every mode, both handshakes,
//! subscription lifecycle, limits and errors, and the Azure SDK as a client.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gridfn, KEY, batch, component, event, repo, vector};

fn host(extra_server: &str) -> Gridfn {
    Gridfn::start_with_server(
        extra_server,
        &format!("[[handler]]\nname = \"audit-log\"\nmodule = {:?}\n", component("audit-log")),
    )
}

const CE_STRUCTURED: &str = "application/cloudevents+json; charset=utf-8";
const CE_BATCH: &str = "application/cloudevents-batch+json; charset=utf-8";

#[test]
fn every_cloudevents_vector_is_accepted_structured_and_batched() {
    let gridfn = host("");
    let files = [
        "cloudevents/docs-cloudevents-schema-BlobCreated.json",
        "cloudevents/docs-cloud-event-schema-BlobCreated.json",
        "cloudevents/docs-event-filtering-extension-attributes.json",
        "cloudevents/java-CloudEventBinaryData.batch.json",
    ];
    for (i, file) in files.iter().enumerate() {
        let body = std::fs::read(vector(file)).unwrap();
        let content_type = if file.ends_with(".batch.json") { CE_BATCH } else { CE_STRUCTURED };
        // Send each vector with its own subscription so dedup doesn't merge
        // the two BlobCreated docs examples (they share their id).
        let handler_path = format!("/api/events/audit-log?n={i}");
        let response = gridfn.post(
            &handler_path,
            body,
            &[("content-type", content_type), ("aeg-event-type", "Notification"), ("aeg-sas-key", KEY)],
        );
        assert_eq!(response.status(), 200, "{file}");
    }
    // Structured mode with an array (Event Grid may batch whatever the type says).
    let array = format!(
        "[{}]",
        std::fs::read_to_string(vector("cloudevents/docs-event-filtering-extension-attributes.json"))
            .unwrap()
            .replace("C234-1234-1234", "C234-array")
    );
    let response =
        gridfn.post("/api/events/audit-log", array, &[("content-type", CE_STRUCTURED), ("aeg-sas-key", KEY)]);
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("audit: com.example.someevent C234-array from /mycontext"), 1);
    // The Java vector's `"subject": ""` reaches the handler as no subject (`-`).
    assert_eq!(gridfn.log_count("audit: Contoso.Items.ItemReceived 2d1781af-3a4c-4d7c-bd0c-e34b19da4e66 from contoso/items subject=- attempt=0 bytes=12"), 1);
}

#[test]
fn a_cloudevent_without_specversion_is_refused_naming_it() {
    let gridfn = host("");
    let body = std::fs::read(vector("cloudevents/invalid/docs-delivery-and-retry-event-no-specversion.json")).unwrap();
    let response = gridfn.post("/api/events/audit-log", body, &[("content-type", CE_STRUCTURED), ("aeg-sas-key", KEY)]);
    assert_eq!(response.status(), 400);
    let error: Value = response.json().unwrap();
    assert_eq!(error["error"]["field"], "specversion");
    assert_eq!(error["error"]["event_index"], 0);

    let wrong_version = json!({"specversion": "0.3", "id": "v", "source": "/s", "type": "t"});
    let response = gridfn.post(
        "/api/events/audit-log",
        wrong_version.to_string(),
        &[("content-type", CE_STRUCTURED), ("aeg-sas-key", KEY)],
    );
    assert_eq!(response.status(), 400);
    assert!(response.text().unwrap().contains("CloudEvents 1.0"));
    assert_eq!(gridfn.log_count("audit: "), 0);
}

#[test]
fn a_binary_mode_cloudevent_reaches_the_handler_with_its_data() {
    let gridfn = host("");
    let response = gridfn.post(
        "/api/events/audit-log",
        b"\x00\x01binary payload".to_vec(),
        &[
            ("content-type", "application/octet-stream"),
            ("ce-specversion", "1.0"),
            ("ce-id", "bin%2F1"),
            ("ce-source", "/orders"),
            ("ce-type", "Order.Shipped"),
            ("ce-subject", "orders/42"),
            ("ce-traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("aeg-sas-key", KEY),
        ],
    );
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("audit: Order.Shipped bin/1 from /orders subject=orders/42 attempt=0 bytes=16"), 1);
}

/// The CloudEvents HTTP binding's receiver rules, through the real server:
/// how the mode is chosen, how `ce-*` values are decoded, empty batches, and
/// 400s that name the event and the header or attribute.
#[test]
fn the_cloudevents_http_binding_rules_hold_end_to_end() {
    let gridfn = host("");
    let path = "/api/events/audit-log";
    let refusal = |response: reqwest::blocking::Response| {
        assert_eq!(response.status(), 400);
        let error: Value = response.json().unwrap();
        (error["error"]["event_index"].clone(), error["error"]["field"].as_str().unwrap_or("").to_owned())
    };

    // An empty CloudEvents batch is valid: 200, nothing runs. An empty Event
    // Grid schema batch is not (Event Grid never sends one).
    let empty = gridfn.post(path, "[]", &[("content-type", CE_BATCH), ("aeg-sas-key", KEY)]);
    assert_eq!(empty.status(), 200);
    let empty_event_grid = gridfn.post(path, "[]", &[("content-type", "application/json"), ("aeg-sas-key", KEY)]);
    assert_eq!(empty_event_grid.status(), 400);

    // A CloudEvents content type means structured mode, whatever ce-* headers come along.
    let body = json!({"specversion": "1.0", "id": "ce-structured", "source": "/binding", "type": "Binding.Structured"});
    let structured = gridfn.post(
        path,
        body.to_string(),
        &[("content-type", CE_STRUCTURED), ("ce-id", "from-header"), ("ce-specversion", "1.0"), ("aeg-sas-key", KEY)],
    );
    assert_eq!(structured.status(), 200);
    assert_eq!(gridfn.log_count("audit: Binding.Structured ce-structured from /binding"), 1);

    // Binary mode: header values are unquoted, then percent-decoded (lower-case hex too).
    let binary = |extra: &[(&'static str, &'static str)]| {
        let mut headers = vec![
            ("content-type", "text/plain"),
            ("ce-specversion", "1.0"),
            ("ce-source", "/binding"),
            ("ce-type", "Binding.Binary"),
            ("aeg-sas-key", KEY),
        ];
        headers.extend_from_slice(extra);
        gridfn.post(path, "payload", &headers)
    };
    let decoded = binary(&[("ce-id", "bin-1"), ("ce-subject", r#""caf%c3%a9 au lait""#)]);
    assert_eq!(decoded.status(), 200);
    assert_eq!(gridfn.log_count("audit: Binding.Binary bin-1 from /binding subject=café au lait attempt=0 bytes=7"), 1);

    // Refusals name the header: an overlong UTF-8 encoding, an attribute sent
    // twice, a datacontenttype header, a Content-Type that is no media type.
    for (extra, header) in [
        (&[("ce-id", "bin-2"), ("ce-subject", "%C0%A0")][..], "ce-subject"),
        (&[("ce-id", "bin-3"), ("ce-id", "bin-4")][..], "ce-id"),
        (&[("ce-id", "bin-5"), ("ce-datacontenttype", "text/plain")][..], "ce-datacontenttype"),
        (&[("ce-id", "bin-6"), ("ce-time", "tomorrow")][..], "ce-time"),
    ] {
        assert_eq!(refusal(binary(extra)), (json!(0), header.to_owned()), "{header}");
    }

    // In a batch, the 400 names the event and its attribute, and no event runs.
    let batch_body = json!([
        {"specversion": "1.0", "id": "ok-1", "source": "/binding", "type": "Binding.Batch"},
        {"specversion": "1.0", "id": "bad-2", "source": "/binding", "type": "Binding.Batch", "datacontenttype": "json"},
    ]);
    let response = gridfn.post(path, batch_body.to_string(), &[("content-type", CE_BATCH), ("aeg-sas-key", KEY)]);
    assert_eq!(refusal(response), (json!(1), "datacontenttype".to_owned()));
    assert_eq!(gridfn.log_count("audit: Binding.Batch"), 0);
    assert_eq!(gridfn.log_count("audit: "), 2, "only the two accepted deliveries ran");
}

#[test]
fn the_cloudevents_abuse_protection_handshake_allows_event_grid_only() {
    let gridfn = host("");
    let client = reqwest::blocking::Client::new();
    for path in ["/api/events", "/api/events/audit-log", "/runtime/webhooks/eventgrid?functionName=audit-log"] {
        let allowed = client
            .request(reqwest::Method::OPTIONS, gridfn.url(path))
            .header("WebHook-Request-Origin", "eventgrid.azure.net")
            .header("WebHook-Request-Rate", "120")
            .send()
            .unwrap();
        assert_eq!(allowed.status(), 200, "{path}");
        assert_eq!(allowed.headers()["webhook-allowed-origin"], "eventgrid.azure.net", "{path}");
        assert_eq!(allowed.headers()["webhook-allowed-rate"], "*", "{path}");
        assert!(allowed.headers()["allow"].to_str().unwrap().contains("POST"), "{path}");
    }
    let refused = client
        .request(reqwest::Method::OPTIONS, gridfn.url("/api/events"))
        .header("WebHook-Request-Origin", "attacker.example.com")
        .send()
        .unwrap();
    assert_eq!(refused.status(), 200);
    assert!(refused.headers().get("webhook-allowed-origin").is_none());
    assert!(refused.headers().get("webhook-allowed-rate").is_none(), "no rate asked, none given");
}

fn validation_event(url: &str) -> Vec<u8> {
    let mut events: Vec<Value> = serde_json::from_slice(
        &std::fs::read(vector("eventgrid/handshake/docs-SubscriptionValidationEvent.json")).unwrap(),
    )
    .unwrap();
    events[0]["data"]["validationUrl"] = json!(url);
    serde_json::to_vec(&events).unwrap()
}

fn validation_headers() -> [(&'static str, &'static str); 2] {
    [("aeg-event-type", "SubscriptionValidation"), ("aeg-sas-key", KEY)]
}

#[test]
fn manual_validation_answers_without_a_body_and_logs_the_url() {
    let gridfn = host("validation = \"manual\"");
    let url = "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/sub/validate?id=1&token=abc";
    let response = gridfn.post("/api/events/audit-log", validation_event(url), &validation_headers());
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().unwrap(), "");
    assert_eq!(
        gridfn.log_count(&format!(
            "SUBSCRIPTION VALIDATION NEEDED: open this URL (a GET) within 5 minutes to confirm the subscription: {url}"
        )),
        1
    );
}

/// A one-shot HTTP server on loopback that records the request line it gets.
fn validation_endpoint() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut line = String::new();
            BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).unwrap();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = tx.send(line);
        }
    });
    (format!("http://localhost:{port}/eventsubscriptions/sub/validate?id=1"), rx)
}

#[test]
fn auto_url_validation_gets_the_url_on_event_grid_domains_only() {
    // Tests stand in for Event Grid on localhost; the default domains are Event Grid's.
    let gridfn = host("validation = \"auto-url\"\nevent_grid_domains = [\"localhost\"]");
    let (url, requests) = validation_endpoint();
    let response = gridfn.post("/api/events/audit-log", validation_event(&url), &validation_headers());
    assert_eq!(response.status(), 200);
    let request_line = requests.recv_timeout(Duration::from_secs(10)).expect("gridfn GETs the validation URL");
    assert!(request_line.starts_with("GET /eventsubscriptions/sub/validate?id=1 "), "{request_line}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(gridfn.log_count("subscription validated through its validation URL"), 1);

    let strict = host("validation = \"auto-url\"");
    let (url, requests) = validation_endpoint();
    let response = strict.post("/api/events/audit-log", validation_event(&url), &validation_headers());
    assert_eq!(response.status(), 200);
    assert!(
        requests.recv_timeout(Duration::from_secs(1)).is_err(),
        "no request to a host outside Event Grid's domains"
    );
    assert_eq!(strict.log_count("refused to GET the validation URL"), 1);
}

#[test]
fn subscription_deletion_is_acknowledged_and_never_dispatched() {
    let gridfn = host("");
    for kind in ["SubscriptionDeletion", "Unsubscribe"] {
        let response = gridfn.post("/api/events/audit-log", "", &[("aeg-event-type", kind), ("aeg-sas-key", KEY)]);
        assert_eq!(response.status(), 200, "{kind}");
    }
    let deleted = std::fs::read(vector("eventgrid/EventGridSubscriptionDeletedEvent.json")).unwrap();
    let response = gridfn.notify("/api/events/audit-log", deleted);
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("audit: "), 0, "not dispatched");
    assert_eq!(gridfn.log_count("subscription was deleted"), 1);
}

#[test]
fn limits_and_content_types_get_their_status_codes() {
    let gridfn = host("max_body = \"4KiB\"");
    let big = batch(&[event("big-1", json!({"padding": "x".repeat(8 << 10)}))]);
    let response = gridfn.notify("/api/events/audit-log", big);
    assert_eq!(response.status(), 413);
    assert_eq!(response.json::<Value>().unwrap()["error"]["code"], "too_large");

    let xml = gridfn.post("/api/events/audit-log", "<event/>", &[("content-type", "text/xml"), ("aeg-sas-key", KEY)]);
    assert_eq!(xml.status(), 415);
    assert_eq!(xml.json::<Value>().unwrap()["error"]["code"], "unsupported_media_type");

    let metadata = gridfn.post(
        "/api/events/audit-log",
        batch(&[event("md-1", json!({}))]),
        &[("aeg-metadata-version", "7"), ("aeg-sas-key", KEY)],
    );
    assert_eq!(metadata.status(), 400);
    assert_eq!(gridfn.log_count("audit: "), 0);
}

/// The Azure SDK's publisher client, in Python, as a real client.
pub(crate) fn azure_sdk_python() -> String {
    let output = std::process::Command::new("bash")
        .arg(repo("tests/python/setup.sh"))
        .output()
        .expect("running tests/python/setup.sh");
    assert!(output.status.success(), "tests/python/setup.sh failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_azure_eventgrid_sdk_publishes_both_schemas_and_every_event_runs_once() {
    let python = azure_sdk_python();
    let gridfn = host("");
    for (schema, prefix) in [("eventgrid", "sdk-eg"), ("cloudevents", "sdk-ce")] {
        let output = std::process::Command::new(&python)
            .arg(repo("tests/python/publish.py"))
            .args(["--endpoint", &gridfn.url("/api/events/audit-log"), "--key", KEY, "--schema", schema])
            .args(["--count", "25", "--prefix", prefix, "--batch-size", "10", "--timeout", "30", "--retry-total", "0"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{schema}: {}", String::from_utf8_lossy(&output.stderr));
        let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary, json!({"sent": 25, "batches": 3}), "{schema}");
        for i in 0..25 {
            assert_eq!(gridfn.log_count(&format!(" {prefix}-{i} from ")), 1, "{schema}: {prefix}-{i} ran once");
        }
    }
    assert_eq!(gridfn.events("audit-log", "success"), 50.0);

    let wrong_key = std::process::Command::new(&python)
        .arg(repo("tests/python/publish.py"))
        .args(["--endpoint", &gridfn.url("/api/events/audit-log"), "--key", "wrong", "--schema", "eventgrid"])
        .args(["--count", "1", "--prefix", "sdk-bad", "--timeout", "30", "--retry-total", "0"])
        .output()
        .unwrap();
    assert!(!wrong_key.status.success());
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("401"));
}

pub(crate) const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// A token as Microsoft Entra ID issues it for Event Grid, signed with the
/// test key; `change` edits the claims first.
pub(crate) fn entra_token(change: impl FnOnce(&mut Value)) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut claims = json!({
        "iss": format!("https://sts.windows.net/{TENANT}/"),
        "aud": "api://gridfn-test",
        "appid": gridfn::entra::EVENT_GRID_APP_ID,
        "ver": "1.0",
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "roles": ["EventGrid.Deliver"],
    });
    change(&mut claims);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("gridfn-test-key".into());
    let pem = std::fs::read(repo("tests/e2e/entra/test-signing-key.pem")).unwrap();
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

#[test]
fn entra_id_tokens_are_required_and_checked_when_configured() {
    let gridfn = Gridfn::start(&format!(
        r#"
[server.entra]
tenant_id = "{TENANT}"
audiences = ["api://gridfn-test"]
jwks_file = {jwks:?}
required_role = "EventGrid.Deliver"

[[handler]]
name = "audit-log"
module = {audit:?}
"#,
        jwks = repo("tests/e2e/entra/jwks.json"),
        audit = component("audit-log")
    ));
    let deliver = |id: &str, token: Option<String>| {
        let mut headers = vec![("aeg-sas-key", KEY.to_owned())];
        if let Some(token) = token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        gridfn.post("/api/events/audit-log", batch(&[event(id, json!({}))]), &headers)
    };

    assert_eq!(deliver("entra-ok", Some(entra_token(|_| {}))).status(), 200);
    let refusals: [(&str, Option<String>, &str); 5] = [
        ("entra-none", None, "Bearer"),
        ("entra-aud", Some(entra_token(|c| c["aud"] = json!("api://someone-else"))), "audience"),
        ("entra-app", Some(entra_token(|c| c["appid"] = json!("00000000-0000-0000-0000-000000000000"))), "app id"),
        ("entra-exp", Some(entra_token(|c| c["exp"] = json!(1_000_000_000))), "expired"),
        ("entra-role", Some(entra_token(|c| c["roles"] = json!([]))), "role"),
    ];
    for (id, token, says) in refusals {
        let response = deliver(id, token);
        assert_eq!(response.status(), 401, "{id}");
        let message = response.json::<Value>().unwrap()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(says), "{id}: {message}");
    }
    // A valid token does not excuse a wrong key when keys are configured too.
    let wrong_key = gridfn.post(
        "/api/events/audit-log",
        batch(&[event("entra-key", json!({}))]),
        &[("aeg-sas-key", "wrong"), ("authorization", &format!("Bearer {}", entra_token(|_| {})))],
    );
    assert_eq!(wrong_key.status(), 401);
    assert_eq!(gridfn.log_count("audit: "), 1, "only the accepted delivery ran");
}
