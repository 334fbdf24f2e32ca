//! Reading dead-lettered events back: where the blobs are ([`Source`]), what
//! each record in them holds ([`Record`], or a [`BadRecord`] saying why it is
//! not a replayable event), and which records a replay wants ([`Selection`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::deadletter::azure::{AzureBlobConfig, AzureBlobDeadLetter};
use crate::event::Event;

/// Where dead-lettered blobs are read from.
pub enum Source {
    /// A folder in Event Grid's dead-letter layout (or any folder of `*.json` blobs).
    Dir(PathBuf),
    /// One blob file.
    File(PathBuf),
    /// An Azure Storage container; `prefix` is the folder inside it (the
    /// store's names are relative to it).
    Azure { store: AzureBlobDeadLetter, prefix: String },
}

/// Credentials for an Azure source, from the command line.
#[derive(Default, Clone)]
pub struct AzureAuth {
    pub connection_string: Option<String>,
    pub access_key: Option<String>,
    pub sas_token: Option<String>,
}

impl Source {
    /// A folder or a single blob file.
    pub fn path(path: &Path) -> anyhow::Result<Source> {
        let _ = path;
        todo!()
    }

    /// A path, or a container URL (see the module docs for the syntax).
    pub fn parse(text: &str, auth: &AzureAuth) -> anyhow::Result<Source> {
        let _ = (text, auth);
        todo!()
    }

    /// The container `config` names, under its prefix joined with `prefix`.
    pub fn from_azure(config: &AzureBlobConfig, prefix: &str) -> anyhow::Result<Source> {
        let _ = (config, prefix);
        todo!()
    }

    /// Blob names (relative to the source root, '/'-separated), sorted,
    /// skipping `replayed/`; blobs whose hour folder cannot hold an event
    /// published inside `window` are not listed.
    pub async fn blobs(&self, window: &TimeWindow) -> anyhow::Result<Vec<String>> {
        let _ = window;
        todo!()
    }

    /// Every record of one blob, each decoded or reported.
    pub async fn read(&self, blob: &str) -> anyhow::Result<Vec<Result<Record, BadRecord>>> {
        let _ = blob;
        todo!()
    }

    /// Moves a blob under `replayed/` (same relative name).
    pub async fn archive(&self, blob: &str) -> anyhow::Result<()> {
        let _ = blob;
        todo!()
    }

    /// Deletes a blob.
    pub async fn delete(&self, blob: &str) -> anyhow::Result<()> {
        let _ = blob;
        todo!()
    }

    /// A stable identity of the source for ledgers and locks.
    pub fn id(&self) -> String {
        todo!()
    }
}

/// Publish times a replay wants: `since <= publishTime < until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeWindow {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
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
    pub blob: String,
    pub index: usize,
    pub event: Event,
    pub shape: Shape,
    /// The subscription folder the blob sits in (upper-case as Event Grid writes it).
    pub subscription: Option<String>,
    pub handler: Option<String>,
    pub reason: Option<String>,
    pub description: Option<String>,
    pub outcome: Option<String>,
    pub http_status: Option<u16>,
    pub delivery_attempts: Option<u32>,
    pub publish_time: Option<DateTime<Utc>>,
    pub last_attempt_time: Option<DateTime<Utc>>,
}

/// A record that is not a valid event: reported with where it is, never skipped silently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BadRecord {
    pub blob: String,
    /// Which record of the blob (0-based); `None` when the blob itself is unreadable.
    pub index: Option<usize>,
    pub problem: String,
}

/// What a replay selects.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub reasons: Vec<String>,
    pub outcomes: Vec<String>,
    pub types: Vec<String>,
    pub subject_prefixes: Vec<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub subscriptions: Vec<String>,
    pub handlers: Vec<String>,
    pub ids: Option<HashSet<String>>,
}

impl Selection {
    pub fn window(&self) -> TimeWindow {
        TimeWindow { since: self.since, until: self.until }
    }

    /// Why `record` is not selected (for the dry run's table), or None when it is.
    pub fn skip_reason(&self, record: &Record) -> Option<String> {
        let _ = record;
        todo!()
    }
}

/// The records of one blob's bytes.
pub fn parse_records(blob: &str, subscription: Option<&str>, bytes: &[u8]) -> Vec<Result<Record, BadRecord>> {
    let _ = (blob, subscription, bytes);
    todo!()
}

/// `--ids-from FILE`: one id per line; blank lines and `#` comments ignored.
pub fn read_ids(path: &Path) -> anyhow::Result<HashSet<String>> {
    let _ = path;
    todo!()
}

/// `--since`/`--until`: RFC 3339, a date-time without offset (UTC), a date, or
/// a duration ago (`90m`, `2h`, `3d`).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let _ = (text, now);
    todo!()
}
