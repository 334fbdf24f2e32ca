//! The replay ledger: what each replay of a source did per (blob, record,
//! destination), so the same command run again does only what is left, and a
//! replay cut off (Ctrl-C, `kill -9`) resumes where it was.
//!
//! A JSON-lines file, last line per key wins. During a replay it is written
//! once per group of finished batches, so a killed replay (Ctrl-C, `kill -9`)
//! loses nothing, and synced (`fdatasync`) at most every [`SYNC_EVERY`] and
//! at the end, so its syncs do not queue behind (or hold up) the dedup
//! store's on the same disk: a machine that crashes can lose the last
//! second's lines, whose pairs the next run sends again and dedup, which
//! synced them before, answers as duplicates. Chosen over an fjall database:
//! the ledger is written a few hundred times a run and read once, a user can
//! read or `grep` it, it needs no second lock beside the replay's own, and a
//! crash can only tear the last line, which reading drops (the batch it
//! described runs again, and dedup makes that run a duplicate).
//!
//! A lock file beside it ([`LedgerLock`]) keeps two replays of one source from
//! running at once; the operating system releases it when the process dies,
//! however it dies.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::plan::Names;
use crate::pipeline::ReplayOutcome;

/// How often a replay's ledger is synced to disk, at most (it is written
/// as batches finish, and synced at the end).
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One record's replay to one destination: the ledger's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pair {
    /// Shared by the pairs of one blob (a plan holds a pair per record).
    pub blob: Arc<str>,
    pub index: usize,
    /// The handler (in-process, or substituted into `--to`), or `*` for a
    /// `--to` endpoint that takes every event; shared like `blob`.
    pub destination: Arc<str>,
}

/// What a replay of one pair came to, as [`Ledger::append`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub pair: Pair,
    /// Replays that ran (this one included); `--max-replays` bounds it.
    pub attempts: u32,
    pub outcome: ReplayOutcome,
    /// When this replay finished (RFC 3339, UTC).
    pub at: String,
}

/// What the replays of one pair came to so far, as the ledger keeps it in
/// memory (its key is the [`Pair`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Replays that ran; `--max-replays` bounds it.
    pub attempts: u32,
    pub outcome: ReplayOutcome,
    /// When the last one finished (RFC 3339, UTC); shared by the pairs of
    /// one batch.
    pub at: Arc<str>,
}

impl Recorded {
    /// Succeeded now or before (or the handler's filter does not want it):
    /// nothing more to do for this pair.
    pub fn is_done(&self) -> bool {
        is_done(self.outcome)
    }
}

/// A ledger line as read ([`Lines`] writes it): borrowed from the line
/// where it can be, every member by name (a flattened `pair` would make
/// serde buffer the line member by member).
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    blob: Cow<'a, str>,
    index: usize,
    #[serde(borrow)]
    destination: Cow<'a, str>,
    attempts: u32,
    outcome: ReplayOutcome,
    #[serde(borrow)]
    at: Cow<'a, str>,
}

/// Whether a pair with this outcome needs no further replay.
pub fn is_done(outcome: ReplayOutcome) -> bool {
    matches!(outcome, ReplayOutcome::Succeeded | ReplayOutcome::Duplicate | ReplayOutcome::Unmatched)
}

/// The ledger of one source, read into memory, appended to as batches finish.
pub struct Ledger {
    path: PathBuf,
    entries: HashMap<Pair, Recorded>,
    /// `None` for a dry run: it reads, never writes.
    file: Option<File>,
}

impl Ledger {
    /// Reads the ledger at `path` (none yet is an empty ledger) without
    /// creating or changing anything: for `--dry-run`. Only the entries of
    /// `blobs` (those the source lists now) are kept.
    pub fn read_only(path: &Path, blobs: &[String]) -> anyhow::Result<Ledger> {
        let entries = match File::open(path) {
            Ok(file) => read_entries(file, path, blobs)?.0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => anyhow::bail!("cannot read the replay ledger {}: {e}", path.display()),
        };
        Ok(Ledger { path: path.to_owned(), entries, file: None })
    }

    /// Opens (or creates) the ledger for appending; a torn last line, left by
    /// a crash mid-write, is cut off first. Only the entries of `blobs` (those
    /// the source lists now) are kept in memory: a blob archived by an
    /// earlier run, or outside this run's window, is not read again, so a
    /// long ledger costs this run only what is still to do.
    pub fn open(path: &Path, blobs: &[String]) -> anyhow::Result<Ledger> {
        let shown = path.display();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("cannot open the replay ledger {shown}: {e}"))?;
        let (entries, good_len) = read_entries(file.try_clone()?, path, blobs)?;
        if good_len < file.metadata()?.len() {
            file.set_len(good_len)?;
            file.sync_data()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok(Ledger { path: path.to_owned(), entries, file: Some(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, pair: &Pair) -> Option<&Recorded> {
        self.entries.get(pair)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends `entries` and syncs them to disk: once this returns Ok, they
    /// survive a crash.
    pub fn append(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        let Some(file) = &mut self.file else { anyhow::bail!("the ledger was opened read-only") };
        let mut lines = Lines::with_capacity(entries.len());
        for entry in &entries {
            lines.push(&entry.pair, entry.attempts, entry.outcome, &entry.at);
        }
        lines.write_to(file, &self.path)?;
        file.sync_data().map_err(|e| anyhow::anyhow!("cannot sync the replay ledger {}: {e}", self.path.display()))?;
        for Entry { pair, attempts, outcome, at } in entries {
            self.entries.insert(pair, Recorded { attempts, outcome, at: at.into() });
        }
        Ok(())
    }

    /// Hands the appending over to a [`LedgerAppender`] (a replay's writer
    /// thread); this ledger keeps the entries it read, as they were before
    /// the run, and appends nothing more itself.
    pub fn appender(&mut self) -> anyhow::Result<LedgerAppender> {
        let Some(file) = self.file.take() else { anyhow::bail!("the ledger was opened read-only") };
        Ok(LedgerAppender { path: self.path.clone(), file, synced: std::time::Instant::now(), syncing: None })
    }
}

/// The appending side of a [`Ledger`], for a run that records its finished
/// batches as it goes: each append is one `write` (microseconds, into the
/// page cache), and the sync to disk runs on a thread of its own, so the run
/// never waits for the disk.
pub struct LedgerAppender {
    path: PathBuf,
    file: File,
    /// When the last sync started.
    synced: std::time::Instant,
    /// The sync running now, if any.
    syncing: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl LedgerAppender {
    /// Appends what became of a batch that just finished: per pair (with
    /// the replays run, this one included) its outcome, all at `at`. Once
    /// this returns Ok the lines survive the process being killed. A sync to
    /// disk starts if the last one started [`SYNC_EVERY`] ago and has
    /// finished; [`LedgerAppender::finish`] syncs the rest.
    pub fn append<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a Pair, u32)>,
        outcomes: &[ReplayOutcome],
        at: &'a str,
    ) -> anyhow::Result<()> {
        let mut lines = Lines::with_capacity(outcomes.len());
        for ((pair, attempts), outcome) in pairs.into_iter().zip(outcomes) {
            lines.push(pair, attempts, *outcome, at);
        }
        lines.write_to(&mut self.file, &self.path)?;
        self.sync_now_and_then()
    }

    /// Starts a sync to disk if the last one started [`SYNC_EVERY`] ago and
    /// has finished.
    fn sync_now_and_then(&mut self) -> anyhow::Result<()> {
        if self.synced.elapsed() >= SYNC_EVERY && self.syncing.as_ref().is_none_or(|s| s.is_finished()) {
            self.wait_for_sync()?;
            let file = self.file.try_clone()?;
            self.synced = std::time::Instant::now();
            self.syncing = Some(std::thread::spawn(move || file.sync_data()));
        }
        Ok(())
    }

    /// Syncs everything appended to disk.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.wait_for_sync()?;
        self.file.sync_data().map_err(|e| self.sync_failed(e))
    }

    fn wait_for_sync(&mut self) -> anyhow::Result<()> {
        match self.syncing.take().map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(self.sync_failed(e)),
            Some(Err(_)) => anyhow::bail!("syncing the replay ledger {} panicked", self.path.display()),
        }
    }

    fn sync_failed(&self, e: std::io::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot sync the replay ledger {}: {e}", self.path.display())
    }
}

/// Ledger lines, each an [`Entry`] as JSON (`{"blob":…,"index":…,
/// "destination":…,"attempts":…,"outcome":…,"at":…}`, read back by serde),
/// written here rather than by serde: a line is written per replayed event,
/// and serde would escape its six keys and four strings every time, where
/// the lines of a batch share their blob, destination and time, escaped
/// once here.
struct Lines<'a> {
    text: Vec<u8>,
    /// The last blob, destination and time written, escaped.
    blob: Option<(&'a str, Vec<u8>)>,
    destination: Option<(&'a str, Vec<u8>)>,
    at: Option<(&'a str, Vec<u8>)>,
}

impl<'a> Lines<'a> {
    fn with_capacity(lines: usize) -> Lines<'a> {
        Lines { text: Vec::with_capacity(lines * 160), blob: None, destination: None, at: None }
    }

    fn push(&mut self, pair: &'a Pair, attempts: u32, outcome: ReplayOutcome, at: &'a str) {
        let mut number = itoa::Buffer::new();
        let text = &mut self.text;
        text.extend_from_slice(b"{\"blob\":");
        text.extend_from_slice(escaped(&mut self.blob, &pair.blob));
        text.extend_from_slice(b",\"index\":");
        text.extend_from_slice(number.format(pair.index).as_bytes());
        text.extend_from_slice(b",\"destination\":");
        text.extend_from_slice(escaped(&mut self.destination, &pair.destination));
        text.extend_from_slice(b",\"attempts\":");
        text.extend_from_slice(number.format(attempts).as_bytes());
        text.extend_from_slice(b",\"outcome\":\"");
        text.extend_from_slice(outcome.as_str().as_bytes());
        text.extend_from_slice(b"\",\"at\":");
        text.extend_from_slice(escaped(&mut self.at, at));
        text.extend_from_slice(b"}\n");
    }

    /// Every line pushed, in one write.
    fn write_to(self, file: &mut File, path: &Path) -> anyhow::Result<()> {
        if self.text.is_empty() {
            return Ok(());
        }
        file.write_all(&self.text).map_err(|e| {
            anyhow::anyhow!("cannot write the replay ledger {}: {e} (the next run redoes this batch)", path.display())
        })
    }
}

/// `text` as a JSON string, escaped again only when it differs from the last.
fn escaped<'a, 'c>(last: &'c mut Option<(&'a str, Vec<u8>)>, text: &'a str) -> &'c [u8] {
    if last.as_ref().is_none_or(|(was, _)| *was != text) {
        *last = Some((text, serde_json::to_vec(text).expect("a string serialises")));
    }
    &last.as_ref().expect("set above").1
}

/// Every entry in `file` (the last per pair), and the length of the part
/// made of whole, readable lines.
fn read_entries(file: File, path: &Path, blobs: &[String]) -> anyhow::Result<(HashMap<Pair, Recorded>, u64)> {
    let wanted: HashSet<&str> = blobs.iter().map(String::as_str).collect();
    let mut entries = HashMap::new();
    // Lines share their blob, destination and time with their neighbours:
    // one copy of each in memory (a million entries take ~280 MB with the
    // hash table's room to grow; a copy per line took 512 MB).
    let mut names = Names::default();
    let mut good_len = 0u64;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| anyhow::anyhow!("cannot read the replay ledger {}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        // Only the last line can be torn (appends are sequential); a line
        // without its newline, or that does not parse, ends the ledger.
        let Some(text) = line.strip_suffix('\n') else { break };
        let Ok(entry) = serde_json::from_str::<Line>(text) else {
            tracing::warn!("{}: dropping an unreadable line and what follows it", path.display());
            break;
        };
        good_len += read as u64;
        if wanted.contains(&*entry.blob) {
            let pair = Pair {
                blob: names.intern(&entry.blob),
                index: entry.index,
                destination: names.intern(&entry.destination),
            };
            let recorded = Recorded { attempts: entry.attempts, outcome: entry.outcome, at: names.intern(&entry.at) };
            entries.insert(pair, recorded);
        }
    }
    Ok((entries, good_len))
}

/// Held while a replay of one source runs; the OS lets go when the process
/// ends, so a killed replay never leaves a stale lock.
pub struct LedgerLock {
    _file: File,
}

impl LedgerLock {
    /// Takes the lock beside `ledger`, or says who holds it.
    pub fn acquire(ledger: &Path) -> anyhow::Result<LedgerLock> {
        let path = ledger.with_extension("lock");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open the replay lock {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let holder = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
                anyhow::bail!(
                    "another `gridfn replay` of this source is running{holder}: two replays at once could run an event twice; wait for it to finish or stop it (lock: {})",
                    path.display()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => anyhow::bail!("cannot lock {}: {e}", path.display()),
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        Ok(LedgerLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every outcome: each is written by hand ([`ReplayOutcome::as_str`]) and read back by serde.
    const ALL_OUTCOMES: [ReplayOutcome; 5] = [
        ReplayOutcome::Succeeded,
        ReplayOutcome::Failed,
        ReplayOutcome::Rejected,
        ReplayOutcome::Duplicate,
        ReplayOutcome::Unmatched,
    ];

    const BLOB: &str = "SUB/2024/1/2/3/a.json";

    /// The blobs a test's source lists.
    fn listed(blobs: &[&str]) -> Vec<String> {
        blobs.iter().map(|b| (*b).to_owned()).collect()
    }

    fn entry(index: usize, outcome: ReplayOutcome) -> Entry {
        let pair = Pair { blob: BLOB.into(), index, destination: "h".into() };
        Entry { pair, attempts: 1, outcome, at: "2026-11-30T03:00:00Z".into() }
    }

    #[test]
    fn entries_survive_reopening_and_the_last_one_per_pair_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let mut ledger = Ledger::open(&path, &listed(&[BLOB])).unwrap();
        ledger.append(vec![entry(0, ReplayOutcome::Failed), entry(1, ReplayOutcome::Succeeded)]).unwrap();
        ledger.append(vec![Entry { attempts: 2, ..entry(0, ReplayOutcome::Duplicate) }]).unwrap();
        drop(ledger);
        let ledger = Ledger::open(&path, &listed(&[BLOB])).unwrap();
        assert_eq!(ledger.len(), 2);
        let first = ledger.get(&entry(0, ReplayOutcome::Failed).pair).unwrap();
        assert_eq!((first.attempts, first.outcome), (2, ReplayOutcome::Duplicate));
        let elsewhere = Ledger::read_only(&path, &listed(&["SUB/2024/1/2/3/other.json"])).unwrap();
        assert!(elsewhere.is_empty(), "a blob not listed (archived, or outside the window) is not kept");
    }

    /// The appender's hand-written lines read back as the entries they
    /// describe, whatever the names hold, and as the blob and destination
    /// change from one line to the next.
    #[test]
    fn appended_lines_read_back_as_their_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let mut ledger = Ledger::open(&path, &listed(&[BLOB])).unwrap();
        let mut appender = ledger.appender().unwrap();
        let names = ["S/2026/1/1/0/a.json", "S/2026/1/1/0/\"quoted\" \\ é 😀.json", "S/2026/1/1/0/b.json"];
        let pairs: Vec<(Pair, u32)> = (0..9)
            .map(|i| {
                let pair = Pair { blob: names[i / 3].into(), index: i, destination: ["h", "h\tx"][i % 2].into() };
                (pair, i as u32 + 1)
            })
            .collect();
        let outcomes: Vec<ReplayOutcome> = (0..9).map(|i| ALL_OUTCOMES[i % ALL_OUTCOMES.len()]).collect();
        appender
            .append(pairs[..5].iter().map(|(p, a)| (p, *a)), &outcomes[..5], "2026-12-01T04:00:00.000001Z")
            .unwrap();
        appender.append(pairs[5..].iter().map(|(p, a)| (p, *a)), &outcomes[5..], "2026-12-01T04:00:01Z").unwrap();
        appender.finish().unwrap();
        let read = Ledger::read_only(&path, &listed(&names)).unwrap();
        assert_eq!(read.len(), 9);
        for (i, ((pair, attempts), outcome)) in pairs.iter().zip(&outcomes).enumerate() {
            let at = if i < 5 { "2026-12-01T04:00:00.000001Z" } else { "2026-12-01T04:00:01Z" };
            let expected = Recorded { attempts: *attempts, outcome: *outcome, at: at.into() };
            assert_eq!(read.get(pair), Some(&expected));
        }
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_cut_off_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        Ledger::open(&path, &listed(&[BLOB])).unwrap().append(vec![entry(0, ReplayOutcome::Succeeded)]).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"blob":"SUB/2024/1/2/3/a.json","ind"#);
        std::fs::write(&path, &torn).unwrap();

        assert_eq!(Ledger::read_only(&path, &listed(&[BLOB])).unwrap().len(), 1, "the torn line is not an entry");
        let mut ledger = Ledger::open(&path, &listed(&[BLOB])).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), whole, "opening cuts the torn line");
        ledger.append(vec![entry(1, ReplayOutcome::Rejected)]).unwrap();
        assert_eq!(Ledger::read_only(&path, &listed(&[BLOB])).unwrap().len(), 2);
    }

    #[test]
    fn a_dry_run_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay").join("l.jsonl");
        assert!(Ledger::read_only(&path, &listed(&[BLOB])).unwrap().is_empty());
        assert!(!dir.path().join("replay").exists());
    }

    #[test]
    fn a_second_lock_on_one_ledger_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let first = LedgerLock::acquire(&path).unwrap();
        let error = LedgerLock::acquire(&path).err().expect("second lock refused").to_string();
        assert!(error.contains("another `gridfn replay` of this source is running"), "{error}");
        assert!(error.contains(&format!("pid {}", std::process::id())), "{error}");
        drop(first);
        LedgerLock::acquire(&path).unwrap();
    }
}
