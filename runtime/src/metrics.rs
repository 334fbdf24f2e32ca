//! The Prometheus metrics gridfn exposes at `GET /metrics`. Every name starts
//! with `gridfn_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What became of one (event, handler) pair; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairOutcome {
    Success,
    Retry,
    Reject,
    /// Done before: not run again.
    Duplicate,
    /// No handler's filter wanted the event; acknowledged without running.
    Unmatched,
}

impl PairOutcome {
    fn label(self) -> &'static str {
        match self {
            PairOutcome::Success => "success",
            PairOutcome::Retry => "retry",
            PairOutcome::Reject => "reject",
            PairOutcome::Duplicate => "duplicate",
            PairOutcome::Unmatched => "unmatched",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    handler: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: String,
}

pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    handler_seconds: Family<HandlerLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "gridfn_events",
            "Events by handler and outcome (success, retry, reject, duplicate, unmatched; handler \"*\" for events no handler wanted)",
            events.clone(),
        );
        let handler_seconds = Family::<HandlerLabels, Histogram>::new_with_constructor(|| {
            // 10 µs to ~10 s: sandboxed calls are microseconds, timeouts seconds.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-5, 4.0, 11))
        });
        registry.register(
            "gridfn_handler_duration_seconds",
            "Time to instantiate and run a handler for one event",
            handler_seconds.clone(),
        );
        Metrics { registry, events, handler_seconds }
    }
}

impl Metrics {
    pub fn count(&self, handler: &str, outcome: PairOutcome) {
        self.events.get_or_create(&EventLabels { handler: handler.to_owned(), outcome: outcome.label() }).inc();
    }

    pub fn observe_run(&self, handler: &str, seconds: f64) {
        self.handler_seconds.get_or_create(&HandlerLabels { handler: handler.to_owned() }).observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }
}
