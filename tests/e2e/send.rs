//! `gridfn send` through the real binary against a running gridfn: both
//! handshakes, batching, Event Grid's retry rules (scaled down with
//! `--time-scale`), dead-lettering, and the dead-letter folder replayed by
//! `gridfn replay`.
//!
//! What the handler did is read from its log lines (the `scripted` fixture
//! logs `scripted ran <id> act=<act> attempt=<n> … replay=<bool>`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Gridfn, KEY, component, event};

/// gridfn with the `scripted` handler and these extra `[server]` keys.
fn start(server: &str) -> Gridfn {
    Gridfn::start_with_server(
        server,
        &format!("[[handler]]\nname = \"scripted\"\nmodule = {:?}\n", component("scripted")),
    )
}

/// `count` Event Grid events doing `act`, ids `<prefix>-<n>`, in a file.
fn event_file(dir: &Path, prefix: &str, count: usize, act: &str) -> PathBuf {
    let events: Vec<Value> =
        (0..count).map(|n| event(&format!("{prefix}-{n}"), serde_json::json!({ "act": act }))).collect();
    let path = dir.join(format!("{prefix}.json"));
    std::fs::write(&path, serde_json::to_vec(&events).unwrap()).unwrap();
    path
}

/// What one `gridfn send` printed and how it ended.
struct Sent {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Sent {
    fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    /// The `--json` summary.
    fn summary(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", self.stdout, self.stderr))
    }
}

fn send(args: &[&str]) -> Sent {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_gridfn")).arg("send").args(args).output().unwrap();
    Sent {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `gridfn send --to <gridfn>/api/events --key KEY --json OPTIONS… FILE`.
fn send_to(gridfn: &Gridfn, options: &[&str], file: &Path) -> Sent {
    let url = gridfn.url("/api/events");
    send(&[&["--to", &url, "--key", KEY, "--json"], options, &[file.to_str().unwrap()]].concat())
}

/// The handler's runs of `id`: (attempt, replay) each.
fn runs(gridfn: &Gridfn, id: &str) -> Vec<(u32, bool)> {
    let needle = format!("scripted ran {id} ");
    gridfn
        .log_lines()
        .iter()
        .filter_map(|line| line.split(&needle).nth(1))
        .map(|rest| {
            let attempt = rest.split("attempt=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
            (attempt, rest.contains("replay=true"))
        })
        .collect()
}

/// The dead-letter blobs under `root`, each with its relative path.
fn blobs(root: &Path) -> Vec<(String, Vec<Value>)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                found.push((relative, serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()));
            }
        }
    }
    found
}

/// The synchronous handshake first, then ten events in deliveries of at
/// most four: three requests, every event run once, as a first attempt.
#[test]
fn validates_synchronously_then_delivers_in_batches() {
    let gridfn = start("");
    let dir = tempfile::tempdir().unwrap();
    let file = event_file(dir.path(), "batch", 10, "");
    let sent = send_to(&gridfn, &["--max-events-per-batch", "4"], &file).expect(0);
    assert!(sent.stderr.contains("validation code in its answer"), "{}", sent.stderr);
    let summary = sent.summary();
    assert_eq!(summary["events"]["published"], 10, "{summary}");
    assert_eq!(summary["events"]["batches"], 3, "{summary}");
    assert_eq!(summary["events"]["delivered"], 10, "{summary}");
    assert_eq!(summary["answers"]["200"], 3, "{summary}");
    for p in ["p50", "p99", "max"] {
        assert!(summary["latency_ms"][p].as_f64().unwrap() > 0.0, "{summary}");
    }
    assert_eq!(gridfn.log_count("answered Event Grid's subscription validation"), 1);
    for n in 0..10 {
        assert_eq!(runs(&gridfn, &format!("batch-{n}")), vec![(0, false)]);
    }

    // A preferred size of 1 KB holds k events of s bytes while
    // 2 + k·s + (k − 1) ≤ 1024 (brackets and commas).
    let file = event_file(dir.path(), "sized", 10, "");
    let size = serde_json::to_vec(&event("sized-0", serde_json::json!({ "act": "" }))).unwrap().len();
    let per_batch = 1023 / (size + 1);
    let expected = 10usize.div_ceil(per_batch);
    assert!(expected > 1 && expected < 10, "the events are {size} bytes");
    let options = ["--max-events-per-batch", "100", "--preferred-batch-size-kb", "1"];
    let summary = send_to(&gridfn, &options, &file).expect(0).summary();
    assert_eq!(summary["events"]["batches"], expected, "{summary}");
    assert_eq!(summary["events"]["delivered"], 10, "{summary}");
}

/// An endpoint that answers the handshake without a code is validated when
/// it GETs the validation URL, which `send` serves; gridfn does that with
/// `validation = "auto-url"` for hosts in `event_grid_domains`.
#[test]
fn validates_through_the_validation_url() {
    let gridfn = start("validation = \"auto-url\"\nevent_grid_domains = [\"127.0.0.1\"]");
    let dir = tempfile::tempdir().unwrap();
    let file = event_file(dir.path(), "by-url", 1, "");
    let sent = send_to(&gridfn, &["--validation-timeout", "30s"], &file).expect(0);
    assert!(sent.stderr.contains("GET of the validation URL"), "{}", sent.stderr);
    assert_eq!(gridfn.log_count("subscription validated through its validation URL"), 1);
    assert_eq!(runs(&gridfn, "by-url-0"), vec![(0, false)]);

    // Without the GET (gridfn refuses URLs outside its domains), nothing is delivered.
    let refusing = start("validation = \"auto-url\"");
    let sent = send_to(&refusing, &["--validation-timeout", "1s"], &file).expect(1);
    assert!(sent.stderr.contains("was not validated"), "{}", sent.stderr);
    assert!(runs(&refusing, "by-url-0").is_empty());
}

/// CloudEvents: the OPTIONS handshake, then the events; an endpoint that
/// does not allow Event Grid's origin gets nothing.
#[test]
fn cloudevents_get_the_options_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Value> = (0..3)
        .map(|n| {
            serde_json::json!({
                "specversion": "1.0", "id": format!("ce-{n}"), "source": "/orders", "type": "com.example.order",
                "subject": format!("orders/{n}"), "datacontenttype": "application/json", "data": { "act": "" }
            })
        })
        .collect();
    let file = dir.path().join("ce.json");
    std::fs::write(&file, serde_json::to_vec(&events).unwrap()).unwrap();

    let gridfn = start("");
    let sent = send_to(&gridfn, &["--max-events-per-batch", "2"], &file).expect(0);
    assert!(sent.stderr.contains("allowed origin eventgrid.azure.net"), "{}", sent.stderr);
    assert_eq!(sent.summary()["events"]["batches"], 2);
    assert_eq!(gridfn.log_count("answered the CloudEvents abuse-protection handshake"), 1);
    for n in 0..3 {
        assert_eq!(runs(&gridfn, &format!("ce-{n}")), vec![(0, false)]);
    }

    let elsewhere = start("event_grid_domains = [\"example.org\"]");
    let sent = send_to(&elsewhere, &[], &file).expect(1);
    assert!(sent.stderr.contains("without WebHook-Allowed-Origin"), "{}", sent.stderr);
    assert!(runs(&elsewhere, "ce-0").is_empty());
}

/// A 503 is retried on Event Grid's schedule (10 s first, here scaled to
/// 100 ms), with `aeg-delivery-count` counting up.
#[test]
fn a_503_is_retried_on_the_scaled_schedule() {
    let gridfn = start("");
    let dir = tempfile::tempdir().unwrap();
    let file = event_file(dir.path(), "flaky", 1, "retry-first");
    let summary = send_to(&gridfn, &["--time-scale", "0.01"], &file).expect(0).summary();
    assert_eq!(summary["answers"]["503"], 1, "{summary}");
    assert_eq!(summary["answers"]["200"], 1, "{summary}");
    assert_eq!(summary["retries"], 1, "{summary}");
    assert!(summary["seconds"].as_f64().unwrap() >= 0.1, "waited the scaled 10 s: {summary}");
    assert_eq!(runs(&gridfn, "flaky-0"), vec![(0, false), (1, false)]);
}

/// A 400 is not retried: the event is dead-lettered at once, in Event
/// Grid's layout and format, and `gridfn replay` puts it through.
#[test]
fn a_400_is_dead_lettered_at_once_and_replays() {
    let gridfn = start("");
    let dir = tempfile::tempdir().unwrap();
    let file = event_file(dir.path(), "refused", 2, "");
    let dead = dir.path().join("dead");
    // gridfn answers 400 to a metadata version it does not speak.
    let dead_arg = dead.to_str().unwrap();
    let options = ["--header", "aeg-metadata-version: 2", "--max-events-per-batch", "2", "--dead-letter", dead_arg];
    let summary = send_to(&gridfn, &options, &file).expect(2).summary();
    assert_eq!(summary["answers"]["400"], 1, "not retried: {summary}");
    assert_eq!(summary["requests"], 1, "{summary}");
    assert_eq!(summary["events"]["dead_lettered"], 2, "{summary}");
    assert!(runs(&gridfn, "refused-0").is_empty());

    let blobs = blobs(&dead);
    assert_eq!(blobs.len(), 1, "one blob for the batch");
    let (name, records) = &blobs[0];
    let parts: Vec<&str> = name.split('/').collect();
    assert_eq!(parts[0], "GRIDFN-SEND");
    assert_eq!(parts.len(), 6, "<SUB>/<y>/<m>/<d>/<h>/<uuid>.json: {name}");
    assert!(parts[2..5].iter().all(|p| !p.starts_with('0') || *p == "0"), "not zero-padded: {name}");
    assert_eq!(records.len(), 2);
    let record = &records[0];
    assert_eq!(record["id"], "refused-0");
    assert_eq!(record["data"]["act"], "");
    assert_eq!(record["deadLetterReason"], "UndeliverableDueToHttpBadRequest");
    assert_eq!(record["lastDeliveryOutcome"], "BadRequest");
    assert_eq!(record["lastHttpStatusCode"], 400);
    assert_eq!(record["deliveryAttempts"], 1);
    for time in ["publishTime", "lastDeliveryAttemptTime"] {
        assert!(chrono::DateTime::parse_from_rfc3339(record[time].as_str().unwrap()).is_ok(), "{record}");
    }

    // `gridfn replay` reads the folder and puts both events through gridfn.
    let replay_dir = tempfile::tempdir().unwrap();
    let manifest = replay_dir.path().join("gridfn.toml");
    let state = replay_dir.path().join("state");
    let handler = format!("[[handler]]\nname = \"scripted\"\nmodule = {:?}\n", component("scripted"));
    std::fs::write(&manifest, format!("[server]\nkeys = [\"{KEY}\"]\nstate_dir = {state:?}\n\n{handler}")).unwrap();
    let to = format!("{}/api/events/{{handler}}", gridfn.base);
    let output = Command::new(env!("CARGO_BIN_EXE_gridfn"))
        .args(["replay", dead.to_str().unwrap(), "--handler", "scripted", "--to", &to, "--key", KEY, "--json"])
        .arg("--config")
        .arg(&manifest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let replayed: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(replayed["total"]["succeeded"], 2, "{replayed}");
    for n in 0..2 {
        assert_eq!(runs(&gridfn, &format!("refused-{n}")), vec![(1, true)], "a replay, after one attempt");
    }
}

/// A batch that keeps failing is dead-lettered after max delivery attempts.
#[test]
fn dead_letters_after_max_delivery_attempts() {
    let gridfn = start("");
    let dir = tempfile::tempdir().unwrap();
    let file = event_file(dir.path(), "doomed", 1, "retry");
    let dead = dir.path().join("dead");
    let dead_arg = dead.to_str().unwrap();
    let options = [
        "--max-delivery-attempts",
        "3",
        "--time-scale",
        "0.001",
        "--dead-letter",
        dead_arg,
        "--subscription",
        "orders",
    ];
    let summary = send_to(&gridfn, &options, &file).expect(2).summary();
    assert_eq!(summary["answers"]["503"], 3, "{summary}");
    assert_eq!(summary["events"]["reasons"]["MaxDeliveryAttemptsExceeded"], 1, "{summary}");
    assert_eq!(runs(&gridfn, "doomed-0"), vec![(0, false), (1, false), (2, false)]);
    let blobs = blobs(&dead);
    let (name, records) = &blobs[0];
    assert!(name.starts_with("ORDERS/"), "{name}");
    assert_eq!(records[0]["deadLetterReason"], "MaxDeliveryAttemptsExceeded");
    assert_eq!(records[0]["deliveryAttempts"], 3);
    assert_eq!(records[0]["lastDeliveryOutcome"], "ServiceUnavailable");
    assert_eq!(records[0]["lastHttpStatusCode"], 503);
}

/// Past its time to live, a batch is dead-lettered when its next attempt
/// comes due, however many attempts are left. At 0.005, the 1-minute TTL
/// is 300 ms and the waits 50, 150, 300 ms: the third wait ends past it.
#[test]
fn dead_letters_after_the_time_to_live() {
    let gridfn = start("");
    let dir = tempfile::tempdir().unwrap();
    let file = event_file(dir.path(), "stale", 1, "retry");
    let dead = dir.path().join("dead");
    let options = ["--event-ttl", "1", "--time-scale", "0.005", "--dead-letter", dead.to_str().unwrap()];
    let summary = send_to(&gridfn, &options, &file).expect(2).summary();
    assert_eq!(summary["events"]["reasons"]["TimeToLiveExceeded"], 1, "{summary}");
    let attempts = summary["answers"]["503"].as_u64().unwrap();
    assert!((2..=3).contains(&attempts), "{summary}");
    let blobs = blobs(&dead);
    assert_eq!(blobs[0].1[0]["deadLetterReason"], "TimeToLiveExceeded");
    assert_eq!(blobs[0].1[0]["deliveryAttempts"], attempts);
}

/// A load: `--rate` events per second for `--duration`, each with a fresh
/// id from the template, so every one runs; the summary has percentiles.
#[test]
fn a_load_publishes_at_the_rate_with_fresh_ids() {
    let gridfn = start("");
    let dir = tempfile::tempdir().unwrap();
    let mut template = event("load-{{uuid}}", serde_json::json!({ "act": "" }));
    template["subject"] = "/load/{{seq}}".into();
    let file = dir.path().join("template.json");
    std::fs::write(&file, serde_json::to_vec(&template).unwrap()).unwrap();
    let options = ["--rate", "40", "--duration", "1s", "--concurrency", "2"];
    let summary = send_to(&gridfn, &options, &file).expect(0).summary();
    let published = summary["events"]["published"].as_u64().unwrap();
    assert!((36..=41).contains(&published), "40/s for 1 s: {summary}");
    assert_eq!(summary["events"]["delivered"], published, "{summary}");
    assert_eq!(summary["requests"], published, "one event per delivery by default: {summary}");
    assert!(summary["latency_ms"]["p99"].as_f64().unwrap() >= summary["latency_ms"]["p50"].as_f64().unwrap());

    let ids: std::collections::HashSet<String> = gridfn
        .log_lines()
        .iter()
        .filter_map(|line| line.split("scripted ran load-").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len() as u64, published, "each event had its own id and ran once");
    assert!(ids.iter().all(|id| uuid::Uuid::parse_str(id).is_ok()), "{ids:?}");
}
