//! The fuzz targets. Each takes one input and panics only on a bug: a panic
//! inside gridfn, or an accepted input that breaks what the rest of gridfn
//! relies on (the assertions below).
//!
//! Header-carrying targets read their input as HTTP does: `name: value`
//! lines, an empty line, then the body.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::event::{self, Event, Schema};
use crate::{config, replay, webhook};

/// A target: one input, a panic on a bug.
pub type Target = fn(&[u8]);

pub const TARGETS: [(&str, Target); 6] = [
    ("event-grid", event_grid),
    ("cloudevents", cloudevents),
    ("binary", binary),
    ("webhook", webhook),
    ("manifest", manifest),
    ("deadletter", deadletter),
];

/// Event Grid schema bodies.
fn event_grid(body: &[u8]) {
    if let Ok(events) = event::decode_event_grid(body) {
        assert!(!events.is_empty(), "an empty Event Grid batch was accepted");
        for event in &events {
            assert!(!event.id.is_empty() && !event.event_type.is_empty(), "{event:?}");
            check_event(event);
        }
    }
}

/// CloudEvents JSON format: one structured event, or a batch.
fn cloudevents(body: &[u8]) {
    if let Ok(events) = event::decode_cloudevents(body) {
        events.iter().for_each(check_cloudevent);
    }
}

/// CloudEvents HTTP binary mode: `ce-*` headers (a `ce-specversion: 1.0` is
/// added when the input has none), `Content-Type`, body.
fn binary(input: &[u8]) {
    let (mut headers, body) = http_message(input);
    if !headers.contains_key("ce-specversion") {
        headers.insert("ce-specversion", HeaderValue::from_static("1.0"));
    }
    // A CloudEvents content type would mean structured mode: another target's.
    let structured = headers
        .get(CONTENT_TYPE)
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/cloudevents"));
    if structured {
        headers.remove(CONTENT_TYPE);
    }
    if let Ok(events) = webhook::decode(&headers, body) {
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, body, "binary mode's data is the body, byte for byte");
        check_cloudevent(&events[0]);
    }
}

/// The whole request decoder: headers choose the encoding, then the body.
fn webhook(input: &[u8]) {
    let (headers, body) = http_message(input);
    if let Ok(events) = webhook::decode(&headers, body) {
        for event in &events {
            match event.schema {
                Schema::CloudEvents => check_cloudevent(event),
                Schema::EventGrid => check_event(event),
            }
        }
    }
}

/// Dead-letter blobs, as `gridfn replay` reads them: every record is an
/// event or a reported problem, and an event is what a push of it would
/// have been, its dead-letter attributes gone.
fn deadletter(blob: &[u8]) {
    let records = replay::read::parse_records("SUB/2026/1/1/0/b.json", Some("SUB"), blob);
    assert!(!records.is_empty(), "a blob reads as records or one problem");
    // Every element of a JSON array is a record or a problem of its own: none
    // is lost to a problem of the whole blob.
    // (A blob that is not UTF-8 text is one problem, whatever its array holds.)
    if let Ok(text) = std::str::from_utf8(blob)
        && let Ok(elements) =
            serde_json::from_str::<Vec<serde::de::IgnoredAny>>(text.strip_prefix('\u{feff}').unwrap_or(text))
        && !elements.is_empty()
    {
        assert_eq!(records.len(), elements.len(), "{records:?}");
    }
    for record in records {
        let Ok(record) = record else { continue };
        let event = &record.event;
        match event.schema {
            Schema::CloudEvents => check_cloudevent(event),
            Schema::EventGrid => check_event(event),
        }
        let raw: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(event.raw.get()).expect("raw is one JSON object");
        let left = raw.keys().find(|name| {
            ["deadletterreason", "deliveryattempts", "lastdeliveryoutcome", "publishtime", "gridfnhandler"]
                .iter()
                .any(|attribute| name.eq_ignore_ascii_case(attribute))
        });
        assert!(left.is_none(), "the dead-letter attribute {left:?} reached the event: {}", event.raw.get());
    }
}

/// The `gridfn.toml` manifest, resolved against a folder that does not
/// exist, every `env:NAME` set.
fn manifest(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else { return };
    let env = |name: &str| Some(format!("value-of-{name}"));
    if let Err(problems) = config::Manifest::parse(text, std::path::Path::new("/nonexistent/gridfn"), &env) {
        assert!(!problems.is_empty(), "a refused manifest names at least one problem");
    }
}

/// What every decoded event promises: `raw` is one JSON object, and JSON
/// data is JSON text.
fn check_event(event: &Event) {
    let raw: serde_json::Value = serde_json::from_str(event.raw.get()).expect("raw is JSON");
    assert!(raw.is_object(), "raw is one JSON object: {}", event.raw.get());
    let json_data = match event.schema {
        Schema::EventGrid => true,
        Schema::CloudEvents => {
            raw.get("data").is_some() && event.data_content_type.as_deref().is_none_or(event::is_json_media_type)
        }
    };
    if json_data && !event.data.is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(&event.data).expect("JSON data is JSON text");
    }
}

/// A CloudEvent that was accepted is a valid event on its own: its raw
/// (structured) form decodes again, alone, to the same attributes.
fn check_cloudevent(event: &Event) {
    check_event(event);
    let again = event::decode_cloudevents(event.raw.get().as_bytes())
        .unwrap_or_else(|e| panic!("an accepted event's raw form is refused ({e}): {}", event.raw.get()));
    let again = &again[0];
    assert_eq!(
        (&again.id, &again.source, &again.event_type, &again.subject, &again.time, &again.extensions),
        (&event.id, &event.source, &event.event_type, &event.subject, &event.time, &event.extensions)
    );
    assert_eq!(again.data_content_type, event.data_content_type);
}

/// Splits `name: value` header lines from the body at the first empty line;
/// lines that are not a valid header are skipped.
fn http_message(input: &[u8]) -> (HeaderMap, &[u8]) {
    let (head, body) = match input.windows(2).position(|w| w == b"\n\n") {
        Some(end) => (&input[..end], &input[end + 2..]),
        None => (input, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let value = line[colon + 1..].trim_ascii_start();
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    (headers, body)
}
