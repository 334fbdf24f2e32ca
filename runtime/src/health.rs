//! `/healthz` and `/readyz`, for load balancers and Kubernetes probes.
//!
//! - `GET /healthz`: 200 whenever the process serves HTTP (a liveness probe:
//!   restart gridfn only when this fails).
//! - `GET /readyz`: 200 when an event could be handled now: the handlers are
//!   compiled (always true once gridfn serves: they are compiled before the
//!   socket binds) and the dedup and dead-letter stores answer. 503 with the
//!   reasons otherwise, e.g. while Redis is down; it recovers by itself when
//!   the store is back (a readiness probe: take gridfn out of the balancer,
//!   don't restart it).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::host::Host;

/// How long a store may take to answer a readiness check before it counts
/// as down (probes themselves time out after a second by default).
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// `/readyz`'s answer.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Handlers compiled and serving.
    pub handlers: usize,
    /// What is not ready, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(host): State<Arc<Host>>) -> Response {
    let handlers = host.registry.routes().len();
    let problems = host.pipeline.unreachable_stores(CHECK_TIMEOUT).await;
    let readiness = Readiness { ready: problems.is_empty(), handlers, problems };
    if !readiness.ready {
        tracing::warn!(problems = ?readiness.problems, "not ready");
    }
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness)).into_response()
}
