//! New handler versions while serving: the admin API behind `gridfn deploy`,
//! `gridfn handlers` and `gridfn rollback`, and the record of deployed
//! versions on disk (`<state_dir>/deployments/<handler>/`), so a restart runs
//! what was deployed last rather than silently going back to the manifest's
//! module.
//!
//! A new version is compiled and checked against the contract before it takes
//! traffic; a module that does not implement the world is refused with the
//! reason. The swap is atomic; events in flight finish on the version they
//! started on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::delivery::{Host, Route};
use crate::sandbox::{LoadedHandler, version_of};

/// The largest module `gridfn deploy` accepts.
pub const MAX_MODULE: usize = 256 << 20;

/// The header that carries an admin key (separate from delivery keys).
pub const ADMIN_KEY_HEADER: &str = "x-gridfn-admin-key";

/// Deployed versions on disk: `<version>.wasm` files and a `current` file
/// naming the one that runs.
pub struct Deployments {
    root: PathBuf,
}

impl Deployments {
    pub fn new(state_dir: &Path) -> Self {
        Deployments { root: state_dir.join("deployments") }
    }

    /// The module deployed last for `handler`, if any, and where it is.
    pub fn current(&self, handler: &str) -> anyhow::Result<Option<(Vec<u8>, String)>> {
        let folder = self.root.join(handler);
        let Ok(version) = std::fs::read_to_string(folder.join("current")) else { return Ok(None) };
        let path = folder.join(format!("{}.wasm", version.trim()));
        let bytes = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!("handler {handler}: deployed version {} is unreadable: {e}", path.display())
        })?;
        Ok(Some((bytes, "deploy".to_owned())))
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

/// One handler, as `GET /admin/handlers` lists it.
#[derive(Serialize)]
pub struct HandlerVersion {
    pub name: String,
    pub version: String,
    pub source: String,
    pub deployed_at: String,
    pub previous_version: Option<String>,
}

fn describe(route: &Route) -> HandlerVersion {
    let current = route.handler();
    let previous = route.previous.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|p| p.version.clone());
    HandlerVersion {
        name: route.config.name.clone(),
        version: current.version.clone(),
        source: current.source.clone(),
        deployed_at: current.loaded_at.format(&Rfc3339).unwrap_or_default(),
        previous_version: previous,
    }
}

/// Why an admin request failed; each variant states its status.
enum AdminError {
    Disabled,
    Unauthorized,
    UnknownHandler(String),
    Refused(String),
    NoPrevious(String),
    Internal(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            AdminError::Disabled => (
                StatusCode::NOT_FOUND,
                "admin_disabled",
                "the admin API is off: set server.admin_keys to turn it on".to_owned(),
            ),
            AdminError::Unauthorized => {
                (StatusCode::UNAUTHORIZED, "unauthorized", format!("missing or wrong {ADMIN_KEY_HEADER} header"))
            }
            AdminError::UnknownHandler(name) => {
                (StatusCode::NOT_FOUND, "unknown_handler", format!("no handler named {name:?} in this gridfn"))
            }
            AdminError::Refused(reason) => (StatusCode::UNPROCESSABLE_ENTITY, "refused", reason),
            AdminError::NoPrevious(name) => {
                (StatusCode::CONFLICT, "no_previous_version", format!("{name} has no previous version to roll back to"))
            }
            AdminError::Internal(reason) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", reason),
        };
        (status, Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

impl Host {
    fn admin(&self, headers: &HeaderMap) -> Result<(), AdminError> {
        if self.admin_keys.is_empty() {
            return Err(AdminError::Disabled);
        }
        let presented = headers.get(ADMIN_KEY_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if crate::webhook::is_one_of(&self.admin_keys, presented) { Ok(()) } else { Err(AdminError::Unauthorized) }
    }

    fn route(&self, name: &str) -> Result<&Route, AdminError> {
        self.routes.iter().find(|r| r.config.name == name).ok_or_else(|| AdminError::UnknownHandler(name.to_owned()))
    }

    /// Makes `new` the running version of `route`, keeping the old one for a
    /// rollback.
    fn swap(route: &Route, new: Arc<LoadedHandler>) -> Arc<LoadedHandler> {
        let old = std::mem::replace(&mut *route.current.write().unwrap_or_else(|e| e.into_inner()), new);
        *route.previous.lock().unwrap_or_else(|e| e.into_inner()) = Some(old.clone());
        old
    }
}

/// `GET /admin/handlers`
pub async fn list(State(host): State<Arc<Host>>, headers: HeaderMap) -> Response {
    if let Err(e) = host.admin(&headers) {
        return e.into_response();
    }
    Json(host.routes.iter().map(describe).collect::<Vec<_>>()).into_response()
}

/// `PUT /admin/handlers/{name}` with the module as the body.
pub async fn deploy(
    State(host): State<Arc<Host>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    module: Bytes,
) -> Response {
    let result = match host.admin(&headers) {
        Ok(()) => host.deploy_module(&name, module).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(version) => Json(version).into_response(),
        Err(e) => e.into_response(),
    }
}

impl Host {
    /// Compiles and checks `module`, keeps it on disk, and makes it the
    /// running version of handler `name`.
    async fn deploy_module(&self, name: &str, module: Bytes) -> Result<HandlerVersion, AdminError> {
        let route = self.route(name)?;
        let (sandbox, config) = (self.sandbox.clone(), route.config.clone());
        let compiled = {
            let module = module.clone();
            tokio::task::spawn_blocking(move || sandbox.load_bytes(&config, &module, "deploy"))
        };
        let new = compiled.await.map_err(|e| AdminError::Internal(e.to_string()))?.map_err(|e| {
            tracing::warn!(handler = %name, "deploy refused: {e:#}");
            AdminError::Refused(format!("{e:#}"))
        })?;
        self.deployments.record(name, &module).map_err(|e| AdminError::Internal(format!("keeping the module: {e}")))?;
        let old = Host::swap(route, Arc::new(new));
        tracing::warn!(handler = %name, from = %old.version, to = %route.handler().version, "deployed a new version");
        Ok(describe(route))
    }

    /// Deploys `<name>.wasm` files that appear or change in `folder`, for
    /// handlers of that name, checking every `every`; runs until the host is
    /// dropped. A refused module is logged and left alone until it changes.
    pub async fn watch_folder(self: Arc<Self>, folder: PathBuf, every: std::time::Duration) {
        let mut tried: std::collections::HashMap<String, String> = Default::default();
        loop {
            for route in &self.routes {
                let name = &route.config.name;
                let Ok(bytes) = tokio::fs::read(folder.join(format!("{name}.wasm"))).await else { continue };
                let version = version_of(&bytes);
                if version == route.handler().version || tried.get(name) == Some(&version) {
                    continue;
                }
                tried.insert(name.clone(), version);
                if let Err(e) = self.deploy_module(name, bytes.into()).await {
                    let (AdminError::Refused(reason) | AdminError::Internal(reason)) = e else { continue };
                    tracing::error!(handler = %name, "not deploying {name}.wasm from {}: {reason}", folder.display());
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// `POST /admin/handlers/{name}/rollback`
pub async fn rollback(State(host): State<Arc<Host>>, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    let result: Result<HandlerVersion, AdminError> = (|| {
        host.admin(&headers)?;
        let route = host.route(&name)?;
        let previous = route.previous.lock().unwrap_or_else(|e| e.into_inner()).take();
        let previous = previous.ok_or_else(|| AdminError::NoPrevious(name.clone()))?;
        // A restart must run what the rollback chose: a deployed version by
        // its record, the manifest's module by having no record.
        let recorded = if previous.source.starts_with("deploy") {
            host.deployments.set_current(&name, &previous.version)
        } else {
            host.deployments.forget(&name)
        };
        recorded.map_err(|e| AdminError::Internal(format!("recording the rollback: {e}")))?;
        let replaced = Host::swap(route, previous);
        tracing::warn!(handler = %name, from = %replaced.version, to = %route.handler().version, "rolled back");
        Ok(describe(route))
    })();
    match result {
        Ok(version) => Json(version).into_response(),
        Err(e) => e.into_response(),
    }
}
