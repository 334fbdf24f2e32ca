//! Native baseline for tests/bench/run: an Event Grid webhook in plain Rust.
//!
//! Same work per request as gridfn minus the sandbox and dedup: check the
//! `aeg-event-type` header, decode the Event Grid batch (a JSON array), check
//! each event's required fields, parse each event's `data` as a BlobCreated
//! payload, answer 200 with a small JSON count. Also answers the subscription
//! validation handshake so it is a complete webhook.
//!
//!   bench-native --listen 127.0.0.1:8081

use axum::{
    Router,
    body::Bytes,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// Microsoft.Storage.BlobCreated `data`: the same struct as the WASM handler.
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ValidationData<'a> {
    validation_code: &'a str,
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn events(headers: HeaderMap, body: Bytes) -> Response {
    let kind = headers.get("aeg-event-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let batch: Vec<EventGridEvent> = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => return json(StatusCode::BAD_REQUEST, format!("{{\"error\":{:?}}}", err.to_string())),
    };
    if kind.eq_ignore_ascii_case("SubscriptionValidation") {
        let code = batch
            .first()
            .and_then(|e| e.data)
            .and_then(|d| serde_json::from_str::<ValidationData>(d.get()).ok())
            .map(|d| d.validation_code.to_string());
        return match code {
            Some(code) => json(StatusCode::OK, format!("{{\"validationResponse\":{code:?}}}")),
            None => json(StatusCode::BAD_REQUEST, "{\"error\":\"no validationCode\"}".into()),
        };
    }
    if !kind.eq_ignore_ascii_case("Notification") {
        return json(StatusCode::BAD_REQUEST, "{\"error\":\"aeg-event-type must be Notification\"}".into());
    }
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
    json(
        StatusCode::OK,
        format!("{{\"succeeded\":{succeeded},\"duplicates\":0,\"rejected\":{rejected},\"unmatched\":0}}"),
    )
}

fn main() {
    let mut listen = "127.0.0.1:8081".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            other => {
                eprintln!("usage: bench-native [--listen ADDR]  (unknown argument {other})");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let app = Router::new().route("/api/events", post(events)).route("/healthz", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        eprintln!("bench-native listening on http://{listen}");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .expect("serve");
    });
}
