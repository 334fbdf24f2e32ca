//! gridfn: runs Azure Event Grid push deliveries (Event Grid schema and
//! CloudEvents 1.0) through sandboxed WebAssembly handlers, and answers Event
//! Grid with the status that makes it forget, retry or dead-letter each
//! delivery.
//!
//! # Layout
//!
//! - [`config`]: the `gridfn.toml` manifest, its defaults and its checks.
//! - [`server`]: HTTP routes and `serve(listener, host, shutdown)`.
//! - [`delivery`]: the delivery path, top to bottom, and the batch verdict.
//! - [`webhook`]: Event Grid's webhook protocol: keys, `aeg-*` headers, body
//!   encodings, the validation and CloudEvents handshakes.
//! - [`entra`]: Microsoft Entra ID bearer tokens, for subscriptions that use them.
//! - [`event`]: the one event model, and decoding pushed bodies into it.
//! - [`filter`]: subscription filters, evaluated as Event Grid does.
//! - [`explain`]: `gridfn explain`, each filter's decision for each event.
//! - [`dedup`]: which (handler, event) pairs are done, so none runs twice.
//! - [`deploy`]: new handler versions while serving (admin API), and their record on disk.
//! - [`cpu`]: how handlers share the cores (slots held only while on CPU).
//! - [`sandbox`]: wasmtime engine, one pre-linked component per handler, a
//!   fresh instance per event with a deadline and a memory cap.
//! - [`kv`]: storage behind the handlers' `kv` capability.
//! - [`outbound`]: the handlers' `wasi:http` requests, allowed only to listed hosts.
//! - [`publish`]: events handlers publish, to the local topic or an Event Grid topic.
//! - [`deadletter`]: rejected events, written in Event Grid's dead-letter format.
//! - [`metrics`]: the Prometheus metrics.
//! - [`error`]: the request error type and the status each variant means.

pub mod config;
pub mod cpu;
pub mod deadletter;
pub mod dedup;
pub mod delivery;
pub mod deploy;
pub mod entra;
pub mod error;
pub mod event;
pub mod explain;
pub mod filter;
pub mod kv;
pub mod metrics;
pub mod outbound;
pub mod publish;
pub mod sandbox;
pub mod server;
pub mod webhook;
