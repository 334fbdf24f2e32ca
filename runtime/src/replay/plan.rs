//! What a replay will do with each record it reads, decided before anything
//! runs (and all a dry run shows): replay it to which destinations, or skip
//! it and why.
//!
//! Events go only where they came from: a gridfn record names the handler
//! that rejected it; an Event Grid record names only its subscription, so the
//! handlers its endpoint served must be given (`--handler`). Nothing is ever
//! broadcast to every handler.

use std::collections::HashSet;

use serde::Serialize;

use super::ledger::{Ledger, Pair};
use super::read::{BadRecord, Record, Selection, Source};

/// Where events go: the handlers of a manifest, or one URL.
pub enum Destinations {
    /// In-process: these handlers exist.
    Handlers(HashSet<String>),
    /// `--to URL`: with `{handler}` in it, each record goes to its handler's
    /// URL; without, every record goes to the URL as it is.
    Url { per_handler: bool },
}

/// The `*` destination: a `--to` URL without `{handler}`.
pub const WHOLE_ENDPOINT: &str = "*";

/// What a replay does with one record for one destination.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Replay,
    /// Not selected, no known destination, or the handler is not there.
    Skip {
        why: String,
    },
    /// The ledger says an earlier replay finished it.
    AlreadyDone {
        outcome: crate::pipeline::ReplayOutcome,
        at: String,
    },
    /// It failed `--max-replays` times already.
    GaveUp {
        attempts: u32,
        outcome: crate::pipeline::ReplayOutcome,
    },
}

/// One record for one destination.
#[derive(Debug)]
pub struct Item {
    pub pair: Pair,
    /// Index into [`Plan::records`].
    pub record: usize,
    pub action: Action,
    /// Replays run before this one (from the ledger).
    pub attempts: u32,
}

/// Everything a replay read, and what it will do with it.
#[derive(Default)]
pub struct Plan {
    pub blobs: Vec<String>,
    pub records: Vec<Record>,
    pub invalid: Vec<BadRecord>,
    pub items: Vec<Item>,
}

/// The flags that decide which records replay where.
pub struct Choice<'a> {
    pub selection: &'a Selection,
    /// `--handler`: for gridfn records, which of them; for Event Grid
    /// records, where they go.
    pub handlers: &'a [String],
    pub destinations: &'a Destinations,
    pub max_replays: u32,
    /// `--limit`: at most this many records are replayed.
    pub limit: Option<usize>,
}

impl Plan {
    /// Lists and reads the source's blobs (only hour folders inside the
    /// selection's window), and decides each record's fate.
    pub async fn build(source: &Source, choice: &Choice<'_>, ledger: &Ledger) -> anyhow::Result<Plan> {
        let mut plan = Plan { blobs: source.blobs(&choice.selection.window()).await?, ..Plan::default() };
        // The handler flag is applied here, as a destination; the rest of
        // the selection is the reader's.
        let selection = Selection { handlers: Vec::new(), ..choice.selection.clone() };
        let mut to_replay = 0usize;
        for blob in &plan.blobs {
            let records = source.read(blob).await?;
            for record in records {
                let record = match record {
                    Ok(record) => record,
                    Err(bad) => {
                        plan.invalid.push(bad);
                        continue;
                    }
                };
                let record_index = plan.records.len();
                let destinations = match selection.skip_reason(&record) {
                    Some(why) => Err(why),
                    None => destinations_of(&record, choice),
                };
                let destinations = match destinations {
                    Ok(destinations) => destinations,
                    Err(why) => {
                        let pair = Pair { blob: blob.clone(), index: record.index, destination: String::new() };
                        plan.items.push(Item { pair, record: record_index, action: Action::Skip { why }, attempts: 0 });
                        plan.records.push(record);
                        continue;
                    }
                };
                let limited = choice.limit.is_some_and(|limit| to_replay >= limit);
                let mut replays_any = false;
                for destination in destinations {
                    let pair = Pair { blob: blob.clone(), index: record.index, destination };
                    let (action, attempts) = match ledger.get(&pair) {
                        Some(entry) if entry.is_done() => {
                            (Action::AlreadyDone { outcome: entry.outcome, at: entry.at.clone() }, entry.attempts)
                        }
                        Some(entry) if entry.attempts >= choice.max_replays => {
                            (Action::GaveUp { attempts: entry.attempts, outcome: entry.outcome }, entry.attempts)
                        }
                        entry => {
                            let attempts = entry.map_or(0, |e| e.attempts);
                            if limited {
                                (Action::Skip { why: "beyond --limit".into() }, attempts)
                            } else {
                                replays_any = true;
                                (Action::Replay, attempts)
                            }
                        }
                    };
                    plan.items.push(Item { pair, record: record_index, action, attempts });
                }
                to_replay += usize::from(replays_any);
                plan.records.push(record);
            }
        }
        Ok(plan)
    }

    /// The items to replay now.
    pub fn to_replay(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|item| matches!(item.action, Action::Replay))
    }
}

/// Where a selected record goes, or why it goes nowhere.
fn destinations_of(record: &Record, choice: &Choice<'_>) -> Result<Vec<String>, String> {
    let named = |handler: &str| choice.handlers.is_empty() || choice.handlers.iter().any(|h| h == handler);
    let wanted: Vec<String> = match (&record.handler, choice.destinations) {
        (Some(handler), _) if !named(handler) => {
            return Err(format!("dead-lettered from handler {handler}, not a --handler"));
        }
        (_, Destinations::Url { per_handler: false }) => return Ok(vec![WHOLE_ENDPOINT.to_owned()]),
        (Some(handler), _) => vec![handler.clone()],
        (None, _) if choice.handlers.is_empty() => {
            let subscription = record.subscription.as_deref().unwrap_or("unknown");
            return Err(format!(
                "an Event Grid record (subscription {subscription}) does not name its handler: pass --handler with the handler(s) that subscription's endpoint served"
            ));
        }
        (None, _) => choice.handlers.to_vec(),
    };
    if let Destinations::Handlers(known) = choice.destinations
        && let Some(missing) = wanted.iter().find(|h| !known.contains(*h))
    {
        return Err(format!("handler {missing} is not in the manifest"));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::read::parse_records;

    /// One gridfn record (names its handler) and one Event Grid record.
    fn records() -> Vec<Record> {
        let blob = br#"[
          {"id":"g1","eventType":"T","subject":"s","topic":"/t","eventTime":"2026-01-01T00:00:00Z","data":{},
           "dataVersion":"1","deadLetterReason":"HandlerRejected","deliveryAttempts":1,"gridfnHandler":"orders"},
          {"id":"e1","eventType":"T","subject":"s","topic":"/t","eventTime":"2026-01-01T00:00:00Z","data":{},
           "dataVersion":"1","deadLetterReason":"MaxDeliveryAttemptsExceeded","deliveryAttempts":30}
        ]"#;
        parse_records("SUB/2026/1/1/0/b.json", Some("SUB"), blob).into_iter().map(Result::unwrap).collect()
    }

    fn choice<'a>(handlers: &'a [String], destinations: &'a Destinations, selection: &'a Selection) -> Choice<'a> {
        Choice { selection, handlers, destinations, max_replays: 5, limit: None }
    }

    #[test]
    fn events_go_only_where_they_came_from() {
        let [gridfn, event_grid] = <[Record; 2]>::try_from(records()).unwrap();
        let selection = Selection::default();
        let known = Destinations::Handlers(["orders".to_owned(), "audit".to_owned()].into());
        let none: Vec<String> = Vec::new();
        assert_eq!(destinations_of(&gridfn, &choice(&none, &known, &selection)), Ok(vec!["orders".to_owned()]));
        let why = destinations_of(&event_grid, &choice(&none, &known, &selection)).unwrap_err();
        assert!(why.contains("pass --handler"), "{why}");

        let audit = vec!["audit".to_owned()];
        assert_eq!(destinations_of(&event_grid, &choice(&audit, &known, &selection)), Ok(audit.clone()));
        let why = destinations_of(&gridfn, &choice(&audit, &known, &selection)).unwrap_err();
        assert!(why.contains("dead-lettered from handler orders"), "{why}");

        let elsewhere = Destinations::Handlers(["billing".to_owned()].into());
        let why = destinations_of(&gridfn, &choice(&none, &elsewhere, &selection)).unwrap_err();
        assert!(why.contains("handler orders is not in the manifest"), "{why}");

        let per_handler = Destinations::Url { per_handler: true };
        assert_eq!(destinations_of(&gridfn, &choice(&none, &per_handler, &selection)), Ok(vec!["orders".to_owned()]));
        assert!(destinations_of(&event_grid, &choice(&none, &per_handler, &selection)).is_err());
        let whole = Destinations::Url { per_handler: false };
        assert_eq!(
            destinations_of(&event_grid, &choice(&none, &whole, &selection)),
            Ok(vec![WHOLE_ENDPOINT.to_owned()])
        );
    }
}
