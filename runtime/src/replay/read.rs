//! Reading dead-lettered events back: where the blobs are ([`Source`]), what
//! each record in them holds ([`Record`], or a [`BadRecord`] saying why it is
//! not a replayable event), and which records a replay wants ([`Selection`]).
//!
//! # Sources
//!
//! [`Source::parse`] takes what a user types after `gridfn replay`:
//!
//! - a folder in Event Grid's dead-letter layout, at any depth above the
//!   subscription folders (what gridfn's `dir` store writes, or a container
//!   downloaded with `azcopy`), or one blob file;
//! - `https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX]?SAS`: a
//!   container (SAS) URL as the portal and `az storage container
//!   generate-sas` give it; without `?SAS`, the account key or a SAS token
//!   comes from [`AzureAuth`];
//! - `http://127.0.0.1:10000/ACCOUNT/CONTAINER[/PREFIX]`: the same, path-style,
//!   as Azurite and other emulators serve it;
//! - `azure://CONTAINER[/PREFIX]` with a connection string in [`AzureAuth`]
//!   (`UseDevelopmentStorage=true` for Azurite on its default port).
//!
//! # Blobs and hours
//!
//! A blob is named `…/<SUBSCRIPTION>/<y>/<m>/<d>/<h>/<guid>.json` (UTC, not
//! zero-padded); namespace topics put `<namespace>/<topic>/` in front. The
//! hour folder is when Event Grid (or gridfn) *dead-lettered* the events, not
//! when they were published, and that can be days later, so a blob is left
//! unread only when its hour cannot hold an event published inside the
//! window (see [`DEAD_LETTER_LAG`]); each record's publish time is then
//! checked exactly by [`Selection::skip_reason`].
//!
//! # Records
//!
//! A blob is a JSON array of records (a bare object is read as one). A record
//! is one of:
//!
//! - an Event Grid schema event with `deadLetterReason`, `deliveryAttempts`,
//!   `lastDeliveryOutcome`, `lastHttpStatusCode`, `publishTime`,
//!   `lastDeliveryAttemptTime` beside its own fields (gridfn adds
//!   `deadLetterDescription` and `gridfnHandler`);
//! - a CloudEvent with the same attributes in lower case;
//! - a namespace topic's `{"event": {…}, "deadletterProperties": {…}}`
//!   (also spelled `deadLetterProperties` and `brokerProperties`), whose
//!   properties are `deadletterreason`, `deliveryattempts`, `deliveryresult`,
//!   `publishutc`, `deliveryattemptutc`; `customDeliveryProperties` is
//!   dropped. The same objects may also sit beside a CloudEvent's attributes.
//!
//! Attribute names are matched without regard to case. They are removed from
//! the event (and its `raw` JSON, every other member kept byte for byte), and
//! what is left is decoded by the same decoder as a pushed event. A record
//! whose event does not decode, or whose dead-letter attributes have the
//! wrong type, is a [`BadRecord`] naming its blob and index.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::deadletter::azure::{AzureBlobConfig, AzureBlobDeadLetter};
use crate::event::{
    DecodeError, Event, MaybeMembers, Members, Schema, decode_members, json_kind, json_string, object_members,
};

/// The folder archived blobs move to, under the source's root.
pub const REPLAYED: &str = "replayed";

/// The longest a dead-lettered event can wait between being published and
/// landing in its hour folder: a namespace subscription keeps an event up to
/// 7 days and then retries writing it to the dead-letter container for up to
/// 2 days (Event Grid's push subscriptions: at most 1 day, plus 4 hours of
/// dead-letter retries), plus an hour of margin.
pub const DEAD_LETTER_LAG: TimeDelta = TimeDelta::hours(9 * 24 + 1);

/// Blobs [`Source::read_ahead`] fetches at once (an Azure source waits on
/// the network; a folder's are parsed on both cores).
const READ_AT_ONCE: usize = 4;

/// One blob's records as [`Source::read`] gives them, with the blob's name.
pub type ReadBlob = (String, anyhow::Result<Vec<Result<Record, BadRecord>>>);

/// Where dead-lettered blobs are read from.
pub enum Source {
    /// A folder in Event Grid's dead-letter layout (or any folder of `*.json`
    /// blobs); canonical, so [`Source::id`] is stable.
    Dir(PathBuf),
    /// One blob file (canonical); its folder is the root `replayed/` goes in.
    File(PathBuf),
    /// An Azure Storage container; `prefix` is the folder inside it that the
    /// store's names are relative to.
    Azure { store: Box<AzureBlobDeadLetter>, prefix: String },
}

/// Credentials for an Azure source, from the command line (or environment).
#[derive(Default, Clone)]
pub struct AzureAuth {
    /// A storage connection string; with `azure://CONTAINER`.
    pub connection_string: Option<String>,
    /// The account's shared key; with an `https://`/`http://` container URL.
    pub access_key: Option<String>,
    /// A SAS token; with a container URL that has none in it.
    pub sas_token: Option<String>,
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("AzureAuth")
            .field("connection_string", &secret(&self.connection_string))
            .field("access_key", &secret(&self.access_key))
            .field("sas_token", &secret(&self.sas_token))
            .finish()
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

impl Source {
    /// A folder or a single blob file.
    pub fn path(path: &Path) -> anyhow::Result<Source> {
        let canonical =
            path.canonicalize().map_err(|e| anyhow::anyhow!("dead-letter source {}: {e}", path.display()))?;
        if canonical.is_dir() {
            Ok(Source::Dir(canonical))
        } else if canonical.is_file() {
            Ok(Source::File(canonical))
        } else {
            anyhow::bail!("dead-letter source {} is neither a folder nor a file", path.display())
        }
    }

    /// A path, or a container URL (syntax in the module docs).
    pub fn parse(text: &str, auth: &AzureAuth) -> anyhow::Result<Source> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("azure://") {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let Some(connection_string) = auth.connection_string.clone() else {
                anyhow::bail!(
                    "{text}: azure://CONTAINER needs a connection string (--connection-string); with an account \
                     key or SAS token, give the container URL instead: https://ACCOUNT.blob.core.windows.net/{container}"
                );
            };
            let config = AzureBlobConfig { connection_string: Some(connection_string), ..blank_config(container) };
            return Source::from_azure(&config, prefix);
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            let (config, prefix) = container_url(text, auth)?;
            return Source::from_azure(&config, &prefix);
        }
        Source::path(Path::new(text))
    }

    /// The container `config` names, under its prefix joined with `prefix`.
    /// No request is made here; the first [`Source::blobs`] says whether the
    /// container and credentials work.
    pub fn from_azure(config: &AzureBlobConfig, prefix: &str) -> anyhow::Result<Source> {
        let prefix = [config.prefix.as_deref().unwrap_or_default(), prefix]
            .iter()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        let config = AzureBlobConfig { prefix: Some(prefix.clone()), create_container: false, ..config.clone() };
        let store = AzureBlobDeadLetter::new(&config)?;
        Ok(Source::Azure { store: Box::new(store), prefix })
    }

    /// Blob names (relative to the source root, '/'-separated), sorted.
    /// A blob is a `*.json` file directly in an hour folder (`<y>/<m>/<d>/<h>/`),
    /// as Event Grid lays them out; anything under a `replayed/` folder, other
    /// files (e.g. gridfn's `*.json.partial` writes in progress, an
    /// `index.json` beside the subscription folders) are not blobs, and
    /// `*.json` files outside hour folders are named in a warning. A
    /// [`Source::File`] is a blob wherever it is. Blobs whose hour folder
    /// cannot hold an event published inside `window` are not listed.
    pub async fn blobs(&self, window: &TimeWindow) -> anyhow::Result<Vec<String>> {
        let names = match self {
            Source::Dir(root) => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || walk(&root)).await??
            }
            Source::File(path) => vec![file_name(path)?],
            Source::Azure { store, .. } => store.list("").await?,
        };
        let (mut blobs, others): (Vec<String>, Vec<String>) = names
            .into_iter()
            .filter(|name| name.ends_with(".json") && !name.split('/').any(|segment| segment == REPLAYED))
            .partition(|name| match self {
                Source::File(_) => true,
                _ => blob_hour(&self.full_name(name)).is_some(),
            });
        if let Some(example) = others.first() {
            tracing::warn!(
                source = %self.id(), count = others.len(), %example,
                "skipping *.json files outside <y>/<m>/<d>/<h>/ hour folders: they are not dead-letter blobs \
                 (to replay one, name the file itself)"
            );
        }
        blobs.retain(|name| blob_hour(&self.full_name(name)).is_none_or(|hour| window.may_hold(hour)));
        blobs.sort();
        Ok(blobs)
    }

    /// Every record of one blob, each decoded or reported. Err only when the
    /// blob cannot be fetched at all.
    pub async fn read(&self, blob: &str) -> anyhow::Result<Vec<Result<Record, BadRecord>>> {
        let bytes = match self {
            Source::Dir(_) | Source::File(_) => {
                let path = self.local_path(blob)?;
                tokio::fs::read(&path).await.map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
            }
            Source::Azure { store, .. } => store.get(blob).await?.to_vec(),
        };
        let full = self.full_name(blob);
        // Parsed here, on an async worker, for the 1-3 ms a blob of 100
        // records takes: a replay answers no requests, so what waits is only
        // its own handlers' calls, and the events are made on the threads
        // that run and free them. On the blocking pool instead, a
        // 100,000-event replay used as much CPU or more and ran 0-5 % slower
        // against the same push (alternating runs).
        Ok(parse_records(blob, blob_subscription(&full), &bytes))
    }

    /// Reads `blobs` in order on a task of its own, a few at once and up to
    /// `ahead` blobs ahead of the receiver, so that reading the next blobs
    /// overlaps sending the records of the last ones. Each comes with its
    /// name, as [`Source::read`] gives it. Dropping the receiver stops it.
    pub fn read_ahead(self: Arc<Self>, blobs: Vec<String>, ahead: usize) -> mpsc::Receiver<ReadBlob> {
        let (sender, receiver) = mpsc::channel(ahead.max(1));
        tokio::spawn(async move {
            let reads = futures::stream::iter(blobs).map(|blob| {
                let source = self.clone();
                async move {
                    let records = source.read(&blob).await;
                    (blob, records)
                }
            });
            let mut reads = std::pin::pin!(reads.buffered(READ_AT_ONCE));
            while let Some(read) = reads.next().await {
                if sender.send(read).await.is_err() {
                    break;
                }
            }
        });
        receiver
    }

    /// Moves a blob under `replayed/` (same relative name). Safe to repeat:
    /// a blob already moved is not an error.
    pub async fn archive(&self, blob: &str) -> anyhow::Result<()> {
        let archived = format!("{REPLAYED}/{blob}");
        match self {
            Source::Dir(_) | Source::File(_) => {
                let (from, to) = (self.local_path(blob)?, self.local_path(&archived)?);
                tokio::task::spawn_blocking(move || move_durably(&from, &to)).await?
            }
            Source::Azure { store, .. } => {
                match store.copy(blob, &archived).await {
                    Ok(()) => {}
                    Err(crate::deadletter::azure::DeadLetterError::BlobNotFound { .. })
                        if store.exists(&archived).await? =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
                store.delete(blob).await?;
                Ok(())
            }
        }
    }

    /// Deletes a blob; a blob already gone is not an error.
    pub async fn delete(&self, blob: &str) -> anyhow::Result<()> {
        match self {
            Source::Dir(_) | Source::File(_) => {
                let path = self.local_path(blob)?;
                tokio::task::spawn_blocking(move || remove_durably(&path)).await?
            }
            Source::Azure { store, .. } => store.delete(blob).await.map(drop).map_err(Into::into),
        }
    }

    /// A stable identity of the source for ledgers and locks:
    /// `dir:<canonical path>`, `file:<canonical path>`, or
    /// `azure:<endpoint>/<container>[/<prefix>]` (no credentials).
    pub fn id(&self) -> String {
        match self {
            Source::Dir(root) => format!("dir:{}", root.display()),
            Source::File(path) => format!("file:{}", path.display()),
            Source::Azure { store, .. } => format!("azure:{}", store.location()),
        }
    }

    /// The blob's name with the folders above the root in front, for reading
    /// the hour and subscription folders out of it (a source may start below
    /// them, e.g. at a subscription folder or inside a container's prefix).
    fn full_name(&self, blob: &str) -> String {
        let above = match self {
            Source::Dir(root) => root.to_string_lossy().into_owned(),
            Source::File(path) => path.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
            Source::Azure { prefix, .. } => prefix.clone(),
        };
        if above.is_empty() { blob.to_string() } else { format!("{}/{blob}", above.trim_end_matches('/')) }
    }

    /// The file a blob name stands for; names that would leave the root are refused.
    fn local_path(&self, blob: &str) -> anyhow::Result<PathBuf> {
        let root = match self {
            Source::Dir(root) => root.as_path(),
            Source::File(path) => path.parent().unwrap_or(Path::new("/")),
            Source::Azure { .. } => unreachable!("only folder and file sources have local paths"),
        };
        if blob.is_empty() || blob.starts_with('/') || blob.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            anyhow::bail!("{blob:?} is not a blob name inside {}", root.display());
        }
        Ok(root.join(blob))
    }
}

/// An `AzureBlobConfig` with only the container set.
fn blank_config(container: &str) -> AzureBlobConfig {
    AzureBlobConfig {
        container: container.to_string(),
        prefix: None,
        connection_string: None,
        account: None,
        access_key: None,
        sas_token: None,
        endpoint: None,
        create_container: false,
    }
}

/// A container URL, `https://ACCOUNT.blob.<suffix>/CONTAINER[/PREFIX][?SAS]`
/// or path-style `http://HOST:PORT/ACCOUNT/CONTAINER[/PREFIX]`, as a config
/// and the prefix inside the container.
fn container_url(text: &str, auth: &AzureAuth) -> anyhow::Result<(AzureBlobConfig, String)> {
    let url = url::Url::parse(text).map_err(|e| anyhow::anyhow!("{}: not a URL ({e})", redact_query(text)))?;
    let shown = redact_query(text);
    let host = url.host_str().unwrap_or_default().to_string();
    let mut segments: Vec<String> =
        url.path_segments().map(|s| s.filter(|s| !s.is_empty()).map(percent_decode).collect()).unwrap_or_default();
    let origin = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let (account, endpoint) = match host.split_once(".blob.") {
        Some((account, _)) => (account.to_string(), origin),
        None => {
            if segments.is_empty() {
                anyhow::bail!("{shown}: expected http://HOST:PORT/ACCOUNT/CONTAINER for a path-style (emulator) URL");
            }
            let account = segments.remove(0);
            let endpoint = format!("{origin}/{account}");
            (account, endpoint)
        }
    };
    if segments.is_empty() {
        anyhow::bail!("{shown}: the URL names no container (…/CONTAINER[/PREFIX])");
    }
    let container = segments.remove(0);
    let sas_in_url = url.query().filter(|q| !q.is_empty()).map(str::to_string);
    if auth.connection_string.is_some() {
        anyhow::bail!(
            "{shown}: a connection string goes with azure://{container}, not with a URL (use --access-key or a SAS)"
        );
    }
    let (access_key, sas_token) = match (sas_in_url, &auth.access_key, &auth.sas_token) {
        (Some(sas), None, None) => (None, Some(sas)),
        (None, key, sas) => (key.clone(), sas.clone()),
        (Some(_), _, _) => anyhow::bail!("{shown}: the URL has a SAS token already; drop --access-key/--sas-token"),
    };
    if access_key.is_none() && sas_token.is_none() {
        anyhow::bail!(
            "{shown}: no credentials: add the container's SAS to the URL (…?sv=…&sig=…), or give --access-key or \
             --sas-token"
        );
    }
    let config = AzureBlobConfig {
        account: Some(account),
        access_key,
        sas_token,
        endpoint: Some(endpoint),
        ..blank_config(&container)
    };
    Ok((config, segments.join("/")))
}

fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// The URL without its query (a SAS signature must not reach a message).
fn redact_query(text: &str) -> String {
    match text.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => text.to_string(),
    }
}

/// Every file under `root`, relative and '/'-separated. Symbolic links to
/// folders are not followed (a link loop would never end); names that are
/// not UTF-8 cannot be blob names and are left out with a warning.
fn walk(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| anyhow::anyhow!("listing {}: {e}", folder.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| anyhow::anyhow!("listing {}: {e}", folder.display()))?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(path);
                continue;
            }
            if !(kind.is_file() || (kind.is_symlink() && path.is_file())) {
                continue;
            }
            let relative = path.strip_prefix(root).expect("walked from root");
            match relative.to_str() {
                Some(name) => names.push(name.replace(std::path::MAIN_SEPARATOR, "/")),
                None => tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8"),
            }
        }
    }
    Ok(names)
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("{}: the file name is not UTF-8", path.display()))
}

/// Renames `from` to `to` and syncs both folders: after Ok the move survives
/// a crash. Already moved (from gone, to there) is Ok.
fn move_durably(from: &Path, to: &Path) -> anyhow::Result<()> {
    if !from.exists() && to.exists() {
        return Ok(());
    }
    let to_folder = to.parent().expect("blob paths have folders");
    std::fs::create_dir_all(to_folder).map_err(|e| anyhow::anyhow!("creating {}: {e}", to_folder.display()))?;
    std::fs::rename(from, to).map_err(|e| anyhow::anyhow!("moving {} to {}: {e}", from.display(), to.display()))?;
    sync_folder(to_folder)?;
    sync_folder(from.parent().expect("blob paths have folders"))
}

fn remove_durably(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_folder(path.parent().expect("blob paths have folders")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::anyhow!("deleting {}: {e}", path.display())),
    }
}

fn sync_folder(folder: &Path) -> anyhow::Result<()> {
    std::fs::File::open(folder)
        .and_then(|f| f.sync_all())
        .map_err(|e| anyhow::anyhow!("syncing {}: {e}", folder.display()))
}

/// The hour folder `<y>/<m>/<d>/<h>` a blob sits directly in (UTC), if its
/// name has one.
pub fn blob_hour(name: &str) -> Option<DateTime<Utc>> {
    let parts: Vec<&str> = name.split('/').collect();
    let [y, m, d, h, _file] = parts.get(parts.len().checked_sub(5)?..)? else { return None };
    let number = |text: &str, digits: std::ops::RangeInclusive<usize>| {
        (digits.contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse::<u32>().ok())?
    };
    let (y, m, d, h) = (number(y, 4..=4)?, number(m, 1..=2)?, number(d, 1..=2)?, number(h, 1..=2)?);
    Some(NaiveDate::from_ymd_opt(y as i32, m, d)?.and_hms_opt(h, 0, 0)?.and_utc())
}

/// The subscription folder: the one just above the hour folders.
pub fn blob_subscription(name: &str) -> Option<&str> {
    blob_hour(name)?;
    name.rsplit('/').nth(5).filter(|s| !s.is_empty())
}

/// Publish times a replay wants: `since <= publishTime < until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl TimeWindow {
    pub fn contains(&self, time: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| time >= since) && self.until.is_none_or(|until| time < until)
    }

    /// Whether the hour folder starting at `hour` can hold an event published
    /// inside the window: its events were dead-lettered in that hour, so
    /// published in `[hour - DEAD_LETTER_LAG, hour + 1h)`.
    pub fn may_hold(&self, hour: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| hour + TimeDelta::hours(1) > since)
            && self.until.is_none_or(|until| hour - DEAD_LETTER_LAG < until)
    }
}

/// Which record layout a record was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// An Event Grid schema event with the camelCase attributes beside its fields.
    EventGrid,
    /// A CloudEvent with the lower-case attributes beside its own.
    CloudEvents,
    /// A namespace topic's `{ "event": {…}, "deadletterProperties": {…} }`.
    Namespace,
}

/// One dead-lettered event, decoded and validated like a pushed one, with the
/// dead-letter attributes removed from `event` (its `raw` too) and kept here.
#[derive(Debug, Clone)]
pub struct Record {
    /// Shared by the records of one blob.
    pub blob: Arc<str>,
    /// Its place in the blob's array (0-based); with `blob`, names the record.
    pub index: usize,
    /// Shared with the batches that send it: never copied.
    pub event: Arc<Event>,
    pub shape: Shape,
    /// The subscription folder the blob sits in (upper-case as Event Grid
    /// writes it); shared by the records of one blob.
    pub subscription: Option<Arc<str>>,
    /// What the record said of the event's failure, beside it (and no longer in it).
    pub attributes: Attributes,
}

/// A record that is not a valid event: reported with where it is, never skipped silently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BadRecord {
    pub blob: String,
    /// Which record of the blob (0-based); `None` when the blob as a whole
    /// is not a JSON array of records.
    pub index: Option<usize>,
    pub problem: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(index) => write!(f, "{} record {index}: {}", self.blob, self.problem),
            None => write!(f, "{}: {}", self.blob, self.problem),
        }
    }
}

/// The records of one blob's bytes. `subscription` is the blob's
/// subscription folder, which every record of it shares.
pub fn parse_records(blob: &str, subscription: Option<&str>, bytes: &[u8]) -> Vec<Result<Record, BadRecord>> {
    let bad = |index: Option<usize>, problem: String| BadRecord { blob: blob.to_string(), index, problem };
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text.strip_prefix('\u{feff}').unwrap_or(text),
        Err(e) => return vec![Err(bad(None, format!("the blob is not UTF-8 text: {e}")))],
    };
    let items = match text.trim_start().as_bytes().first() {
        Some(b'[') => members_of_records(text),
        Some(b'{') => serde_json::from_str::<&RawValue>(text).map(|one| vec![object_members(one)]),
        _ => return vec![Err(bad(None, "the blob is not a JSON array of dead-letter records".to_string()))],
    };
    let items = match items {
        Ok(items) if items.is_empty() => return vec![Err(bad(None, "the blob is an empty array".to_string()))],
        Ok(items) => items,
        Err(e) => return vec![Err(bad(None, format!("the blob is not valid JSON: {e}")))],
    };
    let (name, subscription): (Arc<str>, Option<Arc<str>>) = (blob.into(), subscription.map(Arc::from));
    items
        .into_iter()
        .enumerate()
        .map(|(index, members)| {
            let (event, shape, attributes) =
                members.and_then(parse_record).map_err(|problem| bad(Some(index), problem))?;
            Ok(Record {
                blob: name.clone(),
                index,
                event: Arc::new(event),
                shape,
                subscription: subscription.clone(),
                attributes,
            })
        })
        .collect()
}

/// The members of each record of a blob's array, or why a record is not an
/// object. One pass reads the records and their members together (not a raw
/// copy of each record first); a record that would fail that pass for the
/// whole blob, though it fails only itself (a number out of range where an
/// object should be), sends the blob the slower way: split into records,
/// then each record read alone.
fn members_of_records(text: &str) -> serde_json::Result<Vec<Result<Members<'_>, String>>> {
    let not_object = |kind| format!("expected a JSON object, found {kind}");
    match serde_json::from_str::<Vec<MaybeMembers>>(text) {
        Ok(records) => Ok(records.into_iter().map(|MaybeMembers(members)| members.map_err(not_object)).collect()),
        Err(_) => {
            serde_json::from_str::<Vec<&RawValue>>(text).map(|raws| raws.into_iter().map(object_members).collect())
        }
    }
}

/// One record, from its members: its event (decoded without the dead-letter
/// attributes), the layout it was in, and the attributes. One pass over the
/// members takes the attributes, keeps the rest, and notes the names that
/// tell the layouts apart; a namespace record's event is then the object
/// under `event`, whose own members are read the same way.
fn parse_record(members: Members<'_>) -> Result<(Event, Shape, Attributes), String> {
    let mut attributes = Attributes::default();
    let mut kept = Vec::with_capacity(members.len());
    let mut seen = Seen::default();
    for (name, value) in members {
        if attributes.take(&name, value)? {
            continue;
        }
        match &*name {
            "id" => seen.id = true,
            "event" => {
                seen.event_object |= value.get().starts_with('{');
                seen.event = Some(value);
            }
            "specversion" => seen.specversion = true,
            "type" => seen.type_ = true,
            "eventType" => seen.event_type = true,
            _ => {}
        }
        kept.push((name, value));
    }
    let shape = if !seen.id && seen.event_object {
        // The record's other members are the broker's, not the event's.
        let event = object_members(seen.event.expect("seen with it"))?;
        kept.clear();
        for (name, value) in event {
            if !attributes.take(&name, value)? {
                kept.push((name, value));
            }
        }
        Shape::Namespace
    } else if seen.specversion || (seen.type_ && !seen.event_type) {
        Shape::CloudEvents
    } else {
        Shape::EventGrid
    };
    let schema = match shape {
        Shape::EventGrid => Schema::EventGrid,
        Shape::CloudEvents | Shape::Namespace => Schema::CloudEvents,
    };
    let event = decode_members(schema, kept).map_err(|e| problem(&e))?;
    Ok((event, shape, attributes))
}

/// The members of a record that tell its layout: a namespace record wraps
/// its event (an object under `event`, and no `id` beside it); a CloudEvent
/// has `specversion`, or `type` without Event Grid's `eventType`.
#[derive(Default)]
struct Seen<'a> {
    id: bool,
    /// The last `event` member, and whether any was an object.
    event: Option<&'a RawValue>,
    event_object: bool,
    specversion: bool,
    type_: bool,
    event_type: bool,
}

/// A decoder's complaint about the one event it was given (the record's
/// index is the place that means something here).
fn problem(error: &DecodeError) -> String {
    match &error.field {
        Some(field) => format!("{field}: {}", error.message),
        None => error.message.clone(),
    }
}

/// The dead-letter attributes of one record, whichever layout spelled them
/// (a dry run's `--json` rows show them under these names; absent is `null`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Attributes {
    /// `deadLetterReason`, free text (Microsoft publishes no closed list).
    pub reason: Option<String>,
    /// `deadLetterDescription`: gridfn's records carry the handler's own words.
    pub description: Option<String>,
    /// `lastDeliveryOutcome` (namespaces: `deliveryresult`), free text.
    pub outcome: Option<String>,
    /// `gridfnHandler`: the handler that rejected it, in gridfn's own records.
    pub handler: Option<String>,
    /// `deliveryAttempts`.
    pub delivery_attempts: Option<u32>,
    /// `lastHttpStatusCode`.
    pub http_status: Option<u16>,
    /// `publishTime` (namespaces: `publishutc`): when Event Grid (or gridfn) accepted it.
    pub publish_time: Option<DateTime<Utc>>,
    /// `lastDeliveryAttemptTime` (namespaces: `deliveryattemptutc`).
    pub last_attempt_time: Option<DateTime<Utc>>,
}

impl Attributes {
    /// Takes `name` if it is a dead-letter attribute, or one of the objects
    /// that hold them (whose own members are then taken); true when taken.
    /// The names are Event Grid's camelCase, the CloudEvents lower case, and
    /// the namespace properties' names, matched ignoring case.
    fn take(&mut self, name: &str, value: &RawValue) -> Result<bool, String> {
        let text = |value: &RawValue| match json_string(value) {
            Ok(text) => Ok(text.map(Cow::into_owned)),
            Err(_) => Err(format!("{name}: must be a string, found {}", json_kind(value.get()))),
        };
        // Every member of every record comes here: no lower-cased copy of its
        // name, and most (the event's own) are ruled out by their length.
        if name.len() >= 64 || ATTRIBUTE_NAME_LENGTHS & (1 << name.len()) == 0 {
            return Ok(false);
        }
        let Some(attribute) = ATTRIBUTE_NAMES.iter().find(|(known, _)| known.eq_ignore_ascii_case(name)) else {
            return Ok(false);
        };
        match attribute.1 {
            Attribute::Reason => self.reason = text(value)?,
            Attribute::Description => self.description = text(value)?,
            Attribute::Outcome => self.outcome = text(value)?,
            Attribute::Handler => self.handler = text(value)?,
            Attribute::Attempts => self.delivery_attempts = number(name, value)?,
            Attribute::HttpStatus => self.http_status = number(name, value)?,
            Attribute::PublishTime => self.publish_time = time(name, value)?,
            Attribute::LastAttemptTime => self.last_attempt_time = time(name, value)?,
            Attribute::Properties => {
                for (inner, value) in object_members(value).map_err(|e| format!("{name}: {e}"))? {
                    // Unknown properties are Event Grid's to add; they are not the event's.
                    self.take(&inner, value).map_err(|e| format!("{name}.{e}"))?;
                }
            }
            // Headers the subscription added to its deliveries, not part of the event.
            Attribute::CustomDeliveryProperties => {}
        }
        Ok(true)
    }
}

/// Which dead-letter attribute a member is.
#[derive(Clone, Copy)]
enum Attribute {
    Reason,
    Description,
    Outcome,
    Handler,
    Attempts,
    HttpStatus,
    PublishTime,
    LastAttemptTime,
    /// An object holding more of them.
    Properties,
    CustomDeliveryProperties,
}

/// The dead-letter attributes' names, lower case (matched ignoring case):
/// Event Grid's camelCase, the CloudEvents lower case, and the namespace
/// properties' names.
const ATTRIBUTE_NAMES: [(&str, Attribute); 14] = [
    ("deadletterreason", Attribute::Reason),
    ("deadletterdescription", Attribute::Description),
    ("lastdeliveryoutcome", Attribute::Outcome),
    ("deliveryresult", Attribute::Outcome),
    ("gridfnhandler", Attribute::Handler),
    ("deliveryattempts", Attribute::Attempts),
    ("lasthttpstatuscode", Attribute::HttpStatus),
    ("publishtime", Attribute::PublishTime),
    ("publishutc", Attribute::PublishTime),
    ("lastdeliveryattempttime", Attribute::LastAttemptTime),
    ("deliveryattemptutc", Attribute::LastAttemptTime),
    ("deadletterproperties", Attribute::Properties),
    ("brokerproperties", Attribute::Properties),
    ("customdeliveryproperties", Attribute::CustomDeliveryProperties),
];

/// Bit `n` is set when a name in [`ATTRIBUTE_NAMES`] is `n` bytes long.
const ATTRIBUTE_NAME_LENGTHS: u64 = {
    let (mut bits, mut i) = (0u64, 0);
    while i < ATTRIBUTE_NAMES.len() {
        bits |= 1 << ATTRIBUTE_NAMES[i].0.len();
        i += 1;
    }
    bits
};

/// A whole number (JSON number, or digits in a string as some tools write
/// them); null is absent.
fn number<T: TryFrom<u64>>(name: &str, value: &RawValue) -> Result<Option<T>, String> {
    let wrong = || format!("{name}: must be a whole number, found {}", value.get());
    // serde_json has checked the text: a number, a string, null, or another kind.
    let parsed = match value.get().as_bytes().first() {
        Some(b'n') => return Ok(None),
        Some(b'"') => json_string(value).ok().flatten().and_then(|text| text.trim().parse::<u64>().ok()),
        // "1.0", "-1" and "1e3" are numbers, but not whole ones in range.
        _ => value.get().parse::<u64>().ok(),
    };
    parsed.and_then(|n| T::try_from(n).ok()).map(Some).ok_or_else(wrong)
}

/// An RFC 3339 time; Event Grid's seven fractional digits are fine, and a
/// time without an offset is UTC (as in Event Grid's own quirky payloads).
fn time(name: &str, value: &RawValue) -> Result<Option<DateTime<Utc>>, String> {
    let text = match json_string(value) {
        Ok(None) => return Ok(None),
        Ok(Some(text)) => text,
        Err(_) => return Err(format!("{name}: must be a time string, found {}", json_kind(value.get()))),
    };
    parse_rfc3339(&text).map(Some).ok_or_else(|| format!("{name}: {text:?} is not an RFC 3339 time"))
}

fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc()))
}

/// What a replay selects: every non-empty criterion must hold (within one,
/// any of its values may match).
///
/// Matching: `reasons`, `outcomes`, `types` and `subscriptions` are exact but
/// ignore case (Event Grid upper-cases subscription folders; reasons are free
/// text). `subject_prefixes`, `handlers` and `ids` are exact and
/// case-sensitive, as subjects, handler names and event ids are.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--reason`: `deadLetterReason`, e.g. `MaxDeliveryAttemptsExceeded`.
    pub reasons: Vec<String>,
    /// `--outcome`: `lastDeliveryOutcome`, e.g. `Busy`, `TimedOut`.
    pub outcomes: Vec<String>,
    /// `--type`: the event's type (`eventType` / `type`).
    pub types: Vec<String>,
    /// `--subject-prefix`: the subject begins with one of these.
    pub subject_prefixes: Vec<String>,
    /// `--since`: published at or after (the window also prunes hour folders).
    pub since: Option<DateTime<Utc>>,
    /// `--until`: published before.
    pub until: Option<DateTime<Utc>>,
    /// `--subscription`: the subscription folder the blob sits in.
    pub subscriptions: Vec<String>,
    /// `--handler`: records gridfn dead-lettered from another handler are
    /// skipped. Records that name no handler (Event Grid's own) are not: for
    /// them `--handler` says where they go, which is the runner's business.
    pub handlers: Vec<String>,
    /// `--id`/`--ids-from`: `None` selects any id; an empty set selects none
    /// (an empty `--ids-from` file must not mean "everything").
    pub ids: Option<HashSet<String>>,
}

impl Selection {
    pub fn window(&self) -> TimeWindow {
        TimeWindow { since: self.since, until: self.until }
    }

    /// Why `record` is not selected (for the dry run's table), or None when
    /// it is. The first criterion that fails is the reason given.
    pub fn skip_reason(&self, record: &Record) -> Option<String> {
        if let Some(ids) = &self.ids
            && !ids.contains(&record.event.id)
        {
            return Some(format!("id {:?} is not among the --id/--ids-from ids", record.event.id));
        }
        if let Some(why) = mismatch(
            "subscription",
            "--subscription",
            record.subscription.as_deref(),
            &self.subscriptions,
            eq_ignore_case,
        ) {
            return Some(why);
        }
        if let Some(handler) = &record.attributes.handler
            && !self.handlers.is_empty()
            && !self.handlers.contains(handler)
        {
            return Some(format!("dead-lettered by handler {handler}, not --handler {}", self.handlers.join(", ")));
        }
        let event = &record.event;
        let checks = [
            ("reason", "--reason", record.attributes.reason.as_deref(), &self.reasons),
            ("outcome", "--outcome", record.attributes.outcome.as_deref(), &self.outcomes),
            ("type", "--type", Some(event.event_type.as_str()), &self.types),
        ];
        for (what, flag, value, wanted) in checks {
            if let Some(why) = mismatch(what, flag, value, wanted, eq_ignore_case) {
                return Some(why);
            }
        }
        if let Some(why) = mismatch(
            "subject",
            "--subject-prefix",
            event.subject.as_deref(),
            &self.subject_prefixes,
            |subject, prefix| subject.starts_with(prefix),
        ) {
            return Some(why);
        }
        let window = self.window();
        if window == TimeWindow::default() {
            return None;
        }
        let Some(published) = record.attributes.publish_time else {
            return Some("has no publish time to compare with --since/--until".to_string());
        };
        let stamp = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        match (window.since, window.until) {
            (Some(since), _) if published < since => {
                Some(format!("published {}, before --since {}", stamp(published), stamp(since)))
            }
            (_, Some(until)) if published >= until => {
                Some(format!("published {}, not before --until {}", stamp(published), stamp(until)))
            }
            _ => None,
        }
    }
}

/// Why `value` fails a criterion, if it does; an empty `wanted` accepts anything.
fn mismatch(
    what: &str,
    flag: &str,
    value: Option<&str>,
    wanted: &[String],
    matches: fn(&str, &str) -> bool,
) -> Option<String> {
    if wanted.is_empty() {
        return None;
    }
    let wanted_text = wanted.join(", ");
    match value {
        None => Some(format!("has no {what}; {flag} wants {wanted_text}")),
        Some(value) if wanted.iter().any(|w| matches(value, w)) => None,
        Some(value) => Some(format!("{what} {value:?} is not {flag} {wanted_text}")),
    }
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase()
}

/// `--ids-from FILE`: one id per line; blank lines and `#` comments ignored,
/// surrounding white space trimmed.
pub fn read_ids(path: &Path) -> anyhow::Result<HashSet<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--ids-from {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// `--since`/`--until`: RFC 3339 (`2024-01-05T09:00:00Z`), a date-time
/// without offset (UTC, seconds optional), a date (its midnight, UTC), or a
/// duration ago (`90m`, `2h`, `3d`, humantime syntax).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    if let Some(time) = parse_rfc3339(text) {
        return Ok(time);
    }
    if let Ok(time) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
        return Ok(time.and_utc());
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if let Ok(ago) = humantime::parse_duration(text)
        && let Ok(ago) = TimeDelta::from_std(ago)
        && let Some(time) = now.checked_sub_signed(ago)
    {
        return Ok(time);
    }
    anyhow::bail!(
        "{text:?} is not a time: use RFC 3339 (2024-01-05T09:00:00Z), a UTC date-time (2024-01-05T09:00), a date \
         (2024-01-05) or a duration ago (90m, 2h, 3d)"
    )
}

/// The end-to-end tests' generated data set, read back here too.
#[cfg(test)]
#[path = "../../../tests/e2e/replay_data.rs"]
mod replay_data;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    use super::replay_data;

    const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/deadletter");

    fn utc(text: &str) -> DateTime<Utc> {
        parse_rfc3339(text).unwrap_or_else(|| panic!("{text}"))
    }

    fn one(bytes: &[u8]) -> Result<Record, BadRecord> {
        let mut records = parse_records("SUB/2024/1/1/0/x.json", Some("SUB"), bytes);
        assert_eq!(records.len(), 1, "{records:?}");
        records.pop().unwrap()
    }

    fn raw_json(record: &Record) -> Value {
        serde_json::from_str(record.event.raw.get()).unwrap()
    }

    /// The names of the dead-letter attributes, as every shape spells them.
    const ATTRIBUTES: [&str; 8] = [
        "deadletterreason",
        "deadletterdescription",
        "deliveryattempts",
        "lastdeliveryoutcome",
        "lasthttpstatuscode",
        "publishtime",
        "lastdeliveryattempttime",
        "gridfnhandler",
    ];

    #[tokio::test]
    async fn every_vector_blob_parses_as_its_index_says() {
        let index: Vec<Value> =
            serde_json::from_slice(&std::fs::read(format!("{VECTORS}/index.json")).unwrap()).unwrap();
        let source = Source::path(Path::new(VECTORS)).unwrap();
        let blobs = source.blobs(&TimeWindow::default()).await.unwrap();
        let listed: Vec<&str> = index.iter().map(|e| e["path"].as_str().unwrap()).collect();
        let mut expected_names = listed.clone();
        expected_names.sort();
        assert_eq!(blobs, expected_names, "index.json is outside the hour folders: not a blob");
        for entry in &index {
            let path = entry["path"].as_str().unwrap();
            let original: Vec<Value> =
                serde_json::from_slice(&std::fs::read(format!("{VECTORS}/{path}")).unwrap()).unwrap();
            let records: Vec<Record> =
                source.read(path).await.unwrap().into_iter().map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect();
            assert_eq!(records.len() as u64, entry["event_count"].as_u64().unwrap(), "{path}");
            let shape = match entry["schema"].as_str().unwrap() {
                "eventgrid" => Shape::EventGrid,
                _ => Shape::CloudEvents,
            };
            let mut reasons: Vec<String> = records.iter().map(|r| r.attributes.reason.clone().unwrap()).collect();
            reasons.sort();
            reasons.dedup();
            let expected_reasons: Vec<String> =
                entry["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
            assert_eq!(reasons, expected_reasons, "{path}");
            for (record, original) in records.iter().zip(&original) {
                assert_eq!(record.shape, shape, "{path}");
                let subscription = record.subscription.as_deref().unwrap();
                assert!(subscription.eq_ignore_ascii_case(entry["subscription_name"].as_str().unwrap()), "{path}");
                assert_eq!(record.event.id, original["id"].as_str().unwrap(), "{path}");
                // The event is the original minus the dead-letter attributes, nothing else.
                let mut stripped = original.as_object().unwrap().clone();
                stripped.retain(|name, _| !ATTRIBUTES.contains(&name.to_ascii_lowercase().as_str()));
                assert!(stripped.len() < original.as_object().unwrap().len(), "{path}: attributes were there");
                assert_eq!(raw_json(record), Value::Object(stripped), "{path}");
                let attempts = original.get("deliveryAttempts").or(original.get("deliveryattempts"));
                assert_eq!(
                    record.attributes.delivery_attempts.map(u64::from),
                    attempts.and_then(Value::as_u64),
                    "{path}"
                );
                let published = original.get("publishTime").or(original.get("publishtime")).unwrap();
                assert_eq!(record.attributes.publish_time, Some(utc(published.as_str().unwrap())), "{path}");
                assert!(record.attributes.outcome.is_some() && record.attributes.handler.is_none(), "{path}");
            }
        }
        // Spot checks against the files' text.
        let telemetry = &source.read(listed[2]).await.unwrap()[0].as_ref().unwrap().clone();
        assert_eq!(
            (telemetry.attributes.http_status, telemetry.attributes.outcome.as_deref()),
            (Some(503), Some("Busy"))
        );
        assert_eq!(telemetry.attributes.last_attempt_time, Some(utc("2023-12-31T00:05:12.3456789Z")));
    }

    #[test]
    fn event_grid_records_keep_the_event_byte_for_byte() {
        let body = br#"[{"id":"e1","eventType":"T","subject":"/a","data":{"b": 1.50, "a":"\u00e9"},
            "deadLetterReason":"MaxDeliveryAttemptsExceeded","deliveryAttempts":"3","lastDeliveryOutcome":"Busy",
            "lastHttpStatusCode":503,"publishTime":"2024-01-05T09:03:00.5000000Z","topic":"/t"}]"#;
        let record = one(body).unwrap();
        assert_eq!(record.shape, Shape::EventGrid);
        assert_eq!(record.event.data, br#"{"b": 1.50, "a":"\u00e9"}"#);
        assert_eq!(record.event.source, "/t", "members after the attributes are kept");
        assert_eq!(
            record.event.raw.get(),
            r#"{"id":"e1","eventType":"T","subject":"/a","data":{"b": 1.50, "a":"\u00e9"},"topic":"/t"}"#
        );
        assert_eq!(record.attributes.delivery_attempts, Some(3), "digits in a string are a number");
        assert_eq!(record.attributes.publish_time, Some(utc("2024-01-05T09:03:00.5Z")));
    }

    #[test]
    fn cloudevents_records_lose_their_attributes_before_decoding() {
        let body = br#"[{"specversion":"1.0","id":"c1","source":"/s","type":"T","traceparent":"00-1",
            "deadletterreason":"TimeToLiveExceeded","deliveryattempts":12,"lastdeliveryoutcome":"TimedOut",
            "lasthttpstatuscode":408,"publishtime":"2024-02-08T04:00:00.1000000Z",
            "lastdeliveryattempttime":"2024-02-09T04:00:00Z"}]"#;
        let record = one(body).unwrap();
        assert_eq!(record.shape, Shape::CloudEvents);
        assert_eq!(record.event.extensions, vec![("traceparent".to_string(), "00-1".to_string())]);
        assert_eq!(
            (record.attributes.reason.as_deref(), record.attributes.http_status),
            (Some("TimeToLiveExceeded"), Some(408))
        );
        assert_eq!(record.attributes.last_attempt_time, Some(utc("2024-02-09T04:00:00Z")));
    }

    #[test]
    fn namespace_records_in_every_spelling() {
        let event = json!({"specversion":"1.0","id":"n1","source":"/ns","type":"T","data_base64":"AAE="});
        let properties = json!({"deadletterreason":"Undeliverable due to client error","deliveryattempts":3,
            "deliveryresult":"Unauthorized","publishutc":"2023-06-19T23:28:08.3063899Z",
            "deliveryattemptutc":"2023-06-19T23:29:08Z"});
        for key in ["deadletterProperties", "deadLetterProperties", "brokerProperties"] {
            // Wrapped, as the docs show for binary mode.
            let wrapped = json!([{"event": event, "customDeliveryProperties": {"h": "1"}, key: properties}]);
            // Flattened, as the docs show for structured mode.
            let mut flat = event.clone();
            flat["customDeliveryProperties"] = json!({"h": "1"});
            flat[key] = properties.clone();
            for (body, shape) in [(wrapped, Shape::Namespace), (json!([flat]), Shape::CloudEvents)] {
                let record = one(&serde_json::to_vec(&body).unwrap()).unwrap_or_else(|e| panic!("{key}: {e}"));
                assert_eq!(record.shape, shape, "{key}");
                assert_eq!(raw_json(&record), event, "{key}: only the event is left");
                assert_eq!(record.event.data, [0, 1]);
                assert_eq!(record.attributes.reason.as_deref(), Some("Undeliverable due to client error"));
                assert_eq!(record.attributes.outcome.as_deref(), Some("Unauthorized"), "deliveryresult is the outcome");
                assert_eq!(record.attributes.delivery_attempts, Some(3));
                assert_eq!(record.attributes.publish_time, Some(utc("2023-06-19T23:28:08.3063899Z")));
            }
        }
        // The docs' single-object blob.
        let bare = serde_json::to_vec(&json!({"event": event, "deadletterProperties": properties})).unwrap();
        assert_eq!(one(&bare).unwrap().event.id, "n1");
    }

    #[tokio::test]
    async fn gridfns_own_records_round_trip_through_its_dead_letter_store() {
        use crate::deadletter::{DeadLetterStore, Rejection};
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::Dir(dir.path().to_owned());
        let cloud = crate::event::decode_cloudevents(
            br#"{"specversion":"1.0","id":"g1","source":"/s","type":"T","data":{"n":1}}"#,
        )
        .unwrap();
        let grid =
            crate::event::decode_event_grid(br#"[{"id":"g2","eventType":"T","subject":"/x","data":{"n":2}}]"#).unwrap();
        let received = chrono::Utc::now();
        for (event, handler) in [(&cloud[0], "h-cloud"), (&grid[0], "h-grid")] {
            let rejection =
                Rejection { subscription: "orders-sub", handler, reason: "bad order", attempts: 2, received };
            store.write(event, &rejection).await.unwrap();
        }
        let source = Source::path(dir.path()).unwrap();
        let blobs = source.blobs(&TimeWindow::default()).await.unwrap();
        assert_eq!(blobs.len(), 2);
        let mut seen = Vec::new();
        for blob in &blobs {
            let record = source.read(blob).await.unwrap().pop().unwrap().unwrap();
            assert_eq!(record.subscription.as_deref(), Some("ORDERS-SUB"));
            assert_eq!(record.attributes.reason.as_deref(), Some("HandlerRejected"));
            assert_eq!(record.attributes.description.as_deref(), Some("bad order"));
            assert_eq!(record.attributes.outcome.as_deref(), Some("Rejected"));
            assert_eq!(record.attributes.delivery_attempts, Some(2));
            let original = if record.event.id == "g1" { &cloud[0] } else { &grid[0] };
            assert_eq!(raw_json(&record), serde_json::from_str::<Value>(original.raw.get()).unwrap());
            assert_eq!(record.event.schema, original.schema);
            seen.push(record.attributes.handler.unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["h-cloud", "h-grid"]);
    }

    #[test]
    fn bad_records_name_their_blob_index_and_problem() {
        let cases: &[(&[u8], Option<usize>, &str)] = &[
            (b"", None, "not a JSON array"),
            (b"\xff\xfe", None, "not UTF-8"),
            (b"[{\"id\": ", None, "not valid JSON"),
            (b"[]", None, "empty array"),
            (b"[42]", Some(0), "expected a JSON object, found a number"),
            (br#"[1e400,{"id":"1","eventType":"T"}]"#, Some(0), "expected a JSON object, found a number"),
            (br#"[{"id":"1","eventType":"T"},{"id":"2"}]"#, Some(1), "eventType: is required"),
            (br#"[{"specversion":"0.3","id":"1","source":"/s","type":"T"}]"#, Some(0), "specversion:"),
            (br#"[{"id":"1","type":"T","source":"/s","deadletterreason":"x"}]"#, Some(0), "specversion: is required"),
            (br#"[{"id":"1","eventType":"T","publishTime":"yesterday"}]"#, Some(0), "publishTime: \"yesterday\" is not an RFC 3339 time"),
            (br#"[{"id":"1","eventType":"T","deliveryAttempts":-1}]"#, Some(0), "deliveryAttempts: must be a whole number"),
            (br#"[{"id":"1","eventType":"T","lastHttpStatusCode":70000}]"#, Some(0), "lastHttpStatusCode: must be a whole number"),
            (br#"[{"id":"1","eventType":"T","deadLetterReason":7}]"#, Some(0), "deadLetterReason: must be a string"),
            (br#"[{"id":"1","eventType":"T","deliveryAttempts":2.0}]"#, Some(0), "deliveryAttempts: must be a whole number"),
            (br#"[{"id":"1","eventType":"T","deliveryAttempts":1e3}]"#, Some(0), "deliveryAttempts: must be a whole number"),
            (br#"[{"id":"1","eventType":"T","deliveryAttempts":"two"}]"#, Some(0), "deliveryAttempts: must be a whole number"),
            (br#"[{"id":"1","eventType":"T","deliveryAttempts":true}]"#, Some(0), "deliveryAttempts: must be a whole number"),
            (br#"[{"event":{"specversion":"1.0","source":"/s","type":"T"},"brokerProperties":{}}]"#, Some(0), "id: is required"),
            (br#"[{"event":{"specversion":"1.0","id":"1","source":"/s","type":"T"},"brokerProperties":{"publishutc":1}}]"#, Some(0), "brokerProperties.publishutc: must be a time string"),
        ];
        for (body, index, problem) in cases {
            let records = parse_records("S/2024/1/1/0/b.json", Some("S"), body);
            let bad = records.iter().find_map(|r| r.as_ref().err()).unwrap_or_else(|| panic!("{records:?}"));
            assert_eq!(bad.blob, "S/2024/1/1/0/b.json");
            assert_eq!(bad.index, *index, "{bad}");
            assert!(bad.problem.contains(problem), "{bad} should say {problem:?}");
        }
        // The good record beside a bad one is still there.
        let records = parse_records("b.json", None, br#"[{"id":"1","eventType":"T"},{"id":"2"}]"#);
        assert!(records[0].is_ok() && records[1].is_err());
        // Also beside one that is not even an object, and fails reading the blob in one pass.
        let records = parse_records("b.json", None, br#"[1e400,{"id":"1","eventType":"T"}]"#);
        assert!(records[0].is_err() && records[1].is_ok(), "{records:?}");
    }

    #[test]
    fn hour_and_subscription_folders_are_read_at_any_depth() {
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("ORDERS/2024/1/5/9/u.json", Some("2024-01-05T09:00:00Z"), Some("ORDERS")),
            ("/data/dl/ns/topic/SUB/2023/12/31/0/u.json", Some("2023-12-31T00:00:00Z"), Some("SUB")),
            ("2024/1/5/9/u.json", Some("2024-01-05T09:00:00Z"), None),
            ("SUB/2024/01/05/09/u.json", Some("2024-01-05T09:00:00Z"), Some("SUB")),
            ("SUB/2024/13/5/9/u.json", None, None),
            ("SUB/2024/2/30/9/u.json", None, None),
            ("SUB/2024/1/5/24/u.json", None, None),
            ("SUB/24/1/5/9/u.json", None, None),
            ("SUB/2024/1/5/9/extra/u.json", None, None),
            ("u.json", None, None),
        ];
        for (name, hour, subscription) in cases {
            assert_eq!(blob_hour(name), hour.map(utc), "{name}");
            assert_eq!(blob_subscription(name), *subscription, "{name}");
        }
    }

    #[tokio::test]
    async fn hour_folders_that_cannot_hold_the_window_are_not_listed() {
        let source = Source::path(Path::new(VECTORS)).unwrap();
        let window = |since: &str, until: &str| TimeWindow { since: Some(utc(since)), until: Some(utc(until)) };
        // TELEMETRY-SUB's event was published 2023-12-30T23:40 and dead-lettered in hour 2023-12-31T00.
        let listed = source.blobs(&window("2023-12-30T23:00:00Z", "2023-12-31T00:00:00Z")).await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(
            listed[0].starts_with("ORDERS-WEBHOOK-SUB/2024/1/5/"),
            "within DEAD_LETTER_LAG after until: {listed:?}"
        );
        assert!(listed[1].starts_with("TELEMETRY-SUB/2023/12/31/0/"), "{listed:?}");
        let record = source.read(&listed[1]).await.unwrap().pop().unwrap().unwrap();
        let selection = Selection {
            since: Some(utc("2023-12-30T23:00:00Z")),
            until: Some(utc("2023-12-31T00:00:00Z")),
            ..Selection::default()
        };
        assert_eq!(selection.skip_reason(&record), None, "published inside the window");

        // 2020's folders end long before; 2024's start more than DEAD_LETTER_LAG after.
        let listed = source.blobs(&window("2023-12-31T01:00:00Z", "2023-12-31T02:00:00Z")).await.unwrap();
        assert_eq!(listed.len(), 1, "only 2024-01-05 is within DEAD_LETTER_LAG: {listed:?}");
        assert!(listed[0].starts_with("ORDERS-WEBHOOK-SUB/2024/1/5/9/"), "{listed:?}");
        let listed = source.blobs(&window("2020-08-13T18:00:00Z", "2020-08-13T21:30:00Z")).await.unwrap();
        assert_eq!(listed.len(), 1, "the hour-17 folder cannot hold 18:00 on: {listed:?}");
        assert!(listed[0].starts_with("CE-WEBHOOK-SUB/2020/8/13/21/"));
        let since_only = TimeWindow { since: Some(utc("2024-01-01T00:00:00Z")), until: None };
        assert_eq!(source.blobs(&since_only).await.unwrap().len(), 2);
        let until_only = TimeWindow { since: None, until: Some(utc("2020-08-01T00:00:00Z")) };
        let lag_days = DEAD_LETTER_LAG.num_days();
        assert_eq!(lag_days, 9);
        assert_eq!(source.blobs(&until_only).await.unwrap(), Vec::<String>::new(), "2020-08-13 is > 9 days after");

        // A source that starts below the subscription folder still knows its hour and subscription.
        let inside = Source::path(Path::new(&format!("{VECTORS}/TELEMETRY-SUB/2023"))).unwrap();
        let names = inside.blobs(&window("2023-12-31T01:00:00Z", "2023-12-31T02:00:00Z")).await.unwrap();
        assert!(names.is_empty(), "{names:?}");
        let names = inside.blobs(&TimeWindow::default()).await.unwrap();
        let record = inside.read(&names[0]).await.unwrap().pop().unwrap().unwrap();
        assert_eq!(record.subscription.as_deref(), Some("TELEMETRY-SUB"));
        assert!(names[0].starts_with("12/31/0/"), "{names:?}");
    }

    fn record_with(reason: &str, handler: Option<&str>, published: &str) -> Record {
        let body = json!([{"id": "r1", "eventType": "Contoso.Orders.Created", "subject": "/orders/7",
            "deadLetterReason": reason, "lastDeliveryOutcome": "Busy", "publishTime": published,
            "gridfnHandler": handler}]);
        let mut record = one(&serde_json::to_vec(&body).unwrap()).unwrap();
        record.subscription = Some("ORDERS-SUB".into());
        record
    }

    #[test]
    fn selection_says_why_each_record_is_skipped() {
        let record = record_with("MaxDeliveryAttemptsExceeded", Some("billing"), "2024-01-05T09:30:00Z");
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Selection, Option<&str>)> = vec![
            (Selection::default(), None),
            (Selection { reasons: strings(&["maxdeliveryattemptsexceeded"]), ..Default::default() }, None),
            (
                Selection { reasons: strings(&["TimeToLiveExceeded", "HandlerRejected"]), ..Default::default() },
                Some("reason \"MaxDeliveryAttemptsExceeded\" is not --reason TimeToLiveExceeded, HandlerRejected"),
            ),
            (Selection { outcomes: strings(&["BUSY"]), ..Default::default() }, None),
            (
                Selection { outcomes: strings(&["Bus"]), ..Default::default() },
                Some("outcome \"Busy\" is not --outcome Bus"),
            ),
            (Selection { types: strings(&["contoso.orders.created"]), ..Default::default() }, None),
            (
                Selection { types: strings(&["Contoso.Orders"]), ..Default::default() },
                Some("type \"Contoso.Orders.Created\" is not --type"),
            ),
            (Selection { subject_prefixes: strings(&["/orders/"]), ..Default::default() }, None),
            (
                Selection { subject_prefixes: strings(&["/ORDERS/"]), ..Default::default() },
                Some("subject \"/orders/7\" is not --subject-prefix /ORDERS/"),
            ),
            (Selection { subscriptions: strings(&["orders-sub"]), ..Default::default() }, None),
            (
                Selection { subscriptions: strings(&["other"]), ..Default::default() },
                Some("subscription \"ORDERS-SUB\" is not --subscription other"),
            ),
            (Selection { handlers: strings(&["billing"]), ..Default::default() }, None),
            (
                Selection { handlers: strings(&["audit"]), ..Default::default() },
                Some("dead-lettered by handler billing, not --handler audit"),
            ),
            (Selection { ids: Some(["r1".to_string()].into()), ..Default::default() }, None),
            (
                Selection { ids: Some(HashSet::new()), ..Default::default() },
                Some("id \"r1\" is not among the --id/--ids-from ids"),
            ),
            (
                Selection {
                    since: Some(utc("2024-01-05T09:30:00Z")),
                    until: Some(utc("2024-01-05T09:31:00Z")),
                    ..Default::default()
                },
                None,
            ),
            (
                Selection { since: Some(utc("2024-01-05T09:30:01Z")), ..Default::default() },
                Some("published 2024-01-05T09:30:00Z, before --since 2024-01-05T09:30:01Z"),
            ),
            (
                Selection { until: Some(utc("2024-01-05T09:30:00Z")), ..Default::default() },
                Some("published 2024-01-05T09:30:00Z, not before --until 2024-01-05T09:30:00Z"),
            ),
        ];
        for (selection, expected) in cases {
            let reason = selection.skip_reason(&record);
            match expected {
                None => assert_eq!(reason, None, "{selection:?}"),
                Some(text) => {
                    assert!(reason.as_deref().is_some_and(|r| r.starts_with(text)), "{selection:?}: {reason:?}")
                }
            }
        }
        // A record that names no handler is not skipped by --handler: the runner routes it there.
        let unnamed = record_with("MaxDeliveryAttemptsExceeded", None, "2024-01-05T09:30:00Z");
        let selection = Selection { handlers: vec!["audit".into()], ..Default::default() };
        assert_eq!(selection.skip_reason(&unnamed), None);
        let mut timeless = unnamed.clone();
        timeless.attributes.publish_time = None;
        let selection = Selection { since: Some(utc("2024-01-01T00:00:00Z")), ..Default::default() };
        assert!(selection.skip_reason(&timeless).unwrap().contains("no publish time"));
        timeless.attributes.reason = None;
        let selection = Selection { reasons: vec!["X".into()], ..Default::default() };
        assert_eq!(selection.skip_reason(&timeless).unwrap(), "has no reason; --reason wants X");
    }

    #[test]
    fn times_and_id_files_parse() {
        let now = utc("2026-01-10T12:00:00Z");
        assert_eq!(parse_time("2024-01-05T09:00:00+01:00", now).unwrap(), utc("2024-01-05T08:00:00Z"));
        assert_eq!(parse_time("2024-01-05T09:00", now).unwrap(), utc("2024-01-05T09:00:00Z"));
        assert_eq!(parse_time("2024-01-05T09:00:30", now).unwrap(), utc("2024-01-05T09:00:30Z"));
        assert_eq!(parse_time("2024-01-05", now).unwrap(), utc("2024-01-05T00:00:00Z"));
        assert_eq!(parse_time("90m", now).unwrap(), utc("2026-01-10T10:30:00Z"));
        assert_eq!(parse_time("2d", now).unwrap(), utc("2026-01-08T12:00:00Z"));
        assert!(parse_time("yesterday", now).unwrap_err().to_string().contains("RFC 3339"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ids.txt");
        std::fs::write(&file, "# failed on 5 Jan\n a-1 \n\na-2\n").unwrap();
        assert_eq!(read_ids(&file).unwrap(), HashSet::from(["a-1".to_string(), "a-2".to_string()]));
        assert!(read_ids(&dir.path().join("none")).unwrap_err().to_string().contains("--ids-from"));
    }

    #[tokio::test]
    async fn archive_and_delete_move_folder_blobs_once() {
        let dir = tempfile::tempdir().unwrap();
        let name = "SUB/2024/1/5/9/a.json";
        let body = br#"[{"id":"1","eventType":"T"}]"#;
        for blob in [name, "SUB/2024/1/5/9/b.json", "SUB/2024/1/5/9/c.json.partial", "SUB/notes.txt", "SUB/loose.json"]
        {
            std::fs::create_dir_all(dir.path().join(blob).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(blob), body).unwrap();
        }
        let source = Source::path(dir.path()).unwrap();
        assert_eq!(source.blobs(&TimeWindow::default()).await.unwrap(), [name, "SUB/2024/1/5/9/b.json"]);
        source.archive(name).await.unwrap();
        source.archive(name).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("replayed").join(name)).unwrap(), body);
        assert!(!dir.path().join(name).exists());
        assert_eq!(source.blobs(&TimeWindow::default()).await.unwrap(), ["SUB/2024/1/5/9/b.json"]);
        source.delete("SUB/2024/1/5/9/b.json").await.unwrap();
        source.delete("SUB/2024/1/5/9/b.json").await.unwrap();
        assert!(source.blobs(&TimeWindow::default()).await.unwrap().is_empty());
        assert!(source.read("../outside.json").await.unwrap_err().to_string().contains("not a blob name"));
        assert!(source.archive("SUB/x.json").await.is_err(), "a blob that was never there is an error");
        assert_eq!(source.id(), format!("dir:{}", dir.path().canonicalize().unwrap().display()));

        // A single file archives beside itself.
        std::fs::write(dir.path().join("one.json"), body).unwrap();
        let file = Source::path(&dir.path().join("one.json")).unwrap();
        assert!(file.id().starts_with("file:"));
        assert_eq!(file.blobs(&TimeWindow::default()).await.unwrap(), ["one.json"]);
        assert!(file.read("one.json").await.unwrap()[0].is_ok());
        file.archive("one.json").await.unwrap();
        assert!(dir.path().join("replayed/one.json").is_file());
    }

    #[tokio::test]
    async fn the_generated_set_reads_back_as_generated() {
        let spec = replay_data::Spec::default();
        let generated = replay_data::generate(&spec);
        let again = replay_data::generate(&spec);
        assert!(generated.blobs.iter().zip(&again.blobs).all(|(a, b)| a.name == b.name && a.body == b.body));
        assert_eq!(generated.blobs.len(), spec.blobs);
        assert_eq!(generated.records().count(), spec.records);
        let invalid = generated.records().filter(|r| !r.valid).count();
        assert!((50..200).contains(&invalid), "{invalid} invalid records");
        assert!(generated.valid().count() >= 10_000);
        for kind in replay_data::Kind::ALL {
            assert!(generated.valid().filter(|r| r.kind == kind).count() > 2_000, "{kind:?}");
        }

        let dir = tempfile::tempdir().unwrap();
        generated.write_to(dir.path()).unwrap();
        let source = Source::path(dir.path()).unwrap();
        let started = Instant::now();
        let blobs = source.blobs(&TimeWindow::default()).await.unwrap();
        assert_eq!(blobs.len(), spec.blobs);
        let mut read = std::collections::HashMap::new();
        for blob in &blobs {
            for (position, result) in source.read(blob).await.unwrap().into_iter().enumerate() {
                let key =
                    (blob.clone(), result.as_ref().map(|r| r.index).unwrap_or_else(|b| b.index.unwrap_or(usize::MAX)));
                assert!(result.as_ref().map_or(true, |r| r.index == position));
                read.insert(key, result);
            }
        }
        let elapsed = started.elapsed();
        eprintln!(
            "read {} records in {} blobs in {elapsed:?}: {:.0} records/s (debug build)",
            read.len(),
            blobs.len(),
            read.len() as f64 / elapsed.as_secs_f64()
        );
        let unreadable = &read[&(generated.unreadable.clone(), usize::MAX)];
        assert!(unreadable.as_ref().unwrap_err().problem.contains("not valid JSON"));
        assert_eq!(read.len(), spec.records + 1);
        for expected in generated.records() {
            let result = &read[&(expected.blob.clone(), expected.index)];
            let record = match (result, expected.valid) {
                (Ok(record), true) => record,
                (Err(bad), false) => {
                    assert!(bad.problem.contains("is required"), "{bad}");
                    continue;
                }
                (other, valid) => panic!("{expected:?} (valid: {valid}) read as {other:?}"),
            };
            assert_eq!(record.event.id, expected.id);
            assert_eq!(record.event.event_type, expected.event_type);
            assert_eq!(record.event.subject.as_deref(), Some(expected.subject.as_str()));
            assert_eq!(record.attributes.reason.as_deref(), Some(expected.reason.as_str()));
            assert_eq!(record.attributes.outcome.as_deref(), Some(expected.outcome.as_str()));
            assert_eq!(record.attributes.handler, expected.handler);
            assert_eq!(record.attributes.publish_time, Some(expected.publish_time));
            assert_eq!(record.subscription.as_deref(), Some(expected.kind.subscription()));
            let raw = record.event.raw.get().to_ascii_lowercase();
            assert!(!raw.contains("deadletter") && !raw.contains("customdelivery"), "{raw}");
        }

        // A window of 6 hours lists fewer blobs, and never drops one that holds a selected record.
        let since = spec.start + TimeDelta::hours(30);
        let selection =
            Selection { since: Some(since), until: Some(since + TimeDelta::hours(6)), ..Default::default() };
        let listed: HashSet<String> = source.blobs(&selection.window()).await.unwrap().into_iter().collect();
        assert!(listed.len() < blobs.len() && !listed.is_empty(), "{} of {}", listed.len(), blobs.len());
        for expected in generated.valid() {
            let selected = selection.window().contains(expected.publish_time);
            assert!(!selected || listed.contains(&expected.blob), "{expected:?} was pruned");
        }
    }

    #[tokio::test]
    async fn an_azure_container_is_read_pruned_and_archived_like_a_folder() {
        use crate::deadletter::azure::tests::{azurite, key_config, unique_container};
        use crate::deadletter::azure::{DEV_ACCOUNT, DEV_ACCOUNT_KEY};
        let container = unique_container();
        let writer = AzureBlobDeadLetter::new(&AzureBlobConfig {
            prefix: Some("eventgrid/deadletters".into()),
            ..key_config(&container)
        })
        .unwrap();
        writer.ensure_container().await.unwrap();
        for (name, body) in vector_blobs() {
            writer.put(&name, body.into()).await.unwrap();
        }
        writer.put("replayed/ORDERS-WEBHOOK-SUB/2024/1/5/9/old.json", b"[]".to_vec().into()).await.unwrap();
        writer.put("TELEMETRY-SUB/notes.json", b"{}".to_vec().into()).await.unwrap();

        // Path-style URL (as Azurite serves it) with the account key; the prefix is in the URL.
        let auth = AzureAuth { access_key: Some(DEV_ACCOUNT_KEY.to_string()), ..AzureAuth::default() };
        let url = format!("{}/{container}/eventgrid/deadletters", azurite());
        assert!(url.contains(DEV_ACCOUNT));
        let source = Source::parse(&url, &auth).unwrap();
        assert_eq!(source.id(), format!("azure:{}/{container}/eventgrid/deadletters", azurite()));
        assert!(!format!("{source:?}").contains(DEV_ACCOUNT_KEY));
        let mut expected: Vec<String> = vector_blobs().into_iter().map(|(name, _)| name).collect();
        expected.sort();
        assert_eq!(source.blobs(&TimeWindow::default()).await.unwrap(), expected, "replayed/ and notes.json skipped");
        let window = TimeWindow { since: Some(utc("2023-12-30T23:00:00Z")), until: Some(utc("2023-12-31T00:00:00Z")) };
        let listed = source.blobs(&window).await.unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");

        let telemetry = &listed[1];
        let record = source.read(telemetry).await.unwrap().pop().unwrap().unwrap();
        assert_eq!(record.subscription.as_deref(), Some("TELEMETRY-SUB"));
        assert_eq!(record.event.id, "c1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f");
        assert_eq!(record.attributes.reason.as_deref(), Some("TimeToLiveExceeded"));

        // A source one level down (the subscription in the prefix) still knows its subscription.
        let below = Source::from_azure(&key_config(&container), "eventgrid/deadletters/TELEMETRY-SUB").unwrap();
        let names = below.blobs(&TimeWindow::default()).await.unwrap();
        assert_eq!(names.len(), 1);
        let record = below.read(&names[0]).await.unwrap().pop().unwrap().unwrap();
        assert_eq!(record.subscription.as_deref(), Some("TELEMETRY-SUB"));

        source.archive(telemetry).await.unwrap();
        source.archive(telemetry).await.unwrap();
        assert!(writer.exists(&format!("replayed/{telemetry}")).await.unwrap());
        assert!(!writer.exists(telemetry).await.unwrap());
        assert_eq!(source.blobs(&TimeWindow::default()).await.unwrap().len(), expected.len() - 1);
        let gone = &listed[0];
        source.delete(gone).await.unwrap();
        source.delete(gone).await.unwrap();
        assert!(!writer.exists(gone).await.unwrap());
        assert!(source.archive(gone).await.is_err(), "neither the blob nor an archived copy is there");

        // A connection string goes with azure://CONTAINER/PREFIX.
        let connection_string = format!(
            "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};BlobEndpoint={}",
            azurite()
        );
        let auth = AzureAuth { connection_string: Some(connection_string), ..AzureAuth::default() };
        let source = Source::parse(&format!("azure://{container}/eventgrid/deadletters"), &auth).unwrap();
        assert_eq!(source.blobs(&TimeWindow::default()).await.unwrap().len(), expected.len() - 2);

        // A container that is not there says so.
        let missing = Source::from_azure(&key_config(&unique_container()), "").unwrap();
        let err = missing.blobs(&TimeWindow::default()).await.unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn container_urls_and_their_credentials() {
        let sas = AzureAuth::default();
        let Source::Azure { store, prefix } =
            Source::parse("https://contoso.blob.core.windows.net/dead-letters/ns/topic?sv=2024-01-01&sig=abc", &sas)
                .unwrap()
        else {
            panic!("an Azure source")
        };
        assert_eq!(prefix, "ns/topic");
        assert_eq!(store.location(), "https://contoso.blob.core.windows.net/dead-letters/ns/topic");

        let cases: &[(&str, AzureAuth, &str)] = &[
            ("azure://dead-letters", AzureAuth::default(), "needs a connection string"),
            ("https://contoso.blob.core.windows.net/dead-letters", AzureAuth::default(), "no credentials"),
            (
                "https://contoso.blob.core.windows.net/",
                AzureAuth { access_key: Some("a2V5".into()), ..Default::default() },
                "names no container",
            ),
            (
                "https://contoso.blob.core.windows.net/dl?sv=1&sig=secret",
                AzureAuth { access_key: Some("a2V5".into()), ..Default::default() },
                "has a SAS token already",
            ),
            (
                "https://contoso.blob.core.windows.net/dl",
                AzureAuth { connection_string: Some("UseDevelopmentStorage=true".into()), ..Default::default() },
                "goes with azure://dl",
            ),
            (
                "https://contoso.blob.core.windows.net/Bad_Name?sv=1&sig=secret",
                AzureAuth::default(),
                "not a valid container name",
            ),
            ("/no/such/folder", AzureAuth::default(), "/no/such/folder"),
        ];
        for (text, auth, message) in cases {
            let err = Source::parse(text, auth).unwrap_err().to_string();
            assert!(err.contains(message), "{text}: {err}");
            assert!(!err.contains("secret"), "{text}: the SAS leaked: {err}");
        }
    }

    fn vector_blobs() -> Vec<(String, Vec<u8>)> {
        let index: Vec<Value> =
            serde_json::from_slice(&std::fs::read(format!("{VECTORS}/index.json")).unwrap()).unwrap();
        index
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .map(|path| (path.clone(), std::fs::read(format!("{VECTORS}/{path}")).unwrap()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any corruption of a real blob reads as records or bad records, never a panic,
        /// and every bad record names the blob.
        #[test]
        fn mutated_blobs_never_panic(
            which in 0usize..5,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        ) {
            let (name, mut bytes) = vector_blobs().swap_remove(which);
            for (at, byte, op) in edits {
                let at = at.index(bytes.len().max(1));
                match op {
                    0 if !bytes.is_empty() => {
                        let last = bytes.len() - 1;
                        bytes[at.min(last)] = byte;
                    }
                    1 => bytes.insert(at.min(bytes.len()), byte),
                    2 if !bytes.is_empty() => {
                        let last = bytes.len() - 1;
                        bytes.remove(at.min(last));
                    }
                    _ => bytes.truncate(at),
                }
            }
            for result in parse_records(&name, None, &bytes) {
                match result {
                    Ok(record) => prop_assert_eq!(&*record.blob, name.as_str()),
                    Err(bad) => prop_assert_eq!(&bad.blob, &name),
                }
            }
        }

        /// Structural mutations: any member of any record replaced by another JSON value.
        #[test]
        fn records_with_any_member_replaced_never_panic(
            which in 0usize..5,
            member in any::<prop::sample::Index>(),
            value in prop_oneof![
                Just(json!(null)), Just(json!(true)), any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|n| json!(n)), ".{0,12}".prop_map(|s| json!(s)),
                Just(json!([])), Just(json!({"event": {}})), Just(json!({"deadletterreason": 1})),
            ],
        ) {
            let (name, bytes) = vector_blobs().swap_remove(which);
            let mut blob: Value = serde_json::from_slice(&bytes).unwrap();
            let record = blob[0].as_object_mut().unwrap();
            let key = record.keys().nth(member.index(record.len())).unwrap().clone();
            record.insert(key, value);
            let records = parse_records(&name, None, &serde_json::to_vec(&blob).unwrap());
            prop_assert_eq!(records.len(), blob.as_array().unwrap().len());
        }
    }
}
