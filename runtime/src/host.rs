//! Wiring: every part of a running gridfn, built once from the manifest
//! before the socket binds (engine and handlers compiled, stores opened,
//! credentials loaded), each handed only what it needs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Manifest;
use crate::deadletter::DeadLetterStore;
use crate::dedup::Dedup;
use crate::entra::EntraValidator;
use crate::kv::KvStore;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::push::Webhook;
use crate::registry::Registry;
use crate::sandbox::Sandbox;
use crate::webhook::{Authenticator, EventGridDomains};

/// A started gridfn: what the HTTP routes and the background tasks share.
pub struct Host {
    pub registry: Arc<Registry>,
    pub pipeline: Arc<Pipeline>,
    /// The push source (Event Grid's webhook).
    pub webhook: Arc<Webhook>,
    pub metrics: Arc<Metrics>,
    /// The handlers' kv store (when any handler is granted `kv`), for the
    /// admin API's listing.
    pub kv: Option<Arc<dyn KvStore>>,
    /// `server.admin_keys`; the admin API is off without one.
    pub admin_keys: Vec<String>,
    /// `server.watch`: the folder watched for new handler versions.
    pub watch: Option<PathBuf>,
    /// What clients may hold, and how long shutdown waits.
    pub limits: Limits,
    /// The namespace topics gridfn serves, when the manifest has `[namespace]`.
    pub namespace: Option<Arc<crate::namespace::broker::Broker>>,
    /// `[[pull]]`: the namespace subscriptions the server pulls from.
    pub pulls: Vec<crate::pull::config::Pull>,
}

/// Limits on what clients can hold, and how long shutdown waits
/// ([`crate::server::serve`] applies them).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub drain: Duration,
}

/// How long shutdown waits beyond the longest handler deadline, for the
/// durable commit and the answer.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

impl Host {
    /// Compiles every handler (or takes it from the compile cache) and opens
    /// the stores. Fails if any handler does not fit the contract or a store
    /// cannot be reached.
    pub async fn start(manifest: &Manifest) -> anyhow::Result<Host> {
        // The handlers' kv lives in the dedup store, which writes it with the records.
        let (store, kv) = crate::dedup::open(&manifest.dedup.store, &manifest.server.state_dir).await?;
        let kv = manifest.handlers.iter().any(|h| h.capabilities.kv).then_some(kv);
        let sandbox = Arc::new(Sandbox::for_manifest(manifest, kv.clone())?);
        let registry = Arc::new(Registry::load(manifest, sandbox)?);
        let entra = match &manifest.server.entra {
            Some(config) => Some(EntraValidator::new(config).await?),
            None => None,
        };
        if manifest.server.allow_anonymous && manifest.server.keys.is_empty() && entra.is_none() {
            tracing::warn!(
                "ANONYMOUS ACCESS: server.allow_anonymous is set and no key is configured; anyone who can reach this port can deliver events"
            );
        }
        let dedup = Dedup::new(store, manifest.dedup.ttl);
        let deadletter = DeadLetterStore::open(&manifest.deadletter).await?;
        let metrics = Arc::new(
            Metrics::new(manifest.handlers.iter().map(|h| h.name.as_str()))
                .with_pull_sources(crate::pull::sources(manifest)),
        );
        let pipeline = Arc::new(Pipeline::new(registry.clone(), dedup, deadletter, metrics.clone()));
        let webhook = Arc::new(Webhook {
            pipeline: pipeline.clone(),
            auth: Authenticator::new(&manifest.server.keys, manifest.server.allow_anonymous, entra),
            validation: manifest.server.validation,
            domains: EventGridDomains::new(&manifest.server.event_grid_domains),
            max_body: manifest.server.max_body,
            body_timeout: manifest.server.body_timeout,
        });
        let namespace = crate::namespace::start(manifest).await?;
        let longest_deadline = manifest.handlers.iter().map(|h| h.timeout).max().unwrap_or_default();
        let limits = Limits {
            max_connections: manifest.server.max_connections,
            header_timeout: manifest.server.header_timeout,
            drain: longest_deadline + DRAIN_MARGIN,
        };
        Ok(Host {
            registry,
            pipeline,
            webhook,
            metrics,
            kv,
            admin_keys: manifest.server.admin_keys.clone(),
            watch: manifest.server.watch.clone(),
            limits,
            namespace,
            pulls: manifest.pull.clone(),
        })
    }

    pub fn handler_names(&self) -> impl Iterator<Item = &str> {
        self.registry.routes().iter().map(|r| r.config.name.as_str())
    }
}
