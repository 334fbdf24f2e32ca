//! Running a replay: the source's blobs read ahead on a task of their own
//! ([`Source::read_ahead`]) while the batches of earlier ones are sent; each
//! blob planned as it arrives, its records to replay grouped into batches,
//! sent by `--concurrency` slot tasks at most `--rate` events a second; every
//! finished batch written to the ledger by its slot; and each blob archived
//! (or deleted) as soon as its records are all done, on a task of its own,
//! so a replay cut off leaves in place only what is still to do.
//!
//! What makes a cut-off replay safe to run again: a pair's success is
//! recorded by dedup before its batch returns, and by the ledger right after;
//! a crash between the two makes the next run send it again, and dedup
//! answers it as a duplicate instead of running it. A batch keeps its slot
//! until the ledger has written it, so a killed replay leaves at most
//! `--concurrency` batches to be sent again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::ledger::{Ledger, LedgerAppender, Pair, is_done};
use super::plan::{Action, BlobId, Choice, Item, Plan};
use super::read::Source;
use super::report::Progress;
use super::target::{Batch, MAX_BODY, Sent, Target};

/// Blobs read (and parsed) ahead of the one being planned.
const READ_AHEAD: usize = 8;

/// Full batches kept waiting for a free slot before reading pauses: enough
/// that a slot never waits for a read, few enough to bound memory.
const READY_PER_SLOT: usize = 2;

/// What to do with a blob once every record in it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSuccess {
    /// Leave it where it is (the ledger still keeps it from running twice).
    Keep,
    /// Move it under `replayed/`.
    Archive,
    /// Delete it.
    Delete,
}

/// How hard a replay pushes.
pub struct Pace {
    /// Events per batch (a `--to` body is also kept under 1 MiB).
    pub batch: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Events started per second, at most.
    pub rate: Option<f64>,
    /// Whether batches are HTTP bodies (and so bounded in bytes).
    pub bounded_bytes: bool,
}

/// Where batches go, once there is something to send: a URL is ready at
/// once; the manifest's handlers are started (compiled, the dedup store
/// opened) only when the first record to replay turns up, so a run with
/// nothing left to do touches neither.
pub enum Starter {
    Ready(Target),
    Later(BoxFuture<'static, anyhow::Result<Target>>),
}

/// What a run did.
#[derive(Default)]
pub struct Ran {
    /// Why batches failed, with how many events each reason covered.
    pub errors: HashMap<String, usize>,
    pub archived: usize,
    pub deleted: usize,
    /// Blobs that could not be archived or deleted, and why.
    pub blob_errors: Vec<String>,
    /// Ctrl-C stopped it before every batch was sent.
    pub interrupted: bool,
    /// From the first read to the last answer (listing the blobs and the
    /// archiving still running then not included).
    pub seconds: f64,
    /// From the first read to reading the last one (it overlaps sending).
    pub reading_seconds: f64,
    /// Of `seconds`, the time spent starting the handlers (compiling or
    /// loading them, opening the dedup store), during which nothing is sent.
    pub starting_seconds: f64,
    /// From sending the first batch (the handlers started) to the last
    /// answer: the part of `seconds` when batches are in flight (later blobs
    /// are still read meanwhile).
    pub sending_seconds: f64,
    /// CPU time (user + system, all threads) this process used in those
    /// `sending_seconds`; `None` where the OS does not say (not Linux).
    pub sending_cpu_seconds: Option<f64>,
    /// The embedded dedup store's commits, writes and syncs while sending.
    pub dedup: crate::dedup::embedded::Stats,
}

/// A batch on its way, with what the ledger and the tally need of each of
/// its events.
struct Job {
    batch: Batch,
    sending: Vec<Sending>,
}

/// One event of a batch on its way: what is recorded once it is answered.
struct Sending {
    /// The ledger's key.
    pair: Pair,
    /// Replays run, this one included.
    attempts: u32,
    /// The summary's reason label.
    reason: Option<Arc<str>>,
    blob: BlobId,
}

/// A batch sent and recorded in the ledger.
struct Finished {
    sending: Vec<Sending>,
    sent: Sent,
}

/// Plans and sends each of `blobs` as it is read, records every finished
/// batch in the ledger, and archives each blob once it is done. Returns the
/// plan (everything read, and what became of it) and the run.
///
/// Sending runs on `--concurrency` slot tasks, each taking the next batch,
/// sending it, and writing its outcomes to the ledger before taking another:
/// a slot never waits for this loop (which reads and plans), so a finished
/// batch's slot is busy again at once.
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    source: Arc<Source>,
    blobs: Vec<String>,
    choice: &Choice<'_>,
    ledger: Ledger,
    target: Starter,
    pace: &Pace,
    on_success: OnSuccess,
    progress: &Progress,
) -> anyhow::Result<(Plan, Ran)> {
    let started = Instant::now();
    let mut ran = Ran::default();
    let mut plan = Plan::new(blobs);
    let mut blobs_in = source.clone().read_ahead(plan.blobs.clone(), READ_AHEAD);
    let (to_archive, archive_queue) = mpsc::unbounded_channel();
    let archiver = tokio::spawn(archive(source.clone(), on_success, archive_queue));
    let mut reading = true;
    // A blob that could not be fetched stops the run (after the batches in
    // flight); the next run resumes from the ledger.
    let mut read_error = None;
    let mut batcher = Batcher::new(pace);
    let mut ready: VecDeque<Job> = VecDeque::new();
    let mut target = Some(target);
    let slots = pace.concurrency.max(1);
    let mut sent_events = 0usize;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    // Slots take jobs from here; `None` before they start and once closed.
    let mut jobs: Option<mpsc::Sender<Job>> = None;
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<anyhow::Result<Finished>>();
    let mut finished_tx = Some(finished_tx);
    // Set on Ctrl-C, a read error or a failed ledger write: slots send nothing more.
    let stop = Arc::new(AtomicBool::new(false));
    let mut slot_tasks = JoinSet::new();
    let (mut slots_started, mut slots_done) = (false, false);
    // When the first batch went out, and the CPU time used by then.
    let mut sending_since: Option<(Instant, Option<f64>)> = None;
    let mut failed = None;

    // A batch keeps its slot until the ledger has it, so at most
    // `--concurrency` batches are ever sent and not yet recorded: all that a
    // `kill -9` can make the next run send again (as duplicates, or run
    // again if dedup had not recorded them). Writing is one `write`; the
    // appender syncs to disk on a thread of its own.
    let mut ledger = ledger;
    let appender = Arc::new(Mutex::new(ledger.appender()?));
    loop {
        // Blobs done by the last blob planned or the last batch answered.
        for blob in plan.take_done() {
            let _ = to_archive.send(blob);
        }
        let stopping = ran.interrupted || read_error.is_some() || failed.is_some();
        if stopping {
            stop.store(true, Ordering::Relaxed);
            jobs = None;
        }
        // The target starts with the first batch to send, and the slots with it.
        if !stopping && !slots_started && !ready.is_empty() {
            let starting = Instant::now();
            let running = Arc::new(match target.take().expect("started once") {
                Starter::Ready(target) => target,
                Starter::Later(start) => start.await?,
            });
            ran.starting_seconds += starting.elapsed().as_secs_f64();
            let (sender, receiver) = mpsc::channel::<Job>(slots);
            let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
            let finished_tx = finished_tx.take().expect("slots start once");
            for _ in 0..slots {
                let (receiver, appender) = (receiver.clone(), appender.clone());
                slot_tasks.spawn(slot(receiver, running.clone(), appender, finished_tx.clone(), stop.clone()));
            }
            jobs = Some(sender);
            slots_started = true;
            sending_since = Some((Instant::now(), process_cpu_seconds()));
        }
        if !reading && ready.is_empty() {
            // Closing the queue: the slots send what is in it, then end.
            jobs = None;
        }
        let read_more = reading && !stopping && ready.len() < slots * READY_PER_SLOT;
        let can_send = jobs.is_some() && !ready.is_empty();
        let slots_running = slots_started && !slots_done;
        if !read_more && !can_send && !slots_running {
            break;
        }
        let due =
            pace.rate.map(|rate| started + Duration::from_secs_f64(ran.starting_seconds + sent_events as f64 / rate));
        tokio::select! {
            permit = reserve(jobs.as_ref(), due), if can_send => {
                if let Some(permit) = permit {
                    let job = ready.pop_front().expect("checked above");
                    sent_events += job.batch.events.len();
                    permit.send(job);
                }
            }
            blob = blobs_in.recv(), if read_more => match blob {
                Some((name, Ok(records))) => {
                    let items = plan.add_blob(&name, records, choice, &ledger);
                    let mut found = 0;
                    for item in items.into_iter().filter(|item| matches!(item.action, Action::Replay)) {
                        found += 1;
                        ready.extend(batcher.add(item));
                    }
                    progress.grow(found);
                }
                Some((name, Err(error))) => {
                    read_error = Some(error.context(format!("reading {name} (what was sent before is in the ledger; the next run resumes)")));
                    progress.note("a blob could not be read: finishing the batches in flight, then stopping");
                }
                None => {
                    reading = false;
                    ran.reading_seconds = started.elapsed().as_secs_f64();
                    ready.extend(batcher.flush());
                }
            },
            done = finished.recv(), if slots_running => match done {
                Some(Ok(Finished { sending, sent })) => {
                    if let Some(error) = sent.error {
                        *ran.errors.entry(error).or_default() += sent.outcomes.iter().filter(|o| !is_done(**o)).count();
                    }
                    progress.advance(sending.len() as u64);
                    for (event, outcome) in sending.iter().zip(sent.outcomes) {
                        let reason = event.reason.as_deref().unwrap_or("-");
                        plan.answered(event.blob, &event.pair.destination, reason, outcome);
                    }
                }
                Some(Err(error)) => {
                    failed.get_or_insert(error);
                }
                None => slots_done = true,
            },
            _ = &mut interrupt, if !ran.interrupted => {
                ran.interrupted = true;
                progress.note("interrupted: finishing the batches in flight, then stopping (the next run resumes)");
            }
        }
    }
    ran.seconds = started.elapsed().as_secs_f64();
    if let Some((since, cpu)) = sending_since {
        ran.sending_seconds = since.elapsed().as_secs_f64();
        ran.sending_cpu_seconds = cpu.zip(process_cpu_seconds()).map(|(before, after)| after - before);
    }
    ran.dedup = crate::dedup::embedded::stats();
    drop(blobs_in);
    drop(jobs);
    while let Some(ended) = slot_tasks.join_next().await {
        if let Err(e) = ended {
            failed.get_or_insert(anyhow::anyhow!("a replay batch panicked: {e}"));
        }
    }
    let appender = Arc::try_unwrap(appender).map_err(|_| anyhow::anyhow!("replay slots outlived the run"))?;
    let appender = appender.into_inner().unwrap_or_else(|e| e.into_inner());
    tokio::task::spawn_blocking(move || appender.finish()).await??;
    // The blobs done so far are archived whatever stopped the run.
    drop(to_archive);
    let archived = archiver.await?;
    (ran.archived, ran.deleted, ran.blob_errors) = (archived.archived, archived.deleted, archived.errors);
    if let Some(error) = failed {
        return Err(error);
    }
    if let Some(error) = read_error {
        return Err(error);
    }
    Ok((plan, ran))
}

/// Room in the slots' queue, once `due` (the rate's next start) has come.
async fn reserve(jobs: Option<&mpsc::Sender<Job>>, due: Option<Instant>) -> Option<mpsc::Permit<'_, Job>> {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
    jobs?.reserve().await.ok()
}

/// One slot: takes the next batch, sends it, writes its outcomes to the
/// ledger, then takes another, until the queue closes or the run stops.
async fn slot(
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    target: Arc<Target>,
    appender: Arc<Mutex<LedgerAppender>>,
    finished: mpsc::UnboundedSender<anyhow::Result<Finished>>,
    stop: Arc<AtomicBool>,
) {
    loop {
        let Some(Job { batch, sending }) = jobs.lock().await.recv().await else { return };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let sent = target.send(batch).await;
        let pairs = sending.iter().map(|event| (&event.pair, event.attempts));
        let written = appender.lock().unwrap_or_else(|e| e.into_inner()).append(pairs, &sent.outcomes, &now_rfc3339());
        let report = written.map(|()| Finished { sending, sent });
        let failed = report.is_err();
        if finished.send(report).is_err() || failed {
            return;
        }
    }
}

/// Groups the items to replay into batches as they are planned: one
/// destination, subscription, attempt count and schema each, at most
/// `pace.batch` events (and 1 MiB for HTTP), in the order the items came.
struct Batcher {
    /// The batches being filled: a handful (one per destination, attempt
    /// count, …), so a scan finds an item's batch without building a key.
    open: Vec<Job>,
    events: usize,
    bounded_bytes: bool,
}

impl Batcher {
    fn new(pace: &Pace) -> Batcher {
        Batcher { open: Vec::new(), events: pace.batch.max(1), bounded_bytes: pace.bounded_bytes }
    }

    /// Adds an item to replay; returns the batches that are full now.
    fn add(&mut self, item: Item) -> Vec<Job> {
        let mut full = Vec::new();
        let attempt = item.delivery_attempts.unwrap_or(0);
        let size = item.event.raw.get().len() + 1;
        let position = self.open.iter().position(|Job { batch, .. }| {
            batch.destination == item.pair.destination
                && batch.subscription == item.subscription
                && batch.attempt == attempt
                && batch.schema == item.event.schema
        });
        let position = match position {
            Some(position) if self.bounded_bytes && self.open[position].batch.bytes + size > MAX_BODY => {
                full.push(self.open.remove(position));
                None
            }
            position => position,
        };
        let position = position.unwrap_or_else(|| {
            self.open.push(Job {
                batch: Batch {
                    destination: item.pair.destination.clone(),
                    subscription: item.subscription.clone(),
                    attempt,
                    schema: item.event.schema,
                    events: Vec::with_capacity(self.events),
                    bytes: 0,
                },
                sending: Vec::with_capacity(self.events),
            });
            self.open.len() - 1
        });
        let job = &mut self.open[position];
        job.batch.events.push(item.event);
        job.batch.bytes += size;
        job.sending.push(Sending {
            pair: item.pair,
            attempts: item.attempts + 1,
            reason: item.reason,
            blob: item.blob,
        });
        if job.sending.len() >= self.events {
            full.push(self.open.remove(position));
        }
        full
    }

    /// The batches not yet full, oldest first.
    fn flush(&mut self) -> Vec<Job> {
        let mut rest = std::mem::take(&mut self.open);
        rest.sort_by_key(|job| (job.sending[0].blob, job.sending[0].pair.index));
        rest
    }
}

/// What the archiving task did.
#[derive(Default)]
struct Archived {
    archived: usize,
    deleted: usize,
    /// Blobs that could not be archived or deleted, and why.
    errors: Vec<String>,
}

/// Archives (or deletes, or keeps) each blob that comes in: blobs whose
/// records are all done, by this run or earlier ones. One at a time, on a
/// task of its own: the run never waits for the storage.
async fn archive(source: Arc<Source>, on_success: OnSuccess, mut done: mpsc::UnboundedReceiver<Arc<str>>) -> Archived {
    let mut archived = Archived::default();
    while let Some(blob) = done.recv().await {
        let result = match on_success {
            OnSuccess::Keep => Ok(()),
            OnSuccess::Archive => source.archive(&blob).await.map(|()| archived.archived += 1),
            OnSuccess::Delete => source.delete(&blob).await.map(|()| archived.deleted += 1),
        };
        if let Err(e) = result {
            archived.errors.push(format!("{blob}: {e:#}"));
        }
    }
    archived
}

/// The CPU time (user + system) every thread of this process has used so
/// far, from `/proc/self/stat` (in clock ticks of 1/100 s: Linux's fixed
/// `USER_HZ`), as the benchmark reads a server's; `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (which may hold spaces, in parentheses): state
    // is field 3, utime and stime are fields 14 and 15.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let (user, system) = (fields.next()?.parse::<u64>().ok()?, fields.next()?.parse::<u64>().ok()?);
    Some((user + system) as f64 / 100.0)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::plan::Destinations;
    use crate::replay::read::{Selection, parse_records};

    /// `count` gridfn records for handler `h`, `attempts` delivery attempts
    /// each, with `padding` bytes of data, planned as a run plans them.
    fn items(count: usize, attempts: impl Fn(usize) -> u32, padding: usize) -> Vec<Item> {
        let records: Vec<String> = (0..count)
            .map(|i| {
                format!(
                    r#"{{"id":"e{i}","eventType":"T","subject":"s","topic":"/t","eventTime":"2026-01-01T00:00:00Z","data":{{"pad":"{}"}},"dataVersion":"1","deadLetterReason":"HandlerRejected","deliveryAttempts":{},"gridfnHandler":"h"}}"#,
                    "x".repeat(padding),
                    attempts(i)
                )
            })
            .collect();
        let name = "S/2026/1/1/0/b.json";
        let blob = format!("[{}]", records.join(","));
        let selection = Selection::default();
        let destinations = Destinations::Handlers(["h".to_owned()].into());
        let choice = Choice {
            selection: &selection,
            handlers: &[],
            subscriptions: &HashMap::new(),
            destinations: &destinations,
            max_replays: 5,
            limit: None,
        };
        let ledger = Ledger::read_only(std::path::Path::new("/nonexistent/ledger.jsonl"), &[]).unwrap();
        let mut plan = Plan::new(vec![name.into()]);
        let items = plan.add_blob(name, parse_records(name, Some("S"), blob.as_bytes()), &choice, &ledger);
        assert_eq!(items.len(), count);
        assert!(items.iter().all(|item| matches!(item.action, Action::Replay)));
        items
    }

    /// Every item through a [`Batcher`], as a run adds them.
    fn batches(items: Vec<Item>, pace: &Pace) -> Vec<Job> {
        let mut batcher = Batcher::new(pace);
        let mut out = Vec::new();
        for item in items {
            out.extend(batcher.add(item));
        }
        out.extend(batcher.flush());
        out
    }

    fn pace(batch: usize, bounded_bytes: bool) -> Pace {
        Pace { batch, concurrency: 1, rate: None, bounded_bytes }
    }

    #[test]
    fn batches_hold_one_attempt_count_and_at_most_batch_events() {
        let attempts = |i: usize| if i.is_multiple_of(2) { 1 } else { 7 };
        let jobs = batches(items(250, attempts, 0), &pace(100, false));
        assert_eq!(jobs.iter().map(|j| j.batch.events.len()).sum::<usize>(), 250);
        assert!(jobs.iter().all(|j| j.batch.events.len() <= 100 && j.sending.len() == j.batch.events.len()));
        for Job { batch, sending } in &jobs {
            let counts: Vec<u32> = sending.iter().map(|event| attempts(event.pair.index)).collect();
            assert!(counts.iter().all(|a| *a == batch.attempt), "{counts:?} in a batch for attempt {}", batch.attempt);
            for (event, sent) in batch.events.iter().zip(sending) {
                assert_eq!(event.id, format!("e{}", sent.pair.index), "an event and its ledger key stay together");
                assert_eq!(sent.attempts, 1, "the first replay of each");
            }
        }
        assert_eq!(jobs.len(), 4, "125 events per attempt count: 100 + 25 each");
    }

    #[test]
    fn http_batches_stay_under_one_mebibyte() {
        let jobs = batches(items(40, |_| 1, 100_000), &pace(100, true));
        assert!(jobs.len() >= 4, "{} batches of 100 kB events", jobs.len());
        let sizes: Vec<usize> = jobs.iter().map(|j| j.batch.bytes).collect();
        assert!(sizes.iter().all(|bytes| *bytes <= MAX_BODY), "{sizes:?}");
        assert_eq!(jobs.iter().map(|j| j.batch.events.len()).sum::<usize>(), 40);
    }
}
