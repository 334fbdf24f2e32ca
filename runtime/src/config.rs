//! The manifest (`gridfn.toml`): its types, its defaults, and the checks that
//! run before anything starts, so a mistake is reported once, naming its key,
//! instead of surfacing as a failed delivery later.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::deadletter::azure::AzureBlobConfig;
use crate::entra::EntraConfig;
use crate::filter::Filter;
use crate::outbound::AllowedHost;
use crate::publish::Topic;

/// The dedup store unless `dedup.store` says otherwise.
pub const DEFAULT_DEDUP_STORE: &str = "embedded";

/// Where `gridfn serve` listens unless the manifest or `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7071";

/// A manifest that has been read and checked: every path is absolute, every
/// key is resolved, every handler is valid.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub server: Server,
    pub dedup: Dedup,
    pub deadletter: DeadLetter,
    pub handlers: Vec<Handler>,
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
    /// (dead letters, compile cache); default `.gridfn` beside the manifest.
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

/// Event Grid's public, US Government and China clouds.
pub const EVENT_GRID_DOMAINS: [&str; 3] = ["eventgrid.azure.net", "eventgrid.azure.us", "eventgrid.azure.cn"];

/// `[dedup]`: how gridfn remembers which (handler, event) pairs are done.
#[derive(Debug, Clone)]
pub struct Dedup {
    /// `store` and its settings.
    pub store: DedupStore,
    /// `ttl`: how long a done pair is remembered; default 24h, Event Grid's
    /// longest retry window.
    pub ttl: Duration,
}

/// `dedup.store`: where done pairs are remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DedupStore {
    /// `"memory"`: per process, lost on restart; `max_records` (default
    /// 1,000,000) bounds it, forgetting the oldest records first.
    Memory { max_records: usize },
    /// `"embedded"` (the default): on disk at `path` (default
    /// `<state_dir>/dedup`), crash-safe, survives restarts.
    Embedded { path: PathBuf },
    /// `"redis"`: shared by several hosts through `url`, with in-flight
    /// leases so two hosts never run one event at once; keys start with
    /// `key_prefix` (default `gridfn:dedup:`).
    Redis { url: String, key_prefix: String },
}

/// Local retries of transient failures, before gridfn answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs in all, the first included; 1 means no local retry (the default).
    pub attempts: u32,
    /// Whether the delay doubles from `initial` up to `max`, or stays at `initial`.
    pub exponential: bool,
    pub initial: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        exponential: true,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };

    /// The pause before run number `run` (2 is the first retry), or `None`
    /// when the attempts are used up. A delay the handler asked for wins.
    pub fn delay_before(&self, run: u32, asked: Option<Duration>) -> Option<Duration> {
        if run > self.attempts {
            return None;
        }
        let computed = if self.exponential {
            self.initial.saturating_mul(1 << (run - 2).min(20)).min(self.max)
        } else {
            self.initial
        };
        Some(asked.unwrap_or(computed))
    }
}

/// `[deadletter]`: where rejected events are written, in Event Grid's
/// dead-letter blob layout and format.
#[derive(Debug, Clone)]
pub enum DeadLetter {
    /// `store = "dir"` (the default): a folder, `path` (default
    /// `<state_dir>/deadletter`).
    Dir { path: PathBuf },
    /// `store = "azure-blob"`: a container in Azure Blob Storage (or Azurite):
    /// `container`, `prefix`, and `connection_string` (or `account` with
    /// `access_key` or `sas_token`), `endpoint`, `create_container`. Secrets
    /// may be `env:NAME`.
    AzureBlob(AzureBlobConfig),
}

/// `[[handler]]`: one WebAssembly component and what it may use.
#[derive(Debug, Clone)]
pub struct Handler {
    /// `name`: used in URLs (`/api/events/{name}`), metrics and logs.
    pub name: String,
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
    /// delivery gets 503 + Retry-After. Default 1024.
    pub queue: usize,
    /// `fuel`: units of work per event (roughly one per wasm instruction);
    /// default unlimited (only the deadline applies).
    pub fuel: Option<u64>,
    /// `instance_reuse`: events one instance may serve in sequence before it
    /// is replaced; default 1 (a fresh instance per event). Never two events
    /// at once; an instance is dropped after any trap, timeout or retry.
    pub instance_reuse: u32,
    /// `[handler.capabilities]`: what the handler may use beyond logging.
    pub capabilities: Capabilities,
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

impl Manifest {
    /// Reads and checks the manifest at `path`; relative paths in it are
    /// relative to its folder.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let fail = |problem: String| ManifestError { file: path.to_owned(), problems: vec![problem] };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        Manifest::parse(&text, &base, &|name| std::env::var(name).ok())
            .map_err(|problems| ManifestError { file: path.to_owned(), problems })
    }

    /// Parses and checks manifest text; `env` resolves `env:NAME` keys.
    pub fn parse(text: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Manifest, Vec<String>> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| vec![toml_problem(&e)])?;
        let mut problems = Vec::new();
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let server = raw.server.unwrap_or_default();
        let listen = match server.listen.as_deref().unwrap_or(DEFAULT_LISTEN).parse() {
            Ok(addr) => addr,
            Err(e) => {
                problems.push(format!("server.listen: {e} (expected host:port, e.g. {DEFAULT_LISTEN})"));
                DEFAULT_LISTEN.parse().expect("default listen address parses")
            }
        };
        let admin_keys = resolve_keys(&server.admin_keys, "server.admin_keys", env, &mut problems);
        let keys = resolve_keys(&server.keys, "server.keys", env, &mut problems);
        if server.keys.is_empty() && server.entra.is_none() && !server.allow_anonymous {
            problems.push(
                "server.keys: no key configured; add one (e.g. keys = [\"env:GRIDFN_KEY\"]), configure [server.entra], or set allow_anonymous = true"
                    .into(),
            );
        }
        let mut server = server;
        if let Some(entra) = &mut server.entra {
            entra.jwks_file = entra.jwks_file.take().map(&resolve);
        }
        if let Some(entra) = &server.entra {
            problems.extend(entra.problems().into_iter().map(|p| format!("server.entra.{p}")));
        }
        let max_body = match server.max_body.as_deref().map(parse_size).transpose() {
            Ok(size) => size.unwrap_or(1024 * 1024 + 64 * 1024),
            Err(e) => {
                problems.push(format!("server.max_body: {e}"));
                0
            }
        };
        let max_connections = server.max_connections.unwrap_or(512);
        if max_connections == 0 {
            problems.push("server.max_connections: must be at least 1".into());
        }
        let header_timeout = duration_or(
            server.header_timeout.as_deref(),
            Duration::from_secs(30),
            "server.header_timeout",
            &mut problems,
        );
        let body_timeout =
            duration_or(server.body_timeout.as_deref(), Duration::from_secs(30), "server.body_timeout", &mut problems);
        let state_dir = resolve(server.state_dir.unwrap_or_else(|| ".gridfn".into()));
        let cache_dir = resolve(server.cache_dir.unwrap_or_else(|| state_dir.join("cache")));
        let event_grid_domains =
            server.event_grid_domains.unwrap_or_else(|| EVENT_GRID_DOMAINS.iter().map(|d| d.to_string()).collect());
        for (i, domain) in event_grid_domains.iter().enumerate() {
            if domain.is_empty() || domain.contains('/') || domain.contains(':') {
                problems.push(format!("server.event_grid_domains[{i}]: {domain:?} is not a domain name"));
            }
        }

        let dedup = raw.dedup.unwrap_or_default();
        let ttl = duration_or(dedup.ttl.as_deref(), Duration::from_secs(24 * 3600), "dedup.ttl", &mut problems);
        let dedup_store = match dedup.store.as_deref().unwrap_or(DEFAULT_DEDUP_STORE) {
            "memory" => DedupStore::Memory { max_records: dedup.max_records.unwrap_or(1_000_000) },
            "embedded" => DedupStore::Embedded { path: resolve(dedup.path.unwrap_or_else(|| state_dir.join("dedup"))) },
            "redis" => match dedup.url {
                Some(url) => {
                    DedupStore::Redis { url, key_prefix: dedup.key_prefix.unwrap_or_else(|| "gridfn:dedup:".into()) }
                }
                None => {
                    problems
                        .push("dedup.url: required with store = \"redis\" (e.g. \"redis://127.0.0.1:6379\")".into());
                    DedupStore::Memory { max_records: 1 }
                }
            },
            other => {
                problems.push(format!(
                    "dedup.store: \"{other}\" is not a store; use \"memory\", \"embedded\" or \"redis\""
                ));
                DedupStore::Memory { max_records: 1 }
            }
        };

        let deadletter = dead_letter(raw.deadletter.unwrap_or_default(), &state_dir, &resolve, env, &mut problems);

        let mut names = HashSet::new();
        let mut handlers = Vec::new();
        if raw.handler.is_empty() {
            problems.push("handler: no [[handler]] listed; gridfn has nothing to run".into());
        }
        for (i, h) in raw.handler.into_iter().enumerate() {
            let at = format!("handler[{i}] ({})", h.name);
            if !valid_name(&h.name) {
                problems.push(format!(
                    "{at}.name: use lowercase letters, digits, '-' and '_' (it appears in URLs and file names)"
                ));
            }
            if !names.insert(h.name.clone()) {
                problems.push(format!("{at}.name: another handler has this name"));
            }
            let module = resolve(h.module);
            if !module.is_file() {
                problems.push(format!("{at}.module: {} does not exist (build the handler first)", module.display()));
            }
            let timeout =
                duration_or(h.timeout.as_deref(), Duration::from_secs(10), &format!("{at}.timeout"), &mut problems);
            let memory = match h.memory.as_deref().map(parse_size).transpose() {
                Ok(size) => size.unwrap_or(64 << 20),
                Err(e) => {
                    problems.push(format!("{at}.memory: {e}"));
                    0
                }
            };
            if let Some(filter) = &h.filter {
                for problem in filter.problems() {
                    problems.push(format!("{at}.filter.{problem}"));
                }
            }
            let retry = match &h.retry {
                None => RetryPolicy::NONE,
                Some(raw) => retry_policy(raw, &format!("{at}.retry"), &mut problems),
            };
            let positive = |value: Option<u64>, key: &str, default: u64, problems: &mut Vec<String>| match value {
                Some(0) => {
                    problems.push(format!("{at}.{key}: must be at least 1"));
                    default
                }
                Some(n) => n,
                None => default,
            };
            let max_concurrency = positive(h.max_concurrency, "max_concurrency", 16, &mut problems) as usize;
            let queue = h.queue.unwrap_or(1024) as usize;
            let instance_reuse =
                positive(h.instance_reuse, "instance_reuse", 1, &mut problems).min(u32::MAX as u64) as u32;
            let fuel = h.fuel.map(|f| positive(Some(f), "fuel", 1, &mut problems));
            handlers.push(Handler {
                name: h.name,
                module,
                timeout,
                memory,
                filter: h.filter,
                retry,
                max_concurrency,
                queue,
                fuel,
                instance_reuse,
                capabilities: Capabilities {
                    config: h.capabilities.config.map(|values| {
                        values
                            .into_iter()
                            .map(|(key, value)| {
                                let value = match value.strip_prefix("env:") {
                                    Some(var) => env(var).unwrap_or_else(|| {
                                        problems.push(format!(
                                            "{at}.capabilities.config.{key}: environment variable {var} is not set"
                                        ));
                                        String::new()
                                    }),
                                    None => value,
                                };
                                (key, value)
                            })
                            .collect()
                    }),
                    kv: h.capabilities.kv,
                    log: h.capabilities.log.unwrap_or(true),
                    allowed_outbound_hosts: h
                        .capabilities
                        .allowed_outbound_hosts
                        .iter()
                        .enumerate()
                        .filter_map(|(n, entry)| {
                            AllowedHost::parse(entry)
                                .map_err(|e| {
                                    problems.push(format!("{at}.capabilities.allowed_outbound_hosts[{n}]: {e}"))
                                })
                                .ok()
                        })
                        .collect(),
                    publish: h.capabilities.publish.and_then(|raw| publish_topic(raw, &at, env, &mut problems)),
                },
            });
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Manifest {
            server: Server {
                listen,
                keys,
                allow_anonymous: server.allow_anonymous,
                max_body,
                state_dir,
                cache_dir,
                validation: server.validation.unwrap_or(Validation::Sync),
                event_grid_domains,
                entra: server.entra,
                admin_keys,
                watch: server.watch.map(&resolve),
                max_connections,
                header_timeout,
                body_timeout,
            },
            dedup: Dedup { store: dedup_store, ttl },
            deadletter,
            handlers,
        })
    }

    pub fn handler(&self, name: &str) -> Option<&Handler> {
        self.handlers.iter().find(|h| h.name == name)
    }

    /// Only the routing part of a manifest: each handler's name and filter,
    /// with the filters checked. For `gridfn explain`, which needs neither
    /// built modules nor keys.
    pub fn load_routes(path: &Path) -> Result<Vec<(String, Option<Filter>)>, ManifestError> {
        let fail = |problems: Vec<String>| ManifestError { file: path.to_owned(), problems };
        let text = std::fs::read_to_string(path).map_err(|e| fail(vec![format!("cannot read it: {e}")]))?;
        let raw: RawManifest = toml::from_str(&text).map_err(|e| fail(vec![toml_problem(&e)]))?;
        let problems: Vec<String> = raw
            .handler
            .iter()
            .enumerate()
            .flat_map(|(i, h)| {
                let filter_problems = h.filter.as_ref().map(Filter::problems).unwrap_or_default();
                filter_problems.into_iter().map(move |p| format!("handler[{i}] ({}).filter.{p}", h.name))
            })
            .collect();
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(raw.handler.into_iter().map(|h| (h.name, h.filter)).collect())
    }
}

/// `[deadletter]`: `store` picks the kind; the rest of the table is that
/// kind's settings.
fn dead_letter(
    mut table: toml::Table,
    state_dir: &Path,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> DeadLetter {
    let store = table.remove("store");
    let default_dir = || DeadLetter::Dir { path: state_dir.join("deadletter") };
    match store.as_ref().map(|s| s.as_str()) {
        None | Some(Some("dir")) => match table.try_into::<RawDeadLetterDir>() {
            Ok(dir) => DeadLetter::Dir { path: resolve(dir.path.unwrap_or_else(|| state_dir.join("deadletter"))) },
            Err(e) => {
                problems.push(format!("deadletter: {}", e.message()));
                default_dir()
            }
        },
        Some(Some("azure-blob")) => {
            for secret in ["connection_string", "access_key", "sas_token"] {
                let Some(toml::Value::String(value)) = table.get(secret) else { continue };
                let Some(var) = value.strip_prefix("env:") else { continue };
                match env(var) {
                    Some(resolved) => {
                        table.insert(secret.into(), resolved.into());
                    }
                    None => problems.push(format!("deadletter.{secret}: environment variable {var} is not set")),
                }
            }
            match table.try_into::<AzureBlobConfig>() {
                Ok(config) => {
                    problems.extend(config.problems().into_iter().map(|p| format!("deadletter.{p}")));
                    DeadLetter::AzureBlob(config)
                }
                Err(e) => {
                    problems.push(format!("deadletter: {}", e.message()));
                    default_dir()
                }
            }
        }
        _ => {
            problems
                .push(format!("deadletter.store: {} is not a store; use \"dir\" or \"azure-blob\"", store.unwrap()));
            default_dir()
        }
    }
}

/// Resolves literal and `env:NAME` keys, naming each problem's key.
fn resolve_keys(
    keys: &[String],
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Vec<String> {
    let mut resolved = Vec::new();
    for (i, value) in keys.iter().enumerate() {
        match value.strip_prefix("env:") {
            Some(var) => match env(var) {
                Some(value) if !value.is_empty() => resolved.push(value),
                _ => problems.push(format!(
                    "{key}[{i}]: environment variable {var} is not set (export it, or list the key itself)"
                )),
            },
            None if value.is_empty() => problems.push(format!("{key}[{i}]: empty key")),
            None => resolved.push(value.clone()),
        }
    }
    resolved
}

fn retry_policy(raw: &RawRetry, key: &str, problems: &mut Vec<String>) -> RetryPolicy {
    let attempts = raw.attempts.unwrap_or(3);
    if !(1..=10).contains(&attempts) {
        problems.push(format!("{key}.attempts: {attempts} is out of range (1 to 10)"));
    }
    let exponential = match raw.backoff.as_deref().unwrap_or("exponential") {
        "exponential" => true,
        "fixed" => false,
        other => {
            problems.push(format!("{key}.backoff: \"{other}\" is not a backoff; use \"exponential\" or \"fixed\""));
            true
        }
    };
    let initial = duration_or(raw.initial.as_deref(), RetryPolicy::NONE.initial, &format!("{key}.initial"), problems);
    let max = duration_or(raw.max.as_deref(), RetryPolicy::NONE.max, &format!("{key}.max"), problems);
    RetryPolicy { attempts, exponential, initial, max }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn duration_or(text: Option<&str>, default: Duration, key: &str, problems: &mut Vec<String>) -> Duration {
    match text.map(humantime::parse_duration).transpose() {
        Ok(Some(d)) if d.is_zero() => {
            problems.push(format!("{key}: must be more than zero"));
            default
        }
        Ok(d) => d.unwrap_or(default),
        Err(e) => {
            problems.push(format!("{key}: {e} (write e.g. \"500ms\", \"10s\", \"24h\")"));
            default
        }
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

fn toml_problem(e: &toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', "\n    ")
}

// What the file says, before defaults and checks.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    server: Option<RawServer>,
    dedup: Option<RawDedup>,
    deadletter: Option<toml::Table>,
    #[serde(default)]
    handler: Vec<RawHandler>,
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
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDedup {
    store: Option<String>,
    ttl: Option<String>,
    max_records: Option<usize>,
    path: Option<PathBuf>,
    url: Option<String>,
    key_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    backoff: Option<String>,
    initial: Option<String>,
    max: Option<String>,
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
    #[serde(default)]
    capabilities: RawCapabilities,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    config: Option<HashMap<String, String>>,
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

fn publish_topic(
    raw: RawPublish,
    at: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<Topic> {
    let key_name = format!("{at}.capabilities.publish");
    match raw {
        RawPublish::Named(name) if name == "local" => Some(Topic::Local),
        RawPublish::Named(other) => {
            problems.push(format!(
                "{key_name}: {other:?} is not a topic; use \"local\" or {{ endpoint = \"https://<topic>.<region>-1.eventgrid.azure.net/api/events\", key = \"env:TOPIC_KEY\" }}"
            ));
            None
        }
        RawPublish::EventGrid { endpoint, key } => {
            let endpoint = match Url::parse(&endpoint) {
                Ok(url) if matches!(url.scheme(), "https" | "http") => url,
                _ => {
                    problems.push(format!("{key_name}.endpoint: {endpoint:?} is not an http(s) URL"));
                    return None;
                }
            };
            let key = resolve_keys(&[key], &format!("{key_name}.key"), env, problems).pop()?;
            Some(Topic::EventGrid { endpoint, key })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.wasm"), b"").unwrap();
        match Manifest::parse(text, dir.path(), &|name| (name == "KEY").then(|| "secret".to_string())) {
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
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0MiB").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
