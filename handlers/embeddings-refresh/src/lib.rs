//! Keeps a Chroma collection in step with the text documents of a Blob
//! Storage container: on `Microsoft.Storage.BlobCreated` it reads the blob,
//! splits it into chunks, embeds them through an OpenAI-compatible API,
//! upserts them into Chroma and publishes `com.contoso.ai.EmbeddingsRefreshed`;
//! on `Microsoft.Storage.BlobDeleted` it deletes the blob's vectors.
//!
//! Redeliveries and replays are safe: ids are `<blob url>#<chunk index>`, so
//! storing a document again replaces its chunks; and the document's sha256
//! is kept in kv, so the same text under a new event id embeds nothing.
//!
//! Failures: a throttled or failing embeddings API or Chroma (429, 5xx, no
//! answer) is a retry, after its `Retry-After` when it sends one; a missing
//! blob, a content type not in `content_types` and a bad config key are
//! rejections, with a reason that says what to fix (then `gridfn replay`).
//!
//! Layout: [`settings`] (the config keys), [`blob`] and `shared_key`
//! (reading the blob), [`chunk`] (splitting), `embeddings` and `chroma`
//! (the two services), `state` (what was embedded), `failure` (retry or
//! reject).

use std::time::{Duration, Instant};

use gridfn_sdk::log::{self, Level};
use gridfn_sdk::{Delivery, Event, Outcome, config, export_handler, publish};
use sha2::{Digest, Sha256};

pub mod blob;
mod chroma;
pub mod chunk;
mod embeddings;
mod failure;
pub mod settings;
mod shared_key;
mod state;

use blob::BlobData;
use failure::Failure;
use settings::Settings;
use state::Embedded;

pub const BLOB_CREATED: &str = "Microsoft.Storage.BlobCreated";
pub const BLOB_DELETED: &str = "Microsoft.Storage.BlobDeleted";
/// Published after a document's vectors are stored.
pub const REFRESHED: &str = "com.contoso.ai.EmbeddingsRefreshed";

fn handle(event: &Event, _delivery: &Delivery) -> Outcome {
    match run(event) {
        Ok(()) => Outcome::Success,
        Err(failure) => failure.into(),
    }
}

fn run(event: &Event) -> Result<(), Failure> {
    let settings = Settings::from_lookup(config::get).map_err(|error| Failure::Permanent(error.to_string()))?;
    let blob = BlobData::from_event(event)?;
    match event.event_type() {
        BLOB_CREATED => refresh(&settings, event, &blob),
        BLOB_DELETED => remove(&settings, &blob),
        other => Err(Failure::Permanent(format!(
            "{other} is not an event this handler takes: filter its subscription to {BLOB_CREATED} and {BLOB_DELETED}"
        ))),
    }
}

/// BlobCreated: read, and unless the text is what was embedded last time,
/// chunk, embed, store, drop stale chunks, remember, publish.
fn refresh(settings: &Settings, event: &Event, blob: &BlobData) -> Result<(), Failure> {
    let started = Instant::now();
    let content_type = blob.content_type.as_deref().unwrap_or_default();
    if !settings.content_types.accepts(content_type) {
        return Err(Failure::Permanent(format!(
            "content type {content_type:?} of {} is not embedded: this handler takes {} (config content_types)",
            blob.url,
            settings.content_types.list()
        )));
    }
    let document = blob.document_url();
    let text = blob::fetch(&blob.url, &settings.storage)?;
    let fetched = started.elapsed();
    let hash = hex(&Sha256::digest(text.as_bytes()));
    let model = &settings.embeddings.model;
    let before = state::load(document)?;
    if let Some(before) = &before
        && before.hash == hash
        && before.model.as_ref() == Some(model)
    {
        log::with_fields(
            Level::Info,
            "unchanged since it was embedded (same sha256, same model): nothing to do",
            &[("blob", document), ("sha256", &hash), ("chunks", &before.chunks.to_string())],
        );
        return Ok(());
    }

    let chunks = chunk::split(&text, settings.chunking);
    let collection = chroma::collection(&settings.chroma.url, &settings.chroma.collection)?;
    let (mut dimensions, mut embedding, mut storing) = (0, Duration::ZERO, Duration::ZERO);
    let batch_size = settings.embeddings.batch_size.get();
    for (number, batch) in chunks.chunks(batch_size).enumerate() {
        let asked = Instant::now();
        let vectors = embeddings::embed(&settings.embeddings, batch)?;
        embedding += asked.elapsed();
        dimensions = vectors[0].len();
        let records: Vec<chroma::Record> = batch
            .iter()
            .zip(&vectors)
            .enumerate()
            .map(|(offset, (chunk, vector))| {
                let index = number * batch_size + offset;
                chroma::Record {
                    id: format!("{document}#{index}"),
                    embedding: vector,
                    metadata: serde_json::json!({
                        "blob_url": document, "chunk_index": index, "content_hash": hash, "model": model,
                    }),
                    document: chunk,
                }
            })
            .collect();
        let stored = Instant::now();
        collection.upsert(&records)?;
        storing += stored.elapsed();
    }
    let stale: Vec<String> =
        (chunks.len()..before.map_or(0, |before| before.chunks)).map(|index| format!("{document}#{index}")).collect();
    if !stale.is_empty() {
        collection.delete_ids(&stale)?;
    }
    state::save(document, &Embedded { hash: hash.clone(), chunks: chunks.len(), model: Some(model.clone()) })?;

    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let data = serde_json::json!({
        "model": model, "chunks": chunks.len(), "dimensions": dimensions, "durationMs": duration_ms,
        "contentHash": hash, "blobUrl": document,
    });
    publish::json(REFRESHED, &data).subject(event.subject().unwrap_or(document)).send().map_err(publish_failure)?;
    log::with_fields(
        Level::Info,
        "embedded",
        &[
            ("blob", document),
            ("chunks", &chunks.len().to_string()),
            ("stale_deleted", &stale.len().to_string()),
            ("fetch_ms", &fetched.as_millis().to_string()),
            ("embed_ms", &embedding.as_millis().to_string()),
            ("store_ms", &storing.as_millis().to_string()),
            ("total_ms", &duration_ms.to_string()),
        ],
    );
    Ok(())
}

/// BlobDeleted: every vector of the blob (found by metadata, so chunks are
/// gone even if the kv record was lost), then its kv record.
fn remove(settings: &Settings, blob: &BlobData) -> Result<(), Failure> {
    let document = blob.document_url();
    let collection = chroma::collection(&settings.chroma.url, &settings.chroma.collection)?;
    collection.delete_where("blob_url", document)?;
    state::forget(document)?;
    log::with_fields(Level::Info, "deleted its vectors", &[("blob", document)]);
    Ok(())
}

fn publish_failure(error: publish::Error) -> Failure {
    match error {
        publish::Error::Denied => Failure::Permanent(format!(
            "cannot publish {REFRESHED}: grant publish = \"local\" (or an Event Grid topic) in [handler.capabilities]"
        )),
        other => Failure::Permanent(format!("cannot publish {REFRESHED}: {other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

export_handler!(handle);
