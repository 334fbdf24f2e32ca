//! Optional export of gridfn's spans over OTLP (HTTP/protobuf), for
//! `gridfn serve --otlp-endpoint URL`: the `delivery` and `pair` spans
//! (target `gridfn::spans`, see [`crate::trace`]) go to a collector, batched
//! on a thread of their own, with the fields the JSON log shows as
//! attributes.
//!
//! Without an endpoint none of this runs: no layer is installed, and
//! [`join`] finds none and returns at once.
//!
//! The exported spans carry gridfn's W3C ids, so a collector's trace is the
//! one the delivery arrived in and the one published events continue:
//! - a `delivery` span is a child of the request's `traceparent`;
//! - a `pair` span is a child of its parent `traceparent` (the event's, else
//!   the request's), so it is the delivery span's sibling under the sender's
//!   span, as the JSON log's `parent_id` says; with neither it is a root.
//!   Its span id is the one published events carry as their parent.
//!
//! The sender's sampled flag is honoured (a parent that is not sampled is
//! not exported), and a span without a parent is always sampled.

use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::trace::TraceParent;

/// The tracing target of the spans that are exported (and nothing else is).
const SPANS: &str = "gridfn::spans";

/// How long one export may take before the batch is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Owns the exporter's batch thread: dropping it sends what is still queued
/// and stops the thread.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: OTLP export did not finish: {error}");
        }
    }
}

/// The layer that exports `gridfn::spans` to `endpoint` (a collector's
/// OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`), and
/// the [`Exporter`] to keep until the process ends. Call it outside an
/// async runtime: the HTTP client starts one of its own.
pub fn layer<S>(endpoint: &url::Url) -> anyhow::Result<(impl Layer<S>, Exporter)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client::new()?)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name("gridfn").build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("gridfn"))
        // A span starts when its ids are asked for (or it ends), not when
        // it is first entered: `join` must still be able to set its parent
        // after `#[instrument]` has entered it.
        .with_context_activation(false)
        .with_filter(Targets::new().with_target(SPANS, tracing::Level::DEBUG));
    Ok((layer, Exporter { provider }))
}

/// Makes the exported span behind `span` a child of `parent` (a root
/// without one) and returns its ids, or `None` when nothing is exported
/// (no OTLP layer, or `span` is disabled). Call it before the span has a
/// child or a log line of target `gridfn::spans`, which start it.
pub fn join(span: &tracing::Span, parent: Option<TraceParent>) -> Option<TraceParent> {
    let parent_cx = match parent {
        Some(parent) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(parent.trace_id),
            SpanId::from(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::NONE,
        )),
        None => opentelemetry::Context::new(),
    };
    span.set_parent(parent_cx).ok()?;
    let context = span.context();
    let ids = context.span().span_context().clone();
    ids.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(ids.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(ids.span_id().to_bytes()),
        flags: ids.trace_flags().to_u8(),
    })
}

/// OTLP's HTTP client trait on gridfn's own reqwest, so the exporter brings
/// no second HTTP stack and https endpoints use the same rustls as the rest
/// of gridfn. The batch thread drives an export with a plain executor, not
/// tokio, so the client has a small runtime of its own to run on.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new() -> anyhow::Result<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Client { http: reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build()?, runtime })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        self.runtime.block_on(async {
            let response = self.http.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                answer = answer.header(name, value);
            }
            Ok(answer.body(response.bytes().await?)?)
        })
    }
}
