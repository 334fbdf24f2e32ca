//! The manifest (`gridfn.toml`): what it may say, its defaults, and how it is
//! parsed into settings that can only hold valid values. Each section has one
//! parsing function that returns its settings or records every problem under
//! the key it concerns, so `gridfn check` reports all mistakes at once and
//! nothing that starts later meets a value that was let through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::deadletter::DeadLetter;
use crate::deadletter::azure::AzureBlobConfig;
use crate::entra::EntraConfig;
use crate::filter::Filter;
use crate::outbound::AllowedHost;
use crate::pipeline::RetryPolicy;
use crate::publish::Topic;

/// The dedup store unless `dedup.store` says otherwise.
pub const DEFAULT_DEDUP_STORE: &str = "embedded";

/// Where `gridfn serve` listens unless the manifest or `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7071";

/// Event Grid's public, US Government and China clouds.
pub const EVENT_GRID_DOMAINS: [&str; 3] = ["eventgrid.azure.net", "eventgrid.azure.us", "eventgrid.azure.cn"];

/// Event Grid's 1 MiB batch limit plus room for headers and encoding.
const DEFAULT_MAX_BODY: usize = 1024 * 1024 + 64 * 1024;

/// How long a request's headers, or its body, may take to arrive.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Event Grid retries a delivery for up to 24 hours.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// A manifest that has been read and checked: every path is absolute, every
/// key is resolved, every handler is valid.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub server: Server,
    pub dedup: Dedup,
    pub deadletter: DeadLetter,
    pub handlers: Vec<Handler>,
    /// `[namespace]`: Event Grid namespace topics gridfn serves itself.
    pub namespace: Option<crate::namespace::config::Namespace>,
    /// `[[pull]]`: namespace subscriptions whose events gridfn pulls and runs.
    pub pull: Vec<crate::pull::config::Pull>,
}

/// `[server]`: the HTTP endpoint and who may call it.
#[derive(Debug, Clone)]
pub struct Server {
    /// `listen`: address to bind; default `127.0.0.1:7071`.
    pub listen: SocketAddr,
    /// `keys`: accepted as `?code=KEY`, `aeg-sas-key` or `x-functions-key`.
    /// Each entry is a literal key or `env:NAME`; resolved at start.
    pub keys: Vec<String>,
    /// `allow_anonymous`: accept requests without a key. Off by default; the
    /// log warns at start when it is on.
    pub allow_anonymous: bool,
    /// `max_body`: largest request body accepted (default 1 MiB + 64 KiB,
    /// Event Grid's 1 MiB batch limit plus headroom); larger gets 413.
    pub max_body: usize,
    /// `state_dir`: where gridfn keeps what it writes unless told otherwise
    /// (dedup records, kv, dead letters, compile cache, deployments); default
    /// `.gridfn` beside the manifest.
    pub state_dir: PathBuf,
    /// `cache_dir`: compiled handlers, keyed by engine and module hash, so a
    /// restart skips compilation; default `<state_dir>/cache`.
    pub cache_dir: PathBuf,
    /// `validation`: how Event Grid's subscription handshake is answered;
    /// default `sync`.
    pub validation: Validation,
    /// `event_grid_domains`: the domains Event Grid calls from. The
    /// CloudEvents OPTIONS handshake allows origins in them, and
    /// `validation = "auto-url"` only GETs URLs on them. Default
    /// `eventgrid.azure.net`, `eventgrid.azure.us`, `eventgrid.azure.cn`.
    pub event_grid_domains: Vec<String>,
    /// `[server.entra]`: require a Microsoft Entra ID bearer token from Event
    /// Grid (as well as a key, if keys are configured).
    pub entra: Option<EntraConfig>,
    /// `watch`: a folder gridfn watches for `<handler>.wasm` files; a new or
    /// changed one is deployed like `gridfn deploy` does. Off by default.
    pub watch: Option<PathBuf>,
    /// `admin_keys`: keys for the admin API (`gridfn deploy`, `handlers`,
    /// `rollback`), sent as `x-gridfn-admin-key`; literal or `env:NAME`.
    /// Separate from delivery keys; no admin key, no admin API.
    pub admin_keys: Vec<String>,
    /// `max_connections`: open connections at once; more wait in the
    /// kernel's backlog. Default 512.
    pub max_connections: usize,
    /// `header_timeout`: how long a request's headers may take to arrive,
    /// and how long an idle keep-alive connection stays open. Default 30s.
    pub header_timeout: Duration,
    /// `body_timeout`: how long a request's body may take once its headers
    /// have arrived; slower gets 408. Default 30s.
    pub body_timeout: Duration,
}

/// How gridfn answers a `SubscriptionValidation` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validation {
    /// Answer 200 with `{"validationResponse": code}` (the default).
    Sync,
    /// Answer 200 without a body and log the `validationUrl` for a person to
    /// open: for endpoints that must not validate on their own.
    Manual,
    /// Answer 200 without a body and GET the `validationUrl` from gridfn,
    /// only if its host is in `event_grid_domains`.
    AutoUrl,
}

/// `[dedup]`: how gridfn remembers which (handler, event) pairs are done.
#[derive(Debug, Clone)]
pub struct Dedup {
    /// `store` and its settings.
    pub store: DedupStore,
    /// `ttl`: how long a done pair is remembered; default 24h, Event Grid's
    /// longest retry window.
    pub ttl: Duration,
}

/// `dedup.store`: where done pairs are remembered. Each store takes only its
/// own settings; another store's key is a problem, not silently ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupStore {
    /// `"memory"`: per process, lost on restart; `max_records` (default
    /// 1,000,000) bounds it, forgetting the oldest records first.
    Memory { max_records: usize },
    /// `"embedded"` (the default): on disk at `path` (default
    /// `<state_dir>/dedup`), crash-safe, survives restarts; `sync` says when
    /// a commit is durable.
    Embedded { path: PathBuf, sync: DedupSync },
    /// `"redis"`: shared by several hosts through `url` (literal or
    /// `env:NAME`), with in-flight leases so two hosts never run one event at
    /// once; keys start with `key_prefix` (default `gridfn:dedup:`).
    Redis { url: String, key_prefix: String },
}

/// `dedup.sync` (embedded store): when a delivery's done records are on
/// disk, as Redis' `appendfsync` says it for its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupSync {
    /// `"always"` (the default): synced (`fdatasync`) before the 2xx goes
    /// out; concurrent deliveries share one sync (group commit). Nothing
    /// done is ever lost, even to a power cut.
    #[default]
    Always,
    /// `"interval"`: written to the operating system before the 2xx, synced
    /// once a second. A killed gridfn loses nothing; a power cut or kernel
    /// crash can lose the last second's records, and Event Grid's
    /// redeliveries of those events then run again.
    Interval,
}

/// A handler's name: 1 to 64 lowercase ASCII letters, digits, `-` and `_`,
/// because it appears in URLs, metric labels and file names. Only
/// [`HandlerName::parse`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HandlerName(String);

impl HandlerName {
    pub fn parse(name: &str) -> Result<HandlerName, String> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        match valid {
            true => Ok(HandlerName(name.to_owned())),
            false => {
                Err("use lowercase letters, digits, '-' and '_', 1 to 64 of them (it appears in URLs and file names)"
                    .into())
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for HandlerName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandlerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for HandlerName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for HandlerName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for HandlerName {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<HandlerName> for String {
    fn from(name: HandlerName) -> String {
        name.0
    }
}

/// `[[handler]]`: one WebAssembly component and what it may use.
#[derive(Debug, Clone)]
pub struct Handler {
    /// `name`: used in URLs (`/api/events/{name}`), metrics and logs.
    pub name: HandlerName,
    /// `module`: path to the component (`.wasm`), relative to the manifest.
    pub module: PathBuf,
    /// `timeout`: wall-clock deadline per event; default 10s.
    pub timeout: Duration,
    /// `memory`: linear-memory cap per instance; default 64MiB.
    pub memory: usize,
    /// `filter`: Event Grid subscription filter; absent = every event.
    pub filter: Option<Filter>,
    /// `retry = { attempts, backoff = "exponential" | "fixed", initial, max }`:
    /// local retries of transient failures; default none.
    pub retry: RetryPolicy,
    /// `max_concurrency`: instances of this handler alive at once (running or
    /// waiting on I/O); default 16. Of those, at most every core but one are
    /// on CPU at a time when there are other handlers (see `crate::admission`).
    pub max_concurrency: usize,
    /// `queue`: events that may wait for a free instance; beyond it the
    /// delivery gets 503 + Retry-After. Default 1024. A delivery's own
    /// waiting events count only against other deliveries, so it bounds what
    /// concurrent deliveries add, never the size of one.
    pub queue: usize,
    /// `fuel`: units of work per event (roughly one per wasm instruction);
    /// default unlimited (only the deadline applies).
    pub fuel: Option<u64>,
    /// `instance_reuse`: events one instance may serve in sequence before it
    /// is replaced; default 1 (a fresh instance per event). Never two events
    /// at once; an instance is dropped after any trap, timeout or retry.
    pub instance_reuse: u32,
    /// `batch = true | N`: run this handler's events of a delivery in one
    /// call of the component's `handle-batch` export (one fresh instance),
    /// at most N per call; default `false` (a call of `handle` per event).
    /// `None` for one call per event.
    pub batch: Option<usize>,
    /// `[handler.capabilities]`: what the handler may use beyond logging.
    pub capabilities: Capabilities,
    /// `subscriptions = ["ORDERS-SUB", …]`: the Event Grid event
    /// subscriptions whose endpoint is this handler. Event Grid's dead-letter
    /// records name only their subscription, so this is where `gridfn replay`
    /// sends them when no `--handler` is given. Held upper-case, as Event Grid
    /// names the dead-letter folders; default none.
    pub subscriptions: Vec<SubscriptionName>,
    /// `build = "command"` (and `workdir`): how `gridfn up` builds the
    /// module before serving; default none (the module is built elsewhere).
    pub build: Option<Build>,
}

/// `handler.build` and `handler.workdir`: a shell command that builds the
/// handler's module, run by `gridfn up` (`sh -c`) in `workdir`. Handlers
/// whose `build` and `workdir` are the same share one run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Build {
    /// The command line as written, never empty.
    pub command: String,
    /// `workdir`, relative to the manifest; default the manifest's folder.
    pub workdir: PathBuf,
}

/// An Event Grid event subscription's name, upper-cased: 3 to 64 ASCII
/// letters, digits and `-` (Event Grid's rule). Event Grid writes it
/// upper-case as the dead-letter folder name; it compares case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionName(String);

impl SubscriptionName {
    pub fn parse(name: &str) -> Result<SubscriptionName, String> {
        let valid = (3..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        match valid {
            true => Ok(SubscriptionName(name.to_ascii_uppercase())),
            false => Err(format!("{name:?} is not an Event Grid subscription name (3 to 64 letters, digits and '-')")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubscriptionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[handler.capabilities]`: everything not granted here is denied, except
/// `log`, which is granted unless `log = false` (a handler nobody can hear
/// from is a handler nobody can debug; its output is budgeted either way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `config = { key = "value" }`: values the handler can read
    /// (`env:NAME` values are resolved at start).
    pub config: Option<HashMap<String, String>>,
    /// `kv = true`: a key-value store of its own, kept where the dedup
    /// records are.
    pub kv: bool,
    /// `log = false` silences the handler: its log calls, stdout and stderr
    /// are dropped.
    pub log: bool,
    /// `allowed_outbound_hosts = ["https://api.example.com", …]`: where
    /// `wasi:http` requests may go (see [`AllowedHost`] for wildcards).
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    /// `publish = "local"` or `publish = { endpoint = "…", key = "env:…" }`:
    /// where the events it publishes go.
    pub publish: Option<Topic>,
}

/// Everything wrong with a manifest, each problem naming its key.
#[derive(Debug)]
pub struct ManifestError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} has {} problem(s):", self.file.display(), self.problems.len())?;
        for problem in &self.problems {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

/// Looks up an environment variable, for `env:NAME` values; a parameter so
/// tests and the fuzzer choose the environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Manifest {
    /// Reads and checks the manifest at `path`; relative paths in it are
    /// relative to its folder, whatever the working directory.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let fail = |problems| ManifestError { file: path.to_owned(), problems };
        let text = read(path).map_err(fail)?;
        Manifest::parse(&text, path.parent().unwrap_or(Path::new("")), &|name| std::env::var(name).ok()).map_err(fail)
    }

    /// Parses and checks manifest text: relative paths in it are relative to
    /// `base` (itself relative to the working directory, or absolute), and
    /// `env` resolves `env:NAME` values. Every problem is returned, each
    /// naming its key.
    pub fn parse(text: &str, base: &Path, env: Env) -> Result<Manifest, Vec<String>> {
        let raw = raw_manifest(text)?;
        let cx = Context::new(base, env)?;
        let mut problems = Problems::default();
        let p = &mut problems;

        let mut raw_server = raw.server.unwrap_or_default();
        let raw_keys = raw_server.keys.clone();
        let state_dir = cx.path(raw_server.state_dir.take().unwrap_or_else(|| ".gridfn".into()));
        let server = server(raw_server, &state_dir, &cx, p);
        let dedup = dedup(raw.dedup.unwrap_or_default(), &state_dir, &cx, p);
        let deadletter = deadletter(raw.deadletter.unwrap_or_default(), &state_dir, &cx, p);
        let names: Vec<String> = raw.handler.iter().map(|h| h.name.clone()).collect();
        let namespace = raw.namespace.map(|raw| namespace(raw, &raw_keys, &names, &cx, p)).transpose();
        let pull = pulls(raw.pull, &names, &cx, p);
        let handlers = match (raw.handler.is_empty(), &namespace) {
            // A manifest may serve namespace topics and run no handler.
            (true, Ok(Some(_))) => Ok(Vec::new()),
            _ => handlers(raw.handler, &cx, p),
        };
        let manifest = (|| -> Result<_, Reported> {
            Ok(Manifest {
                server: server?,
                dedup: dedup?,
                deadletter: deadletter?,
                handlers: handlers?,
                namespace: namespace?,
                pull: pull?,
            })
        })();
        problems.finish(manifest)
    }

    pub fn handler(&self, name: &str) -> Option<&Handler> {
        self.handlers.iter().find(|h| h.name == name)
    }

    /// Only the routing part of a manifest: each handler's name and filter,
    /// with the filters checked by the parser `parse` uses. For `gridfn
    /// explain`, which needs neither built modules nor keys.
    pub fn load_routes(path: &Path) -> Result<Vec<(String, Option<Filter>)>, ManifestError> {
        let fail = |problems| ManifestError { file: path.to_owned(), problems };
        let raw = raw_manifest(&read(path).map_err(fail)?).map_err(fail)?;
        let mut problems = Problems::default();
        let routes: Vec<_> = (raw.handler.into_iter().enumerate())
            .map(|(i, h)| filter(h.filter, &handler_key(i, &h.name), &mut problems).map(|filter| (h.name, filter)))
            .collect();
        problems.finish(routes.into_iter().collect()).map_err(fail)
    }

    /// Only each handler's name and `build`, checked by the parser `parse`
    /// uses: for `gridfn up`, which builds the modules the full manifest
    /// needs to exist.
    pub fn load_builds(path: &Path) -> Result<Vec<(String, Option<Build>)>, ManifestError> {
        let fail = |problems| ManifestError { file: path.to_owned(), problems };
        let raw = raw_manifest(&read(path).map_err(fail)?).map_err(fail)?;
        let cx = Context::new(path.parent().unwrap_or(Path::new("")), &|_| None).map_err(fail)?;
        let mut problems = Problems::default();
        let builds: Vec<_> = (raw.handler.into_iter().enumerate())
            .map(|(i, h)| build(h.build, h.workdir, &handler_key(i, &h.name), &cx, &mut problems).map(|b| (h.name, b)))
            .collect();
        problems.finish(builds.into_iter().collect()).map_err(fail)
    }
}

fn read(path: &Path) -> Result<String, Vec<String>> {
    std::fs::read_to_string(path).map_err(|e| vec![format!("cannot read it: {e}")])
}

/// What the file says, or the TOML error (which names the line and key).
fn raw_manifest(text: &str) -> Result<RawManifest, Vec<String>> {
    toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().replace('\n', "\n    ")])
}

// ---------------------------------------------------------------------------
// Sections: one function each, returning the settings or `Reported`.
// ---------------------------------------------------------------------------

/// `[server]`; `state_dir` is resolved by the caller, since other sections'
/// defaults live under it.
fn server(raw: RawServer, state_dir: &Path, cx: &Context, p: &mut Problems) -> Result<Server, Reported> {
    let no_credentials = raw.keys.is_empty() && raw.entra.is_none() && !raw.allow_anonymous;
    let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN).parse();
    let listen =
        p.check("server.listen", listen.map_err(|e| format!("{e} (expected host:port, e.g. {DEFAULT_LISTEN})")));
    let keys = p.list("server.keys", raw.keys, |key| cx.key(&key));
    let admin_keys = p.list("server.admin_keys", raw.admin_keys, |key| cx.key(&key));
    let credentials = match no_credentials {
        true => p.fail(
            "server.keys",
            "no key configured; add one (e.g. keys = [\"env:GRIDFN_KEY\"]), configure [server.entra], or set allow_anonymous = true",
        ),
        false => Ok(()),
    };
    let entra = raw.entra.map(|entra| entra_config(entra, cx, p)).transpose();
    let max_body = p.check("server.max_body", raw.max_body.as_deref().map_or(Ok(DEFAULT_MAX_BODY), parse_size));
    let domains = raw.event_grid_domains.unwrap_or_else(|| EVENT_GRID_DOMAINS.map(String::from).to_vec());
    let event_grid_domains = p.list("server.event_grid_domains", domains, domain_name);
    let max_connections = p.check("server.max_connections", raw.max_connections.map_or(Ok(512), at_least_one));
    let header_timeout =
        p.check("server.header_timeout", raw.header_timeout.as_deref().map_or(Ok(DEFAULT_TIMEOUT), duration));
    let body_timeout =
        p.check("server.body_timeout", raw.body_timeout.as_deref().map_or(Ok(DEFAULT_TIMEOUT), duration));
    credentials?;
    Ok(Server {
        listen: listen?,
        keys: keys?,
        allow_anonymous: raw.allow_anonymous,
        max_body: max_body?,
        state_dir: state_dir.to_owned(),
        cache_dir: raw.cache_dir.map_or_else(|| state_dir.join("cache"), |dir| cx.path(dir)),
        validation: raw.validation.unwrap_or(Validation::Sync),
        event_grid_domains: event_grid_domains?,
        entra: entra?,
        watch: raw.watch.map(|dir| cx.path(dir)),
        admin_keys: admin_keys?,
        max_connections: max_connections? as usize,
        header_timeout: header_timeout?,
        body_timeout: body_timeout?,
    })
}

/// `[server.entra]`: the table's own checks, with `jwks_file` made absolute.
fn entra_config(mut entra: EntraConfig, cx: &Context, p: &mut Problems) -> Result<EntraConfig, Reported> {
    entra.jwks_file = entra.jwks_file.map(|file| cx.path(file));
    p.nested("server.entra", entra.problems())?;
    Ok(entra)
}

/// `[dedup]`: `ttl`, and `store` with that store's settings.
fn dedup(raw: RawDedup, state_dir: &Path, cx: &Context, p: &mut Problems) -> Result<Dedup, Reported> {
    let ttl = p.check("dedup.ttl", raw.ttl.as_deref().map_or(Ok(DEFAULT_TTL), duration));
    let store = match raw.store.as_deref().unwrap_or(DEFAULT_DEDUP_STORE) {
        "memory" => {
            let memory: RawMemoryDedup = settings("dedup", raw.settings, p)?;
            let max_records = p.check("dedup.max_records", memory.max_records.map_or(Ok(1_000_000), at_least_one))?;
            DedupStore::Memory { max_records: max_records as usize }
        }
        "embedded" => {
            let embedded: RawEmbeddedDedup = settings("dedup", raw.settings, p)?;
            DedupStore::Embedded {
                path: embedded.path.map_or_else(|| state_dir.join("dedup"), |dir| cx.path(dir)),
                sync: embedded.sync.unwrap_or_default(),
            }
        }
        "redis" => {
            let redis: RawRedisDedup = settings("dedup", raw.settings, p)?;
            let url = match redis.url {
                Some(url) => cx.value(&url).and_then(|url| redis_url(&url)),
                None => Err("required with store = \"redis\" (e.g. \"redis://127.0.0.1:6379\")".into()),
            };
            let url = p.check("dedup.url", url)?;
            DedupStore::Redis { url, key_prefix: redis.key_prefix.unwrap_or_else(|| "gridfn:dedup:".into()) }
        }
        other => {
            return p
                .fail("dedup.store", format!("\"{other}\" is not a store; use \"memory\", \"embedded\" or \"redis\""));
        }
    };
    Ok(Dedup { store, ttl: ttl? })
}

/// `[deadletter]`: `store`, and that store's settings.
fn deadletter(raw: RawDeadLetter, state_dir: &Path, cx: &Context, p: &mut Problems) -> Result<DeadLetter, Reported> {
    match raw.store.as_deref().unwrap_or("dir") {
        "dir" => {
            let dir: RawDeadLetterDir = settings("deadletter", raw.settings, p)?;
            Ok(DeadLetter::Dir { path: dir.path.map_or_else(|| state_dir.join("deadletter"), |dir| cx.path(dir)) })
        }
        "azure-blob" => azure_blob(raw.settings, cx, p).map(DeadLetter::AzureBlob),
        other => p.fail("deadletter.store", format!("\"{other}\" is not a store; use \"dir\" or \"azure-blob\"")),
    }
}

/// `[deadletter]` with `store = "azure-blob"`: secrets resolved from `env:`,
/// then the table's own checks.
fn azure_blob(mut table: toml::Table, cx: &Context, p: &mut Problems) -> Result<AzureBlobConfig, Reported> {
    let mut secrets = Ok(());
    for secret in ["connection_string", "access_key", "sas_token"] {
        if let Some(toml::Value::String(value)) = table.get_mut(secret) {
            match p.check(format!("deadletter.{secret}"), cx.value(value)) {
                Ok(resolved) => *value = resolved,
                Err(reported) => secrets = Err(reported),
            }
        }
    }
    let config: AzureBlobConfig = settings("deadletter", table, p)?;
    secrets?;
    p.nested("deadletter", config.problems())?;
    Ok(config)
}

/// `[namespace]`: its own checks, with keys resolved like `server.keys`
/// (and `server.keys` when it lists none).
fn namespace(
    raw: crate::namespace::config::RawNamespace,
    server_keys: &[String],
    handlers: &[String],
    cx: &Context,
    p: &mut Problems,
) -> Result<crate::namespace::config::Namespace, Reported> {
    let mut namespace = match raw.parse(&|key| cx.key(key), &|name| handlers.iter().any(|h| h == name)) {
        Ok(namespace) => namespace,
        Err(problems) => return p.nested("namespace", problems).and(Err(Reported(()))),
    };
    if let Some(entra) = &mut namespace.entra {
        entra.jwks_file = entra.jwks_file.take().map(|file| cx.path(file));
    }
    if namespace.keys.is_empty() {
        namespace.keys = p.list("server.keys", server_keys.iter().cloned(), |key| cx.key(&key))?;
    }
    if namespace.keys.is_empty() && namespace.entra.is_none() {
        return p.fail(
            "namespace.keys",
            "no key: list keys here or in [server] keys, or configure [namespace.entra] (clients must present one)",
        );
    }
    Ok(namespace)
}

/// `[[pull]]`: each its own checks, named `pull[i]`; `handlers` are the
/// manifest's handler names, which a pull's `handler` must be one of.
fn pulls(
    raw: Vec<crate::pull::config::RawPull>,
    handlers: &[String],
    cx: &Context,
    p: &mut Problems,
) -> Result<Vec<crate::pull::config::Pull>, Reported> {
    let parsed: Vec<_> = (raw.into_iter().enumerate())
        .map(|(i, raw)| match raw.parse(&|key| cx.key(key), &|name| handlers.iter().any(|h| h == name)) {
            Ok(pull) => Ok(pull),
            Err(problems) => p.nested(&format!("pull[{i}]"), problems).and(Err(Reported(()))),
        })
        .collect();
    parsed.into_iter().collect()
}

/// `[[handler]]`: at least one, each valid, no two with one name.
fn handlers(raw: Vec<RawHandler>, cx: &Context, p: &mut Problems) -> Result<Vec<Handler>, Reported> {
    if raw.is_empty() {
        return p.fail("handler", "no [[handler]] listed; gridfn has nothing to run");
    }
    let mut names = HashSet::new();
    let handlers: Vec<_> = (raw.into_iter().enumerate())
        .map(|(i, raw)| {
            let at = handler_key(i, &raw.name);
            let unique = match names.insert(raw.name.clone()) {
                true => Ok(()),
                false => p.fail(format!("{at}.name"), "another handler has this name"),
            };
            let handler = handler(&at, raw, cx, p);
            unique.and(handler)
        })
        .collect();
    handlers.into_iter().collect()
}

/// How problems name a handler: its place and its name, as written.
fn handler_key(index: usize, name: &str) -> String {
    format!("handler[{index}] ({name})")
}

/// One `[[handler]]`; `at` names it in problems.
fn handler(at: &str, raw: RawHandler, cx: &Context, p: &mut Problems) -> Result<Handler, Reported> {
    let key = |field: &str| format!("{at}.{field}");
    let name = p.check(key("name"), HandlerName::parse(&raw.name));
    let module = cx.path(raw.module);
    let module = match (module.is_file(), &raw.build) {
        (true, _) => Ok(module),
        (false, None) => {
            p.fail(key("module"), format!("{} does not exist (build the handler first)", module.display()))
        }
        (false, Some(_)) => p.fail(
            key("module"),
            format!("{} does not exist (`gridfn up` runs the handler's build first)", module.display()),
        ),
    };
    let build = build(raw.build, raw.workdir, at, cx, p);
    let timeout = p.check(key("timeout"), raw.timeout.as_deref().map_or(Ok(Duration::from_secs(10)), duration));
    let memory = p.check(key("memory"), raw.memory.as_deref().map_or(Ok(64 << 20), parse_size));
    let filter = filter(raw.filter, at, p);
    let retry = raw.retry.map_or(Ok(RetryPolicy::NONE), |retry| retry_policy(retry, &key("retry"), p));
    let max_concurrency = p.check(key("max_concurrency"), raw.max_concurrency.map_or(Ok(16), at_least_one));
    let fuel = raw.fuel.map(|fuel| p.check(key("fuel"), at_least_one(fuel))).transpose();
    let instance_reuse = p.check(key("instance_reuse"), raw.instance_reuse.map_or(Ok(1), at_least_one));
    let batch = batch(raw.batch, raw.instance_reuse, raw.capabilities.publish.is_some(), &key("batch"), p);
    let capabilities = capabilities(raw.capabilities, &key("capabilities"), cx, p);
    let subscriptions = p.list(&key("subscriptions"), &raw.subscriptions, |name| SubscriptionName::parse(name));
    Ok(Handler {
        name: name?,
        module: module?,
        timeout: timeout?,
        memory: memory?,
        filter: filter?,
        retry: retry?,
        max_concurrency: max_concurrency? as usize,
        queue: raw.queue.unwrap_or(1024) as usize,
        fuel: fuel?,
        instance_reuse: instance_reuse?.min(u32::MAX.into()) as u32,
        batch: batch?,
        capabilities: capabilities?,
        subscriptions: subscriptions?,
        build: build?,
    })
}

/// `handler.batch`: events per `handle-batch` call (`true`: every event of
/// the delivery), or `None` for a `handle` call per event. A batch call runs
/// in a fresh instance and publishes nothing, so it rules out
/// `instance_reuse` and the `publish` capability (published events belong to
/// the one event being handled).
fn batch(
    raw: Option<RawBatch>,
    reuse: Option<u64>,
    publish: bool,
    key: &str,
    p: &mut Problems,
) -> Result<Option<usize>, Reported> {
    let size = match raw {
        None | Some(RawBatch::On(false)) => return Ok(None),
        Some(RawBatch::On(true)) => usize::MAX,
        Some(RawBatch::Size(size)) => p.check(key, at_least_one(size))?.try_into().unwrap_or(usize::MAX),
    };
    if reuse.is_some_and(|reuse| reuse > 1) {
        return p.fail(key, "a batch runs in a fresh instance; it cannot be combined with instance_reuse");
    }
    if publish {
        return p.fail(key, "a batch handler cannot publish (published events belong to one event); use `handle`");
    }
    Ok(Some(size))
}

/// `handler.build` and `handler.workdir`; `at` names the handler.
fn build(
    command: Option<String>,
    workdir: Option<PathBuf>,
    at: &str,
    cx: &Context,
    p: &mut Problems,
) -> Result<Option<Build>, Reported> {
    match (command, workdir) {
        (None, None) => Ok(None),
        (None, Some(_)) => p.fail(format!("{at}.workdir"), "is where `build` runs, and there is no `build`"),
        (Some(command), _) if command.trim().is_empty() => p.fail(format!("{at}.build"), "must not be empty"),
        (Some(command), workdir) => {
            Ok(Some(Build { command, workdir: workdir.map_or_else(|| cx.base.clone(), |dir| cx.path(dir)) }))
        }
    }
}

/// `handler.filter`, with the checks Event Grid makes when a subscription is
/// created; shared with `gridfn explain`.
fn filter(filter: Option<Filter>, at: &str, p: &mut Problems) -> Result<Option<Filter>, Reported> {
    if let Some(filter) = &filter {
        p.nested(&format!("{at}.filter"), filter.problems())?;
    }
    Ok(filter)
}

fn retry_policy(raw: RawRetry, key: &str, p: &mut Problems) -> Result<RetryPolicy, Reported> {
    let attempts = match raw.attempts.unwrap_or(3) {
        attempts @ 1..=10 => Ok(attempts),
        attempts => Err(format!("{attempts} is out of range (1 to 10)")),
    };
    let attempts = p.check(format!("{key}.attempts"), attempts);
    let exponential = match raw.backoff.as_deref().unwrap_or("exponential") {
        "exponential" => Ok(true),
        "fixed" => Ok(false),
        other => Err(format!("\"{other}\" is not a backoff; use \"exponential\" or \"fixed\"")),
    };
    let exponential = p.check(format!("{key}.backoff"), exponential);
    let initial =
        p.check(format!("{key}.initial"), raw.initial.as_deref().map_or(Ok(RetryPolicy::NONE.initial), duration));
    let max = p.check(format!("{key}.max"), raw.max.as_deref().map_or(Ok(RetryPolicy::NONE.max), duration));
    Ok(RetryPolicy { attempts: attempts?, exponential: exponential?, initial: initial?, max: max? })
}

/// `[handler.capabilities]`; `at` is its key.
fn capabilities(raw: RawCapabilities, at: &str, cx: &Context, p: &mut Problems) -> Result<Capabilities, Reported> {
    let config = raw.config.map(|values| {
        let values: Vec<_> = (values.into_iter())
            .map(|(name, value)| p.check(format!("{at}.config.{name}"), cx.value(&value)).map(|value| (name, value)))
            .collect();
        values.into_iter().collect::<Result<HashMap<_, _>, _>>()
    });
    let allowed_outbound_hosts =
        p.list(&format!("{at}.allowed_outbound_hosts"), raw.allowed_outbound_hosts, |entry| AllowedHost::parse(&entry));
    let publish = raw.publish.map(|publish| publish_topic(publish, &format!("{at}.publish"), cx, p)).transpose();
    Ok(Capabilities {
        config: config.transpose()?,
        kv: raw.kv,
        log: raw.log.unwrap_or(true),
        allowed_outbound_hosts: allowed_outbound_hosts?,
        publish: publish?,
    })
}

fn publish_topic(raw: RawPublish, at: &str, cx: &Context, p: &mut Problems) -> Result<Topic, Reported> {
    match raw {
        RawPublish::Named(name) if name == "local" => Ok(Topic::Local),
        RawPublish::Named(other) => p.fail(
            at,
            format!(
                "{other:?} is not a topic; use \"local\" or {{ endpoint = \"https://<topic>.<region>-1.eventgrid.azure.net/api/events\", key = \"env:TOPIC_KEY\" }}"
            ),
        ),
        RawPublish::EventGrid { endpoint, key } => {
            let endpoint = match Url::parse(&endpoint) {
                Ok(url) if matches!(url.scheme(), "https" | "http") => Ok(url),
                _ => p.fail(format!("{at}.endpoint"), format!("{endpoint:?} is not an http(s) URL")),
            };
            let key = p.check(format!("{at}.key"), cx.key(&key));
            Ok(Topic::EventGrid { endpoint: endpoint?, key: key? })
        }
    }
}

/// A store's settings table, in the store's own shape (unknown keys are
/// problems); `section` names it in problems.
fn settings<T: DeserializeOwned>(section: &str, table: toml::Table, p: &mut Problems) -> Result<T, Reported> {
    p.check(section, table.try_into().map_err(|e: toml::de::Error| e.message().to_owned()))
}

// ---------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------

/// What parsing is relative to: the manifest's folder, made absolute once so
/// every path in the manifest (and every default under `state_dir`) is
/// resolved exactly once, and the environment for `env:NAME` values.
struct Context<'a> {
    base: PathBuf,
    env: Env<'a>,
}

impl<'a> Context<'a> {
    fn new(base: &Path, env: Env<'a>) -> Result<Context<'a>, Vec<String>> {
        let base = if base.as_os_str().is_empty() { Path::new(".") } else { base };
        let absolute = std::path::absolute(base)
            .map_err(|e| vec![format!("cannot resolve paths relative to {}: {e}", base.display())])?;
        Ok(Context { base: absolute, env })
    }

    /// A path from the manifest: relative ones are relative to its folder.
    fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        self.base.join(path)
    }

    /// The one rule for `env:NAME` values, wherever they are allowed: the
    /// variable's value, which must be set and not empty (an empty secret is
    /// a mistake, not a choice). Any other value is itself.
    fn value(&self, value: &str) -> Result<String, String> {
        let Some(name) = value.strip_prefix("env:") else { return Ok(value.to_owned()) };
        match (self.env)(name) {
            None => Err(format!("environment variable {name} is not set (export it, or write the value itself)")),
            Some(value) if value.is_empty() => Err(format!("environment variable {name} is set but empty")),
            Some(value) => Ok(value),
        }
    }

    /// A key callers present: literal or `env:NAME`, never empty.
    fn key(&self, key: &str) -> Result<String, String> {
        match self.value(key)? {
            key if key.is_empty() => Err("empty key".into()),
            key => Ok(key),
        }
    }
}

fn domain_name(domain: String) -> Result<String, String> {
    match domain.is_empty() || domain.contains('/') || domain.contains(':') {
        true => Err(format!("{domain:?} is not a domain name")),
        false => Ok(domain),
    }
}

/// A URL the `redis` crate connects to.
fn redis_url(url: &str) -> Result<String, String> {
    match Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") => Ok(url.to_owned()),
        _ => Err("not a Redis URL (e.g. \"redis://127.0.0.1:6379\")".into()),
    }
}

fn at_least_one(n: u64) -> Result<u64, String> {
    match n {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// Parses durations like `500ms`, `10s`, `24h`; zero is refused.
fn duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (write e.g. \"500ms\", \"10s\", \"24h\")")),
    }
}

/// Parses sizes like `64MiB`, `512KiB`, `1GiB`, `65536` (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().map_err(|_| format!("\"{text}\" is not a size (write e.g. \"64MiB\")"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(format!("unknown unit \"{other}\" in \"{text}\" (use B, KiB, MiB or GiB)"));
        }
    };
    let size = number.checked_mul(scale).ok_or_else(|| format!("\"{text}\" is too large"))?;
    if size == 0 {
        return Err("must be more than zero".into());
    }
    Ok(size)
}

// ---------------------------------------------------------------------------
// Problems.
// ---------------------------------------------------------------------------

/// Every problem found so far, each `key: what is wrong`.
#[derive(Default)]
struct Problems(Vec<String>);

/// A value could not be parsed, and [`Problems`] holds why. Only `Problems`
/// makes one, so a section that fails has always said why.
struct Reported(());

impl Problems {
    fn check<T>(&mut self, key: impl fmt::Display, parsed: Result<T, String>) -> Result<T, Reported> {
        parsed.or_else(|problem| self.fail(key, problem))
    }

    fn fail<T>(&mut self, key: impl fmt::Display, problem: impl fmt::Display) -> Result<T, Reported> {
        self.0.push(format!("{key}: {problem}"));
        Err(Reported(()))
    }

    /// A list's entries, each checked (all of them, not up to the first
    /// problem) and named `key[i]`.
    fn list<I, T>(
        &mut self,
        key: &str,
        items: impl IntoIterator<Item = I>,
        mut parse: impl FnMut(I) -> Result<T, String>,
    ) -> Result<Vec<T>, Reported> {
        let parsed: Vec<_> =
            (items.into_iter().enumerate()).map(|(i, item)| self.check(format!("{key}[{i}]"), parse(item))).collect();
        parsed.into_iter().collect()
    }

    /// Problems a table's own checks found, named relative to the table at `key`.
    fn nested(&mut self, key: &str, problems: Vec<impl fmt::Display>) -> Result<(), Reported> {
        if problems.is_empty() {
            return Ok(());
        }
        self.0.extend(problems.into_iter().map(|problem| format!("{key}.{problem}")));
        Err(Reported(()))
    }

    fn finish<T>(self, parsed: Result<T, Reported>) -> Result<T, Vec<String>> {
        match parsed {
            Ok(value) if self.0.is_empty() => Ok(value),
            _ => Err(self.0),
        }
    }
}

// ---------------------------------------------------------------------------
// What the file says, before defaults and checks.
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    server: Option<RawServer>,
    dedup: Option<RawDedup>,
    deadletter: Option<RawDeadLetter>,
    #[serde(default)]
    handler: Vec<RawHandler>,
    namespace: Option<crate::namespace::config::RawNamespace>,
    #[serde(default)]
    pull: Vec<crate::pull::config::RawPull>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    allow_anonymous: bool,
    max_body: Option<String>,
    state_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    validation: Option<Validation>,
    event_grid_domains: Option<Vec<String>>,
    entra: Option<EntraConfig>,
    #[serde(default)]
    admin_keys: Vec<String>,
    watch: Option<PathBuf>,
    max_connections: Option<u64>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
}

/// `[dedup]`: the keys every store has; the rest is the store's own.
#[derive(Deserialize, Default)]
struct RawDedup {
    store: Option<String>,
    ttl: Option<String>,
    #[serde(flatten)]
    settings: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemoryDedup {
    max_records: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmbeddedDedup {
    path: Option<PathBuf>,
    sync: Option<DedupSync>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisDedup {
    url: Option<String>,
    key_prefix: Option<String>,
}

/// `[deadletter]`: `store` picks the kind; the rest is that kind's settings.
#[derive(Deserialize, Default)]
struct RawDeadLetter {
    store: Option<String>,
    #[serde(flatten)]
    settings: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadLetterDir {
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandler {
    name: String,
    module: PathBuf,
    timeout: Option<String>,
    memory: Option<String>,
    filter: Option<Filter>,
    retry: Option<RawRetry>,
    max_concurrency: Option<u64>,
    queue: Option<u64>,
    fuel: Option<u64>,
    instance_reuse: Option<u64>,
    batch: Option<RawBatch>,
    #[serde(default)]
    capabilities: RawCapabilities,
    #[serde(default)]
    subscriptions: Vec<String>,
    build: Option<String>,
    workdir: Option<PathBuf>,
}

/// `batch = true | false | N`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBatch {
    On(bool),
    Size(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    backoff: Option<String>,
    initial: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    /// Sorted, so problems come in the order of the keys.
    config: Option<BTreeMap<String, String>>,
    #[serde(default)]
    kv: bool,
    log: Option<bool>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    publish: Option<RawPublish>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPublish {
    Named(String),
    EventGrid { endpoint: String, key: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.wasm"), b"").unwrap();
        let env = |name: &str| match name {
            "KEY" => Some("secret".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        match Manifest::parse(text, dir.path(), &env) {
            Ok(_) => vec![],
            Err(problems) => problems,
        }
    }

    #[test]
    fn a_minimal_manifest_gets_the_documented_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.wasm"), b"").unwrap();
        let text = "[server]\nkeys = [\"env:KEY\"]\n[[handler]]\nname = \"h\"\nmodule = \"h.wasm\"\n";
        let m = Manifest::parse(text, dir.path(), &|_| Some("secret".into())).unwrap();
        assert_eq!(m.server.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(m.server.keys, vec!["secret".to_string()]);
        assert_eq!(m.dedup.ttl, Duration::from_secs(86400));
        assert_eq!(m.handlers[0].timeout, Duration::from_secs(10));
        assert_eq!(m.handlers[0].memory, 64 << 20);
        assert!(matches!(&m.deadletter, DeadLetter::Dir { path } if *path == dir.path().join(".gridfn/deadletter")));
    }

    #[test]
    fn each_bad_manifest_names_its_key() {
        let cases = [
            ("[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n", "server.keys: no key configured"),
            (
                "[server]\nkeys=[\"env:NOPE\"]\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "server.keys[0]: environment variable NOPE is not set",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"missing.wasm\"\n",
                "handler[0] (h).module:",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"H h\"\nmodule=\"h.wasm\"\n",
                "handler[0] (H h).name: use lowercase",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\ntimeout=\"soon\"\n",
                "handler[0] (h).timeout:",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nmemory=\"64 parsecs\"\n",
                "handler[0] (h).memory: unknown unit",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "handler[1] (h).name: another handler",
            ),
            (
                "[server]\nallow_anonymous=true\nlisten=\"nowhere\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "server.listen:",
            ),
            ("[server]\nallow_anonymous=true\nport=1\n", "unknown field `port`"),
            (
                "[server]\nallow_anonymous=true\n[dedup]\nstore=\"etcd\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "dedup.store: \"etcd\"",
            ),
            ("[server]\nallow_anonymous=true\n", "handler: no [[handler]] listed"),
            // One rule for `env:` wherever it is allowed: set, and not empty.
            (
                "[server]\nkeys=[\"env:EMPTY\"]\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "server.keys[0]: environment variable EMPTY is set but empty",
            ),
            (
                "[server]\nallow_anonymous=true\nadmin_keys=[\"env:NOPE\"]\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "server.admin_keys[0]: environment variable NOPE is not set",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\ncapabilities.config={greeting=\"env:EMPTY\"}\n",
                "handler[0] (h).capabilities.config.greeting: environment variable EMPTY is set but empty",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\ncapabilities.publish={endpoint=\"https://t.westus-1.eventgrid.azure.net/api/events\",key=\"env:EMPTY\"}\n",
                "handler[0] (h).capabilities.publish.key: environment variable EMPTY is set but empty",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\ncapabilities.publish={endpoint=\"ftp://t\",key=\"k\"}\n",
                "handler[0] (h).capabilities.publish.endpoint: \"ftp://t\" is not an http(s) URL",
            ),
            (
                "[server]\nallow_anonymous=true\n[deadletter]\nstore=\"azure-blob\"\ncontainer=\"dlq\"\nconnection_string=\"env:EMPTY\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "deadletter.connection_string: environment variable EMPTY is set but empty",
            ),
            (
                "[server]\nallow_anonymous=true\n[deadletter]\nstore=\"azure-blob\"\ncontainer=\"dlq\"\naccount=\"acct\"\naccess_key=\"env:NOPE\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "deadletter.access_key: environment variable NOPE is not set",
            ),
            (
                "[server]\nallow_anonymous=true\n[deadletter]\nstore=\"azure-blob\"\ncontainer=\"Bad_Name\"\nconnection_string=\"UseDevelopmentStorage=true\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "deadletter.container: \"Bad_Name\" is not a valid container name",
            ),
            (
                "[server]\nallow_anonymous=true\n[deadletter]\nstore=\"s3\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "deadletter.store: \"s3\" is not a store",
            ),
            (
                "[server]\nallow_anonymous=true\n[deadletter]\nbucket=\"x\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "deadletter: unknown field `bucket`",
            ),
            (
                "[server.entra]\ntenant_id=\"\"\naudiences=[\"api://x\"]\njwks_file=\"keys.json\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "server.entra.tenant_id: must not be empty",
            ),
            (
                "[server]\nallow_anonymous=true\nmax_connections=0\nbody_timeout=\"slow\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "server.max_connections: must be at least 1",
            ),
            (
                "[server]\nallow_anonymous=true\nbody_timeout=\"slow\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "server.body_timeout: ",
            ),
            // Each dedup store takes only its own settings.
            (
                "[server]\nallow_anonymous=true\n[dedup]\nstore=\"memory\"\nurl=\"redis://127.0.0.1\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "dedup: unknown field `url`",
            ),
            (
                "[server]\nallow_anonymous=true\n[dedup]\nstore=\"memory\"\nmax_records=0\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "dedup.max_records: must be at least 1",
            ),
            (
                "[server]\nallow_anonymous=true\n[dedup]\nstore=\"redis\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "dedup.url: required with store = \"redis\"",
            ),
            (
                "[server]\nallow_anonymous=true\n[dedup]\nstore=\"redis\"\nurl=\"127.0.0.1:6379\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "dedup.url: not a Redis URL",
            ),
            (
                "[server]\nallow_anonymous=true\n[dedup]\nttl=\"0s\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "dedup.ttl: must be more than zero",
            ),
            (
                "[server]\nallow_anonymous=true\n[dedup]\nsync=\"sometimes\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "unknown variant `sometimes`, expected `always` or `interval`",
            ),
            (
                "[server]\nallow_anonymous=true\n[dedup]\nstore=\"memory\"\nsync=\"interval\"\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n",
                "dedup: unknown field `sync`",
            ),
            (
                &format!(
                    "[server]\nallow_anonymous=true\n[[handler]]\nname=\"{}\"\nmodule=\"h.wasm\"\n",
                    "a".repeat(65)
                ),
                ".name: use lowercase letters, digits, '-' and '_', 1 to 64",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nsubscriptions=[\"ok-sub\",\"no sub\"]\n",
                "handler[0] (h).subscriptions[1]: \"no sub\" is not an Event Grid subscription name",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nsubscriptions=[\"ab\"]\n",
                "handler[0] (h).subscriptions[0]: \"ab\" is not an Event Grid subscription name (3 to 64",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nmax_concurrency=0\n",
                "handler[0] (h).max_concurrency: must be at least 1",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nretry={attempts=11}\n",
                "handler[0] (h).retry.attempts: 11 is out of range",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\ncapabilities.allowed_outbound_hosts=[\"https://ok.example\",\"example.com\"]\n",
                "handler[0] (h).capabilities.allowed_outbound_hosts[1]: \"example.com\" needs a scheme",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nbatch=0\n",
                "handler[0] (h).batch: must be at least 1",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nbatch=true\ninstance_reuse=8\n",
                "handler[0] (h).batch: a batch runs in a fresh instance; it cannot be combined with instance_reuse",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nbatch=100\ncapabilities.publish=\"local\"\n",
                "handler[0] (h).batch: a batch handler cannot publish",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nbuild=\" \"\n",
                "handler[0] (h).build: must not be empty",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\nworkdir=\"src\"\n",
                "handler[0] (h).workdir: is where `build` runs, and there is no `build`",
            ),
            (
                "[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule=\"new.wasm\"\nbuild=\"make\"\n",
                "new.wasm does not exist (`gridfn up` runs the handler's build first)",
            ),
        ];
        for (text, expected) in cases {
            let found = problems(text);
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "manifest:\n{text}\nexpected a problem containing {expected:?}, got {found:?}"
            );
        }
    }

    #[test]
    fn subscriptions_name_the_handlers_their_endpoint_served_in_upper_case() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.wasm"), b"").unwrap();
        let text = "[server]\nallow_anonymous=true\n\
                    [[handler]]\nname=\"orders\"\nmodule=\"h.wasm\"\nsubscriptions=[\"orders-sub\", \"Shared-Sub\"]\n\
                    [[handler]]\nname=\"audit\"\nmodule=\"h.wasm\"\nsubscriptions=[\"SHARED-SUB\"]\n\
                    [[handler]]\nname=\"quiet\"\nmodule=\"h.wasm\"\n";
        let m = Manifest::parse(text, dir.path(), &|_| None).unwrap();
        let names = |h: &Handler| h.subscriptions.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(&m.handlers[0]), ["ORDERS-SUB", "SHARED-SUB"]);
        assert_eq!(names(&m.handlers[1]), ["SHARED-SUB"]);
        assert!(m.handlers[2].subscriptions.is_empty(), "none unless listed");
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first_section() {
        let text = "[server]\nkeys=[\"env:NOPE\", \"\"]\nmax_body=\"lots\"\n[dedup]\nstore=\"etcd\"\n[deadletter]\nstore=\"s3\"\n\
                    [[handler]]\nname=\"h\"\nmodule=\"missing.wasm\"\ntimeout=\"soon\"\nretry={backoff=\"linear\"}\n\
                    [[handler]]\nname=\"h\"\nmodule=\"h.wasm\"\n";
        let keys: Vec<String> = problems(text).iter().map(|p| p.split(": ").next().unwrap().to_owned()).collect();
        assert_eq!(
            keys,
            [
                "server.keys[0]",
                "server.keys[1]",
                "server.max_body",
                "dedup.store",
                "deadletter.store",
                "handler[0] (h).module",
                "handler[0] (h).timeout",
                "handler[0] (h).retry.backoff",
                "handler[1] (h).name",
            ]
        );
    }

    #[test]
    fn a_relative_folder_resolves_every_path_once() {
        // `gridfn serve --config app/gridfn.toml`: the base is relative to the
        // working directory, and the defaults under state_dir must not be
        // resolved against it a second time.
        let module = tempfile::NamedTempFile::new().unwrap();
        let text = format!("[server]\nallow_anonymous=true\n[[handler]]\nname=\"h\"\nmodule={:?}\n", module.path());
        let m = Manifest::parse(&text, Path::new("app"), &|_| None).unwrap();
        let state = std::env::current_dir().unwrap().join("app/.gridfn");
        assert_eq!(m.server.state_dir, state);
        assert_eq!(m.server.cache_dir, state.join("cache"));
        assert_eq!(m.dedup.store, DedupStore::Embedded { path: state.join("dedup"), sync: DedupSync::Always });
        assert!(matches!(&m.deadletter, DeadLetter::Dir { path } if *path == state.join("deadletter")));
        assert_eq!(m.handlers[0].module, module.path());

        let text = format!("{text}[dedup]\npath=\"records\"\nsync=\"interval\"\n[deadletter]\npath=\"/var/dl\"\n");
        let m = Manifest::parse(&text, Path::new("app"), &|_| None).unwrap();
        let records = std::env::current_dir().unwrap().join("app/records");
        assert_eq!(m.dedup.store, DedupStore::Embedded { path: records, sync: DedupSync::Interval });
        assert!(matches!(&m.deadletter, DeadLetter::Dir { path } if *path == Path::new("/var/dl")));
    }

    #[test]
    fn explain_reads_names_and_checked_filters_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gridfn.toml");
        let handlers = "[[handler]]\nname=\"a\"\nmodule=\"not-built.wasm\"\nfilter={includedEventTypes=[\"t\"]}\n\
                        [[handler]]\nname=\"b\"\nmodule=\"not-built.wasm\"\n";
        std::fs::write(&path, handlers).unwrap();
        let routes = Manifest::load_routes(&path).unwrap();
        assert_eq!(routes.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(routes[0].1.is_some() && routes[1].1.is_none());

        let bad = "[[handler]]\nname=\"a\"\nmodule=\"x.wasm\"\nfilter={subjectBeginsWith=\"\", advancedFilters=[{operatorType=\"NumberIn\", key=\"data.n\"}]}\n";
        std::fs::write(&path, bad).unwrap();
        let error = Manifest::load_routes(&path).unwrap_err();
        assert!(!error.problems.is_empty());
        assert!(error.problems.iter().all(|p| p.starts_with("handler[0] (a).filter.")), "{:?}", error.problems);
    }

    #[test]
    fn builds_are_read_before_their_modules_exist_and_run_in_the_manifests_folder_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gridfn.toml");
        let text = "[server]\nallow_anonymous=true\n\
                    [[handler]]\nname=\"a\"\nmodule=\"a/a.wasm\"\nbuild=\"make a\"\n\
                    [[handler]]\nname=\"b\"\nmodule=\"b/b.wasm\"\nbuild=\"make b\"\nworkdir=\"b\"\n\
                    [[handler]]\nname=\"c\"\nmodule=\"c.wasm\"\n";
        std::fs::write(&path, text).unwrap();
        let builds = Manifest::load_builds(&path).unwrap();
        let here = std::path::absolute(dir.path()).unwrap();
        assert_eq!(
            builds,
            [
                ("a".to_owned(), Some(Build { command: "make a".into(), workdir: here.clone() })),
                ("b".to_owned(), Some(Build { command: "make b".into(), workdir: here.join("b") })),
                ("c".to_owned(), None),
            ]
        );
        assert!(Manifest::load(&path).is_err(), "serving still needs the modules");

        for module in ["a/a.wasm", "b/b.wasm", "c.wasm"] {
            std::fs::create_dir_all(dir.path().join(module).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(module), b"").unwrap();
        }
        let manifest = Manifest::load(&path).unwrap();
        assert_eq!(manifest.handlers[1].build, builds[1].1);
        assert_eq!(manifest.handlers[2].build, None);
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0MiB").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
