//! End-to-end tests: the real `gridfn` binary, real sockets, real components.
//!
//! The handler components must be built first (`scripts/test` does it):
//! `cargo build --release --target wasm32-wasip2 -p audit-log -p scripted`.

mod support;

mod capabilities;
mod durability;
mod foundation;
mod js_handlers;
mod protocol;
mod replay;
mod replay_data;
mod routing;
mod sandbox;
mod serving;
