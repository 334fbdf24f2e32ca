//! `gridfn replay`: dead-lettered events put back through the handlers,
//! visibly, at a bounded rate, and without running anything twice.
//!
//! Top to bottom:
//! 1. [`read`]: the source's blobs (a folder in Event Grid's dead-letter
//!    layout, one blob, or an Azure container) and their records;
//! 2. [`plan`]: which records the selection wants, where each goes (only the
//!    handler it was dead-lettered from, or that the record's subscription
//!    served, never all), and what the [`ledger`] says earlier replays
//!    already did; a dry run reads every blob into a plan and stops here;
//! 3. [`run`]: each blob planned as it is read (later blobs read meanwhile),
//!    batches sent to the [`target`] (the manifest's handlers in this
//!    process, or a URL), each finished batch written to the ledger, blobs
//!    whose records are all done archived under `replayed/`;
//! 4. [`report`]: progress while it runs, the summary at the end.
//!
//! Dedup still decides whether a pair runs: a pair that succeeded before is
//! a duplicate; a pair gridfn rejected before runs again, because the
//! delivery says it is a replay.

pub mod ledger;
pub mod plan;
pub mod read;
pub mod report;
pub mod run;
pub mod target;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;

use crate::config::{DedupStore, Manifest};
use crate::host::Host;
use ledger::{Ledger, LedgerLock};
use plan::{Choice, Destinations, Plan};
use read::{Attributes, AzureAuth, Selection, Source};
use report::{DryRunRow, Progress, Summary};
use run::{OnSuccess, Pace, Starter};
use target::{HttpTarget, Target};

/// `gridfn replay SOURCE [options]`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The dead-lettered blobs: a folder in Event Grid's dead-letter layout
    /// (`…/<SUBSCRIPTION>/<y>/<m>/<d>/<h>/<guid>.json`), one blob file, or an
    /// Azure Blob container URL (optionally with a prefix and a SAS query).
    pub source: String,
    /// The manifest: its handlers are the in-process target, and its
    /// `state_dir` keeps the replay ledger.
    #[arg(long, short, default_value = "gridfn.toml")]
    pub config: PathBuf,

    /// Azure source: a storage connection string.
    #[arg(long, env = "AZURE_STORAGE_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    /// Azure source: the account key.
    #[arg(long, env = "AZURE_STORAGE_KEY", hide_env_values = true)]
    pub account_key: Option<String>,
    /// Azure source: a SAS token.
    #[arg(long, env = "AZURE_STORAGE_SAS_TOKEN", hide_env_values = true)]
    pub sas_token: Option<String>,

    /// Only records with this dead-letter reason (repeatable; any of them).
    #[arg(long)]
    pub reason: Vec<String>,
    /// Only records whose last delivery outcome is this (repeatable).
    #[arg(long)]
    pub outcome: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type")]
    pub event_type: Vec<String>,
    /// Only events whose subject starts with this (repeatable).
    #[arg(long)]
    pub subject_prefix: Vec<String>,
    /// Only events published at or after this (RFC 3339, a date, or a
    /// duration ago such as `2h`); hour folders before it are not read.
    #[arg(long)]
    pub since: Option<String>,
    /// Only events published before this (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Only records of this subscription (repeatable; case-insensitive).
    #[arg(long)]
    pub subscription: Vec<String>,
    /// gridfn's records: only those dead-lettered from this handler. Event
    /// Grid's records (which do not name a handler): the handler(s) their
    /// subscription's endpoint served, where they go. Repeatable.
    #[arg(long)]
    pub handler: Vec<String>,
    /// Only the event with this id (repeatable).
    #[arg(long)]
    pub id: Vec<String>,
    /// Only the events whose ids are in this file (one per line).
    #[arg(long)]
    pub ids_from: Option<PathBuf>,
    /// Replay at most this many records.
    #[arg(long)]
    pub limit: Option<usize>,

    /// Show what would be replayed where, and why each skipped record is
    /// skipped; touches nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON (the dry run's rows, each with its record's dead-letter
    /// attributes, or the summary) instead of tables.
    #[arg(long)]
    pub json: bool,

    /// POST the events to this URL instead of running them here: a running
    /// gridfn (`http://host:7071/api/events/{handler}`: `{handler}` becomes
    /// each record's handler) or any Event Grid webhook, with Event Grid's
    /// headers.
    #[arg(long)]
    pub to: Option<String>,
    /// The key for --to, sent as `aeg-sas-key`.
    #[arg(long, env = "GRIDFN_REPLAY_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Events per batch (a --to body also stays under 1 MiB).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Events started per second, at most (default: as fast as the target takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,

    /// What becomes of a blob once all its records are done.
    #[arg(long, value_enum, default_value = "archive")]
    pub on_success: OnSuccess,
    /// Stop replaying a record after it failed this many replays.
    #[arg(long, default_value_t = 5)]
    pub max_replays: u32,
    /// The replay ledger (default `<state_dir>/replay/<hash of the source>.jsonl`).
    #[arg(long)]
    pub ledger: Option<PathBuf>,
}

/// Runs `gridfn replay`; Ok(true) when everything replayed succeeded or was
/// a duplicate (and nothing was invalid or left unsent).
pub fn command(options: Options) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // On a worker, not the thread that blocks on it: the loop that reads and
    // plans then wakes as cheaply as the tasks it feeds.
    runtime.block_on(async { tokio::spawn(replay(options)).await? })
}

async fn replay(options: Options) -> anyhow::Result<bool> {
    let selection = selection(&options)?;
    let auth = AzureAuth {
        connection_string: options.connection_string.clone(),
        access_key: options.account_key.clone(),
        sas_token: options.sas_token.clone(),
    };
    let source = Arc::new(Source::parse(&options.source, &auth)?);
    // In-process needs the manifest; --to uses it only for the ledger's place.
    let manifest = match &options.to {
        None => Some(Manifest::load(&options.config)?),
        Some(_) => Manifest::load(&options.config).ok(),
    };
    let ledger_path = options.ledger.clone().unwrap_or_else(|| {
        let state_dir = manifest.as_ref().map_or_else(|| PathBuf::from(".gridfn"), |m| m.server.state_dir.clone());
        default_ledger(&state_dir, &source.id())
    });
    let destinations = match (&options.to, &manifest) {
        (Some(url), _) => Destinations::Url { per_handler: HttpTarget::per_handler(url) },
        (None, Some(manifest)) => {
            Destinations::Handlers(manifest.handlers.iter().map(|h| h.name.to_string()).collect())
        }
        (None, None) => unreachable!("loaded above"),
    };
    let target_name = match &options.to {
        Some(url) => url.clone(),
        None => format!("the handlers of {}", options.config.display()),
    };
    let subscriptions = manifest.as_ref().map(subscription_handlers).unwrap_or_default();
    let choice = Choice {
        selection: &selection,
        handlers: &options.handler,
        subscriptions: &subscriptions,
        destinations: &destinations,
        max_replays: options.max_replays,
        limit: options.limit,
    };
    let header = |ledger: &Path| (source.id(), target_name.clone(), ledger.display().to_string());

    if options.dry_run {
        let blobs = source.blobs(&selection.window()).await?;
        let ledger = Ledger::read_only(&ledger_path, &blobs)?;
        let (plan, rows) = dry_run(&source, blobs, &choice, &ledger).await?;
        let to_replay = rows.iter().filter(|row| matches!(row.action, plan::Action::Replay)).count();
        let summary = Summary::new(plan, &run::Ran::default(), header(&ledger_path), true);
        if options.json {
            let json = serde_json::json!({ "rows": rows, "summary": summary });
            println!("{}", serde_json::to_string_pretty(&json)?);
        } else {
            print!("{}", report::render_dry_run(&rows));
            println!("dry run: {to_replay} to replay; nothing was sent, moved or recorded");
            for bad in &summary.invalid {
                let at = bad.index.map_or(String::new(), |i| format!(" record {i}"));
                println!("invalid: {}{at}: {}", bad.blob, bad.problem);
            }
        }
        return Ok(true);
    }

    let _lock = LedgerLock::acquire(&ledger_path)?;
    let blobs = source.blobs(&selection.window()).await?;
    let ledger = Ledger::open(&ledger_path, &blobs)?;
    let target = match (&options.to, &manifest) {
        (Some(url), _) => Starter::Ready(Target::Http(HttpTarget::new(url, options.key.clone())?)),
        (None, Some(manifest)) => {
            let manifest = manifest.clone();
            Starter::Later(Box::pin(async move {
                refuse_if_a_host_runs(&manifest)?;
                Ok(Target::InProcess(Arc::new(Host::start(&manifest).await?)))
            }))
        }
        (None, None) => unreachable!("loaded above"),
    };
    let pace = Pace {
        batch: options.batch,
        concurrency: options.concurrency,
        rate: options.rate,
        bounded_bytes: options.to.is_some(),
    };
    let progress = Progress::new(options.json);
    let (plan, ran) =
        run::execute(source.clone(), blobs, &choice, ledger, target, &pace, options.on_success, &progress).await?;
    progress.finish();
    let summary = Summary::new(plan, &ran, header(&ledger_path), false);
    if options.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    Ok(summary.success())
}

/// The selection flags, parsed.
fn selection(options: &Options) -> anyhow::Result<Selection> {
    let now = chrono::Utc::now();
    let time = |text: &Option<String>, flag: &str| {
        text.as_deref().map(|t| read::parse_time(t, now).map_err(|e| anyhow::anyhow!("{flag} {t}: {e:#}"))).transpose()
    };
    let mut ids: Option<HashSet<String>> = None;
    if !options.id.is_empty() {
        ids.get_or_insert_default().extend(options.id.iter().cloned());
    }
    if let Some(file) = &options.ids_from {
        ids.get_or_insert_default().extend(read::read_ids(file)?);
    }
    Ok(Selection {
        reasons: options.reason.clone(),
        outcomes: options.outcome.clone(),
        types: options.event_type.clone(),
        subject_prefixes: options.subject_prefix.clone(),
        since: time(&options.since, "--since")?,
        until: time(&options.until, "--until")?,
        subscriptions: options.subscription.clone(),
        // `--handler` is a destination, applied by the plan (`Choice::handlers`).
        handlers: Vec::new(),
        ids,
    })
}

/// Reads the blobs listed (only hour folders inside the selection's window)
/// and decides each record's fate, touching nothing: the plan and a row per
/// (record, destination).
async fn dry_run(
    source: &Source,
    blobs: Vec<String>,
    choice: &Choice<'_>,
    ledger: &Ledger,
) -> anyhow::Result<(Plan, Vec<DryRunRow>)> {
    let mut plan = Plan::new(blobs);
    let mut rows = Vec::new();
    for blob in plan.blobs.clone() {
        let records = source.read(&blob).await?;
        // By the record's place in the blob, which its items keep.
        let attributes: Vec<Option<Attributes>> =
            records.iter().map(|record| record.as_ref().ok().map(|r| r.attributes.clone())).collect();
        rows.extend(plan.add_blob(&blob, records, choice, ledger).into_iter().map(|item| {
            let attributes = attributes.get(item.pair.index).cloned().flatten().unwrap_or_default();
            DryRunRow::new(item, attributes)
        }));
    }
    Ok((plan, rows))
}

/// The manifest's `subscriptions`: each (upper-case) subscription name to
/// the handlers that list it, in manifest order; then the push subscriptions
/// of the namespace gridfn serves, each to the handler it runs (their
/// dead-letter records are the namespace's, which name no handler).
fn subscription_handlers(manifest: &Manifest) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for handler in &manifest.handlers {
        for subscription in &handler.subscriptions {
            map.entry(subscription.as_str().to_owned()).or_default().push(handler.name.to_string());
        }
    }
    let namespace_subscriptions = manifest.namespace.iter().flat_map(|ns| &ns.topics).flat_map(|t| &t.subscriptions);
    for subscription in namespace_subscriptions {
        if let crate::namespace::config::Delivery::Push { handler } = &subscription.delivery {
            let handlers = map.entry(subscription.name.as_str().to_ascii_uppercase()).or_default();
            if !handlers.contains(handler) {
                handlers.push(handler.clone());
            }
        }
    }
    map
}

/// `<state_dir>/replay/<first 16 hex digits of sha256(source id)>.jsonl`:
/// one ledger (and lock) per source, whichever target replays it.
pub fn default_ledger(state_dir: &Path, source_id: &str) -> PathBuf {
    let hash = sha2::Sha256::digest(source_id.as_bytes());
    let name: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
    state_dir.join("replay").join(format!("{name}.jsonl"))
}

/// The embedded dedup store belongs to one process: when a running gridfn
/// holds it, replay through that gridfn instead, and say how.
fn refuse_if_a_host_runs(manifest: &Manifest) -> anyhow::Result<()> {
    let DedupStore::Embedded { path, .. } = &manifest.dedup.store else { return Ok(()) };
    match fjall::Database::builder(path).open() {
        Err(fjall::Error::Locked) => {}
        _ => return Ok(()),
    }
    let mut listen = manifest.server.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let key = if manifest.server.keys.is_empty() { "" } else { " --key <one of server.keys>" };
    anyhow::bail!(
        "the dedup store {} is locked: a gridfn is running on this manifest, and its embedded store belongs to that one process.\n\
         Replay through the running gridfn instead:\n  gridfn {} --to 'http://{listen}/api/events/{{handler}}'{key}",
        path.display(),
        args.join(" ")
    )
}

fn shell_quote(arg: &str) -> String {
    let plain = arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain && !arg.is_empty() { arg.to_owned() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}
