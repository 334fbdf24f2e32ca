//! The gridfn side of the benchmark (tests/bench/run): parse the event's data
//! as a Storage BlobCreated payload and succeed. The native baseline
//! (tests/bench/native) and the `wasmtime serve` component
//! (tests/bench/http-component) do the same per-event work. `handle-batch`
//! (the gridfn-batch row, `batch = true`) does it for each event of a call.

use gridfn_sdk::{Delivery, Event, Outcome, export_batch_handler};
use serde::Deserialize;

/// The fields of Microsoft.Storage.BlobCreated's `data` (borrowed: no copies).
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

fn handle(event: &Event, _delivery: &Delivery) -> Outcome {
    match event.data_json::<BlobCreated>() {
        Ok(blob) if !blob.url.is_empty() => Outcome::Success,
        Ok(_) => Outcome::reject("BlobCreated without a url"),
        Err(err) => Outcome::reject(format!("not a BlobCreated payload: {err}")),
    }
}

fn handle_batch(events: &[Event], delivery: &Delivery) -> Vec<Outcome> {
    events.iter().map(|event| handle(event, delivery)).collect()
}

export_batch_handler!(handle_batch, handle);
