//! Writes rejected events where Event Grid would have put them: one blob per
//! rejection, `<SUBSCRIPTION>/<yyyy>/<m>/<d>/<h>/<uuid>.json` (UTC, not
//! zero-padded), holding a JSON array with the original event plus Event
//! Grid's dead-letter attributes. Tools that read Event Grid's dead-letter
//! container (and `gridfn replay`) read these alike.
//!
//! A write is durable (written, synced, renamed into place) before it counts:
//! a rejected event is acknowledged to Event Grid only once it is safe here.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde_json::{Map, Value};

use crate::event::{Event, Schema};

pub mod azure;

/// `[deadletter]` in the manifest (`crate::config` parses it): where
/// rejected events are written, in Event Grid's dead-letter blob layout and
/// format.
#[derive(Debug, Clone)]
pub enum DeadLetter {
    /// `store = "dir"` (the default): a folder, `path` (default
    /// `<state_dir>/deadletter`).
    Dir { path: PathBuf },
    /// `store = "azure-blob"`: a container in Azure Blob Storage (or Azurite):
    /// `container`, `prefix`, and `connection_string` (or `account` with
    /// `access_key` or `sas_token`), `endpoint`, `create_container`. Secrets
    /// may be `env:NAME`.
    AzureBlob(azure::AzureBlobConfig),
}

/// Why and how an event ended up dead-lettered.
pub struct Rejection<'a> {
    /// The Event Grid subscription (or, without one, the handler name).
    pub subscription: &'a str,
    pub handler: &'a str,
    /// The handler's own words.
    pub reason: &'a str,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// When gridfn received the delivery.
    pub received: DateTime<Utc>,
}

/// Where rejected events go.
pub enum DeadLetterStore {
    /// A folder laid out like Event Grid's dead-letter container.
    Dir(PathBuf),
    /// An Azure Storage container, as Event Grid's own dead-lettering uses.
    AzureBlob(azure::AzureBlobDeadLetter),
}

impl DeadLetterStore {
    /// Opens the store the manifest names.
    /// Checks an Azure container is reachable (creating it when configured
    /// to), so a wrong key shows at start rather than at the first rejection.
    pub async fn open(config: &DeadLetter) -> anyhow::Result<DeadLetterStore> {
        Ok(match config {
            DeadLetter::Dir { path } => DeadLetterStore::Dir(path.clone()),
            DeadLetter::AzureBlob(azure) => {
                let store = azure::AzureBlobDeadLetter::new(azure)?;
                store.ensure_container().await?;
                DeadLetterStore::AzureBlob(store)
            }
        })
    }

    /// Whether a write could succeed now (`/readyz`): the folder can be
    /// created, or the container exists and the credentials are accepted.
    pub async fn check(&self) -> anyhow::Result<()> {
        match self {
            DeadLetterStore::Dir(root) => tokio::fs::create_dir_all(root)
                .await
                .map_err(|e| anyhow::anyhow!("dead-letter folder {}: {e}", root.display())),
            DeadLetterStore::AzureBlob(store) => match store.container_exists().await? {
                true => Ok(()),
                false => Err(store.container_not_found().into()),
            },
        }
    }

    /// Writes one blob for `event`; returns where it went once it is durable.
    pub async fn write(&self, event: &Event, rejection: &Rejection<'_>) -> anyhow::Result<String> {
        let now = Utc::now();
        let name = blob_name(rejection.subscription, now);
        let body = serde_json::to_vec_pretty(&[record(event, rejection, now)?])?;
        self.put(&name, body).await
    }

    /// Writes `body` as the blob `name` (a path relative to the store's
    /// root); returns where it went once it is durable. For records in
    /// another layout than [`DeadLetterStore::write`]'s, such as a namespace
    /// topic's.
    pub async fn put(&self, name: &str, body: Vec<u8>) -> anyhow::Result<String> {
        match self {
            DeadLetterStore::Dir(root) => {
                let path = root.join(name);
                tokio::task::spawn_blocking(move || write_durably(&path, &body).map(|()| path))
                    .await?
                    .map(|path| path.display().to_string())
                    .map_err(|e| anyhow::anyhow!("writing to {}: {e}", root.display()))
            }
            DeadLetterStore::AzureBlob(store) => Ok(store.put(name, body.into()).await?),
        }
    }
}

/// Writes, syncs and renames into place, then syncs the folder: after Ok, the
/// blob survives a crash, and a crash before leaves no half-written blob.
pub(crate) fn write_durably(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let folder = path.parent().expect("blob names have folders");
    std::fs::create_dir_all(folder)?;
    let partial = path.with_extension("json.partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(body)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    std::fs::File::open(folder)?.sync_all()
}

/// `<SUBSCRIPTION-IN-UPPER-CASE>/<yyyy>/<m>/<d>/<h>/<uuid>.json`, as Event
/// Grid names dead-letter blobs (UTC, not zero-padded).
pub fn blob_name(subscription: &str, at: DateTime<Utc>) -> String {
    let subscription: String = subscription
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_uppercase() } else { '-' })
        .collect();
    format!("{subscription}/{}/{}/{}/{}/{}.json", at.year(), at.month(), at.day(), at.hour(), uuid::Uuid::new_v4())
}

/// The original event with Event Grid's dead-letter attributes added
/// (camelCase for the Event Grid schema, lower case for CloudEvents, as Event
/// Grid writes them), plus the handler and its reason.
fn record(event: &Event, rejection: &Rejection, now: DateTime<Utc>) -> std::io::Result<Value> {
    let mut record: Map<String, Value> = serde_json::from_str(event.raw.get())?;
    let stamp = |t: DateTime<Utc>| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    let fields = [
        ("deadLetterReason", Value::from("HandlerRejected")),
        ("deadLetterDescription", Value::from(rejection.reason)),
        ("deliveryAttempts", Value::from(rejection.attempts)),
        ("lastDeliveryOutcome", Value::from("Rejected")),
        ("publishTime", stamp(rejection.received)),
        ("lastDeliveryAttemptTime", stamp(now)),
        ("gridfnHandler", Value::from(rejection.handler)),
    ];
    for (name, value) in fields {
        let name = match event.schema {
            Schema::EventGrid => name.to_owned(),
            Schema::CloudEvents => name.to_ascii_lowercase(),
        };
        record.insert(name, value);
    }
    Ok(Value::Object(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event_grid;

    #[tokio::test]
    async fn a_rejection_is_written_in_event_grid_layout_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::Dir(dir.path().to_owned());
        let body = br#"[{"id":"e1","eventType":"t","subject":"s","topic":"/x","data":{"n":1},"eventTime":"2024-01-01T00:00:00Z","dataVersion":"1","metadataVersion":"1"}]"#;
        let event = &decode_event_grid(body).unwrap()[0];
        let received = Utc::now();
        let rejection =
            Rejection { subscription: "orders-sub", handler: "h", reason: "bad order", attempts: 2, received };
        let path = PathBuf::from(store.write(event, &rejection).await.unwrap());

        let relative = path.strip_prefix(dir.path()).unwrap();
        let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(parts[0], "ORDERS-SUB");
        let now = Utc::now();
        assert_eq!(parts[1], now.year().to_string());
        assert_eq!(parts[2], now.month().to_string(), "month is not zero-padded");
        assert!(parts[5].ends_with(".json") && uuid::Uuid::parse_str(parts[5].trim_end_matches(".json")).is_ok());

        let blob: Vec<Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let record = &blob[0];
        assert_eq!(record["id"], "e1");
        assert_eq!(record["data"], serde_json::json!({"n": 1}));
        assert_eq!(record["deadLetterReason"], "HandlerRejected");
        assert_eq!(record["deadLetterDescription"], "bad order");
        assert_eq!(record["deliveryAttempts"], 2);
        assert!(DateTime::parse_from_rfc3339(record["publishTime"].as_str().unwrap()).is_ok());
        assert!(DateTime::parse_from_rfc3339(record["lastDeliveryAttemptTime"].as_str().unwrap()).is_ok());
        assert!(std::fs::read_dir(path.parent().unwrap()).unwrap().count() == 1, "no partial file left");
    }
}
