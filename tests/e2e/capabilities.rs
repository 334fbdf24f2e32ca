//! Capabilities beyond the event itself: outbound HTTP to allowed hosts only,
//! publishing events (to the local topic and to an Event Grid topic),
//! structured log fields, kv state kept in a shared Redis, and kv writes that
//! take effect only with the run's record.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::support::{Gridfn, KEY, batch, component, event};

/// A plain HTTP/1.1 server on a loopback port that answers every request
/// with `pong` and remembers each request's first line.
pub(crate) struct PongServer {
    pub(crate) port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl PongServer {
    pub(crate) fn start() -> PongServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                // The whole request, body included: closing a socket with
                // unread bytes sends a reset, which can beat the answer.
                let (mut line, mut body, mut chunked) = (String::new(), 0, false);
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some((name, value)) = line.split_once(':') {
                        let (name, value) = (name.to_ascii_lowercase(), value.trim().to_ascii_lowercase());
                        body = if name == "content-length" { value.parse().unwrap_or(0) } else { body };
                        chunked |= name == "transfer-encoding" && value == "chunked";
                    }
                    line.clear();
                }
                let _ = std::io::Read::read_exact(&mut reader, &mut vec![0; body]);
                // Chunks until the last (size 0) and its blank line.
                while chunked {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                    let _ = std::io::Read::read_exact(&mut reader, &mut vec![0; size + 2]);
                    chunked = size > 0;
                }
                seen.lock().unwrap().push(first.trim().to_owned());
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong");
            }
        });
        PongServer { port, requests }
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn http_handler(name: &str, allowed: &str) -> String {
    format!(
        "[[handler]]\nname = \"{name}\"\nmodule = {:?}\ntimeout = \"5s\"\n[handler.capabilities]\nallowed_outbound_hosts = [{allowed}]\n",
        component("scripted")
    )
}

#[test]
fn outbound_http_reaches_allowed_hosts_only() {
    let server = PongServer::start();
    let port = server.port;
    let gridfn = Gridfn::start(&format!(
        "{}\n{}",
        http_handler("caller", &format!("\"http://127.0.0.1:{port}\"")),
        http_handler("ungranted", "")
    ));

    let allowed = json!({"act": "http", "url": format!("http://127.0.0.1:{port}/ping?x=1")});
    let response = gridfn.notify("/api/events/caller", batch(&[event("http-ok", allowed)]));
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("http status=200 body=pong"), 1, "{}", gridfn.log_text());
    assert_eq!(server.requests(), vec!["GET /ping?x=1 HTTP/1.1".to_owned()]);

    // Same server, other names for it, other ports: all refused inside the
    // handler, none reaches the network.
    for (id, url) in [
        ("http-host", format!("http://localhost:{port}/ping")),
        ("http-port", format!("http://127.0.0.1:{}/ping", port.wrapping_add(1).max(1))),
        ("http-scheme", format!("https://127.0.0.1:{port}/ping")),
    ] {
        let response = gridfn.notify("/api/events/caller", batch(&[event(id, json!({"act": "http", "url": url}))]));
        let verdict: Value = response.json().unwrap();
        assert_eq!(verdict["rejected"], 1, "{id}: {verdict}");
    }
    let denied = json!({"act": "http", "url": format!("http://127.0.0.1:{port}/ping")});
    let response = gridfn.notify("/api/events/ungranted", batch(&[event("http-ungranted", denied)]));
    assert_eq!(response.json::<Value>().unwrap()["rejected"], 1);

    assert_eq!(server.requests().len(), 1, "denied requests never reach the server: {:?}", server.requests());
    assert_eq!(gridfn.log_count("gridfn denied the request: the host is not in allowed_outbound_hosts"), 4);
    assert_eq!(gridfn.log_count("outbound request denied"), 4);
    assert!(gridfn.log_count("http://localhost:") > 0, "the host log names the refused host");
}

fn stage(name: &str, filter_type: &str, publish: &str) -> String {
    format!(
        "[[handler]]\nname = \"{name}\"\nmodule = {:?}\n[handler.filter]\nincludedEventTypes = [\"{filter_type}\"]\n\
         [handler.capabilities]\n{publish}\n",
        component("scripted")
    )
}

fn start_event(id: &str, then: &str, events: Value) -> Value {
    let mut start = event(id, json!({"act": "publish", "then": then, "events": events}));
    start["eventType"] = json!("Test.Start");
    start
}

#[test]
fn events_published_to_the_local_topic_run_through_the_pipeline_once() {
    let gridfn = Gridfn::start(&format!(
        "{}{}",
        stage("stored", "Test.Start", "publish = \"local\""),
        stage("indexed", "Test.Next", ""),
    ));
    let next = json!([
        {"type": "Test.Next", "subject": "docs/a.md", "data": {"act": "ok"}},
        {"type": "Test.Next", "data": {"act": "ok"}},
        {"type": "Test.Elsewhere", "data": {}}
    ]);
    let body = batch(&[start_event("doc-1", "", next.clone())]);
    let response = gridfn.notify("/api/events", body.clone());
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("scripted ran doc-1:stored:0 act=ok"), 1, "{}", gridfn.log_text());
    assert_eq!(gridfn.log_count("scripted ran doc-1:stored:1 act=ok"), 1);
    assert_eq!(gridfn.events("indexed", "success"), 2.0);
    assert_eq!(gridfn.events("*", "unmatched"), 1.0, "Test.Elsewhere matched no handler");

    // Event Grid redelivers: nothing runs twice.
    assert_eq!(gridfn.notify("/api/events", body).status(), 200);
    assert_eq!(gridfn.log_count("scripted ran doc-1:stored:0"), 1);

    // A handler that fails after publishing sends nothing.
    let failed = gridfn.notify("/api/events", batch(&[start_event("doc-2", "retry", next)]));
    assert_eq!(failed.status(), 503);
    assert_eq!(gridfn.log_count("doc-2:stored:"), 0, "{}", gridfn.log_text());
}

#[test]
fn a_failing_downstream_handler_retries_the_publisher_and_a_loop_is_cut() {
    let gridfn = Gridfn::start(&format!(
        "{}{}{}",
        stage("stored", "Test.Start", "publish = \"local\""),
        stage("indexed", "Test.Next", ""),
        stage("echo", "Test.Echo", "publish = \"local\""),
    ));
    let body = batch(&[start_event("doc-3", "", json!([{"type": "Test.Next", "data": {"act": "retry"}}]))]);
    let response = gridfn.notify("/api/events", body);
    assert_eq!(response.status(), 503);
    let reason = response.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("1 of the 1 events it published must be retried"), "{reason}");
    assert!(reason.contains("doc-3:stored:0 in indexed: scripted retry"), "{reason}");

    // `echo` publishes what it consumes: a loop, cut after 8 hops and dead-lettered.
    let echo = json!({"act": "publish", "events": [{"type": "Test.Echo", "data": {"act": "publish", "events": []}}]});
    let mut looping = event("loop-1", json!({}));
    looping["eventType"] = json!("Test.Echo");
    looping["data"] = json!({"act": "publish", "events": [{"type": "Test.Echo", "data": echo}]});
    let response = gridfn.notify("/api/events", batch(&[looping]));
    assert_eq!(response.status(), 200, "{}", gridfn.log_text());
    assert_eq!(gridfn.log_count("local hops deep"), 0, "two hops is not a loop");

    let mut deep = json!({"act": "publish", "events": []});
    for _ in 0..10 {
        deep = json!({"act": "publish", "events": [{"type": "Test.Echo", "data": deep}]});
    }
    let mut looping = event("loop-2", json!({}));
    looping["eventType"] = json!("Test.Echo");
    looping["data"] = deep;
    let response = gridfn.notify("/api/events", batch(&[looping]));
    assert_eq!(response.status(), 200);
    assert_eq!(gridfn.log_count("published events went 8 local hops deep"), 1, "{}", gridfn.log_text());
    assert_eq!(gridfn.events("echo", "reject"), 1.0);
}

#[test]
fn events_published_to_an_event_grid_topic_arrive_as_a_cloudevents_batch() {
    // The "topic" is a second gridfn: it accepts only what Event Grid's
    // publishers send (aeg-sas-key, application/cloudevents-batch+json).
    let topic = Gridfn::start(&format!("[[handler]]\nname = \"subscriber\"\nmodule = {:?}\n", component("scripted")));
    let publisher = Gridfn::start(&format!(
        "{}{}",
        stage(
            "stored",
            "Test.Start",
            &format!("publish = {{ endpoint = \"{}\", key = \"{KEY}\" }}", topic.url("/api/events"))
        ),
        stage(
            "wrong-key",
            "Test.Other",
            &format!("publish = {{ endpoint = \"{}\", key = \"nope\" }}", topic.url("/api/events"))
        ),
    ));
    let events = json!([{"type": "Contoso.Indexed", "subject": "docs/b.md", "data": {"act": "ok", "chunks": 3}}]);
    let response = publisher.notify("/api/events", batch(&[start_event("doc-9", "", events.clone())]));
    assert_eq!(response.status(), 200, "{}", publisher.log_text());
    assert_eq!(topic.log_count("scripted ran doc-9:stored:0 act=ok"), 1, "{}", topic.log_text());

    let mut other = start_event("doc-10", "", events);
    other["eventType"] = json!("Test.Other");
    let response = publisher.notify("/api/events", batch(&[other]));
    assert_eq!(response.status(), 503);
    let reason = response.json::<Value>().unwrap()["retry"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("publishing its 1 events failed") && reason.contains("401"), "{reason}");
}

#[test]
fn log_fields_follow_the_message_and_log_can_be_denied() {
    let gridfn = Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {m:?}\n\
         [[handler]]\nname = \"silent\"\nmodule = {m:?}\n[handler.capabilities]\nlog = false\n",
        m = component("scripted")
    ));
    let response = gridfn.notify("/api/events/scripted", batch(&[event("fields-1", json!({"act": "log-fields"}))]));
    assert_eq!(response.status(), 200);
    let line = gridfn.log_lines().into_iter().find(|l| l.contains("structured")).expect("the structured line");
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(r#"structured blob="a b.md" chunks=3"#), "{line}");
    assert!(line.contains(r#"event_id="fields-1""#), "{line}");

    for (id, act) in [("quiet-1", "log-fields"), ("quiet-2", "print"), ("quiet-3", "log-flood")] {
        let response = gridfn.notify("/api/events/silent", batch(&[event(id, json!({"act": act}))]));
        assert_eq!(response.status(), 200);
    }
    assert_eq!(gridfn.log_count("quiet-"), 0, "a handler without log says nothing: {}", gridfn.log_text());
    assert_eq!(gridfn.log_count("log budget"), 0);
}

/// With `dedup.store = "redis"`, a handler's kv state lives in that Redis:
/// two hosts count events through `kv` at the same time, every event counts
/// once (a redelivery is a duplicate and counts nothing), and the count is
/// there in Redis itself. (What each run's `increment` answers is the count
/// recorded before it plus its own: runs in flight at once may see the same.)
#[test]
fn kv_state_lives_in_the_shared_redis() {
    let redis = crate::support::redis_server();
    let manifest = format!(
        "[dedup]\nstore = \"redis\"\nurl = \"{}\"\n[[handler]]\nname = \"counter\"\nmodule = {:?}\n\
         [handler.capabilities]\nkv = true\n",
        redis.url,
        component("scripted")
    );
    let (a, b) = (Gridfn::start(&manifest), Gridfn::start(&manifest));
    let delivery =
        |n: usize| batch(&(0..10).map(|i| event(&format!("count-{n}-{i}"), json!({"act": "kv"}))).collect::<Vec<_>>());
    std::thread::scope(|scope| {
        for n in 0..4 {
            let host = if n % 2 == 0 { &a } else { &b };
            scope.spawn(move || assert_eq!(host.notify("/api/events/counter", delivery(n)).status(), 200));
        }
    });
    assert_eq!(b.notify("/api/events/counter", delivery(0)).status(), 200, "a redelivery to the other host");

    // The scripted handler counts under "runs"; kv keys sit under
    // `<key_prefix>kv:` and the length-prefixed handler name.
    let mut connection = redis::Client::open(redis.url.as_str()).unwrap().get_connection().unwrap();
    let count: Option<String> = redis::cmd("GET").arg("gridfn:dedup:kv:7:counterruns").query(&mut connection).unwrap();
    assert_eq!(count.as_deref(), Some("40"), "{}\n{}", a.log_text(), b.log_text());
    assert_eq!(a.log_count("kv count=Ok(") + b.log_count("kv count=Ok("), 40, "every event counted, once");
    assert_eq!(a.events("counter", "success") + b.events("counter", "success"), 40.0);
}

const ADMIN_KEY: &str = "admin-secret";

/// A handler's kv as (key, text) pairs, through the admin API.
fn kv_pairs(gridfn: &Gridfn, handler: &str) -> Vec<(String, String)> {
    let response = reqwest::blocking::Client::new()
        .get(gridfn.url(&format!("/admin/kv/{handler}")))
        .header("x-gridfn-admin-key", ADMIN_KEY)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "listing {handler}'s kv");
    let listing: Value = response.json().unwrap();
    let entries = listing["entries"].as_array().unwrap();
    entries.iter().map(|e| (e["key"].as_str().unwrap().into(), e["value"].as_str().unwrap().into())).collect()
}

/// On one host with the embedded store, a run's kv writes take effect only
/// with its record: a run that writes and then traps, or asks for a retry,
/// leaves nothing (though it read its own writes while it ran); one that
/// succeeds, or is dead-lettered, leaves exactly its writes, once, and a
/// redelivery of it adds nothing; `kill -9` and a restart keep them.
#[test]
fn kv_writes_take_effect_only_with_the_runs_record() {
    let manifest = format!(
        "[[handler]]\nname = \"writer\"\nmodule = {:?}\n[handler.capabilities]\nkv = true\n",
        component("scripted")
    );
    let gridfn = Gridfn::start_with_server(&format!("admin_keys = [{ADMIN_KEY:?}]"), &manifest);
    let send = |gridfn: &Gridfn, id: &str, then: &str| {
        let delivery = batch(&[event(id, json!({"act": "kv-then", "then": then}))]);
        gridfn.notify("/api/events/writer", delivery).status().as_u16()
    };
    assert_eq!(send(&gridfn, "trapped", "trap"), 503);
    assert_eq!(send(&gridfn, "retried", "retry"), 503);
    assert_eq!(
        gridfn.log_count("kv-then retried own=Ok(Some([49])) writes=Ok(1)"),
        1,
        "a run reads its own writes: {}",
        gridfn.log_text()
    );
    assert_eq!(kv_pairs(&gridfn, "writer"), vec![], "a trapped or retried run leaves no kv trace");

    assert_eq!(send(&gridfn, "succeeded", "success"), 200);
    let once = [("seen/succeeded", "1"), ("writes", "1")].map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec();
    assert_eq!(kv_pairs(&gridfn, "writer"), once, "a success leaves exactly its writes");
    assert_eq!(send(&gridfn, "succeeded", "success"), 200, "a redelivery");
    assert_eq!(kv_pairs(&gridfn, "writer"), once, "...is a duplicate and writes nothing");

    assert_eq!(send(&gridfn, "rejected", "reject"), 200);
    // The trapped event, redelivered, succeeds this time.
    assert_eq!(send(&gridfn, "trapped", "success"), 200);
    let all = [("seen/rejected", "1"), ("seen/succeeded", "1"), ("seen/trapped", "1"), ("writes", "3")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
    assert_eq!(kv_pairs(&gridfn, "writer"), all, "a dead-lettered run's writes are recorded with it");

    let gridfn = gridfn.crash_and_restart();
    assert_eq!(kv_pairs(&gridfn, "writer"), all, "kv survives kill -9 with its records");
    assert_eq!(send(&gridfn, "retried", "success"), 200);
    assert_eq!(kv_pairs(&gridfn, "writer").last(), Some(&("writes".to_owned(), "4".to_owned())));
}
