//! Never lose an event, never run one twice: duplicates inside a batch,
//! local retries.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Gridfn, batch, component, event};

fn scripted(extra: &str) -> Gridfn {
    Gridfn::start(&format!(
        "[[handler]]\nname = \"scripted\"\nmodule = {:?}\ntimeout = \"2s\"\n{extra}\n",
        component("scripted")
    ))
}

#[test]
fn the_same_event_twice_in_one_batch_runs_once() {
    let gridfn = scripted("");
    let copy = event("twin-1", json!({}));
    let response = gridfn.notify("/api/events/scripted", batch(&[copy.clone(), copy]));
    assert_eq!(response.status(), 200);
    let verdict: Value = response.json().unwrap();
    assert_eq!((verdict["succeeded"].as_u64(), verdict["duplicates"].as_u64()), (Some(1), Some(1)));
    assert_eq!(gridfn.log_count("scripted ran twin-1 "), 1);
}

#[test]
fn transient_failures_are_retried_locally_before_answering() {
    let gridfn = scripted("retry = { attempts = 3, backoff = \"exponential\", initial = \"50ms\", max = \"1s\" }");
    let response = gridfn.notify("/api/events/scripted", batch(&[event("local-1", json!({"act": "retry-first"}))]));
    assert_eq!(response.status(), 200, "the second, local attempt succeeded");
    assert_eq!(gridfn.log_count("scripted ran local-1 act=retry-first attempt=0"), 1);
    assert_eq!(gridfn.log_count("scripted ran local-1 act=retry-first attempt=1"), 1);
    assert_eq!(gridfn.events("scripted", "success"), 1.0);
}

#[test]
fn a_handlers_retry_delay_is_honoured_and_attempts_are_bounded() {
    let gridfn = scripted("retry = { attempts = 2, initial = \"10ms\" }");
    let started = Instant::now();
    // `retry` asks for 2 s; one local retry, then 503.
    let response = gridfn.notify("/api/events/scripted", batch(&[event("slow-1", json!({"act": "retry"}))]));
    let took = started.elapsed();
    assert_eq!(response.status(), 503);
    assert!(took >= Duration::from_secs(2), "waited the 2 s the handler asked for: {took:?}");
    assert_eq!(gridfn.log_count("scripted ran slow-1 "), 2);
}
