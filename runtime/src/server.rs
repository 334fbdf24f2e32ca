//! The HTTP surface: the routes, and `serve(listener, host, shutdown)`, an
//! accept loop that bounds what a client can hold and drains on shutdown, so
//! tests and signals drive it alike.
//!
//! What a client can hold: at most `max_connections` connections (beyond
//! that, new ones wait in the kernel's backlog); a request's headers must
//! arrive within `header_timeout`, which is also how long an idle keep-alive
//! connection stays open; its body within `body_timeout` (see
//! [`crate::push`]).
//!
//! Shutdown: stop accepting, close idle connections at once, let requests in
//! flight finish within `drain` (the longest handler deadline plus the
//! durable commit), then return. A delivery cut by the drain was never
//! acknowledged, so Event Grid delivers it again; nothing is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::host::{Host, Limits};
use crate::metrics::Metrics;
use crate::{admin, health, push};

/// The routes, over a started [`Host`].
pub fn app(host: Arc<Host>) -> Router {
    let namespace = host.namespace.clone().map(crate::namespace::api::routes).unwrap_or_default();
    let push = Router::new()
        .route("/api/events", post(push::all_handlers).options(push::abuse_protection))
        .route("/api/events/{handler}", post(push::one_handler).options(push::abuse_protection))
        .route("/runtime/webhooks/eventgrid", post(push::functions_style).options(push::abuse_protection))
        .with_state(host.webhook.clone())
        .layer(axum::middleware::from_fn_with_state(host.metrics.clone(), count_delivery));
    let admin = Router::new()
        .route("/admin/handlers", get(admin::list))
        .route(
            "/admin/handlers/{handler}",
            put(admin::deploy).layer(axum::extract::DefaultBodyLimit::max(admin::MAX_MODULE)),
        )
        .route("/admin/handlers/{handler}/rollback", post(admin::rollback))
        .route("/admin/kv/{handler}", get(admin::kv_list))
        .route("/metrics", get(metrics))
        .route("/readyz", get(health::readyz))
        .with_state(host);
    push.merge(admin).merge(namespace).route("/healthz", get(health::healthz))
}

/// Serves `host` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    host: Arc<Host>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits: Limits = host.limits;
    let background = background_tasks(&host);
    let pulls = crate::pull::start(&host.pulls, host.namespace.as_ref(), &host.pipeline, &host.metrics);
    let in_flight = InFlight::default();
    let app = app(host).layer(axum::middleware::from_fn_with_state(in_flight.clone(), InFlight::track));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &connections) => accepted,
        };
        let (stream, permit) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait, don't spin.
                tracing::warn!("accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (reset, header timeout): nothing to answer.
            if let Err(error) = connection.await {
                tracing::debug!("connection ended: {error}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting up to {:?} for deliveries in flight", limits.drain);
    // Idle connections close at once; a connection whose client has not sent
    // a whole request yet would hold `graceful` until its header timeout, so
    // the drain ends as soon as no request is being handled (and its answer
    // had a moment to go out).
    let drained = async {
        tokio::select! {
            () = graceful.shutdown() => {}
            () = async {
                in_flight.none().await;
                tokio::time::sleep(ANSWER_FLUSH).await;
            } => {}
        }
    };
    let (drained, ()) = tokio::join!(tokio::time::timeout(limits.drain, drained), pulls.stop(limits.drain));
    if drained.is_err() {
        tracing::warn!("deliveries still running after {:?} are cut; Event Grid will deliver them again", limits.drain);
    }
    for task in background {
        task.abort();
    }
    Ok(())
}

/// How long shutdown lets the last answers reach their sockets once no
/// request is being handled.
const ANSWER_FLUSH: Duration = Duration::from_millis(200);

/// Requests being handled right now, so shutdown can tell a delivery in
/// flight from a connection that is merely open.
#[derive(Clone, Default)]
struct InFlight(Arc<tokio::sync::watch::Sender<usize>>);

impl InFlight {
    /// Middleware: counts the request while its handler runs.
    async fn track(
        State(in_flight): State<InFlight>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        in_flight.0.send_modify(|n| *n += 1);
        // Decremented also when the request is cancelled (client gone).
        let _counted = scopeguard(|| in_flight.0.send_modify(|n| *n -= 1));
        next.run(request).await
    }

    /// Completes when no request is being handled.
    async fn none(&self) {
        let _ = self.0.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The next connection, once there is room for one.
async fn accept(
    listener: &TcpListener,
    connections: &Arc<Semaphore>,
) -> std::io::Result<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let permit = connections.clone().acquire_owned().await.expect("the connection semaphore is never closed");
    let (stream, _) = listener.accept().await?;
    Ok((stream, permit))
}

/// The dedup sweeper, and the folder watcher when `server.watch` is set.
fn background_tasks(host: &Arc<Host>) -> Vec<tokio::task::JoinHandle<()>> {
    let pipeline = host.pipeline.clone();
    let mut tasks = vec![tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            pipeline.sweep().await;
        }
    })];
    if let Some(folder) = host.watch.clone() {
        tasks.push(tokio::spawn(host.registry.clone().watch_folder(folder, Duration::from_secs(1))));
    }
    tasks
}

/// Middleware on the push routes: counts each answer by status.
async fn count_delivery(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    metrics.count_delivery(response.status().as_u16());
    response
}

async fn metrics(State(host): State<Arc<Host>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        host.metrics.render(),
    )
}
