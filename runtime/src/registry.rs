//! The handler registry: every handler the manifest lists, the version of
//! each that runs now, and how versions change while gridfn serves (deploy,
//! rollback, the watched folder). No HTTP here: the admin API
//! ([`crate::admin`]) and the folder watcher both call [`Registry::deploy`].
//!
//! A new version is compiled and checked against the contract before it takes
//! traffic; a module that does not implement the world is refused with the
//! reason. The swap is atomic; events in flight finish on the version they
//! started on. Deployed versions are kept on disk
//! (`<state_dir>/deployments/<handler>/`), so a restart runs what was deployed
//! last rather than silently going back to the manifest's module.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;

use crate::admission::Admission;
use crate::config::{self, Manifest};
use crate::event::Event;
use crate::sandbox::{LoadedHandler, MAX_INSTANCES, Sandbox, version_of};

/// Every handler, in manifest order.
pub struct Registry {
    routes: Vec<Route>,
    /// Compiles new versions.
    sandbox: Arc<Sandbox>,
    kept: KeptVersions,
}

/// A handler as the manifest lists it (filter, retries, limits), and the
/// version of it that runs now.
pub struct Route {
    pub config: config::Handler,
    /// Swapped atomically by a deploy; an event takes its own reference at
    /// the start, so events in flight finish on the version they started on.
    current: RwLock<Arc<LoadedHandler>>,
    /// What a rollback goes back to.
    previous: Mutex<Option<Arc<LoadedHandler>>>,
    /// When its events may start an instance.
    pub admission: Admission,
}

/// One handler, as `gridfn handlers` lists it.
#[derive(Debug, Serialize)]
pub struct HandlerVersion {
    pub name: String,
    pub version: String,
    pub source: String,
    pub deployed_at: String,
    pub previous_version: Option<String>,
}

/// Why a deploy or rollback did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("no handler named {0:?} in this gridfn")]
    UnknownHandler(String),
    /// The module does not compile or does not fit the contract.
    #[error("{0}")]
    Refused(String),
    #[error("{0} has no previous version to roll back to")]
    NoPrevious(String),
    /// Keeping the version on disk failed; nothing changed.
    #[error("{0}")]
    Storage(String),
}

impl Registry {
    /// Loads every handler of the manifest: the version deployed last if
    /// there is one, else the manifest's module.
    pub fn load(manifest: &Manifest, sandbox: Arc<Sandbox>) -> anyhow::Result<Registry> {
        let kept = KeptVersions { root: manifest.server.state_dir.join("deployments") };
        let pool = Arc::new(Semaphore::new(MAX_INSTANCES as usize));
        let cpu_share = Admission::cpu_share(manifest.handlers.len());
        let routes = manifest
            .handlers
            .iter()
            .map(|h| {
                let handler = match kept.current(&h.name)? {
                    Some(bytes) => {
                        tracing::warn!(handler = %h.name, "running the version deployed last, not {}", h.module.display());
                        sandbox.load_bytes(h, &bytes, "deploy")?
                    }
                    None => sandbox.load(h)?,
                };
                let max_concurrency = h.max_concurrency.min(MAX_INSTANCES as usize);
                Ok(Route {
                    config: h.clone(),
                    current: RwLock::new(Arc::new(handler)),
                    previous: Mutex::new(None),
                    admission: Admission::new(max_concurrency, h.queue, cpu_share, pool.clone()),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Registry { routes, sandbox, kept })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.config.name == name)
    }

    fn known(&self, name: &str) -> Result<&Route, DeployError> {
        self.route(name).ok_or_else(|| DeployError::UnknownHandler(name.to_owned()))
    }

    pub fn list(&self) -> Vec<HandlerVersion> {
        self.routes.iter().map(Route::describe).collect()
    }

    /// Compiles and checks `module`, keeps it on disk, and makes it the
    /// running version of handler `name`.
    pub async fn deploy(&self, name: &str, module: Vec<u8>) -> Result<HandlerVersion, DeployError> {
        let route = self.known(name)?;
        let (sandbox, config) = (self.sandbox.clone(), route.config.clone());
        // Compiling is CPU-heavy on a cache miss: off the runtime's workers.
        let (new, module) =
            tokio::task::spawn_blocking(move || (sandbox.load_bytes(&config, &module, "deploy"), module))
                .await
                .map_err(|e| DeployError::Storage(format!("compiling the module: {e}")))?;
        let new = new.map_err(|e| {
            tracing::warn!(handler = %name, "deploy refused: {e:#}");
            DeployError::Refused(format!("{e:#}"))
        })?;
        self.kept.record(name, &module).map_err(|e| DeployError::Storage(format!("keeping the module: {e}")))?;
        let old = route.swap(Arc::new(new));
        tracing::warn!(handler = %name, from = %old.version, to = %route.handler().version, "deployed a new version");
        Ok(route.describe())
    }

    /// Puts handler `name`'s previous version back, and records the choice
    /// so a restart runs it too.
    pub fn rollback(&self, name: &str) -> Result<HandlerVersion, DeployError> {
        let route = self.known(name)?;
        let previous = route.previous.lock().unwrap_or_else(|e| e.into_inner()).take();
        let previous = previous.ok_or_else(|| DeployError::NoPrevious(name.to_owned()))?;
        // A deployed version by its record, the manifest's module by having no record.
        let recorded = match previous.source == "deploy" {
            true => self.kept.set_current(name, &previous.version),
            false => self.kept.forget(name),
        };
        if let Err(e) = recorded {
            *route.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(previous);
            return Err(DeployError::Storage(format!("recording the rollback: {e}")));
        }
        let replaced = route.swap(previous);
        tracing::warn!(handler = %name, from = %replaced.version, to = %route.handler().version, "rolled back");
        Ok(route.describe())
    }

    /// Deploys `<name>.wasm` files that appear or change in `folder`, for
    /// handlers of that name, checking every `every`; runs until dropped. A
    /// refused module is logged and left alone until it changes.
    pub async fn watch_folder(self: Arc<Self>, folder: PathBuf, every: std::time::Duration) {
        let mut tried: std::collections::HashMap<String, String> = Default::default();
        loop {
            for route in &self.routes {
                let name = route.config.name.as_str();
                let Ok(bytes) = tokio::fs::read(folder.join(format!("{name}.wasm"))).await else { continue };
                let version = version_of(&bytes);
                if version == route.handler().version || tried.get(name) == Some(&version) {
                    continue;
                }
                tried.insert(name.to_owned(), version);
                if let Err(e) = self.deploy(name, bytes).await {
                    tracing::error!(handler = %name, "not deploying {name}.wasm from {}: {e}", folder.display());
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

impl Route {
    /// The version running now.
    pub fn handler(&self) -> Arc<LoadedHandler> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether this handler's filter lets `event` through; `json` holds the
    /// event parsed, shared by every handler's filter.
    pub fn wants(&self, event: &Event, json: &std::cell::OnceCell<serde_json::Value>) -> bool {
        let Some(filter) = &self.config.filter else { return true };
        let json = json.get_or_init(|| serde_json::from_str(event.raw.get()).unwrap_or(serde_json::Value::Null));
        filter.matches(json, event.schema)
    }

    /// Makes `new` the running version, keeping the old one for a rollback.
    fn swap(&self, new: Arc<LoadedHandler>) -> Arc<LoadedHandler> {
        let old = std::mem::replace(&mut *self.current.write().unwrap_or_else(|e| e.into_inner()), new);
        *self.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(old.clone());
        old
    }

    fn describe(&self) -> HandlerVersion {
        let current = self.handler();
        let previous = self.previous.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.version.clone());
        HandlerVersion {
            name: self.config.name.to_string(),
            version: current.version.clone(),
            source: current.source.clone(),
            deployed_at: current.loaded_at.format(&Rfc3339).unwrap_or_default(),
            previous_version: previous,
        }
    }
}

/// Deployed versions on disk: `<version>.wasm` files and a `current` file
/// naming the one that runs.
struct KeptVersions {
    root: PathBuf,
}

impl KeptVersions {
    /// The module deployed last for `handler`, if any.
    fn current(&self, handler: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let folder = self.root.join(handler);
        let Ok(version) = std::fs::read_to_string(folder.join("current")) else { return Ok(None) };
        let path = folder.join(format!("{}.wasm", version.trim()));
        let bytes = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!("handler {handler}: deployed version {} is unreadable: {e}", path.display())
        })?;
        Ok(Some(bytes))
    }

    /// Keeps `bytes` and makes them the current version, durably.
    fn record(&self, handler: &str, bytes: &[u8]) -> std::io::Result<()> {
        let folder = self.root.join(handler);
        std::fs::create_dir_all(&folder)?;
        write_atomically(&folder.join(format!("{}.wasm", version_of(bytes))), bytes)?;
        self.set_current(handler, &version_of(bytes))
    }

    fn set_current(&self, handler: &str, version: &str) -> std::io::Result<()> {
        write_atomically(&self.root.join(handler).join("current"), version.as_bytes())
    }

    /// Goes back to the manifest's module at the next start.
    fn forget(&self, handler: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.root.join(handler).join("current")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, bytes)?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, path)
}
