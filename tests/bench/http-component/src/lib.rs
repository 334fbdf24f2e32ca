//! The `wasmtime serve` peer of tests/bench/run: a wasi:http@0.2 proxy
//! component. Per request (wasmtime serve instantiates it fresh each time):
//! read the body, decode the Event Grid batch, parse each event's `data` as a
//! BlobCreated payload, answer 200 with a small JSON count — the same work as
//! the native baseline and the gridfn bench handler.

use serde::Deserialize;
use serde_json::value::RawValue;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasip2::io::streams::StreamError;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct EventGridEvent<'a> {
    id: &'a str,
    topic: Option<&'a str>,
    subject: &'a str,
    event_type: &'a str,
    event_time: &'a str,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    data_version: Option<&'a str>,
    metadata_version: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct BlobCreated<'a> {
    api: &'a str,
    #[serde(default)]
    client_request_id: Option<&'a str>,
    #[serde(default)]
    request_id: Option<&'a str>,
    #[serde(default, rename = "eTag")]
    e_tag: Option<&'a str>,
    #[serde(default)]
    content_type: Option<&'a str>,
    content_length: u64,
    #[serde(default)]
    blob_type: Option<&'a str>,
    url: &'a str,
    #[serde(default)]
    sequencer: Option<&'a str>,
}

struct Bench;

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("response body");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = outgoing.write().expect("body stream");
        for chunk in body.chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write body");
        }
    }
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

fn read_body(request: &IncomingRequest) -> Option<Vec<u8>> {
    let incoming = request.consume().ok()?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().ok()?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(_) => return None,
            }
        }
    }
    Some(body)
}

impl Guest for Bench {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Post) {
            return respond(out, 405, b"{\"error\":\"POST an Event Grid batch\"}");
        }
        let Some(body) = read_body(&request) else {
            return respond(out, 400, b"{\"error\":\"cannot read the body\"}");
        };
        let batch: Vec<EventGridEvent> = match serde_json::from_slice(&body) {
            Ok(batch) => batch,
            Err(_) => return respond(out, 400, b"{\"error\":\"not an Event Grid batch\"}"),
        };
        let mut succeeded = 0usize;
        let mut rejected = 0usize;
        for event in &batch {
            let ok = !event.id.is_empty()
                && event
                    .data
                    .and_then(|d| serde_json::from_str::<BlobCreated>(d.get()).ok())
                    .is_some_and(|blob| !blob.url.is_empty());
            if ok { succeeded += 1 } else { rejected += 1 }
        }
        let answer = format!("{{\"succeeded\":{succeeded},\"duplicates\":0,\"rejected\":{rejected},\"unmatched\":0}}");
        respond(out, 200, answer.as_bytes());
    }
}

wasip2::http::proxy::export!(Bench);
