//! The HTTP surface: routes, body limits, and a `serve` that stops when its
//! `shutdown` future completes, so tests and signals drive it alike.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::delivery::{Host, Target};
use crate::error::RequestError;

/// The routes, over a started [`Host`].
pub fn app(host: Arc<Host>) -> Router {
    Router::new()
        .route("/api/events", post(all_handlers).options(abuse_protection))
        .route("/api/events/{handler}", post(one_handler).options(abuse_protection))
        .route("/runtime/webhooks/eventgrid", post(functions_style).options(abuse_protection))
        .route("/healthz", get(|| async { "ok" }))
        .route("/admin/handlers", get(crate::deploy::list))
        .route(
            "/admin/handlers/{handler}",
            axum::routing::put(crate::deploy::deploy)
                .layer(axum::extract::DefaultBodyLimit::max(crate::deploy::MAX_MODULE)),
        )
        .route("/admin/handlers/{handler}/rollback", post(crate::deploy::rollback))
        .route("/metrics", get(metrics))
        .with_state(host)
}

/// Serves `host` on `listener` until `shutdown` completes, then lets requests
/// in flight finish.
pub async fn serve(
    listener: TcpListener,
    host: Arc<Host>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = tokio::spawn({
        let host = host.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                host.sweep().await;
            }
        }
    });
    let watcher =
        host.watch.clone().map(|folder| tokio::spawn(host.clone().watch_folder(folder, Duration::from_secs(1))));
    let result = axum::serve(listener, app(host)).with_graceful_shutdown(shutdown).await;
    sweeper.abort();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    result
}

type Params = Query<HashMap<String, String>>;

async fn all_handlers(
    State(host): State<Arc<Host>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    deliver(&host, Target::All, &params, &headers, body).await
}

async fn one_handler(
    State(host): State<Arc<Host>>,
    Path(handler): Path<String>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    deliver(&host, Target::Handler(&handler), &params, &headers, body).await
}

/// Azure Functions' URL shape, so a subscription made for a Function App can
/// point at gridfn unchanged: `?functionName=NAME`.
async fn functions_style(
    State(host): State<Arc<Host>>,
    Query(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(handler) = params.get("functionName").cloned() else {
        return RequestError::BadRequest("the functionName query parameter is required".into()).into_response();
    };
    deliver(&host, Target::Handler(&handler), &params, &headers, body).await
}

async fn deliver(
    host: &Host,
    target: Target<'_>,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let body = match axum::body::to_bytes(body, host.max_body).await {
        Ok(body) => body,
        Err(_) => {
            return RequestError::TooLarge { limit: host.max_body }.into_response();
        }
    };
    match host.deliver(target, headers, params.get("code").map(String::as_str), body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(status = error.status().as_u16(), "refused a delivery: {error}");
            error.into_response()
        }
    }
}

async fn abuse_protection(State(host): State<Arc<Host>>, headers: HeaderMap) -> Response {
    crate::webhook::abuse_protection(&headers, &host.event_grid_domains)
}

async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        host.metrics.render(),
    )
}
