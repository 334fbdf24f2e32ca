//! `gridfn replay` through the real binary: the dead-letter vectors and a
//! generated set of 10,000 events, from a folder and from Azurite, into the
//! handlers in-process and into a running gridfn over HTTP.
//!
//! What the handler did is read from its own log lines (the `scripted`
//! fixture logs `scripted ran <id> … replay=<bool>` on every run).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::replay_data::{Spec, generate};
use crate::support::{Gridfn, KEY, component, event, vector};

/// The vectors' seven events, by id.
const VECTOR_IDS: [&str; 7] = [
    "3b2a1c0d-9e8f-4a7b-b6c5-d4e3f2a1b0c9",
    "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
    "caee971c-3ca0-4254-8f99-1395b394588e",
    "93902694-901e-008f-6f95-7153a806873c",
    "7d3b1c5e-2f4a-4b6c-8d9e-0a1b2c3d4e01",
    "7d3b1c5e-2f4a-4b6c-8d9e-0a1b2c3d4e02",
    "c1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f",
];

/// A folder with a manifest (handler `scripted`), its state, and a source.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(server: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let manifest = format!(
            "[server]\nkeys = [\"{KEY}\"]\nstate_dir = {:?}\ncache_dir = {:?}\n{server}\n\n[[handler]]\nname = \"scripted\"\nmodule = {:?}\n",
            dir.path().join("state"),
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("gridfn-e2e-cache"),
            component("scripted"),
        );
        std::fs::write(dir.path().join("gridfn.toml"), manifest).unwrap();
        Setup { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gridfn.toml")
    }

    /// A copy of the dead-letter vectors, as a source folder.
    fn vectors(&self) -> PathBuf {
        let source = self.dir.path().join("deadletter");
        copy_tree(&vector("deadletter"), &source);
        std::fs::remove_file(source.join("index.json")).unwrap();
        source
    }

    fn replay(&self, args: &[&str]) -> Replayed {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gridfn"));
        command.arg("replay").args(args).arg("--config").arg(self.config());
        Replayed::from(command.env("RUST_LOG", "info").stdin(Stdio::null()).output().unwrap())
    }
}

/// What one `gridfn replay` printed and how it ended.
struct Replayed {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Replayed {
    fn from(output: Output) -> Self {
        Replayed {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Replayed {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", self.stdout, self.stderr))
    }

    fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
}

/// Handler runs per event id in log text, and whether each run was a replay.
fn runs(log: &str) -> HashMap<String, Vec<bool>> {
    let mut runs: HashMap<String, Vec<bool>> = HashMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("scripted ran ").nth(1) else { continue };
        let id = rest.split_whitespace().next().unwrap().to_owned();
        runs.entry(id).or_default().push(rest.contains("replay=true"));
    }
    runs
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `root`, relative, with its bytes.
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The vectors: a dry run touches nothing and says why Event Grid records
/// need --handler; the replay runs each event once, as a replay, and
/// archives the blobs; the same command again does nothing and says so.
#[test]
fn the_vectors_replay_once_in_process_and_a_second_run_does_nothing() {
    let setup = Setup::new("");
    let source = setup.vectors();
    let before = tree(&source);
    let source_arg = source.to_str().unwrap();

    let dry = setup.replay(&[source_arg, "--dry-run", "--json"]).expect(0).json();
    let rows = dry["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    for row in rows {
        assert_eq!(row["action"], "skip", "{row}");
        assert!(row["why"].as_str().unwrap().contains("pass --handler"), "{row}");
    }
    // Each row carries what its record says of the failure, to decide on
    // (Event Grid's records have no description; gridfn's do).
    let telemetry = rows.iter().find(|row| row["id"] == "c1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f").unwrap();
    for (name, said) in [
        ("reason", json!("TimeToLiveExceeded")),
        ("outcome", json!("Busy")),
        ("http_status", json!(503)),
        ("delivery_attempts", json!(9)),
        ("publish_time", json!("2023-12-30T23:40:00.100Z")),
        ("last_attempt_time", json!("2023-12-31T00:05:12.345678900Z")),
        ("description", Value::Null),
    ] {
        assert_eq!(telemetry[name], said, "{name}: {telemetry}");
    }
    let dry = setup.replay(&[source_arg, "--handler", "scripted", "--dry-run", "--json"]).expect(0).json();
    let replays: Vec<&str> = dry["rows"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(replays.len(), 7);
    assert!(dry["rows"].as_array().unwrap().iter().all(|r| r["action"] == "replay" && r["destination"] == "scripted"));
    let selected = setup
        .replay(&[source_arg, "--handler", "scripted", "--reason", "TimeToLiveExceeded", "--dry-run", "--json"])
        .expect(0)
        .json();
    let selected: Vec<&Value> =
        selected["rows"].as_array().unwrap().iter().filter(|r| r["action"] == "replay").collect();
    assert_eq!(selected.len(), 2, "{selected:?}");
    assert_eq!(tree(&source), before, "a dry run changes no blob");
    assert!(!setup.dir.path().join("state").exists(), "a dry run writes no ledger, opens no store");

    let first = setup.replay(&[source_arg, "--handler", "scripted"]).expect(0);
    assert!(first.stdout.contains("archived 5 blobs under replayed/"), "{}", first.stdout);
    let ran = runs(&first.stderr);
    for id in VECTOR_IDS {
        assert_eq!(ran.get(id), Some(&vec![true]), "{id} ran once, as a replay:\n{}", first.stderr);
    }
    let after = tree(&source);
    assert!(after.keys().all(|name| name.starts_with("replayed/")), "{:?}", after.keys());
    assert_eq!(after.len(), before.len());
    assert!(before.iter().all(|(name, body)| after.get(&format!("replayed/{name}")) == Some(body)));

    let second = setup.replay(&[source_arg, "--handler", "scripted"]).expect(0);
    assert!(second.stdout.contains("nothing to do"), "{}", second.stdout);
    assert!(runs(&second.stderr).is_empty(), "no handler ran: {}", second.stderr);
}

/// With `--on-success keep` the blobs stay; the ledger alone keeps the
/// second run from doing anything.
#[test]
fn kept_blobs_are_not_replayed_twice() {
    let setup = Setup::new("");
    let source = setup.vectors();
    let source_arg = source.to_str().unwrap();
    let args = [source_arg, "--handler", "scripted", "--on-success", "keep", "--json"];
    let first = setup.replay(&args).expect(0);
    assert_eq!(first.json()["total"]["succeeded"], 7);
    let second = setup.replay(&args).expect(0);
    assert_eq!(second.json()["total"]["replayed"], 0);
    assert_eq!(second.json()["total"]["already_done"], 7);
    assert!(runs(&second.stderr).is_empty(), "{}", second.stderr);
    assert!(!source.join("replayed").exists());
}

/// Handler runs per (handler, event id) in log text.
fn runs_per_handler(log: &str) -> HashMap<(String, String), usize> {
    let mut runs = HashMap::new();
    for line in log.lines() {
        let Some(rest) = line.split("scripted ran ").nth(1) else { continue };
        let id = rest.split_whitespace().next().unwrap().to_owned();
        let handler = line.split("handler=\"").nth(1).and_then(|h| h.split('"').next()).unwrap().to_owned();
        *runs.entry((handler, id)).or_default() += 1;
    }
    runs
}

/// The manifest says which handlers each subscription's endpoint served:
/// Event Grid records of a listed subscription go there (to every handler
/// that lists it) without `--handler`, the dry run says the manifest chose,
/// records of other subscriptions are skipped (never broadcast), and
/// `--handler` still wins over the manifest.
#[test]
fn the_manifest_maps_subscriptions_to_the_handlers_they_served() {
    let setup = Setup::new("");
    // The file ends in the `scripted` handler's table; the case of the names does not matter.
    let mut manifest = std::fs::read_to_string(setup.config()).unwrap();
    manifest.push_str(&format!(
        "subscriptions = [\"orders-webhook-sub\", \"CE-Orders-Sub\", \"TELEMETRY-SUB\"]\n\n\
         [[handler]]\nname = \"mirror\"\nmodule = {:?}\nsubscriptions = [\"telemetry-sub\"]\n",
        component("scripted")
    ));
    std::fs::write(setup.config(), manifest).unwrap();
    let source = setup.vectors();
    let source_arg = source.to_str().unwrap();
    let subscription = |row: &Value| row["blob"].as_str().unwrap().split('/').next().unwrap().to_owned();

    let dry = setup.replay(&[source_arg, "--dry-run", "--json"]).expect(0).json();
    let rows = dry["rows"].as_array().unwrap();
    let mut expected_runs = HashMap::new();
    for row in rows {
        let (destination, action, via) = (row["destination"].as_str().unwrap(), &row["action"], &row["via"]);
        match subscription(row).as_str() {
            "ORDERS-WEBHOOK-SUB" | "CE-ORDERS-SUB" | "TELEMETRY-SUB" => {
                assert!(action == "replay" && via == "manifest", "{row}");
                assert!(destination == "scripted" || subscription(row) == "TELEMETRY-SUB", "{row}");
                expected_runs.insert((destination.to_owned(), row["id"].as_str().unwrap().to_owned()), 1);
            }
            _ => {
                assert_eq!(action, "skip", "{row}");
                assert!(row["why"].as_str().unwrap().contains("`subscriptions` in the manifest"), "{row}");
            }
        }
    }
    let telemetry: Vec<&Value> = rows.iter().filter(|r| subscription(r) == "TELEMETRY-SUB").collect();
    let mut to: Vec<&str> = telemetry.iter().map(|r| r["destination"].as_str().unwrap()).collect();
    to.sort();
    assert_eq!(to, ["mirror", "scripted"], "a subscription two handlers list goes to both");
    assert!(rows.iter().any(|r| r["action"] == "skip"), "some vectors' subscriptions are not listed");
    let table = setup.replay(&[source_arg, "--dry-run"]).expect(0);
    assert!(table.stdout.contains("scripted (manifest subscriptions)"), "{}", table.stdout);
    // The table's OUTCOME column follows REASON: the last delivery's outcome.
    let telemetry_line =
        table.stdout.lines().find(|line| line.contains("c1e2d3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f")).unwrap();
    let words: Vec<&str> = telemetry_line.split_whitespace().collect();
    assert!(words.windows(2).any(|w| w == ["TimeToLiveExceeded", "Busy"]), "{}", table.stdout);

    // --handler wins: every Event Grid record goes to mirror only.
    let flagged = setup.replay(&[source_arg, "--handler", "mirror", "--dry-run", "--json"]).expect(0).json();
    assert!(
        flagged["rows"].as_array().unwrap().iter().all(|r| r["destination"] == "mirror" && r["via"] == "handler_flag"),
        "{flagged}"
    );

    let replayed = setup.replay(&[source_arg, "--json"]).expect(0);
    assert_eq!(replayed.json()["total"]["succeeded"].as_u64().unwrap() as usize, expected_runs.len());
    assert_eq!(runs_per_handler(&replayed.stderr), expected_runs, "{}", replayed.stderr);
}

/// 10,000 generated events: selection by type and time, then a replay cut
/// off with `kill -9` and resumed: every event succeeds, and no event the
/// first run had recorded as done runs again.
#[test]
fn ten_thousand_events_survive_kill_9_and_resume() {
    let setup = Setup::new("");
    let spec = Spec { handler: "scripted".into(), ..Spec::default() };
    let generated = generate(&spec);
    let source = setup.dir.path().join("generated");
    generated.write_to(&source).unwrap();
    let source_arg = source.to_str().unwrap();
    let valid: Vec<_> = generated.valid().collect();
    assert!(valid.len() >= 10_000);

    // Selection: one event type, published inside one day.
    let (since, until) = ("2026-01-11T00:00:00Z", "2026-01-12T00:00:00Z");
    let dry = setup
        .replay(&[
            source_arg,
            "--handler",
            "scripted",
            "--type",
            "Contoso.Orders.Created",
            "--since",
            since,
            "--until",
            until,
            "--dry-run",
            "--json",
        ])
        .expect(0)
        .json();
    let chosen: std::collections::BTreeSet<&str> = dry["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "replay")
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let time = |text: &str| text.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let (since_t, until_t) = (time(since), time(until));
    let expected: std::collections::BTreeSet<&str> = valid
        .iter()
        .filter(|r| r.event_type == "Contoso.Orders.Created" && r.publish_time >= since_t && r.publish_time < until_t)
        .map(|r| r.id.as_str())
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(chosen, expected);
    // Every invalid record (and the unreadable blob) is reported, with its place.
    let all = setup.replay(&[source_arg, "--handler", "scripted", "--dry-run", "--json"]).expect(0).json();
    let invalid = all["summary"]["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), generated.records().filter(|r| !r.valid).count() + 1);
    assert!(invalid.iter().any(|bad| bad["blob"] == generated.unreadable.as_str()));

    // A replay killed mid-way.
    let ledger_dir = setup.dir.path().join("state/replay");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gridfn"))
        .args(["replay", source_arg, "--handler", "scripted", "--rate", "4000", "--json", "--config"])
        .arg(setup.config())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes: a full pipe would stall the replay's logging.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let started = Instant::now();
    let ledger_lines = || -> usize {
        std::fs::read_dir(&ledger_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().lines().count())
            .sum()
    };
    while ledger_lines() < 2_000 {
        assert!(started.elapsed() < Duration::from_secs(120), "the replay made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first_log = reader.join().unwrap();
    let ledger_path = std::fs::read_dir(&ledger_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap();
    let done_before: Vec<(String, usize)> = std::fs::read_to_string(&ledger_path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["outcome"] == "succeeded")
        .map(|e| (e["blob"].as_str().unwrap().to_owned(), e["index"].as_u64().unwrap() as usize))
        .collect();
    assert!(done_before.len() >= 2_000 && done_before.len() < valid.len(), "killed mid-way: {}", done_before.len());
    // Each blob was archived as soon as its records were all done: the killed
    // run leaves in place only what is still to do, and those records are in
    // its ledger as done.
    let archived_before: Vec<String> =
        tree(&source).into_keys().filter_map(|name| name.strip_prefix("replayed/").map(str::to_owned)).collect();
    assert!(!archived_before.is_empty(), "no blob was archived as it was done");
    let records_archived: usize = archived_before
        .iter()
        .map(|name| {
            let blob = generated.blobs.iter().find(|b| &b.name == name).unwrap();
            let index = |i: usize| (blob.name.clone(), i);
            assert!((0..blob.records.len()).all(|i| done_before.contains(&index(i))), "{name} archived before done");
            blob.records.len()
        })
        .sum();

    let resumed = setup.replay(&[source_arg, "--handler", "scripted", "--json"]);
    let summary = resumed.json();
    assert_eq!(summary["total"]["failed_again"], 0, "{summary}");
    // The resumed run does not read the archived blobs (nor their ledger entries).
    let already_done = summary["total"]["already_done"].as_u64().unwrap() as usize;
    assert_eq!(already_done + records_archived, done_before.len());

    let (first, second) = (runs(&first_log), runs(&resumed.stderr));
    let by_place: HashMap<(&str, usize), &str> =
        valid.iter().map(|r| ((r.blob.as_str(), r.index), r.id.as_str())).collect();
    for (blob, index) in &done_before {
        let id = by_place[&(blob.as_str(), *index)];
        assert!(!second.contains_key(id), "{id} was done before the kill and ran again");
    }
    for record in &valid {
        let ran: usize = [&first, &second].iter().filter_map(|runs| runs.get(&record.id)).map(Vec::len).sum();
        assert!(ran >= 1, "{} never ran", record.id);
        assert!(first.get(&record.id).into_iter().chain(second.get(&record.id)).flatten().all(|replay| *replay));
    }
    // A batch holds its slot until the ledger has it, so at the kill at most
    // --concurrency x --batch events were sent and not in the ledger: only
    // those are sent again; those dedup had recorded come back as
    // duplicates, the others (handler ran, success not yet recorded) run twice.
    let twice = valid.iter().filter(|r| first.contains_key(&r.id) && second.contains_key(&r.id)).count();
    let duplicates = summary["total"]["duplicate"].as_u64().unwrap() as usize;
    assert!(twice + duplicates <= 4 * 100, "{twice} events ran in both runs, {duplicates} sent again as duplicates");
    let replayed_now =
        summary["total"]["succeeded"].as_u64().unwrap() + summary["total"]["duplicate"].as_u64().unwrap();
    assert_eq!(replayed_now as usize + done_before.len(), valid.len());

    // All done: the third run has nothing left but the invalid records' blobs.
    let third = setup.replay(&[source_arg, "--handler", "scripted", "--json"]).expect(0);
    assert_eq!(third.json()["total"]["replayed"], 0);
    assert!(runs(&third.stderr).is_empty());
    let left = tree(&source).into_keys().filter(|name| !name.starts_with("replayed/")).count();
    let with_invalid: std::collections::BTreeSet<&str> = generated
        .blobs
        .iter()
        .filter(|b| b.records.iter().any(|r| !r.valid) || b.records.is_empty())
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(left, with_invalid.len(), "only blobs holding an invalid record stay");
}

/// The embedded store belongs to the running gridfn: an in-process replay
/// says so and names the `--to` command, which then works; the handler sees
/// `replay = true`.
#[test]
fn a_running_gridfn_is_replayed_into_over_http() {
    let gridfn = Gridfn::start(&format!("[[handler]]\nname = \"scripted\"\nmodule = {:?}\n", component("scripted")));
    let setup = Setup::new("");
    let source = setup.vectors();
    let source_arg = source.to_str().unwrap();
    let mut refused = Command::new(env!("CARGO_BIN_EXE_gridfn"));
    refused
        .args(["replay", source_arg, "--handler", "scripted", "--config"])
        .arg(gridfn.dir.path().join("gridfn.toml"));
    let refused = Replayed::from(refused.output().unwrap()).expect(1);
    assert!(refused.stderr.contains("is locked: a gridfn is running"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--to 'http://"), "{}", refused.stderr);

    let url = format!("{}/api/events/{{handler}}", gridfn.base);
    let sent = setup.replay(&[source_arg, "--handler", "scripted", "--to", &url, "--key", KEY, "--json"]).expect(0);
    assert_eq!(sent.json()["total"]["succeeded"], 7, "{}", sent.stdout);
    let ran = runs(&gridfn.log_text());
    for id in VECTOR_IDS {
        assert_eq!(ran.get(id), Some(&vec![true]), "{id}: {}", gridfn.log_text());
    }
    // Without the key the endpoint refuses, and nothing is recorded as done.
    let setup = Setup::new("");
    let source = setup.vectors();
    let refused = setup.replay(&[source.to_str().unwrap(), "--handler", "scripted", "--to", &url, "--json"]).expect(2);
    assert_eq!(refused.json()["total"]["failed_again"], 7);
    assert!(refused.stdout.contains("401"), "{}", refused.stdout);
}

/// Event Grid's own layout in an Azure container (Azurite): replayed
/// in-process and archived under `replayed/` in the container.
#[test]
fn an_azure_container_is_replayed_and_archived() {
    let azurite = crate::support::azurite();
    const ACCOUNT_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let config: gridfn::deadletter::azure::AzureBlobConfig = toml::from_str(&format!(
        "container = \"dead\"\naccount = \"devstoreaccount1\"\naccess_key = \"{ACCOUNT_KEY}\"\nendpoint = \"{}\"\ncreate_container = true",
        azurite.url
    ))
    .unwrap();
    let store = gridfn::deadletter::azure::AzureBlobDeadLetter::new(&config).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let blobs = tree(&vector("deadletter"));
    runtime.block_on(async {
        store.ensure_container().await.unwrap();
        for (name, body) in &blobs {
            if name.ends_with(".json") && name != "index.json" {
                store.put(&format!("outage/{name}"), body.clone().into()).await.unwrap();
            }
        }
    });
    let setup = Setup::new("");
    let url = format!("{}/dead/outage", azurite.url);
    let dry =
        setup.replay(&[&url, "--account-key", ACCOUNT_KEY, "--handler", "scripted", "--dry-run", "--json"]).expect(0);
    assert_eq!(dry.json()["rows"].as_array().unwrap().iter().filter(|r| r["action"] == "replay").count(), 7);
    let done = setup.replay(&[&url, "--account-key", ACCOUNT_KEY, "--handler", "scripted"]).expect(0);
    let ran = runs(&done.stderr);
    assert!(VECTOR_IDS.iter().all(|id| ran.get(*id) == Some(&vec![true])), "{}", done.stderr);
    let left = runtime.block_on(store.list("outage")).unwrap();
    assert!(left.iter().all(|name| name.contains("replayed/")) && left.len() == 5, "{left:?}");
    let again = setup.replay(&[&url, "--account-key", ACCOUNT_KEY, "--handler", "scripted"]).expect(0);
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
}

/// Dedup holds across replays: an event gridfn dead-lettered runs again when
/// replayed (and only then: a plain redelivery stays a duplicate), without a
/// second dead-letter blob; an event that succeeded never runs again, even if
/// a dead-letter record of it turns up.
#[test]
fn a_rejected_event_runs_again_on_replay_and_a_succeeded_one_never() {
    let gridfn = Gridfn::start(&format!("[[handler]]\nname = \"scripted\"\nmodule = {:?}\n", component("scripted")));
    let ok = event("dedup-ok", json!({}));
    let bad = event("dedup-bad", json!({"act": "reject"}));
    let answer: Value =
        gridfn.notify("/api/events/scripted", serde_json::to_vec(&[&ok, &bad]).unwrap()).json().unwrap();
    assert_eq!((answer["succeeded"].as_u64(), answer["rejected"].as_u64()), (Some(1), Some(1)), "{answer}");

    // gridfn's own dead-letter blob of the rejected event, and a record of
    // the succeeded one beside it (as Event Grid writes when it gave up on
    // a delivery gridfn had in fact handled).
    let deadletter = gridfn.dir.path().join("state/deadletter");
    let blobs: Vec<String> = tree(&deadletter).into_keys().collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut record: Vec<Value> = serde_json::from_slice(&std::fs::read(deadletter.join(&blobs[0])).unwrap()).unwrap();
    record[0]["id"] = ok["id"].clone();
    record[0]["data"] = ok["data"].clone();
    let twin = deadletter.join(Path::new(&blobs[0]).with_file_name("00000000-0000-4000-8000-000000000000.json"));
    std::fs::write(&twin, serde_json::to_vec(&record).unwrap()).unwrap();

    let setup = Setup::new("");
    // The dry run shows what gridfn's record kept of the rejection: the handler's own words.
    let dry = setup.replay(&[deadletter.to_str().unwrap(), "--dry-run", "--json"]).expect(0).json();
    let rejected = dry["rows"].as_array().unwrap().iter().find(|row| row["id"] == "dedup-bad").unwrap();
    assert_eq!(rejected["description"], "scripted rejection", "{rejected}");
    assert_eq!(rejected["destination"], "scripted", "gridfn's records name their handler: {rejected}");

    let url = format!("{}/api/events/{{handler}}", gridfn.base);
    let replayed = setup.replay(&[deadletter.to_str().unwrap(), "--to", &url, "--key", KEY, "--json"]).expect(2);
    let total = &replayed.json()["total"];
    assert_eq!((total["duplicate"].as_u64(), total["rejected_again"].as_u64()), (Some(1), Some(1)), "{total}");

    let ran = runs(&gridfn.log_text());
    assert_eq!(ran["dedup-ok"], vec![false], "the success never ran again");
    assert_eq!(ran["dedup-bad"], vec![false, true], "the rejection ran again, as a replay");
    let left: Vec<String> = tree(&deadletter).into_keys().filter(|name| !name.starts_with("replayed/")).collect();
    assert_eq!(left, blobs, "the rejected-again record stays, and no second blob is written");

    // A plain redelivery of the rejected event is still a duplicate.
    let again: Value = gridfn.notify("/api/events/scripted", serde_json::to_vec(&[&bad]).unwrap()).json().unwrap();
    assert_eq!(again["duplicates"], 1, "{again}");
    assert_eq!(runs(&gridfn.log_text())["dedup-bad"].len(), 2);
}
