//! What a replay will do with each record it reads, decided before anything
//! runs (and all a dry run shows): replay it to which destinations, or skip
//! it and why.
//!
//! Events go only where they came from: a gridfn record names the handler
//! that rejected it; an Event Grid record names only its subscription, so the
//! handlers its endpoint served must be given: `--handler`, or the manifest's
//! `subscriptions = [...]` on each handler. Nothing is ever broadcast to every
//! handler.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use super::ledger::{Ledger, Pair};
use super::read::{BadRecord, Record, Selection, Source};
use crate::event::Event;

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

/// Who chose a record's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The record names the handler that dead-lettered it (gridfn's records).
    Record,
    /// `--handler`, for an Event Grid record.
    HandlerFlag,
    /// The manifest: a handler lists the record's subscription in `subscriptions`.
    Manifest,
    /// A `--to` URL without `{handler}` takes every record.
    Endpoint,
    /// Nowhere: the record is skipped before a destination is chosen.
    None,
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
    /// Who chose the destination.
    pub via: Via,
    /// What this run's replay came to; `None` until its batch is answered
    /// (or if it never is: skipped, interrupted).
    pub outcome: Option<crate::pipeline::ReplayOutcome>,
}

/// What the plan keeps of a record: all but the event itself, which goes to
/// the batches that send it and is freed once they are sent, so a replay of
/// millions of records holds the events in flight, not every one it read.
///
/// Names that repeat from record to record (types, subscriptions, handlers,
/// reasons) are shared, one copy per plan.
#[derive(Debug)]
pub struct Planned {
    pub id: String,
    pub event_type: Arc<str>,
    /// The subscription folder its blob sits in.
    pub subscription: Option<Arc<str>>,
    /// `gridfnHandler`: the handler that rejected it, in gridfn's own records.
    pub handler: Option<Arc<str>>,
    /// `deadLetterReason`.
    pub reason: Option<Arc<str>>,
    /// `deliveryAttempts`.
    pub delivery_attempts: Option<u32>,
}

impl Planned {
    fn of(record: Record, names: &mut Names) -> Planned {
        let event_type = names.intern(&record.event.event_type);
        let mut share = |name: Option<String>| name.map(|name| names.intern(&name));
        Planned {
            event_type,
            subscription: share(record.subscription),
            handler: share(record.handler),
            reason: share(record.reason),
            id: record.event.id.clone(),
            delivery_attempts: record.delivery_attempts,
        }
    }
}

/// One shared copy of each name a plan holds many times.
#[derive(Default)]
struct Names {
    all: HashSet<Arc<str>>,
    /// The last few names looked up, checked before hashing: a record's
    /// names (type, subscription, handler, reason, destination) are nearly
    /// always the ones the record before it had.
    recent: VecDeque<Arc<str>>,
}

impl Names {
    const RECENT: usize = 8;

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.recent.iter().find(|recent| ***recent == *name) {
            return shared.clone();
        }
        let shared = match self.all.get(name) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = name.into();
                self.all.insert(shared.clone());
                shared
            }
        };
        if self.recent.len() == Self::RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(shared.clone());
        shared
    }
}

/// Everything a replay read, and what it will do with it.
#[derive(Default)]
pub struct Plan {
    pub blobs: Vec<String>,
    pub records: Vec<Planned>,
    pub invalid: Vec<BadRecord>,
    pub items: Vec<Item>,
    names: Names,
    /// Records with at least one destination to replay to, for `--limit`.
    pub replaying: usize,
}

/// The flags that decide which records replay where.
pub struct Choice<'a> {
    pub selection: &'a Selection,
    /// `--handler`: for gridfn records, which of them; for Event Grid
    /// records, where they go.
    pub handlers: &'a [String],
    /// The manifest's `subscriptions`: an upper-case subscription name to the
    /// handlers its endpoint served; where Event Grid records go without
    /// `--handler`.
    pub subscriptions: &'a HashMap<String, Vec<String>>,
    pub destinations: &'a Destinations,
    pub max_replays: u32,
    /// `--limit`: at most this many records are replayed.
    pub limit: Option<usize>,
}

impl Plan {
    /// A plan for these blobs, none of them read yet.
    pub fn new(blobs: Vec<String>) -> Plan {
        Plan { blobs, ..Plan::default() }
    }

    /// Lists and reads every blob of the source (only hour folders inside
    /// the selection's window), and decides each record's fate: all a dry
    /// run does. A replay plans each blob as it is read instead
    /// ([`super::run::execute`]).
    pub async fn build(source: &Source, choice: &Choice<'_>, ledger: &Ledger) -> anyhow::Result<Plan> {
        let mut plan = Plan::new(source.blobs(&choice.selection.window()).await?);
        for blob in plan.blobs.clone() {
            let records = source.read(&blob).await?;
            plan.add_blob(&blob, records, choice, ledger);
        }
        Ok(plan)
    }

    /// Decides the fate of one blob's records (in the order they come);
    /// returns the items to replay, in order, each with its event (the plan
    /// keeps no events).
    pub fn add_blob(
        &mut self,
        blob: &str,
        records: Vec<Result<Record, BadRecord>>,
        choice: &Choice<'_>,
        ledger: &Ledger,
    ) -> Vec<(usize, Arc<Event>)> {
        let blob: Arc<str> = blob.into();
        let mut to_replay = Vec::new();
        for record in records {
            match record {
                Ok(record) => {
                    let event = record.event.clone();
                    let added = self.add_record(&blob, record, choice, ledger);
                    let replays = added.filter(|index| matches!(self.items[*index].action, Action::Replay));
                    to_replay.extend(replays.map(|index| (index, event.clone())));
                }
                Err(bad) => self.invalid.push(bad),
            }
        }
        to_replay
    }

    /// Plans one record; returns the indices of the items it added.
    fn add_record(&mut self, blob: &Arc<str>, record: Record, choice: &Choice<'_>, ledger: &Ledger) -> Range<usize> {
        let first = self.items.len();
        let record_index = self.records.len();
        // `--handler` is not in the selection: `destinations_of` applies it.
        let chosen = match choice.selection.skip_reason(&record) {
            Some(why) => Err(why),
            None => destinations_of(&record, choice),
        };
        let (destinations, via) = match chosen {
            Ok(chosen) => chosen,
            Err(why) => {
                let pair = Pair { blob: blob.clone(), index: record.index, destination: self.names.intern("") };
                let action = Action::Skip { why };
                self.items.push(Item {
                    pair,
                    record: record_index,
                    action,
                    attempts: 0,
                    via: Via::None,
                    outcome: None,
                });
                self.records.push(Planned::of(record, &mut self.names));
                return first..self.items.len();
            }
        };
        let limited = choice.limit.is_some_and(|limit| self.replaying >= limit);
        let mut replays_any = false;
        for destination in destinations {
            let pair = Pair { blob: blob.clone(), index: record.index, destination: self.names.intern(&destination) };
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
            self.items.push(Item { pair, record: record_index, action, attempts, via, outcome: None });
        }
        self.replaying += usize::from(replays_any);
        self.records.push(Planned::of(record, &mut self.names));
        first..self.items.len()
    }

    /// The items to replay now.
    pub fn to_replay(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|item| matches!(item.action, Action::Replay))
    }
}

/// Where a selected record goes and who chose it, or why it goes nowhere.
fn destinations_of(record: &Record, choice: &Choice<'_>) -> Result<(Vec<String>, Via), String> {
    let named = |handler: &str| choice.handlers.is_empty() || choice.handlers.iter().any(|h| h == handler);
    let (wanted, via): (Vec<String>, Via) = match (&record.handler, choice.destinations) {
        (Some(handler), _) if !named(handler) => {
            return Err(format!("dead-lettered from handler {handler}, not a --handler"));
        }
        (_, Destinations::Url { per_handler: false }) => return Ok((vec![WHOLE_ENDPOINT.to_owned()], Via::Endpoint)),
        (Some(handler), _) => (vec![handler.clone()], Via::Record),
        (None, _) if !choice.handlers.is_empty() => (choice.handlers.to_vec(), Via::HandlerFlag),
        (None, _) => {
            let subscription = record.subscription.as_deref().unwrap_or("unknown");
            match choice.subscriptions.get(&subscription.to_ascii_uppercase()) {
                Some(handlers) => (handlers.clone(), Via::Manifest),
                None => {
                    return Err(format!(
                        "an Event Grid record (subscription {subscription}) does not name its handler: pass --handler with the handler(s) that subscription's endpoint served, or list it in their `subscriptions` in the manifest"
                    ));
                }
            }
        }
    };
    if let Destinations::Handlers(known) = choice.destinations
        && let Some(missing) = wanted.iter().find(|h| !known.contains(*h))
    {
        return Err(format!("handler {missing} is not in the manifest"));
    }
    Ok((wanted, via))
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
        static NO_MAPPING: std::sync::LazyLock<HashMap<String, Vec<String>>> = std::sync::LazyLock::new(HashMap::new);
        Choice { selection, handlers, subscriptions: &NO_MAPPING, destinations, max_replays: 5, limit: None }
    }

    fn to(handlers: &[&str], via: Via) -> Result<(Vec<String>, Via), String> {
        Ok((handlers.iter().map(|h| (*h).to_owned()).collect(), via))
    }

    #[test]
    fn a_name_is_shared_whether_it_was_looked_up_lately_or_long_ago() {
        let mut names = Names::default();
        let first = names.intern("Microsoft.Storage.BlobCreated");
        assert!(Arc::ptr_eq(&first, &names.intern("Microsoft.Storage.BlobCreated")), "a recent name");
        for i in 0..2 * Names::RECENT {
            names.intern(&format!("other {i}"));
        }
        assert!(Arc::ptr_eq(&first, &names.intern("Microsoft.Storage.BlobCreated")), "a name no longer recent");
        assert_eq!(names.all.len(), 1 + 2 * Names::RECENT);
    }

    #[test]
    fn events_go_only_where_they_came_from() {
        let [gridfn, event_grid] = <[Record; 2]>::try_from(records()).unwrap();
        let selection = Selection::default();
        let known = Destinations::Handlers(["orders".to_owned(), "audit".to_owned()].into());
        let none: Vec<String> = Vec::new();
        assert_eq!(destinations_of(&gridfn, &choice(&none, &known, &selection)), to(&["orders"], Via::Record));
        let why = destinations_of(&event_grid, &choice(&none, &known, &selection)).unwrap_err();
        assert!(why.contains("pass --handler") && why.contains("`subscriptions`"), "{why}");

        let audit = vec!["audit".to_owned()];
        assert_eq!(destinations_of(&event_grid, &choice(&audit, &known, &selection)), to(&["audit"], Via::HandlerFlag));
        let why = destinations_of(&gridfn, &choice(&audit, &known, &selection)).unwrap_err();
        assert!(why.contains("dead-lettered from handler orders"), "{why}");

        let elsewhere = Destinations::Handlers(["billing".to_owned()].into());
        let why = destinations_of(&gridfn, &choice(&none, &elsewhere, &selection)).unwrap_err();
        assert!(why.contains("handler orders is not in the manifest"), "{why}");

        let per_handler = Destinations::Url { per_handler: true };
        assert_eq!(destinations_of(&gridfn, &choice(&none, &per_handler, &selection)), to(&["orders"], Via::Record));
        assert!(destinations_of(&event_grid, &choice(&none, &per_handler, &selection)).is_err());
        let whole = Destinations::Url { per_handler: false };
        assert_eq!(destinations_of(&event_grid, &choice(&none, &whole, &selection)), to(&["*"], Via::Endpoint));
    }

    #[test]
    fn the_manifest_maps_an_event_grid_records_subscription_and_the_flag_wins() {
        let [gridfn, event_grid] = <[Record; 2]>::try_from(records()).unwrap();
        let selection = Selection::default();
        let known = Destinations::Handlers(["orders".to_owned(), "audit".to_owned()].into());
        let (none, audit) = (Vec::new(), vec!["audit".to_owned()]);
        let mapping = |subscription: &str, handlers: &[&str]| -> HashMap<String, Vec<String>> {
            [(subscription.to_owned(), handlers.iter().map(|h| (*h).to_owned()).collect())].into()
        };
        // The record's folder is `SUB`; the mapping is keyed upper-case, as the manifest holds it.
        let both = mapping("SUB", &["audit", "orders"]);
        let mapped = Choice { subscriptions: &both, ..choice(&none, &known, &selection) };
        assert_eq!(destinations_of(&event_grid, &mapped), to(&["audit", "orders"], Via::Manifest));
        assert_eq!(destinations_of(&gridfn, &mapped), to(&["orders"], Via::Record), "a gridfn record keeps its own");
        let flagged = Choice { subscriptions: &both, ..choice(&audit, &known, &selection) };
        assert_eq!(destinations_of(&event_grid, &flagged), to(&["audit"], Via::HandlerFlag), "--handler wins");

        // Another subscription's mapping does not apply: skipped, never broadcast.
        let other = mapping("OTHER-SUB", &["audit"]);
        let why = destinations_of(&event_grid, &Choice { subscriptions: &other, ..choice(&none, &known, &selection) })
            .unwrap_err();
        assert!(why.contains("subscription SUB"), "{why}");
        // A mapping to a handler this manifest lacks is named.
        let gone = mapping("SUB", &["billing"]);
        let why = destinations_of(&event_grid, &Choice { subscriptions: &gone, ..choice(&none, &known, &selection) })
            .unwrap_err();
        assert!(why.contains("handler billing is not in the manifest"), "{why}");
    }
}
