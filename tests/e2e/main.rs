//! End-to-end tests: the real `gridfn` binary, real sockets, real components.
//!
//! The handler components must be built first (`scripts/test` does it):
//! `cargo build --release --target wasm32-wasip2 -p audit-log -p scripted`,
//! and the Python ones (`*_py.wasm`) with componentize-py.

mod support;

mod ai_services;
mod batch;
mod capabilities;
mod durability;
mod embeddings;
mod foundation;
mod js_handlers;
mod moderation;
mod multihost;
mod namespaces;
mod observability;
mod packaging;
mod protocol;
mod python_handlers;
mod replay;
mod replay_data;
mod routing;
mod sandbox;
mod scaffold;
mod send;
mod serving;
