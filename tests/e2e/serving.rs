//! What a client can hold, and how gridfn stops: credentials before bodies,
//! header and idle timeouts, the connection cap, and a SIGTERM that drains
//! deliveries in flight and exits while clients keep connections open.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Gridfn, batch, component, event};

fn host(server: &str) -> Gridfn {
    Gridfn::start_with_server(
        server,
        &format!("[[handler]]\nname = \"scripted\"\nmodule = {:?}\nmax_concurrency = 1\n", component("scripted")),
    )
}

fn connect(gridfn: &Gridfn) -> TcpStream {
    let stream = TcpStream::connect(gridfn.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream
}

/// Reads until the server closes the connection (or the read timeout);
/// what was read, and how long it took.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut text = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&buffer[..n]),
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), started.elapsed())
}

#[test]
fn a_sender_without_credentials_is_refused_before_its_body_is_read() {
    let gridfn = host("");
    let mut stream = connect(&gridfn);
    // A megabyte announced, none of it sent: the answer must not wait for it.
    write!(
        stream,
        "POST /api/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naeg-event-type: Notification\r\n\
         aeg-sas-key: wrong\r\ncontent-length: 1000000\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).expect("gridfn answers without waiting for the body");
    assert_eq!(&head, b"HTTP/1.1 401");
}

#[test]
fn slow_headers_and_idle_connections_are_closed_after_header_timeout() {
    let gridfn = host("header_timeout = \"1s\"");
    let mut slow = connect(&gridfn);
    slow.write_all(b"POST /api/events HTTP/1.1\r\nhost: x\r\n").unwrap();
    let (_, waited) = read_until_closed(&mut slow);
    assert!(waited < Duration::from_secs(5), "a half-sent request held its connection for {waited:?}");

    let mut idle = connect(&gridfn);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let (answer, waited) = read_until_closed(&mut idle);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(waited < Duration::from_secs(5), "an idle keep-alive connection stayed open {waited:?}");
}

#[test]
fn a_body_that_does_not_arrive_gets_408() {
    let gridfn = host("body_timeout = \"1s\"");
    let mut stream = connect(&gridfn);
    write!(
        stream,
        "POST /api/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naeg-sas-key: {}\r\n\
         content-length: 100\r\n\r\n[",
        crate::support::KEY
    )
    .unwrap();
    let (answer, waited) = read_until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(waited < Duration::from_secs(5));
}

#[test]
fn connections_beyond_max_connections_wait_for_a_free_one() {
    let gridfn = host("max_connections = 2");
    let held: Vec<TcpStream> = (0..2).map(|_| connect(&gridfn)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_millis(800)).build().unwrap();
    assert!(client.get(gridfn.url("/healthz")).send().is_err(), "a third connection was served");
    drop(held);
    let answer = client.get(gridfn.url("/healthz")).send().expect("served once a connection is free");
    assert_eq!(answer.status(), 200);
}

#[test]
fn sigterm_finishes_deliveries_in_flight_then_exits_though_clients_hold_connections() {
    let mut gridfn = host("");
    // An idle keep-alive connection, and a request that never finishes its headers.
    let mut idle = connect(&gridfn);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).unwrap();
    let mut half_sent = connect(&gridfn);
    half_sent.write_all(b"POST /api/events HTTP/1.1\r\nhost: x\r\n").unwrap();

    // Four events that each sleep 300 ms, one at a time: 1.2 s in flight.
    let body = batch(&(0..4).map(|i| event(&format!("s-{i}"), json!({"act": "sleep"}))).collect::<Vec<_>>());
    let url = gridfn.url("/api/events/scripted");
    let delivery = std::thread::spawn(move || {
        let response = reqwest::blocking::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("aeg-sas-key", crate::support::KEY)
            .body(body)
            .send()
            .expect("the delivery in flight is answered");
        (response.status(), response.json::<serde_json::Value>().unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    gridfn.terminate();
    let (status, verdict) = delivery.join().unwrap();
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["succeeded"], 4);
    let exit = gridfn.wait_exit(Duration::from_secs(10)).expect("gridfn exits though connections are open");
    assert!(exit.success(), "{exit:?}");
    assert!(stopping.elapsed() < Duration::from_secs(5), "took {:?}", stopping.elapsed());
    drop((idle, half_sent));
}
