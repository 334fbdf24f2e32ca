//! gridfn: runs Azure Event Grid deliveries (Event Grid schema and
//! CloudEvents 1.0) through sandboxed WebAssembly handlers, and answers each
//! source with what makes it forget, retry or dead-letter the events.
//!
//! # How an event flows
//!
//! Every source turns its input into events plus a [`event::DeliveryInfo`],
//! calls [`pipeline::Pipeline::dispatch`], and turns the [`pipeline::Verdict`]
//! into its own answer:
//!
//! - push: Event Grid POSTs a delivery; [`push`] authenticates it, answers a
//!   handshake or decodes it, dispatches, and answers 200 or 503;
//! - pull: [`pull`] receives events from Event Grid namespace
//!   subscriptions (`[[pull]]`, and the push subscriptions of the namespace
//!   gridfn serves), dispatches each, and acknowledges, releases or rejects
//!   it by its lock token;
//! - local topic: a handler's published events are dispatched by the
//!   pipeline itself (`Pipeline::local_topic`), one hop deeper, and the
//!   verdict becomes the publisher's outcome;
//! - replay: `gridfn replay` reads dead-letter blobs ([`replay::read`]),
//!   dispatches each event to the handler it was dead-lettered from with
//!   `delivery.replay = true` (or POSTs it to a running gridfn), and records
//!   each outcome in its ledger.
//!
//! Inside the pipeline, per (event, handler) pair: route ([`filter`]), claim
//! ([`dedup`]), admit ([`admission`]), run ([`sandbox`]), retry locally,
//! publish ([`publish`]), dead-letter ([`deadletter`]), record ([`dedup`]).
//!
//! # Layout
//!
//! - [`config`]: the `gridfn.toml` manifest, parsed into valid values or every problem.
//! - [`host`]: wiring: every part built once from the manifest.
//! - [`server`]: the routes, and the accept loop with its limits and drain.
//! - [`push`]: the push source: one pushed request, top to bottom.
//! - [`webhook`]: Event Grid's webhook protocol: keys, `aeg-*` headers, body
//!   encodings, the validation and CloudEvents handshakes.
//! - [`entra`]: Microsoft Entra ID bearer tokens, for subscriptions that use them.
//! - [`admin`]: the admin API (deploy, list, rollback, a handler's kv entries) over HTTP.
//! - [`error`]: the one HTTP error type and the status each variant means.
//! - [`pipeline`]: route, claim, run, retry, publish, dead-letter, record; the verdict.
//! - [`event`]: the one event model, delivery info, and decoding bodies into events.
//! - [`filter`]: subscription filters, evaluated as Event Grid does.
//! - [`explain`]: `gridfn explain`, each filter's decision for each event.
//! - [`dedup`]: which (handler, event) pairs are done, so none runs twice.
//! - [`registry`]: the handlers, the version of each that runs, deploys and rollbacks.
//! - [`admission`]: when an event may start an instance, and how instances share the cores.
//! - [`sandbox`]: wasmtime engine, one pre-linked component per handler, a
//!   fresh instance per event with a deadline and a memory cap.
//! - [`kv`]: the handlers' `kv` capability: a run's writes, held until [`dedup`] records the run with them.
//! - [`outbound`]: the handlers' `wasi:http` requests, allowed only to listed hosts.
//! - [`publish`]: events handlers publish: checked, encoded, sent to an Event Grid topic.
//! - [`deadletter`]: rejected events, written in Event Grid's dead-letter format.
//! - [`metrics`]: the Prometheus metrics, each handler's series created at start.
//! - [`trace`]: W3C `traceparent` in (request, event) and out (published events).
//! - [`otlp`]: optional export of the delivery and pair spans over OTLP, in the request's trace.
//! - [`health`]: `/healthz` and `/readyz`.
//! - [`replay`]: `gridfn replay`: dead-lettered events read back ([`replay::read`]) and run again.
//! - [`send`]: `gridfn send`: Event Grid's side of a webhook subscription (handshake, batching, retries, dead-letters, load), on a laptop.
//! - [`scaffold`]: `gridfn new` (a handler project from `runtime/templates/`) and `gridfn up`'s builds.
//! - [`namespace`]: Event Grid namespace topics served by gridfn: publish, pull, settle by lock token.
//! - [`pull`]: the pull source: events received from namespace subscriptions, settled by the verdict.

pub mod admin;
pub mod admission;
pub mod config;
pub mod deadletter;
pub mod dedup;
pub mod entra;
pub mod error;
pub mod event;
pub mod explain;
pub mod filter;
pub mod health;
pub mod host;
pub mod kv;
pub mod metrics;
pub mod namespace;
pub mod otlp;
pub mod outbound;
pub mod pipeline;
pub mod publish;
pub mod pull;
pub mod push;
pub mod registry;
pub mod replay;
pub mod sandbox;
pub mod scaffold;
pub mod send;
pub mod server;
pub mod trace;
pub mod webhook;
