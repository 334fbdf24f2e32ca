//! What an operator sees: the metrics as a real Prometheus server scrapes
//! them, `/healthz` and `/readyz` around a Redis outage, and W3C trace
//! context carried through logs and published events.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gridfn, KEY, batch, component, event, free_port, redis_server, repo};

/// A Prometheus server (Debian's `prometheus`; `scripts/test` installs it)
/// scraping one gridfn every second, on a free loopback port, its data in a
/// temporary folder. Killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    client: reqwest::blocking::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(gridfn: &Gridfn) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: gridfn\n    \
                 static_configs:\n      - targets: ['{}']\n",
                gridfn.addr()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is not installed: run scripts/test, or apt-get install prometheus");
        let prometheus = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap(),
            _dir: dir,
        };
        wait_until(Duration::from_secs(30), "Prometheus to be ready", || {
            prometheus.client.get(format!("{}/-/ready", prometheus.base)).send().is_ok_and(|r| r.status() == 200)
        });
        prometheus
    }

    /// An instant query's single value, `None` while it has no result.
    fn value(&self, query: &str) -> Option<f64> {
        let answer: Value = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", query)])
            .send()
            .ok()?
            .json()
            .ok()?;
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        let result = answer["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{query} has several series: {answer}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` is `expected` (Prometheus scrapes every second).
    fn wait_for(&self, query: &str, expected: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query);
            if last == Some(expected) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{query} is {last:?} in Prometheus, expected {expected}");
    }

    /// Every metric name Prometheus has stored.
    fn names(&self) -> Vec<String> {
        let answer: Value =
            self.client.get(format!("{}/api/v1/label/__name__/values", self.base)).send().unwrap().json().unwrap();
        serde_json::from_value(answer["data"].clone()).unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

fn scripted(name: &str, rest: &str) -> String {
    format!("[[handler]]\nname = \"{name}\"\nmodule = {:?}\n{rest}\n", component("scripted"))
}

/// A namespace push subscription, so the pull sources' series exist too.
const PUSH_SUBSCRIPTION: &str = "[namespace]\n[[namespace.topic]]\nname = \"jobs\"\n\
    [[namespace.topic.subscription]]\nname = \"runner\"\ndelivery = \"push\"\nhandler = \"follower\"\n";

#[test]
fn metrics_change_as_events_flow_as_prometheus_scrapes_them() {
    let gridfn = Gridfn::start(&format!(
        "{}{}{PUSH_SUBSCRIPTION}",
        scripted(
            "worker",
            "max_concurrency = 1\nqueue = 8\nretry = { attempts = 2, backoff = \"fixed\", initial = \"10ms\" }\n\
             [handler.filter]\nincludedEventTypes = [\"Microsoft.Storage.BlobCreated\"]\n\
             [handler.capabilities]\npublish = \"local\""
        ),
        scripted("follower", "[handler.filter]\nincludedEventTypes = [\"Test.Next\"]"),
    ));
    let prometheus = Prometheus::scraping(&gridfn);
    // Every series exists before the first event.
    prometheus.wait_for(r#"gridfn_events_total{handler="worker",outcome="success"}"#, 0.0);
    prometheus.wait_for(r#"gridfn_instances_in_flight{handler="worker"}"#, 0.0);

    let published = json!([{"type": "Test.Next", "data": {"act": "ok"}}, {"type": "Test.Nobody", "data": {}}]);
    let oks = batch(&[
        event("ok-1", json!({"act": "ok"})),
        event("ok-2", json!({"act": "ok"})),
        event("pub-1", json!({"act": "publish", "events": published})),
    ]);
    assert_eq!(gridfn.notify("/api/events", oks.clone()).status(), 200, "{}", gridfn.log_text());
    assert_eq!(gridfn.notify("/api/events", oks).status(), 200, "a redelivery is acknowledged");
    let rejected = gridfn.notify("/api/events", batch(&[event("bad-1", json!({"act": "reject"}))]));
    assert_eq!(rejected.status(), 200, "dead-lettered");
    let retried = gridfn.notify("/api/events", batch(&[event("later-1", json!({"act": "retry"}))]));
    assert_eq!(retried.status(), 503, "retried locally once, then left to Event Grid");
    let refused = gridfn.post("/api/events", "[]", &[("aeg-event-type", "Notification")]);
    assert_eq!(refused.status(), 401);

    let worker = |metric: &str, extra: &str| format!("{metric}{{handler=\"worker\"{extra}}}");
    prometheus.wait_for(&worker("gridfn_events_total", r#",outcome="success""#), 3.0);
    prometheus.wait_for(&worker("gridfn_events_total", r#",outcome="duplicate""#), 3.0);
    prometheus.wait_for(&worker("gridfn_events_total", r#",outcome="reject""#), 1.0);
    prometheus.wait_for(&worker("gridfn_events_total", r#",outcome="retry""#), 1.0);
    prometheus.wait_for(r#"gridfn_events_total{handler="follower",outcome="success"}"#, 1.0);
    prometheus.wait_for(r#"gridfn_events_total{handler="*",outcome="unmatched"}"#, 1.0);
    prometheus.wait_for(r#"gridfn_deliveries_total{status="200"}"#, 3.0);
    prometheus.wait_for(r#"gridfn_deliveries_total{status="503"}"#, 1.0);
    prometheus.wait_for(r#"gridfn_deliveries_total{status="401"}"#, 1.0);
    prometheus.wait_for(&worker("gridfn_dedup_claims_total", r#",result="done""#), 3.0);
    prometheus.wait_for(&worker("gridfn_dedup_claims_total", r#",result="run""#), 5.0);
    prometheus.wait_for(&worker("gridfn_dead_letter_writes_total", r#",result="written""#), 1.0);
    prometheus.wait_for(&worker("gridfn_local_retries_total", ""), 1.0);
    prometheus.wait_for(&worker("gridfn_published_events_total", r#",destination="local""#), 2.0);
    // ok ×2, publish, reject, retry twice: six runs, each a fresh instance.
    prometheus.wait_for(&worker("gridfn_handler_duration_seconds_count", ""), 6.0);
    prometheus.wait_for(&worker("gridfn_instantiation_seconds_count", ""), 6.0);
    prometheus.wait_for(&worker("gridfn_instances_in_flight", ""), 0.0);
    prometheus.wait_for(r#"up{job="gridfn"}"#, 1.0);

    // The Grafana dashboard's queries name series Prometheus really has.
    let stored = prometheus.names();
    let dashboard = std::fs::read_to_string(repo("samples/grafana/gridfn.json")).unwrap();
    let mut rest = dashboard.as_str();
    let mut checked = 0;
    while let Some(at) = rest.find("gridfn_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        assert!(stored.contains(&name), "the dashboard queries {name}, which Prometheus never scraped: {stored:?}");
        checked += 1;
    }
    assert!(checked > 10, "the dashboard names only {checked} metrics");
}

#[test]
fn instances_in_flight_and_queued_show_while_a_handler_is_busy() {
    let gridfn = Gridfn::start(&scripted("slow", "max_concurrency = 1\nqueue = 8"));
    let senders: Vec<_> = (0..3)
        .map(|n| {
            let body = batch(&[event(&format!("slow-{n}"), json!({"act": "sleep"}))]);
            let url = gridfn.url("/api/events");
            std::thread::spawn(move || {
                reqwest::blocking::Client::new()
                    .post(url)
                    .header("aeg-event-type", "Notification")
                    .header("aeg-sas-key", KEY)
                    .body(body)
                    .send()
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let (mut most_running, mut most_queued) = (0.0f64, 0.0f64);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !senders.iter().all(|s| s.is_finished()) {
        most_running = most_running.max(gridfn.metric(r#"gridfn_instances_in_flight{handler="slow"}"#));
        most_queued = most_queued.max(gridfn.metric(r#"gridfn_instances_queued{handler="slow"}"#));
        std::thread::sleep(Duration::from_millis(20));
    }
    for sender in senders {
        assert_eq!(sender.join().unwrap(), 200);
    }
    assert_eq!(most_running, 1.0, "max_concurrency = 1");
    assert!(most_queued >= 1.0, "three 300 ms events at max_concurrency 1 wait in the queue");
    assert_eq!(gridfn.metric(r#"gridfn_instances_in_flight{handler="slow"}"#), 0.0);
    assert_eq!(gridfn.metric(r#"gridfn_instances_queued{handler="slow"}"#), 0.0);
}

#[test]
fn readyz_fails_while_redis_is_down_and_recovers_when_it_is_back() {
    let redis = redis_server();
    let port = redis.url.rsplit(':').next().unwrap().to_owned();
    let gridfn =
        Gridfn::start(&format!("[dedup]\nstore = \"redis\"\nurl = \"{}\"\n\n{}", redis.url, scripted("h", "")));
    assert_eq!(gridfn.get("/healthz").status(), 200);
    assert_eq!(gridfn.get("/readyz").status(), 200, "{}", gridfn.log_text());
    let ready: Value = gridfn.get("/readyz").json().unwrap();
    assert_eq!(ready, json!({"ready": true, "handlers": 1}));

    drop(redis);
    wait_until(Duration::from_secs(10), "/readyz to fail without Redis", || gridfn.get("/readyz").status() == 503);
    let answer: Value = gridfn.get("/readyz").json().unwrap();
    assert_eq!(answer["ready"], false);
    assert!(answer["problems"][0].as_str().unwrap().starts_with("dedup store"), "{answer}");
    assert_eq!(gridfn.get("/healthz").status(), 200, "the process still serves: not a restart");

    let _back = Restarted(
        Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(15), "/readyz to recover with Redis back", || gridfn.get("/readyz").status() == 200);
    let response = gridfn.notify("/api/events", batch(&[event("after-outage", json!({"act": "ok"}))]));
    assert_eq!(response.status(), 200, "and events run again");
}

/// The redis-server started again on the first one's port; killed when dropped.
struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readyz_fails_while_the_dead_letter_folder_cannot_be_created() {
    let gridfn = Gridfn::start(&format!(
        "[deadletter]\nstore = \"dir\"\npath = \"/proc/gridfn-dead-letters\"\n\n{}",
        scripted("h", "")
    ));
    assert_eq!(gridfn.get("/healthz").status(), 200);
    let response = gridfn.get("/readyz");
    assert_eq!(response.status(), 503);
    let answer: Value = response.json().unwrap();
    assert!(answer["problems"][0].as_str().unwrap().starts_with("dead-letter store"), "{answer}");
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn the_request_traceparent_reaches_spans_json_logs_and_published_events() {
    // The "Event Grid topic" is a second gridfn: the publisher's events
    // arrive there with the CloudEvents `traceparent` extension.
    let topic = Gridfn::start_with_args(&["--log-format", "json"], "", &scripted("subscriber", ""));
    let publisher = Gridfn::start_with_args(
        &["--log-format", "json"],
        "",
        &scripted(
            "stored",
            &format!(
                "[handler.capabilities]\npublish = {{ endpoint = \"{}\", key = \"{KEY}\" }}",
                topic.url("/api/events")
            ),
        ),
    );
    let events = json!([{"type": "Contoso.Indexed", "data": {"act": "ok"}}]);
    let response = publisher.post(
        "/api/events",
        batch(&[event("doc-1", json!({"act": "publish", "events": events}))]),
        &[
            ("aeg-event-type", "Notification"),
            ("aeg-sas-key", KEY),
            ("aeg-delivery-count", "2"),
            ("traceparent", &format!("00-{TRACE_ID}-{PARENT}-01")),
        ],
    );
    assert_eq!(response.status(), 200, "{}", publisher.log_text());

    // The publisher's log: JSON lines; the handler's own line sits in the
    // pair span, under the delivery span, both in the sender's trace.
    let line = handler_line(&publisher, "scripted ran doc-1");
    let pair = &line["span"];
    assert_eq!(pair["name"], "pair", "{line}");
    assert_eq!(pair["trace_id"], TRACE_ID, "{line}");
    assert_eq!(pair["parent_id"], PARENT, "{line}");
    assert_eq!(
        (&pair["event_id"], &pair["handler"], &pair["delivery_count"]),
        (&json!("doc-1"), &json!("stored"), &json!(2))
    );
    assert_eq!(pair["event_type"], "Microsoft.Storage.BlobCreated");
    let delivery = &line["spans"][0];
    assert_eq!(
        (&delivery["name"], &delivery["trace_id"], &delivery["events"]),
        (&json!("delivery"), &json!(TRACE_ID), &json!(1))
    );
    let span_id = pair["span_id"].as_str().unwrap().to_owned();
    assert_ne!(span_id, PARENT);

    // The topic's handler ran in a span whose parent is the publisher's pair:
    // the published event carried traceparent = (trace, that pair's span).
    let handled = handler_line(&topic, "scripted ran doc-1:stored:0");
    assert_eq!(handled["span"]["trace_id"], TRACE_ID, "{handled}");
    assert_eq!(handled["span"]["parent_id"], span_id.as_str(), "{handled}");
    assert!(handled["spans"][0].get("trace_id").is_none(), "the topic's request had no traceparent header: {handled}");
}

/// The JSON log line (`--log-format json`) whose message contains `needle`.
fn handler_line(gridfn: &Gridfn, needle: &str) -> Value {
    let line = gridfn
        .log_lines()
        .into_iter()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in {}", gridfn.log_text()));
    serde_json::from_str(&line).expect("--log-format json writes JSON lines")
}

#[test]
fn without_a_traceparent_each_pair_starts_a_trace_and_its_end_is_logged_with_the_outcome() {
    let gridfn = Gridfn::start_with_args(&["--log-format", "json"], "", &scripted("h", ""));
    let response = gridfn.notify("/api/events", batch(&[event("bad-1", json!({"act": "reject"}))]));
    assert_eq!(response.status(), 200);
    // The line written as the pair's span closes.
    let line = gridfn
        .log_lines()
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("--log-format json writes JSON lines"))
        .find(|line| line["fields"]["message"] == "close" && line["span"]["name"] == "pair")
        .unwrap_or_else(|| panic!("no line for the pair's end in {}", gridfn.log_text()));
    let pair = &line["span"];
    assert!(line["fields"]["time.busy"].is_string(), "{line}");
    assert_eq!(pair["trace_id"].as_str().map(str::len), Some(32), "{line}");
    assert!(pair.get("parent_id").is_none(), "{line}");
    assert_eq!(pair["outcome"], "reject", "{line}");
    assert_eq!(pair["attempt"], 1, "{line}");
}

#[test]
fn an_events_own_traceparent_wins_over_the_requests() {
    let gridfn = Gridfn::start_with_args(&["--log-format", "json"], "", &scripted("h", ""));
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = json!([
        {"specversion": "1.0", "id": "ce-1", "source": "/orders", "type": "Order.Placed", "traceparent": own, "data": {"act": "ok"}},
        {"specversion": "1.0", "id": "ce-2", "source": "/orders", "type": "Order.Placed", "data": {"act": "ok"}}
    ]);
    let response = gridfn.post(
        "/api/events",
        serde_json::to_vec(&body).unwrap(),
        &[
            ("content-type", "application/cloudevents-batch+json; charset=utf-8"),
            ("aeg-sas-key", KEY),
            ("traceparent", &format!("00-{TRACE_ID}-{PARENT}-01")),
        ],
    );
    assert_eq!(response.status(), 200, "{}", gridfn.log_text());
    let first = handler_line(&gridfn, "scripted ran ce-1");
    assert_eq!(first["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c", "{first}");
    assert_eq!(first["span"]["parent_id"], "b7ad6b7169203331", "{first}");
    let second = handler_line(&gridfn, "scripted ran ce-2");
    assert_eq!(second["span"]["trace_id"], TRACE_ID, "{second}");
    assert_eq!(second["span"]["parent_id"], PARENT, "{second}");
}

#[test]
fn the_default_terminal_log_leaves_spans_out() {
    let quiet = Gridfn::start(&scripted("h", ""));
    let traced = &[("aeg-event-type", "Notification"), ("aeg-sas-key", KEY), ("traceparent", EXAMPLE)];
    assert_eq!(quiet.post("/api/events", batch(&[event("quiet-1", json!({"act": "ok"}))]), traced).status(), 200);
    let lines = quiet.log_lines();
    let line = lines.iter().find(|line| line.contains("scripted ran quiet-1")).expect("the handler's line");
    assert!(!line.contains("delivery{") && !line.contains("pair{"), "spans cost microseconds per event: {line}");
}
