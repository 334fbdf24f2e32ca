//! Write gridfn event handlers as plain Rust functions.
//!
//! A handler is a function from an [`Event`] (and its [`Delivery`]) to an
//! [`Outcome`], registered with [`export_handler!`] and built for
//! `wasm32-wasip2`:
//!
//! ```ignore
//! use gridfn_sdk::{Delivery, Event, Outcome, export_handler, log};
//!
//! #[derive(serde::Deserialize)]
//! struct BlobCreated { url: String }
//!
//! fn handle(event: &Event, _delivery: &Delivery) -> Outcome {
//!     match event.data_json::<BlobCreated>() {
//!         Ok(blob) => { log::info(&format!("new blob {}", blob.url)); Outcome::Success }
//!         Err(err) => Outcome::reject(format!("not a BlobCreated payload: {err}")),
//!     }
//! }
//!
//! export_handler!(handle);
//! ```
//!
//! A handler that does better with many events at once (one database
//! round trip for the lot, one model call for a batch of texts) registers a
//! function from a slice of events to one [`Outcome`] each with
//! [`export_batch_handler!`]; gridfn calls it with a delivery's events when
//! the handler's manifest entry sets `batch = true` (or `batch = N`):
//!
//! ```ignore
//! use gridfn_sdk::{Delivery, Event, Outcome, export_batch_handler};
//!
//! fn handle_batch(events: &[Event], _delivery: &Delivery) -> Vec<Outcome> {
//!     events.iter().map(|event| if event.data().is_empty() { Outcome::reject("no data") } else { Outcome::Success }).collect()
//! }
//!
//! export_batch_handler!(handle_batch);
//! ```
//!
//! The WIT contract behind this lives in `sdk/wit/handler.wit`; nothing here
//! needs it to get started.

use std::time::Duration;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "handler",
        pub_export_macro: true,
        default_bindings_module: "gridfn_sdk::bindings",
    });

    /// The `batch-handler` world's exports (`handle` and `handle-batch`),
    /// over the imports generated above.
    pub mod batch {
        wit_bindgen::generate!({
            path: "wit",
            world: "batch-handler",
            with: {
                "gridfn:handler/types@0.1.1": super::gridfn::handler::types,
                "gridfn:handler/log@0.1.1": super::gridfn::handler::log,
                "gridfn:handler/config@0.1.1": super::gridfn::handler::config,
                "gridfn:handler/kv@0.1.1": super::gridfn::handler::kv,
                "gridfn:handler/publish@0.1.1": super::gridfn::handler::publish,
            },
            pub_export_macro: true,
            export_macro_name: "export_batch",
            default_bindings_module: "gridfn_sdk::bindings::batch",
        });
    }
}

use bindings::gridfn::handler::types as wit;

/// One event, whatever schema it arrived in (Event Grid or CloudEvents 1.0).
#[derive(Debug, Clone)]
pub struct Event(wit::Event);

impl Event {
    /// Unique per source; gridfn deduplicates on (handler, source, id).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// `eventType` (Event Grid) or `type` (CloudEvents).
    pub fn event_type(&self) -> &str {
        &self.0.event_type
    }

    /// `topic` (Event Grid) or `source` (CloudEvents).
    pub fn source(&self) -> &str {
        &self.0.source
    }

    pub fn subject(&self) -> Option<&str> {
        self.0.subject.as_deref()
    }

    /// When it happened, as sent (RFC 3339 text).
    pub fn time(&self) -> Option<&str> {
        self.0.time.as_deref()
    }

    pub fn data_content_type(&self) -> Option<&str> {
        self.0.data_content_type.as_deref()
    }

    pub fn data_version(&self) -> Option<&str> {
        self.0.data_version.as_deref()
    }

    /// The payload exactly as received (JSON text for JSON data).
    pub fn data(&self) -> &[u8] {
        &self.0.data
    }

    /// The payload as text, if it is UTF-8.
    pub fn data_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0.data).ok()
    }

    /// The payload parsed as JSON into `T`.
    pub fn data_json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.0.data)
    }

    /// A CloudEvents extension attribute, by name.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.0.extensions.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// All CloudEvents extension attributes, as (name, value) pairs.
    pub fn extensions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.extensions.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// How the event reached the handler.
#[derive(Debug, Clone)]
pub struct Delivery(wit::Delivery);

impl Delivery {
    /// 0 on the first attempt; Event Grid's delivery count plus local retries.
    pub fn attempt(&self) -> u32 {
        self.0.attempt
    }

    /// The handler's name in gridfn.toml.
    pub fn handler(&self) -> &str {
        &self.0.handler
    }

    /// The Event Grid subscription that delivered the event, when known.
    pub fn subscription(&self) -> Option<&str> {
        self.0.subscription.as_deref()
    }

    /// True when the event is replayed from a dead-letter store.
    pub fn is_replay(&self) -> bool {
        self.0.replay
    }
}

/// What the handler made of the event; gridfn turns it into Event Grid's
/// forget / retry / dead-letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: never run again for this event.
    Success,
    /// Transient failure: try again later, no sooner than `after`.
    Retry { reason: String, after: Option<Duration> },
    /// Permanent failure: dead-letter the event with this reason.
    Reject { reason: String },
}

impl Outcome {
    /// Try again later, when Event Grid redelivers.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry { reason: reason.into(), after: None }
    }

    /// Try again, no sooner than `after`.
    pub fn retry_after(reason: impl Into<String>, after: Duration) -> Self {
        Outcome::Retry { reason: reason.into(), after: Some(after) }
    }

    /// Dead-letter the event; it will not be retried.
    pub fn reject(reason: impl Into<String>) -> Self {
        Outcome::Reject { reason: reason.into() }
    }
}

impl From<Outcome> for wit::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Success => wit::Outcome::Success,
            Outcome::Retry { reason, after } => wit::Outcome::Retry(wit::Retry {
                reason,
                after_ms: after.map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
            }),
            Outcome::Reject { reason } => wit::Outcome::Reject(reason),
        }
    }
}

/// Logging into the host's log; the host tags each line with the handler and
/// the event id. Always granted; each event may log up to 64 KiB (the host
/// drops the rest and says so). `println!` and `eprintln!` land in the same
/// log, within the same budget.
pub mod log {
    pub use crate::bindings::gridfn::handler::log::Level;
    use crate::bindings::gridfn::handler::log::log;

    pub fn trace(message: &str) {
        log(Level::Trace, message, &[])
    }
    pub fn debug(message: &str) {
        log(Level::Debug, message, &[])
    }
    pub fn info(message: &str) {
        log(Level::Info, message, &[])
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message, &[])
    }
    pub fn error(message: &str) {
        log(Level::Error, message, &[])
    }

    /// A line with structured fields, shown after the message as
    /// `name=value` (quoted when the value has spaces):
    ///
    /// ```ignore
    /// log::with_fields(Level::Info, "indexed", &[("blob", url), ("chunks", &chunks.to_string())]);
    /// ```
    pub fn with_fields(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        log(level, message, &fields)
    }
}

/// Values the manifest sets for this handler:
/// `[handler.capabilities] config = { key = "value" }`.
pub mod config {
    /// The value for `key`, or `None` if the manifest does not set it (or does
    /// not grant `config`).
    pub fn get(key: &str) -> Option<String> {
        crate::bindings::gridfn::handler::config::get(key)
    }
}

/// A key-value store scoped to this handler, granted by
/// `[handler.capabilities] kv = true`; it survives restarts with gridfn's
/// embedded store and is shared by hosts with its Redis store.
///
/// Writes take effect with the run's outcome: gridfn holds them until it
/// records the event done (success or dead-lettered rejection) and writes
/// them in the same atomic write as that record; a run that is retried,
/// traps or dies with its host leaves none. A run reads its own writes.
pub mod kv {
    use crate::bindings::gridfn::handler::kv as host;
    pub use crate::bindings::gridfn::handler::kv::Error;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        host::get(key)
    }

    pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
        host::set(key, value)
    }

    pub fn delete(key: &str) -> Result<(), Error> {
        host::delete(key)
    }

    /// Adds `delta` to the counter at `key` (0 when absent) and returns it as
    /// this run sees it (the recorded value plus this run's increments; runs
    /// in flight together may see the same value). Every recorded run's
    /// increment counts.
    pub fn increment(key: &str, delta: i64) -> Result<i64, Error> {
        host::increment(key, delta)
    }
}

/// Emit new events (CloudEvents 1.0), granted by `[handler.capabilities]
/// publish = "local"` (this host's own handlers, through the normal routing)
/// or `publish = { endpoint = "https://<topic>…/api/events", key = "env:…" }`
/// (an Event Grid topic).
///
/// Events are held until the handler returns and sent only if it returns
/// [`Outcome::Success`](crate::Outcome::Success); if sending fails, the event
/// being handled is retried. Ids default to `<event id>:<handler>:<n>`, the
/// same on every retry, so downstream handlers never see a repeat twice.
///
/// ```ignore
/// let refreshed = publish::json("Contoso.Embeddings.Refreshed", &serde_json::json!({ "url": blob.url }))
///     .subject(event.subject().unwrap_or_default())
///     .send();
/// if let Err(error) = refreshed {
///     return Outcome::reject(format!("cannot publish: {error:?}"));
/// }
/// ```
pub mod publish {
    use crate::bindings::gridfn::handler::publish as host;
    pub use crate::bindings::gridfn::handler::publish::Error;

    /// An event to publish; [`send`](Self::send) queues it.
    #[derive(Debug, Clone)]
    pub struct NewEvent(host::OutgoingEvent);

    /// An event of `event_type` whose data is `data` serialized as JSON.
    pub fn json(event_type: &str, data: &impl serde::Serialize) -> NewEvent {
        let data = serde_json::to_vec(data).expect("serializing event data as JSON");
        NewEvent::new(event_type, data).content_type("application/json")
    }

    impl NewEvent {
        /// An event of `event_type` with raw `data` (JSON unless
        /// [`content_type`](Self::content_type) says otherwise).
        pub fn new(event_type: &str, data: impl Into<Vec<u8>>) -> Self {
            NewEvent(host::OutgoingEvent {
                id: None,
                event_type: event_type.to_owned(),
                source: None,
                subject: None,
                data_content_type: None,
                data: data.into(),
            })
        }

        /// Sets the id (default: derived from the event being handled).
        pub fn id(mut self, id: &str) -> Self {
            self.0.id = Some(id.to_owned());
            self
        }

        /// Sets the CloudEvents source (default: `/gridfn/handlers/<handler>`).
        pub fn source(mut self, source: &str) -> Self {
            self.0.source = Some(source.to_owned());
            self
        }

        pub fn subject(mut self, subject: &str) -> Self {
            self.0.subject = Some(subject.to_owned());
            self
        }

        pub fn content_type(mut self, content_type: &str) -> Self {
            self.0.data_content_type = Some(content_type.to_owned());
            self
        }

        /// Queues the event, to be sent when the handler returns success.
        pub fn send(self) -> Result<(), Error> {
            host::publish(&self.0)
        }
    }
}

pub mod http;

#[doc(hidden)]
pub fn __handle(event: wit::Event, delivery: wit::Delivery, handler: fn(&Event, &Delivery) -> Outcome) -> wit::Outcome {
    handler(&Event(event), &Delivery(delivery)).into()
}

/// Makes `fn(&Event, &Delivery) -> Outcome` the component's `handle` export.
#[macro_export]
macro_rules! export_handler {
    ($handler:path) => {
        struct __GridfnHandler;

        impl $crate::bindings::Guest for __GridfnHandler {
            fn handle(
                event: $crate::bindings::gridfn::handler::types::Event,
                delivery: $crate::bindings::gridfn::handler::types::Delivery,
            ) -> $crate::bindings::gridfn::handler::types::Outcome {
                $crate::__handle(event, delivery, $handler)
            }
        }

        $crate::bindings::export!(__GridfnHandler with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub fn __handle_batch(
    events: Vec<wit::Event>,
    delivery: wit::Delivery,
    handler: fn(&[Event], &Delivery) -> Vec<Outcome>,
) -> Vec<wit::Outcome> {
    let events: Vec<Event> = events.into_iter().map(Event).collect();
    handler(&events, &Delivery(delivery)).into_iter().map(Into::into).collect()
}

/// `handle` for a batch handler: the one event as a batch of one.
#[doc(hidden)]
pub fn __handle_one(
    event: wit::Event,
    delivery: wit::Delivery,
    handler: fn(&[Event], &Delivery) -> Vec<Outcome>,
) -> wit::Outcome {
    let mut outcomes = handler(&[Event(event)], &Delivery(delivery));
    match (outcomes.pop(), outcomes.is_empty()) {
        (Some(outcome), true) => outcome.into(),
        _ => Outcome::retry("the batch handler did not answer one outcome for one event").into(),
    }
}

/// Makes `fn(&[Event], &Delivery) -> Vec<Outcome>` the component's
/// `handle-batch` export, answering one outcome per event in the order
/// given (a list of another length retries every event of the call).
///
/// The component keeps a `handle` export, so it also runs where the manifest
/// does not set `batch`: `export_batch_handler!(handle_batch)` makes it a
/// batch of one, `export_batch_handler!(handle_batch, handle)` uses your
/// `fn(&Event, &Delivery) -> Outcome`.
#[macro_export]
macro_rules! export_batch_handler {
    ($batch:path) => {
        $crate::export_batch_handler!(@export $batch, |event, delivery| $crate::__handle_one(event, delivery, $batch));
    };
    ($batch:path, $handler:path) => {
        $crate::export_batch_handler!(@export $batch, |event, delivery| $crate::__handle(event, delivery, $handler));
    };
    (@export $batch:path, $one:expr) => {
        struct __GridfnBatchHandler;

        impl $crate::bindings::batch::Guest for __GridfnBatchHandler {
            fn handle(
                event: $crate::bindings::gridfn::handler::types::Event,
                delivery: $crate::bindings::gridfn::handler::types::Delivery,
            ) -> $crate::bindings::gridfn::handler::types::Outcome {
                ($one)(event, delivery)
            }

            fn handle_batch(
                events: ::std::vec::Vec<$crate::bindings::gridfn::handler::types::Event>,
                delivery: $crate::bindings::gridfn::handler::types::Delivery,
            ) -> ::std::vec::Vec<$crate::bindings::gridfn::handler::types::Outcome> {
                $crate::__handle_batch(events, delivery, $batch)
            }
        }

        $crate::bindings::batch::export_batch!(__GridfnBatchHandler with_types_in $crate::bindings::batch);
    };
}
