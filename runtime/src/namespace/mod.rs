//! Event Grid namespace topics, served by gridfn itself: publishers
//! `:publish` CloudEvents to a topic, consumers pull them from its event
//! subscriptions (`:receive`) and settle each by lock token
//! (`:acknowledge`, `:release`, `:reject`, `:renewLock`), exactly as against
//! an Azure namespace, so an app that uses Azure's SDKs runs on a laptop by
//! changing only its endpoint and key.
//!
//! - [`config`]: `[namespace]` in the manifest: topics, subscriptions, limits.
//! - [`api`]: the data plane over HTTP: paths, keys, bodies, status and error codes.
//! - [`broker`]: the queues: filtering, locks, delivery counts, TTL, dead-lettering.
//! - [`store`]: the events and their delivery state on disk (fjall), synced per answer.

pub mod api;
pub mod broker;
pub mod config;
pub mod store;

use std::sync::Arc;

use crate::config::Manifest;
use crate::deadletter::DeadLetterStore;

/// Starts the namespace the manifest declares, if it declares one: its store
/// is `<state_dir>/namespace`, its dead letters go to `[deadletter]`.
pub async fn start(manifest: &Manifest) -> anyhow::Result<Option<Arc<broker::Broker>>> {
    let Some(namespace) = &manifest.namespace else { return Ok(None) };
    let deadletter = DeadLetterStore::open(&manifest.deadletter).await?;
    let path = manifest.server.state_dir.join("namespace");
    let entra = match &namespace.entra {
        Some(config) => Some(crate::entra::EntraValidator::new(config).await?.accept_any_app_unless_listed(config)),
        None => None,
    };
    let broker = broker::Broker::start(namespace, &path, deadletter, entra)?;
    let topics: Vec<String> = namespace.topics.iter().map(|t| t.name.to_string()).collect();
    tracing::info!("namespace {}: serving topic(s) {} at /topics/", namespace.name, topics.join(", "));
    Ok(Some(broker))
}
