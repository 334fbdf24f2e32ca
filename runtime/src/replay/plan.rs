//! What a replay will do with each record it reads, decided before anything
//! runs (and all a dry run shows): replay it to which destinations, or skip
//! it and why.
//!
//! Events go only where they came from: a gridfn record names the handler
//! that rejected it; an Event Grid record names only its subscription, so the
//! handlers its endpoint served must be given: `--handler`, or the manifest's
//! `subscriptions = [...]` on each handler. Nothing is ever broadcast to every
//! handler.
//!
//! A plan keeps no record once its fate is known: each blob's [`Item`]s go
//! to the batches that send them (or to the dry run's rows), and what stays
//! is the [`Tally`] for the summary and, per blob, whether it can be archived
//! yet. A replay of millions of records holds the events in flight, not every
//! one it read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::ledger::{Ledger, Pair, is_done};
use super::read::{BadRecord, Record, Selection};
use super::report::Tally;
use crate::event::Event;
use crate::pipeline::ReplayOutcome;

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
        outcome: ReplayOutcome,
        at: Arc<str>,
    },
    /// It failed `--max-replays` times already.
    GaveUp {
        attempts: u32,
        outcome: ReplayOutcome,
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

/// One record for one destination, as planned: to send (its batch takes the
/// event) or to show in a dry run's row.
#[derive(Debug)]
pub struct Item {
    /// The ledger's key; `destination` is empty when the record goes nowhere.
    pub pair: Pair,
    pub action: Action,
    /// Replays run before this one (from the ledger).
    pub attempts: u32,
    /// Who chose the destination.
    pub via: Via,
    /// Shared with the record it came from, never copied.
    pub event: Arc<Event>,
    /// The subscription folder its blob sits in.
    pub subscription: Option<Arc<str>>,
    /// `deadLetterReason`.
    pub reason: Option<Arc<str>>,
    /// `gridfnHandler`: the handler that rejected it, in gridfn's own records.
    pub handler: Option<Arc<str>>,
    /// `deliveryAttempts`.
    pub delivery_attempts: Option<u32>,
    /// Which blob of the plan it came from (in the order they were planned).
    pub blob: BlobId,
}

impl Item {
    /// The handler it is counted under in the summary: its destination, or
    /// (for a record that goes nowhere) the handler that dead-lettered it.
    pub fn handler_label(&self) -> &str {
        match &*self.pair.destination {
            "" => self.handler.as_deref().unwrap_or("-"),
            destination => destination,
        }
    }

    /// The dead-letter reason it is counted under in the summary.
    pub fn reason_label(&self) -> &str {
        self.reason.as_deref().unwrap_or("-")
    }
}

/// A blob's place among those a plan planned.
pub type BlobId = usize;

/// Whether a planned blob can be archived: every record of it done.
struct BlobState {
    name: Arc<str>,
    /// Its items to replay whose batches have not answered yet.
    waiting: usize,
    /// One of its records is invalid, skipped, given up on, or failed again.
    open: bool,
}

impl BlobState {
    fn is_done(&self) -> bool {
        self.waiting == 0 && !self.open
    }
}

/// One shared copy of each name that repeats from one record (or ledger
/// line) to the next.
#[derive(Default)]
pub(super) struct Names {
    all: HashSet<Arc<str>>,
    /// The last few names looked up, checked before hashing: a record's
    /// names (subscription, handler, reason, destination) are nearly
    /// always the ones the record before it had.
    recent: VecDeque<Arc<str>>,
}

impl Names {
    const RECENT: usize = 8;

    pub(super) fn intern(&mut self, name: &str) -> Arc<str> {
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

/// What a replay read so far, and what became of it.
#[derive(Default)]
pub struct Plan {
    /// Every blob the source listed (read or not yet).
    pub blobs: Vec<String>,
    /// Records read, valid or not.
    pub records: usize,
    pub invalid: Vec<BadRecord>,
    /// What became of every (record, destination) pair planned so far.
    pub tally: Tally,
    /// Each blob planned, in order ([`BlobId`]).
    planned: Vec<BlobState>,
    /// Blobs whose every record became done since [`Plan::take_done`] last ran.
    done: Vec<Arc<str>>,
    names: Names,
    /// Records with at least one destination to replay to, for `--limit`.
    replaying: usize,
}

impl Plan {
    /// A plan for these blobs, none of them read yet.
    pub fn new(blobs: Vec<String>) -> Plan {
        Plan { blobs, ..Plan::default() }
    }

    /// Decides the fate of one blob's records (in the order they come) and
    /// counts it: an item to replay counts as not sent until
    /// [`Plan::answered`]. Returns every item, each with its event.
    pub fn add_blob(
        &mut self,
        blob: &str,
        records: Vec<Result<Record, BadRecord>>,
        choice: &Choice<'_>,
        ledger: &Ledger,
    ) -> Vec<Item> {
        let id = self.planned.len();
        let mut state = BlobState { name: blob.into(), waiting: 0, open: false };
        let mut items = Vec::with_capacity(records.len());
        self.records += records.len();
        for record in records {
            match record {
                Ok(record) => self.add_record(&state.name, id, record, choice, ledger, &mut items),
                Err(bad) => {
                    state.open = true;
                    self.invalid.push(bad);
                }
            }
        }
        for item in &items {
            self.tally.planned(item.handler_label(), item.reason_label(), &item.action);
            match item.action {
                Action::Replay => state.waiting += 1,
                Action::AlreadyDone { .. } => {}
                Action::Skip { .. } | Action::GaveUp { .. } => state.open = true,
            }
        }
        if state.is_done() {
            self.done.push(state.name.clone());
        }
        self.planned.push(state);
        items
    }

    /// Counts what a replayed item's batch answered for it.
    pub fn answered(&mut self, blob: BlobId, handler: &str, reason: &str, outcome: ReplayOutcome) {
        self.tally.answered(handler, reason, outcome);
        let state = &mut self.planned[blob];
        state.waiting -= 1;
        state.open |= !is_done(outcome);
        if state.is_done() {
            self.done.push(state.name.clone());
        }
    }

    /// The blobs whose every record became done (by this run or earlier
    /// ones: none invalid, skipped, given up on or failing) since the last
    /// call: ready to archive.
    pub fn take_done(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.done)
    }

    /// Plans one record into `items`, one item per destination.
    fn add_record(
        &mut self,
        blob: &Arc<str>,
        blob_id: BlobId,
        record: Record,
        choice: &Choice<'_>,
        ledger: &Ledger,
        items: &mut Vec<Item>,
    ) {
        // `--handler` is not in the selection: `destinations_of` applies it.
        let chosen = match choice.selection.skip_reason(&record) {
            Some(why) => Err(why),
            None => destinations_of(&record, choice),
        };
        let names = &mut self.names;
        let mut share = |name: Option<String>| name.map(|name| names.intern(&name));
        let subscription = record.subscription;
        let reason = share(record.attributes.reason);
        let handler = share(record.attributes.handler);
        let pair_to = |destination: Arc<str>| Pair { blob: blob.clone(), index: record.index, destination };
        let item = |pair: Pair, action: Action, attempts: u32, via: Via| Item {
            pair,
            action,
            attempts,
            via,
            event: record.event.clone(),
            subscription: subscription.clone(),
            reason: reason.clone(),
            handler: handler.clone(),
            delivery_attempts: record.attributes.delivery_attempts,
            blob: blob_id,
        };
        let (destinations, via) = match chosen {
            Ok(chosen) => chosen,
            Err(why) => {
                items.push(item(pair_to(self.names.intern("")), Action::Skip { why }, 0, Via::None));
                return;
            }
        };
        let limited = choice.limit.is_some_and(|limit| self.replaying >= limit);
        let mut replays_any = false;
        for destination in destinations {
            let pair = pair_to(self.names.intern(&destination));
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
            items.push(item(pair, action, attempts, via));
        }
        self.replaying += usize::from(replays_any);
    }
}

/// Where a selected record goes and who chose it, or why it goes nowhere.
fn destinations_of(record: &Record, choice: &Choice<'_>) -> Result<(Vec<String>, Via), String> {
    let named = |handler: &str| choice.handlers.is_empty() || choice.handlers.iter().any(|h| h == handler);
    let (wanted, via): (Vec<String>, Via) = match (&record.attributes.handler, choice.destinations) {
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
    fn a_blob_is_done_once_its_every_record_is_and_the_tally_follows_the_answers() {
        let selection = Selection::default();
        let known = Destinations::Handlers(["orders".to_owned()].into());
        let none: Vec<String> = Vec::new();
        let choice = choice(&none, &known, &selection);
        let ledger = Ledger::read_only(std::path::Path::new("/nonexistent/ledger.jsonl"), &[]).unwrap();
        let records = |ids: &[&str]| {
            let one = |id: &&str| {
                format!(
                    r#"{{"id":"{id}","eventType":"T","subject":"s","topic":"/t","eventTime":"2026-01-01T00:00:00Z","data":{{}},"dataVersion":"1","deadLetterReason":"HandlerRejected","gridfnHandler":"orders"}}"#
                )
            };
            format!("[{}]", ids.iter().map(one).collect::<Vec<_>>().join(","))
        };
        let mut plan = Plan::new(vec!["a".into(), "b".into(), "c".into()]);
        let add = |plan: &mut Plan, name: &str, text: &str| {
            plan.add_blob(name, parse_records(name, Some("SUB"), text.as_bytes()), &choice, &ledger)
        };
        let a = add(&mut plan, "SUB/2026/1/1/0/a.json", &records(&["a1", "a2"]));
        let b = add(&mut plan, "SUB/2026/1/1/0/b.json", &records(&["b1"]));
        let c = add(&mut plan, "SUB/2026/1/1/0/c.json", r#"[{"id":"c1"}]"#);
        assert_eq!((a.len(), b.len(), c.len(), plan.records, plan.invalid.len()), (2, 1, 0, 4, 1));
        assert_eq!(plan.tally.total.not_sent, 3, "planned to replay, not answered yet");
        assert!(plan.take_done().is_empty(), "nothing answered yet");

        let outcomes = [ReplayOutcome::Succeeded, ReplayOutcome::Failed, ReplayOutcome::Duplicate];
        for (item, outcome) in a.iter().chain(&b).zip(outcomes) {
            plan.answered(item.blob, item.handler_label(), item.reason_label(), outcome);
        }
        // a: one record failed again; c: its record is invalid. Only b is done.
        assert_eq!(plan.take_done(), [Arc::from("SUB/2026/1/1/0/b.json")]);
        assert!(plan.take_done().is_empty(), "each blob is done once");
        let total = &plan.tally.total;
        assert_eq!(
            (total.replayed, total.succeeded, total.failed_again, total.duplicate, total.not_sent),
            (3, 1, 1, 1, 0)
        );
        assert_eq!(plan.tally.per_handler["orders"], *total);
        assert_eq!(plan.tally.per_reason["HandlerRejected"], *total);
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
