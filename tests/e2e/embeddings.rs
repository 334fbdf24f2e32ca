//! The embeddings pipeline through the real binary, on real parts: Azurite
//! holds the documents, `handlers/embeddings-refresh` reads them with Shared
//! Key, embeds them through `samples/embeddings/server.py` (wordllama) and
//! stores the vectors in a real Chroma; `audit-log` sees every event, the
//! `EmbeddingsRefreshed` ones through the local topic.
//!
//! What the handler did is read back from the services themselves: Chroma's
//! records, the embeddings server's call log, gridfn's answers and its
//! dead-letter folder.

use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as BlobPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use reqwest::blocking::Client;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{
    Chroma, EMBEDDINGS_KEY, EmbeddingsServer, Gridfn, KEY, Service, azurite, chroma, component, embeddings_server,
    gridfn_command,
};

const ACCOUNT_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const CONTAINER: &str = "docs";
const MODEL: &str = "wordllama-l2-supercat-256";
const REFRESHED: &str = "com.contoso.ai.EmbeddingsRefreshed";

/// Five paragraphs of about 300 characters: several 400-character chunks.
const GUIDE: &str = "\
# Event Grid delivery

Event Grid pushes each event to the subscriber's webhook endpoint over HTTPS. The endpoint must answer \
within thirty seconds with a success status, or the delivery counts as failed. Failed deliveries are \
retried with an exponential backoff for up to twenty-four hours.

Events that still cannot be delivered are dead-lettered to a storage container, when the subscription \
names one. Each dead-letter blob holds the original event and the reason it was given up on, so a person \
can look at it later and replay it once the cause is fixed.

A subscription filters events by type, by subject prefix and suffix, and by advanced filters on the data. \
Only matching events are delivered. Filters are evaluated by Event Grid before delivery, so a handler \
never pays for events it does not want.

Blob Storage publishes BlobCreated when a blob is written and BlobDeleted when it is removed. The event \
data carries the blob's URL, its content type and its length, but never its content: a handler that \
needs the text reads it from the URL.

Delivery is at least once. The same event can arrive twice, so handlers use the event id, or better the \
content itself, to make a second run harmless.
";

/// Azurite, Chroma, the embeddings server and gridfn with both handlers.
struct Pipeline {
    gridfn: Gridfn,
    embeddings: EmbeddingsServer,
    chroma: Chroma,
    blobs: Blobs,
    _azurite: Service,
}

impl Pipeline {
    /// `embeddings_path`: `/v1/embeddings` or Azure OpenAI's deployment path.
    fn start(embeddings_path: &str) -> Pipeline {
        Self::start_publishing(embeddings_path, "\"local\"")
    }

    /// Like [`Pipeline::start`], with the handler's `publish` grant.
    fn start_publishing(embeddings_path: &str, publish: &str) -> Pipeline {
        let azurite = azurite();
        let blobs = Blobs::new(&azurite.url);
        let (chroma, embeddings) = (chroma(), embeddings_server());
        let manifest = format!(
            r#"
[[handler]]
name = "embeddings-refresh"
module = {module:?}
timeout = "10s"
retry = {{ attempts = 3, backoff = "fixed", initial = "200ms" }}
filter = {{ includedEventTypes = ["Microsoft.Storage.BlobCreated", "Microsoft.Storage.BlobDeleted"], advancedFilters = [{{ operatorType = "StringEndsWith", key = "subject", values = [".md", ".txt"] }}] }}
[handler.capabilities]
kv = true
publish = {publish}
allowed_outbound_hosts = ["http://127.0.0.1:*"]
config = {{ embeddings_url = "{embeddings}{embeddings_path}", embeddings_key = "{EMBEDDINGS_KEY}", model = "{MODEL}", batch_size = "2", chroma_url = "{chroma}", collection = "documents", storage_account_key = "{ACCOUNT_KEY}", chunk_size = "400", chunk_overlap = "60", content_types = "text/plain,text/markdown" }}

[[handler]]
name = "audit-log"
module = {audit:?}
capabilities = {{ kv = true }}
"#,
            module = component("embeddings-refresh"),
            audit = component("audit-log"),
            embeddings = embeddings.url(),
            chroma = chroma.url(),
        );
        let gridfn = Gridfn::start(&manifest);
        Pipeline { gridfn, embeddings, chroma, blobs, _azurite: azurite }
    }

    /// POSTs events to every handler; gridfn's answer.
    fn deliver(&self, events: &[Value]) -> Value {
        let response = self.gridfn.notify("/api/events", serde_json::to_vec(events).unwrap());
        let status = response.status();
        let answer: Value = response.json().unwrap();
        assert!(status == 200, "{status}: {answer}\n{}", self.gridfn.log_text());
        answer
    }

    /// The records Chroma holds for one blob, by chunk index.
    fn records(&self, url: &str) -> Vec<StoredChunk> {
        let client = Client::new();
        let collections =
            format!("{}/api/v2/tenants/default_tenant/databases/default_database/collections", self.chroma.url());
        let collection: Value = client
            .post(&collections)
            .json(&json!({"name": "documents", "get_or_create": true}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let got: Value = client
            .post(format!("{collections}/{}/get", collection["id"].as_str().unwrap()))
            .json(&json!({"where": {"blob_url": url}, "include": ["metadatas", "documents", "embeddings"]}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let mut chunks: Vec<StoredChunk> = (0..got["ids"].as_array().unwrap().len())
            .map(|i| StoredChunk {
                id: got["ids"][i].as_str().unwrap().to_owned(),
                metadata: got["metadatas"][i].clone(),
                document: got["documents"][i].as_str().unwrap().to_owned(),
                dimensions: got["embeddings"][i].as_array().unwrap().len(),
            })
            .collect();
        chunks.sort_by_key(|chunk| chunk.metadata["chunk_index"].as_u64());
        chunks
    }

    /// Inputs the embeddings server was asked to embed, over all calls.
    fn embedded_inputs(&self) -> usize {
        self.embeddings.calls().iter().filter(|call| call.status == 200).map(|call| call.inputs).sum()
    }
}

struct StoredChunk {
    id: String,
    metadata: Value,
    document: String,
    dimensions: usize,
}

/// The `docs` container in Azurite, written with the account key.
struct Blobs {
    store: object_store::azure::MicrosoftAzure,
    base: String,
    runtime: tokio::runtime::Runtime,
}

impl Blobs {
    fn new(account_url: &str) -> Blobs {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // The dead-letter store knows how to create a container; object_store does not.
        let config: gridfn::deadletter::azure::AzureBlobConfig = toml::from_str(&format!(
            "container = \"{CONTAINER}\"\naccount = \"devstoreaccount1\"\naccess_key = \"{ACCOUNT_KEY}\"\nendpoint = \"{account_url}\"\ncreate_container = true"
        ))
        .unwrap();
        let container = gridfn::deadletter::azure::AzureBlobDeadLetter::new(&config).unwrap();
        runtime.block_on(container.ensure_container()).unwrap();
        let store = MicrosoftAzureBuilder::new()
            .with_account("devstoreaccount1")
            .with_access_key(ACCOUNT_KEY)
            .with_container_name(CONTAINER)
            .with_endpoint(account_url.to_owned())
            .with_allow_http(true)
            .build()
            .unwrap();
        Blobs { store, base: format!("{account_url}/{CONTAINER}"), runtime }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn put(&self, name: &str, text: &str, content_type: &str) {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_owned().into());
        let options = PutOptions { attributes, ..PutOptions::default() };
        let payload = PutPayload::from(text.as_bytes().to_vec());
        self.runtime.block_on(self.store.put_opts(&BlobPath::from(name), payload, options)).unwrap();
    }

    fn delete(&self, name: &str) {
        self.runtime.block_on(self.store.delete(&BlobPath::from(name))).unwrap();
    }
}

/// A Blob Storage event in the Event Grid schema, as Blob Storage sends it.
fn blob_event(id: &str, event_type: &str, url: &str, content_type: &str) -> Value {
    let name = url.rsplit(&format!("/{CONTAINER}/")).next().unwrap();
    json!({
        "id": id,
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": format!("/blobServices/default/containers/{CONTAINER}/blobs/{name}"),
        "eventType": event_type,
        "eventTime": "2026-11-30T10:00:00Z",
        "data": {
            "api": if event_type.ends_with("Deleted") { "DeleteBlob" } else { "PutBlob" },
            "contentType": content_type,
            "blobType": "BlockBlob",
            "url": url,
            "sequencer": "0000000000000000000000000000000000000000000000a1",
        },
        "dataVersion": "",
        "metadataVersion": "1"
    })
}

fn created(id: &str, url: &str) -> Value {
    blob_event(id, "Microsoft.Storage.BlobCreated", url, "text/markdown")
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn counts(answer: &Value) -> (u64, u64, u64, u64) {
    let n = |key: &str| answer[key].as_u64().unwrap();
    (n("succeeded"), n("duplicates"), n("rejected"), n("unmatched"))
}

/// Audit-log lines for events of `event_type`.
fn audited(gridfn: &Gridfn, event_type: &str) -> Vec<String> {
    let needle = format!("audit: {event_type} ");
    gridfn.log_lines().into_iter().filter(|line| line.contains(&needle)).collect()
}

/// A document lands: its chunks are in Chroma with their metadata, each
/// event reaches the handlers its filters name, EmbeddingsRefreshed reaches
/// the audit log through the local topic; the same delivery again is a
/// duplicate, and the same text under a new event id (as a CloudEvent) embeds
/// nothing.
#[test]
fn a_document_is_embedded_once_and_announced() {
    let pipeline = Pipeline::start("/v1/embeddings");
    pipeline.blobs.put("guide.md", GUIDE, "text/markdown");
    pipeline.blobs.put("photo.png", "not really a png", "image/png");
    pipeline.blobs.put("scan.txt", "%PDF-1.7", "application/pdf");
    let guide = pipeline.blobs.url("guide.md");
    let batch = [
        created("guide-1", &guide),
        blob_event("photo-1", "Microsoft.Storage.BlobCreated", &pipeline.blobs.url("photo.png"), "image/png"),
        blob_event("scan-1", "Microsoft.Storage.BlobCreated", &pipeline.blobs.url("scan.txt"), "application/pdf"),
    ];
    let answer = pipeline.deliver(&batch);
    // guide: embeddings-refresh + audit-log; photo: audit-log only (the
    // subject filter); scan: audit-log, and embeddings-refresh rejects it.
    assert_eq!(counts(&answer), (4, 0, 1, 0), "{answer}");
    let scan = dead_letters(&pipeline.gridfn.dir.path().join("state/deadletter"));
    assert_eq!(scan.len(), 1);
    assert_eq!(
        scan[0]["deadLetterDescription"],
        format!(
            "content type \"application/pdf\" of {} is not embedded: this handler takes text/plain, text/markdown \
             (config content_types)",
            pipeline.blobs.url("scan.txt")
        )
    );

    let records = pipeline.records(&guide);
    let hash = sha256_hex(GUIDE);
    assert!(records.len() >= 4, "400-character chunks of a 1,500-character text: {}", records.len());
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.id, format!("{guide}#{index}"));
        assert_eq!(
            record.metadata,
            json!({"blob_url": guide, "chunk_index": index, "content_hash": hash, "model": MODEL}),
            "{}",
            record.id
        );
        assert_eq!(record.dimensions, 256);
        assert!(record.document.chars().count() <= 400, "{:?}", record.document);
        assert!(GUIDE.contains(&record.document), "a chunk is a piece of the text: {:?}", record.document);
    }
    assert!(records[0].document.starts_with("# Event Grid delivery"));
    assert!(records.last().unwrap().document.ends_with("make a second run harmless."));
    let calls = pipeline.embeddings.calls();
    assert_eq!(pipeline.embedded_inputs(), records.len(), "each chunk embedded once: {calls:?}");
    assert!(calls.iter().all(|call| call.inputs <= 2), "batch_size = 2: {calls:?}");

    let refreshed = audited(&pipeline.gridfn, REFRESHED);
    assert_eq!(refreshed.len(), 1, "{refreshed:?}");
    assert!(refreshed[0].contains("from /gridfn/handlers/embeddings-refresh"), "{}", refreshed[0]);
    assert!(refreshed[0].contains("subject=/blobServices/default/containers/docs/blobs/guide.md"), "{}", refreshed[0]);
    assert_eq!(audited(&pipeline.gridfn, "Microsoft.Storage.BlobCreated").len(), 3);

    // Event Grid delivers at least once: the same delivery again runs nothing.
    let again = pipeline.deliver(&batch);
    assert_eq!(counts(&again), (0, 5, 0, 0), "{again}");

    // The same document under a new event id, as a CloudEvent: the handler
    // runs, sees the text it embedded last time, and embeds nothing.
    let before = pipeline.embeddings.calls().len();
    let cloud_event = json!({
        "specversion": "1.0",
        "id": "guide-2",
        "source": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "type": "Microsoft.Storage.BlobCreated",
        "subject": "/blobServices/default/containers/docs/blobs/guide.md",
        "time": "2026-11-30T10:05:00Z",
        "data": batch[0]["data"],
    });
    let response = pipeline.gridfn.post(
        "/api/events",
        serde_json::to_vec(&[cloud_event]).unwrap(),
        &[("content-type", "application/cloudevents-batch+json"), ("aeg-sas-key", KEY)],
    );
    let answer: Value = response.json().unwrap();
    assert_eq!(counts(&answer), (2, 0, 0, 0), "{answer}");
    assert_eq!(pipeline.embeddings.calls().len(), before, "nothing embedded for unchanged text");
    assert_eq!(pipeline.records(&guide).len(), records.len());
    assert_eq!(pipeline.gridfn.log_count("unchanged since it was embedded"), 1);
    assert_eq!(audited(&pipeline.gridfn, REFRESHED).len(), 1, "nothing refreshed, nothing announced");
}

/// A shorter new version replaces the chunks and drops the ones it no
/// longer has; BlobDeleted removes the blob's vectors and no other blob's.
#[test]
fn a_changed_document_replaces_its_chunks_and_a_deleted_one_leaves_none() {
    let pipeline = Pipeline::start("/v1/embeddings");
    let (guide, notes) = (pipeline.blobs.url("guide.md"), pipeline.blobs.url("notes.txt"));
    pipeline.blobs.put("guide.md", GUIDE, "text/markdown");
    let notes_text = "Dead-lettered events can be replayed with gridfn replay.";
    pipeline.blobs.put("notes.txt", notes_text, "text/plain");
    let answer = pipeline
        .deliver(&[created("v1", &guide), blob_event("n1", "Microsoft.Storage.BlobCreated", &notes, "text/plain")]);
    assert_eq!(counts(&answer), (4, 0, 0, 0), "{answer}");
    let long = pipeline.records(&guide).len();
    assert!(long >= 4);
    assert_eq!(pipeline.records(&notes).len(), 1);

    let shorter = "# Event Grid delivery\n\nDelivery is at least once: handlers make a second run harmless.\n";
    pipeline.blobs.put("guide.md", shorter, "text/markdown");
    pipeline.embeddings.reset();
    let answer = pipeline.deliver(&[created("v2", &guide)]);
    assert_eq!(counts(&answer), (2, 0, 0, 0), "{answer}");
    let records = pipeline.records(&guide);
    assert_eq!(records.len(), 1, "the stale chunks 1..{long} are gone");
    assert_eq!(records[0].id, format!("{guide}#0"));
    assert_eq!(records[0].document, shorter.trim());
    assert_eq!(records[0].metadata["content_hash"], sha256_hex(shorter));
    assert_eq!(pipeline.embedded_inputs(), 1, "only the new text was embedded");
    assert_eq!(audited(&pipeline.gridfn, REFRESHED).len(), 3);

    pipeline.blobs.delete("guide.md");
    let answer = pipeline.deliver(&[blob_event("d1", "Microsoft.Storage.BlobDeleted", &guide, "text/markdown")]);
    assert_eq!(counts(&answer), (2, 0, 0, 0), "{answer}");
    assert!(pipeline.records(&guide).is_empty(), "BlobDeleted removes every chunk");
    assert_eq!(pipeline.records(&notes).len(), 1, "other documents stay");

    // The kv record went with it: the same text written again is embedded again.
    pipeline.blobs.put("guide.md", shorter, "text/markdown");
    pipeline.deliver(&[created("v3", &guide)]);
    assert_eq!(pipeline.records(&guide).len(), 1);
    assert_eq!(pipeline.embedded_inputs(), 2);
}

/// 503 twice then 200: retried inside gridfn and done in one delivery. 429
/// with `Retry-After: 2`: the next call comes no sooner than 2 s later.
/// (Through Azure OpenAI's URL shape, with its `api-key` header.)
#[test]
fn a_failing_embeddings_api_is_retried_as_it_asks() {
    let pipeline = Pipeline::start("/openai/deployments/embed/embeddings?api-version=2024-02-01");
    let short = "Event Grid retries failed deliveries.";
    pipeline.blobs.put("a.md", short, "text/markdown");
    pipeline.blobs.put("b.md", "Dead letters keep what could not be delivered.", "text/markdown");

    pipeline.embeddings.fail(503, 2, None);
    let answer = pipeline.deliver(&[created("a-1", &pipeline.blobs.url("a.md"))]);
    assert_eq!(counts(&answer), (2, 0, 0, 0), "{answer}");
    let statuses: Vec<u16> = pipeline.embeddings.calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(pipeline.records(&pipeline.blobs.url("a.md")).len(), 1);

    pipeline.embeddings.reset();
    pipeline.embeddings.fail(429, 1, Some(2));
    let answer = pipeline.deliver(&[created("b-1", &pipeline.blobs.url("b.md"))]);
    assert_eq!(counts(&answer), (2, 0, 0, 0), "{answer}");
    let calls = pipeline.embeddings.calls();
    assert_eq!(calls.iter().map(|call| call.status).collect::<Vec<_>>(), [429, 200]);
    let waited = calls[1].time - calls[0].time;
    assert!(waited >= 2.0, "retried after {waited:.3} s, before the 2 s Retry-After");
    assert!(waited < 5.0, "retried after {waited:.3} s");
    assert_eq!(pipeline.records(&pipeline.blobs.url("b.md")).len(), 1);
}

/// A BlobCreated for a blob that is not there is dead-lettered with a
/// reason a person understands; once the blob is written, `gridfn replay`
/// through the running gridfn embeds it.
#[test]
fn a_missing_blob_is_dead_lettered_and_replayed_once_it_exists() {
    let pipeline = Pipeline::start("/v1/embeddings");
    let url = pipeline.blobs.url("late.md");
    let answer = pipeline.deliver(&[created("late-1", &url)]);
    assert_eq!(counts(&answer), (1, 0, 1, 0), "{answer}");

    let deadletter = pipeline.gridfn.dir.path().join("state/deadletter");
    let records = dead_letters(&deadletter);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], "late-1");
    assert_eq!(records[0]["gridfnHandler"], "embeddings-refresh");
    assert_eq!(
        records[0]["deadLetterDescription"],
        format!("blob {url} not found (404): it was deleted or never written")
    );
    assert!(pipeline.records(&url).is_empty());

    pipeline.blobs.put("late.md", "Written after its event: replay catches up.", "text/markdown");
    let to = format!("{}/api/events/{{handler}}", pipeline.gridfn.base);
    let output = gridfn_command(&[
        "replay".as_ref(),
        deadletter.as_os_str(),
        "--to".as_ref(),
        to.as_ref(),
        "--key".as_ref(),
        KEY.as_ref(),
        "--json".as_ref(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["total"]["succeeded"], 1, "{summary}");
    let stored = pipeline.records(&url);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].document, "Written after its event: replay catches up.");
    assert_eq!(audited(&pipeline.gridfn, REFRESHED).len(), 1);
}

/// Every dead-letter record under `dir` (not yet archived by a replay).
fn dead_letters(dir: &std::path::Path) -> Vec<Value> {
    let mut records = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.ends_with("replayed") {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                let blob: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                records.extend(blob);
            }
        }
    }
    records
}

/// The published `EmbeddingsRefreshed`, as an Event Grid topic receives it
/// (a CloudEvents batch), carries what the contract names: subject = the
/// blob path, and model, chunks, dimensions, durationMs, contentHash, blobUrl.
#[test]
fn the_refreshed_event_carries_the_documents_figures() {
    let topic = Topic::start();
    let pipeline = Pipeline::start_publishing(
        "/v1/embeddings",
        &format!("{{ endpoint = \"{}/api/events\", key = \"topic-key\" }}", topic.url),
    );
    pipeline.blobs.put("guide.md", GUIDE, "text/markdown");
    let guide = pipeline.blobs.url("guide.md");
    let answer = pipeline.deliver(&[created("guide-1", &guide)]);
    assert_eq!(counts(&answer), (2, 0, 0, 0), "{answer}");

    let received = topic.received();
    assert_eq!(received.len(), 1, "one POST to the topic");
    let (headers, body) = &received[0];
    assert!(headers.contains("content-type: application/cloudevents-batch+json"), "{headers}");
    assert!(headers.contains("aeg-sas-key: topic-key"), "{headers}");
    let events: Vec<Value> = serde_json::from_slice(body).unwrap();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["type"], REFRESHED);
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["source"], "/gridfn/handlers/embeddings-refresh");
    assert_eq!(event["subject"], "/blobServices/default/containers/docs/blobs/guide.md");
    let data = &event["data"];
    assert_eq!(data["model"], MODEL);
    assert_eq!(data["chunks"].as_u64().unwrap() as usize, pipeline.records(&guide).len());
    assert_eq!(data["dimensions"], 256);
    assert_eq!(data["contentHash"], sha256_hex(GUIDE));
    assert_eq!(data["blobUrl"], guide);
    let duration = data["durationMs"].as_u64().expect("durationMs is a whole number");
    assert!(duration < 10_000, "{duration}");
    let keys: std::collections::BTreeSet<&str> = data.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["blobUrl", "chunks", "contentHash", "dimensions", "durationMs", "model"].into());
}

/// A stand-in for an Event Grid topic: answers every POST with 200 and
/// keeps its headers (lower-cased) and body.
struct Topic {
    url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Request>>>,
}

/// A request's headers (as text) and body.
type Request = (String, Vec<u8>);

impl Topic {
    fn start() -> Topic {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    headers.push_str(&line.to_ascii_lowercase());
                }
                let length = headers
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map_or(0, |value| value.trim().parse().unwrap());
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                keep.lock().unwrap().push((headers, body));
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Topic { url, received }
    }

    fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.received.lock().unwrap().clone()
    }
}
