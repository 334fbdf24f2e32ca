//! What a user sees: a progress bar with rate and ETA on a terminal (plain
//! lines every few seconds otherwise), the dry run's table, and the summary
//! at the end, per handler and per dead-letter reason, as a table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::plan::{Action, Item, Plan, Via};
use super::read::{Attributes, BadRecord};
use super::run::Ran;
use crate::pipeline::ReplayOutcome;

/// How often the plain (not a terminal) progress line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// Progress on stderr.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: Mutex<Plain>,
    /// Events to replay found so far.
    total: AtomicU64,
}

struct Plain {
    done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    /// A bar when stderr is a terminal (and `quiet` is off), else plain
    /// lines. Its total grows as the blobs are read ([`Progress::grow`]).
    pub fn new(quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  ETA {eta}  {msg}")
                    .expect("the template is valid");
            bar.set_style(style);
            bar
        });
        let now = Instant::now();
        Progress { bar, plain: Mutex::new(Plain { done: 0, started: now, last: now }), total: AtomicU64::new(0) }
    }

    /// More events to replay, found in a blob just read.
    pub fn grow(&self, events: u64) {
        self.total.fetch_add(events, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc_length(events);
        }
    }

    pub fn advance(&self, events: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(events);
            return;
        }
        let mut plain = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        plain.done += events;
        if plain.last.elapsed() >= PLAIN_EVERY {
            plain.last = Instant::now();
            let elapsed = plain.started.elapsed().as_secs_f64();
            let rate = plain.done as f64 / elapsed.max(1e-3);
            let total = self.total.load(Ordering::Relaxed);
            let left = total.saturating_sub(plain.done) as f64 / rate.max(1e-3);
            eprintln!("replayed {}/{total} events ({rate:.0}/s, ETA {left:.0}s)", plain.done);
        }
    }

    /// A line that does not disturb the bar.
    pub fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Counts of what became of (record, destination) pairs.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Sent to a handler (or URL) this run.
    pub replayed: usize,
    pub succeeded: usize,
    /// Succeeded before: not run again.
    pub duplicate: usize,
    pub failed_again: usize,
    pub rejected_again: usize,
    /// The handler's filter does not want the event.
    pub unmatched: usize,
    /// Not selected, or with nowhere to go.
    pub skipped: usize,
    /// Done by an earlier replay (the ledger says so).
    pub already_done: usize,
    /// Failed `--max-replays` times.
    pub gave_up: usize,
    /// Selected, but not sent because the replay was interrupted.
    pub not_sent: usize,
}

impl Counts {
    /// A pair planned: counted by its action (one to replay counts as not
    /// sent until its batch answers).
    fn planned(&mut self, action: &Action) {
        match action {
            Action::Replay => self.not_sent += 1,
            Action::Skip { .. } => self.skipped += 1,
            Action::AlreadyDone { .. } => self.already_done += 1,
            Action::GaveUp { .. } => self.gave_up += 1,
        }
    }

    /// A pair sent, answered with `outcome`.
    fn answered(&mut self, outcome: ReplayOutcome) {
        self.not_sent -= 1;
        self.replayed += 1;
        match outcome {
            ReplayOutcome::Succeeded => self.succeeded += 1,
            ReplayOutcome::Duplicate => self.duplicate += 1,
            ReplayOutcome::Failed => self.failed_again += 1,
            ReplayOutcome::Rejected => self.rejected_again += 1,
            ReplayOutcome::Unmatched => self.unmatched += 1,
        }
    }
}

/// What became of every (record, destination) pair, counted as the plan
/// decides it and again as its batch answers: in all, per handler and per
/// dead-letter reason.
#[derive(Debug, Default, Serialize)]
pub struct Tally {
    pub total: Counts,
    pub per_handler: BTreeMap<String, Counts>,
    pub per_reason: BTreeMap<String, Counts>,
    /// Why records were skipped, with how many each.
    pub skipped_because: BTreeMap<String, usize>,
}

impl Tally {
    pub fn planned(&mut self, handler: &str, reason: &str, action: &Action) {
        self.total.planned(action);
        counts(&mut self.per_handler, handler).planned(action);
        counts(&mut self.per_reason, reason).planned(action);
        if let Action::Skip { why } = action {
            *self.skipped_because.entry(why.clone()).or_default() += 1;
        }
    }

    pub fn answered(&mut self, handler: &str, reason: &str, outcome: ReplayOutcome) {
        self.total.answered(outcome);
        counts(&mut self.per_handler, handler).answered(outcome);
        counts(&mut self.per_reason, reason).answered(outcome);
    }
}

/// The counts kept under `key`, new ones if none yet (a key is copied
/// once per map, not once per pair).
fn counts<'m>(map: &'m mut BTreeMap<String, Counts>, key: &str) -> &'m mut Counts {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), Counts::default());
    }
    map.get_mut(key).expect("inserted above")
}

/// The end of a replay, for people (a table) and scripts (`--json`).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub source: String,
    pub target: String,
    pub ledger: String,
    pub dry_run: bool,
    pub interrupted: bool,
    pub blobs: usize,
    pub records: usize,
    #[serde(flatten)]
    pub tally: Tally,
    /// Why batches failed, with how many events each.
    pub errors: BTreeMap<String, usize>,
    /// Records that are not valid events, with where they are.
    pub invalid: Vec<BadRecord>,
    pub archived: usize,
    pub deleted: usize,
    pub blob_errors: Vec<String>,
    /// From the first read to the last answer: reading, starting the
    /// handlers and sending (reading overlaps sending).
    pub seconds: f64,
    /// From the first read to having read the last one.
    pub reading_seconds: f64,
    /// Of `seconds`, starting the handlers (compiling or loading them),
    /// while nothing is sent.
    pub starting_seconds: f64,
    /// Events replayed per second, reading included, starting the handlers not.
    pub rate: f64,
    /// From sending the first batch to the last answer (later blobs are
    /// still read meanwhile; listing, the first reads and starting the
    /// handlers are not in it).
    pub sending_seconds: f64,
    /// Events replayed per second of `sending_seconds`.
    pub sending_rate: f64,
    /// CPU time (user + system) the replay used in `sending_seconds`; absent
    /// where the OS does not say.
    pub sending_cpu_seconds: Option<f64>,
    /// What the embedded dedup store did during the run (in-process
    /// replays): commits (one per batch), group writes and `fdatasync`s.
    pub dedup: crate::dedup::embedded::Stats,
}

impl Summary {
    pub fn new(plan: Plan, ran: &Ran, header: (String, String, String), dry_run: bool) -> Summary {
        let (source, target, ledger) = header;
        let replayed = plan.tally.total.replayed as f64;
        Summary {
            source,
            target,
            ledger,
            dry_run,
            interrupted: ran.interrupted,
            blobs: plan.blobs.len(),
            records: plan.records,
            tally: plan.tally,
            errors: ran.errors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            invalid: plan.invalid,
            archived: ran.archived,
            deleted: ran.deleted,
            blob_errors: ran.blob_errors.clone(),
            seconds: ran.seconds,
            reading_seconds: ran.reading_seconds,
            starting_seconds: ran.starting_seconds,
            rate: replayed / (ran.seconds - ran.starting_seconds).max(1e-3),
            sending_seconds: ran.sending_seconds,
            sending_rate: replayed / ran.sending_seconds.max(1e-3),
            sending_cpu_seconds: ran.sending_cpu_seconds,
            dedup: ran.dedup,
        }
    }

    /// Everything replayed succeeded (or had before) and nothing selected
    /// was left unsent. Invalid records are reported, not counted: they
    /// were never replayed, and would fail every scheduled run.
    pub fn success(&self) -> bool {
        let t = &self.tally.total;
        t.failed_again == 0 && t.rejected_again == 0 && t.not_sent == 0 && !self.interrupted
    }

    /// The summary as a table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "replay of {} into {}", self.source, self.target);
        if self.interrupted {
            let _ = writeln!(out, "INTERRUPTED: run the same command again to resume");
        }
        if self.records == 0 {
            let _ = writeln!(
                out,
                "nothing to do: no dead-lettered records left in {} (done blobs are under replayed/)",
                self.source
            );
            return out;
        }
        if self.tally.total.replayed == 0 && self.tally.total.already_done > 0 && self.tally.total.not_sent == 0 {
            let _ = writeln!(
                out,
                "nothing to do: {} already replayed (ledger {})",
                plural(self.tally.total.already_done, "pair"),
                self.ledger
            );
        }
        let _ = writeln!(
            out,
            "{} in {}; {} replayed in {:.1}s ({:.0} events/s)",
            plural(self.records, "record"),
            plural(self.blobs, "blob"),
            plural(self.tally.total.replayed, "event"),
            self.seconds,
            self.rate
        );
        let mut table = Table::default();
        table.row(&[
            "",
            "replayed",
            "succeeded",
            "duplicate",
            "failed again",
            "rejected again",
            "unmatched",
            "skipped",
            "already done",
            "gave up",
        ]);
        let mut add = |name: String, c: &Counts| {
            let cells = [
                c.replayed,
                c.succeeded,
                c.duplicate,
                c.failed_again,
                c.rejected_again,
                c.unmatched,
                c.skipped,
                c.already_done,
                c.gave_up,
            ];
            let mut row = vec![name];
            row.extend(cells.iter().map(usize::to_string));
            table.row(&row.iter().map(String::as_str).collect::<Vec<_>>());
        };
        add("total".into(), &self.tally.total);
        for (handler, counts) in &self.tally.per_handler {
            add(format!("handler {handler}"), counts);
        }
        for (reason, counts) in &self.tally.per_reason {
            add(format!("reason {reason}"), counts);
        }
        out.push_str(&table.render());
        for (why, count) in &self.tally.skipped_because {
            let _ = writeln!(out, "skipped {count}: {why}");
        }
        for (error, count) in &self.errors {
            let _ = writeln!(out, "failed {count}: {error}");
        }
        for bad in &self.invalid {
            let at = bad.index.map_or(String::new(), |i| format!(" record {i}"));
            let _ = writeln!(out, "invalid: {}{at}: {}", bad.blob, bad.problem);
        }
        if self.tally.total.not_sent > 0 {
            let _ = writeln!(out, "not sent (interrupted): {}", self.tally.total.not_sent);
        }
        if self.archived > 0 {
            let _ = writeln!(out, "archived {} under replayed/", plural(self.archived, "blob"));
        }
        if self.deleted > 0 {
            let _ = writeln!(out, "deleted {}", plural(self.deleted, "blob"));
        }
        for error in &self.blob_errors {
            let _ = writeln!(out, "blob left in place: {error}");
        }
        out
    }
}

/// The dry run: one line per (record, destination), what would happen and why.
#[derive(Serialize)]
pub struct DryRunRow {
    pub blob: Arc<str>,
    pub index: usize,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// What the record says of the event's failure (`--json` shows them all;
    /// the table its reason and the last delivery's outcome).
    #[serde(flatten)]
    pub attributes: Attributes,
    pub destination: Arc<str>,
    /// Who chose the destination: the record itself, `--handler`, or the
    /// manifest's `subscriptions`.
    pub via: Via,
    #[serde(flatten)]
    pub action: Action,
}

impl DryRunRow {
    /// The row keeps the event's id and type, not the event; `attributes` are
    /// its record's (an item keeps only those it needs).
    pub fn new(item: Item, attributes: Attributes) -> DryRunRow {
        DryRunRow {
            blob: item.pair.blob,
            index: item.pair.index,
            id: item.event.id.clone(),
            event_type: item.event.event_type.clone(),
            attributes,
            destination: item.pair.destination,
            via: item.via,
            action: item.action,
        }
    }
}

pub fn render_dry_run(rows: &[DryRunRow]) -> String {
    let mut table = Table::default();
    table.row(&["BLOB", "#", "ID", "TYPE", "REASON", "OUTCOME", "TO", "WOULD"]);
    for row in rows {
        let would = match &row.action {
            Action::Replay => "replay".to_owned(),
            Action::Skip { why } => format!("skip: {why}"),
            Action::AlreadyDone { outcome, at } => format!("skip: already replayed ({outcome:?} at {at})"),
            Action::GaveUp { attempts, outcome } => {
                format!("skip: gave up after {attempts} replays (last {outcome:?}); raise --max-replays")
            }
        };
        let index = row.index.to_string();
        // An Event Grid record's destination says who chose it.
        let to = match row.via {
            Via::HandlerFlag => format!("{} (--handler)", row.destination),
            Via::Manifest => format!("{} (manifest subscriptions)", row.destination),
            Via::Record | Via::Endpoint | Via::None => row.destination.to_string(),
        };
        table.row(&[
            &row.blob,
            &index,
            &row.id,
            &row.event_type,
            row.attributes.reason.as_deref().unwrap_or("-"),
            row.attributes.outcome.as_deref().unwrap_or("-"),
            &to,
            &would,
        ]);
    }
    table.render()
}

/// Columns padded to their widest cell (the last one is not padded).
#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn row(&mut self, cells: &[&str]) {
        self.rows.push(cells.iter().map(|c| (*c).to_owned()).collect());
    }

    fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}
