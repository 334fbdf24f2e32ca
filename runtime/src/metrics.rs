//! The Prometheus metrics gridfn exposes at `GET /metrics`. Every name starts
//! with `gridfn_`; the README's metrics table and the Grafana dashboard in
//! `samples/grafana/` name them (a test checks the dashboard's against
//! [`Metrics::series_names`]).
//!
//! Every series of a handler is created when gridfn starts ([`Metrics::new`]
//! is given the manifest's handler names), for two reasons: Prometheus sees
//! each series at 0 before the first event, so `rate()` and `increase()` are
//! right from the first scrape; and the delivery path finds a handler's
//! handles with one map lookup, never building a label set (an owned string)
//! per event.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dedup::Claim;

/// The `handler` label of events no handler's filter wanted.
pub const UNMATCHED_LABEL: &str = "*";

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
    const ALL: [PairOutcome; 5] =
        [PairOutcome::Success, PairOutcome::Retry, PairOutcome::Reject, PairOutcome::Duplicate, PairOutcome::Unmatched];

    pub fn label(self) -> &'static str {
        match self {
            PairOutcome::Success => "success",
            PairOutcome::Retry => "retry",
            PairOutcome::Reject => "reject",
            PairOutcome::Duplicate => "duplicate",
            PairOutcome::Unmatched => "unmatched",
        }
    }
}

/// Where a handler's published events went; the `destination` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Local,
    EventGrid,
}

/// The `result` label of dedup claims: what the store said before the run.
const CLAIM_RESULTS: [&str; 4] = ["run", "done", "busy", "failed"];

fn claim_index(claim: &Claim) -> usize {
    match claim {
        Claim::Run(_) => 0,
        Claim::Done => 1,
        Claim::Busy => 2,
        Claim::Failed(_) => 3,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    handler: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    handler: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    handler: String,
    destination: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

/// One handler's series, created once: incrementing one is an atomic add
/// (a histogram, a short lock), with no label set built.
pub struct HandlerMetrics {
    /// By [`PairOutcome`], in the order of `PairOutcome::ALL`.
    outcomes: [Counter; 5],
    /// By claim result, in the order of `CLAIM_RESULTS`.
    claims: [Counter; 4],
    duration: Histogram,
    instantiation: Histogram,
    in_flight: Gauge,
    queued: Gauge,
    /// Written, failed.
    dead_letters: [Counter; 2],
    local_retries: Counter,
    /// Local topic, Event Grid topic.
    published: [Counter; 2],
}

/// Every metric gridfn exports, and each handler's handles into them.
pub struct Metrics {
    registry: Registry,
    deliveries: Family<StatusLabels, Counter>,
    /// Also holds [`UNMATCHED_LABEL`].
    handlers: HashMap<String, HandlerMetrics>,
    /// Where a name that is not a handler (which the pipeline never passes)
    /// is counted, rather than panicking on the delivery path.
    unknown: HandlerMetrics,
    /// The pull sources' series ([`crate::pull::metrics`]).
    pull: crate::pull::metrics::PullMetrics,
}

/// The delivery statuses created at start: the ones a healthy gridfn
/// answers (others appear when first answered).
const USUAL_STATUSES: [u16; 2] = [200, 503];

impl Metrics {
    /// The metrics of a gridfn running `handlers`.
    pub fn new<'a>(handlers: impl IntoIterator<Item = &'a str>) -> Self {
        let mut registry = Registry::default();
        let events: Family<OutcomeLabels, Counter> = register(
            &mut registry,
            "gridfn_events",
            "(Event, handler) pairs by outcome: success, retry, reject, duplicate (done before), unmatched (handler \"*\": no handler's filter wanted the event)",
            Family::default(),
        );
        let deliveries: Family<StatusLabels, Counter> = register(
            &mut registry,
            "gridfn_deliveries",
            "Push requests (deliveries and handshakes) by the HTTP status gridfn answered",
            Family::default(),
        );
        for status in USUAL_STATUSES {
            drop(deliveries.get_or_create(&StatusLabels { status }));
        }
        let claims: Family<ResultLabels, Counter> = register(
            &mut registry,
            "gridfn_dedup_claims",
            "Dedup checks before a run, by result: run (new), done (a dedup hit: handled before), busy (a copy still running), failed (store unreachable)",
            Family::default(),
        );
        let duration: Family<HandlerLabels, Histogram, fn() -> Histogram> = register(
            &mut registry,
            "gridfn_handler_duration_seconds",
            "Time to instantiate and run a handler for one event",
            Family::new_with_constructor(seconds),
        );
        let instantiation: Family<HandlerLabels, Histogram, fn() -> Histogram> = register(
            &mut registry,
            "gridfn_instantiation_seconds",
            "Time to create a fresh handler instance (not observed when a warm instance is reused)",
            Family::new_with_constructor(seconds),
        );
        let in_flight: Family<HandlerLabels, Gauge> =
            register(&mut registry, "gridfn_instances_in_flight", "Handler instances running now", Family::default());
        let queued: Family<HandlerLabels, Gauge> = register(
            &mut registry,
            "gridfn_instances_queued",
            "Events waiting for an instance (the handler is at max_concurrency, or the pool is full)",
            Family::default(),
        );
        let dead_letters: Family<ResultLabels, Counter> = register(
            &mut registry,
            "gridfn_dead_letter_writes",
            "Dead-letter writes of rejected events, by result: written, or failed (the event is then retried)",
            Family::default(),
        );
        let local_retries: Family<HandlerLabels, Counter> = register(
            &mut registry,
            "gridfn_local_retries",
            "Runs repeated locally after a retry outcome (the handler's retry policy), before answering",
            Family::default(),
        );
        let published: Family<DestinationLabels, Counter> = register(
            &mut registry,
            "gridfn_published_events",
            "Events handlers published and gridfn sent, by destination: local (the local topic) or event_grid",
            Family::default(),
        );

        let handles = |name: &str| {
            let handler = || HandlerLabels { handler: name.to_owned() };
            let result = |result| ResultLabels { handler: name.to_owned(), result };
            let destination = |destination| DestinationLabels { handler: name.to_owned(), destination };
            HandlerMetrics {
                outcomes: PairOutcome::ALL.map(|outcome| {
                    events.get_or_create(&OutcomeLabels { handler: name.to_owned(), outcome: outcome.label() }).clone()
                }),
                claims: CLAIM_RESULTS.map(|r| claims.get_or_create(&result(r)).clone()),
                duration: duration.get_or_create(&handler()).clone(),
                instantiation: instantiation.get_or_create(&handler()).clone(),
                in_flight: in_flight.get_or_create(&handler()).clone(),
                queued: queued.get_or_create(&handler()).clone(),
                dead_letters: ["written", "failed"].map(|r| dead_letters.get_or_create(&result(r)).clone()),
                local_retries: local_retries.get_or_create(&handler()).clone(),
                published: ["local", "event_grid"].map(|d| published.get_or_create(&destination(d)).clone()),
            }
        };
        let mut by_name: HashMap<String, HandlerMetrics> =
            handlers.into_iter().map(|name| (name.to_owned(), handles(name))).collect();
        // Only the unmatched count is ever used for "*"; its other series are
        // not created, so dashboards summing by handler see no phantom handler.
        let mut unmatched = HandlerMetrics::detached();
        let labels = OutcomeLabels { handler: UNMATCHED_LABEL.into(), outcome: PairOutcome::Unmatched.label() };
        unmatched.outcomes[PairOutcome::Unmatched as usize] = events.get_or_create(&labels).clone();
        by_name.insert(UNMATCHED_LABEL.to_owned(), unmatched);
        let pull = crate::pull::metrics::PullMetrics::register(&mut registry);
        registry.register_collector(Box::new(DedupStoreStats));
        Metrics { registry, deliveries, handlers: by_name, unknown: HandlerMetrics::detached(), pull }
    }

    /// Creates the series of each pull source (`topic/subscription`).
    pub fn with_pull_sources(mut self, sources: impl IntoIterator<Item = String>) -> Self {
        for source in sources {
            self.pull.add_source(&source);
        }
        self
    }

    /// The handles of pull source `source`.
    pub fn pull(&self, source: &str) -> &crate::pull::metrics::SourceMetrics {
        self.pull.source(source)
    }

    /// The handles of handler `name`.
    pub fn handler(&self, name: &str) -> &HandlerMetrics {
        self.handlers.get(name).unwrap_or(&self.unknown)
    }

    pub fn count(&self, handler: &str, outcome: PairOutcome) {
        self.handler(handler).outcomes[outcome as usize].inc();
    }

    /// One push request answered with `status`.
    pub fn count_delivery(&self, status: u16) {
        self.deliveries.get_or_create(&StatusLabels { status }).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String");
        text
    }

    /// Every series name a scrape can show (a counter `x` is `x_total`, a
    /// histogram `x` is `x_bucket`, `x_sum` and `x_count`), read from the
    /// exposition's `# TYPE` lines.
    pub fn series_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for line in self.render().lines() {
            let Some(declared) = line.strip_prefix("# TYPE ") else { continue };
            let Some((name, kind)) = declared.split_once(' ') else { continue };
            match kind {
                "counter" => names.push(format!("{name}_total")),
                "histogram" => names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}"))),
                _ => names.push(name.to_owned()),
            }
        }
        names
    }
}

impl HandlerMetrics {
    /// Handles registered nowhere: they count, and no scrape shows them.
    fn detached() -> Self {
        HandlerMetrics {
            outcomes: Default::default(),
            claims: Default::default(),
            duration: seconds(),
            instantiation: seconds(),
            in_flight: Gauge::default(),
            queued: Gauge::default(),
            dead_letters: Default::default(),
            local_retries: Counter::default(),
            published: Default::default(),
        }
    }

    pub fn claimed(&self, claim: &Claim) {
        self.claims[claim_index(claim)].inc();
    }

    pub fn observe_run(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    pub fn observe_instantiation(&self, seconds: f64) {
        self.instantiation.observe(seconds);
    }

    /// Counts an event waiting for an instance until the guard is dropped.
    pub fn queued(&self) -> impl Drop + Send + 'static {
        GaugeGuard::new(self.queued.clone())
    }

    /// Counts a running instance until the guard is dropped. Owned, so it can
    /// go into the instance's task and end with the call itself, before the
    /// task gives its admission back: the count never shows more instances
    /// than `max_concurrency`.
    pub fn in_flight(&self) -> impl Drop + Send + 'static {
        GaugeGuard::new(self.in_flight.clone())
    }

    pub fn dead_lettered(&self, written: bool) {
        self.dead_letters[usize::from(!written)].inc();
    }

    pub fn retried_locally(&self) {
        self.local_retries.inc();
    }

    pub fn published(&self, destination: Destination, count: usize) {
        self.published[destination as usize].inc_by(count as u64);
    }
}

/// The embedded dedup store's group commit, read from its own counters
/// ([`crate::dedup::embedded::stats`], which `gridfn replay --json` also
/// prints) at each scrape, so every series exists from the start, at 0 with
/// another store: commits answered, group writes, and `fdatasync`s. Commits
/// per sync is how many deliveries share one sync; syncs per second is what
/// the disk sustains for "durable before the 200".
#[derive(Debug)]
struct DedupStoreStats;

impl prometheus_client::collector::Collector for DedupStoreStats {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let stats = crate::dedup::embedded::stats();
        let labels = StoreLabels { store: "embedded" };
        for (name, help, value) in [
            (
                "gridfn_dedup_commits",
                "Deliveries' done records committed by the dedup store (each answered once durable, as dedup.sync says)",
                stats.commits,
            ),
            (
                "gridfn_dedup_writes",
                "Group writes of the dedup store: one serves every commit waiting for it",
                stats.writes,
            ),
            (
                "gridfn_dedup_syncs",
                "fdatasyncs of the dedup store's journal; commits / syncs is commits per sync",
                stats.syncs,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

/// `family`, registered as `name` with its help text.
fn register<F: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    family: F,
) -> F {
    registry.register(name, help, family.clone());
    family
}

/// A duration histogram: 10 µs to ~10 s (sandboxed calls are microseconds,
/// timeouts seconds).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(1e-5, 4.0, 11))
}

/// Holds a gauge one higher while it lives (also when the future holding it
/// is cancelled).
struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// `gauge` is a handle on the shared count.
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `series{labels}` in an exposition.
    fn sample(text: &str, series_and_labels: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series_and_labels)?.trim().parse().ok())
    }

    #[test]
    fn every_handlers_series_exist_at_zero_before_any_event() {
        let text = Metrics::new(["resize"]).render();
        for series in [
            r#"gridfn_events_total{handler="resize",outcome="success"}"#,
            r#"gridfn_events_total{handler="resize",outcome="duplicate"}"#,
            r#"gridfn_events_total{handler="*",outcome="unmatched"}"#,
            r#"gridfn_dedup_claims_total{handler="resize",result="done"}"#,
            r#"gridfn_handler_duration_seconds_count{handler="resize"}"#,
            r#"gridfn_instantiation_seconds_count{handler="resize"}"#,
            r#"gridfn_instances_in_flight{handler="resize"}"#,
            r#"gridfn_instances_queued{handler="resize"}"#,
            r#"gridfn_dead_letter_writes_total{handler="resize",result="failed"}"#,
            r#"gridfn_local_retries_total{handler="resize"}"#,
            r#"gridfn_published_events_total{handler="resize",destination="event_grid"}"#,
            r#"gridfn_deliveries_total{status="503"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} missing or not 0 in\n{text}");
        }
        // Process-wide counters: other tests' stores may have counted already.
        for series in [
            r#"gridfn_dedup_commits_total{store="embedded"}"#,
            r#"gridfn_dedup_writes_total{store="embedded"}"#,
            r#"gridfn_dedup_syncs_total{store="embedded"}"#,
        ] {
            assert!(sample(&text, series).is_some(), "{series} missing in\n{text}");
        }
        assert!(!text.contains(r#"handler="*",outcome="success""#), "\"*\" is not a handler:\n{text}");
    }

    #[test]
    fn handles_count_into_the_exported_series() {
        let metrics = Metrics::new(["a", "b"]);
        metrics.count("a", PairOutcome::Reject);
        metrics.count("a", PairOutcome::Reject);
        metrics.count(UNMATCHED_LABEL, PairOutcome::Unmatched);
        metrics.handler("b").published(Destination::EventGrid, 3);
        metrics.handler("b").dead_lettered(false);
        metrics.handler("b").claimed(&Claim::Done);
        metrics.handler("b").observe_instantiation(0.002);
        metrics.count_delivery(400);
        let queued = metrics.handler("a").queued();
        let text = metrics.render();
        assert_eq!(sample(&text, r#"gridfn_events_total{handler="a",outcome="reject"}"#), Some(2.0));
        assert_eq!(sample(&text, r#"gridfn_events_total{handler="b",outcome="reject"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"gridfn_events_total{handler="*",outcome="unmatched"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"gridfn_published_events_total{handler="b",destination="event_grid"}"#), Some(3.0));
        assert_eq!(sample(&text, r#"gridfn_published_events_total{handler="b",destination="local"}"#), Some(0.0));
        assert_eq!(sample(&text, r#"gridfn_dead_letter_writes_total{handler="b",result="failed"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"gridfn_dedup_claims_total{handler="b",result="done"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"gridfn_instantiation_seconds_count{handler="b"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"gridfn_deliveries_total{status="400"}"#), Some(1.0));
        assert_eq!(sample(&text, r#"gridfn_instances_queued{handler="a"}"#), Some(1.0));
        drop(queued);
        assert_eq!(sample(&metrics.render(), r#"gridfn_instances_queued{handler="a"}"#), Some(0.0));
    }

    #[tokio::test]
    async fn the_dedup_stores_commits_and_syncs_are_scraped_as_they_happen() {
        let metrics = Metrics::new(["a"]);
        let commits = |text: &str| sample(text, r#"gridfn_dedup_commits_total{store="embedded"}"#).unwrap();
        let syncs = |text: &str| sample(text, r#"gridfn_dedup_syncs_total{store="embedded"}"#).unwrap();
        let before = metrics.render();
        let dir = tempfile::tempdir().unwrap();
        let store = crate::dedup::embedded::EmbeddedStore::open(&dir.path().join("dedup")).unwrap();
        let key = crate::dedup::DedupKey::new("a", "/s", "1");
        use crate::dedup::DedupStore;
        store.commit(&[key], std::time::Duration::from_secs(60)).await.unwrap();
        let after = metrics.render();
        // Other tests' stores count into the same process-wide counters meanwhile: at least ours.
        assert!(commits(&after) >= commits(&before) + 1.0, "before:\n{before}\nafter:\n{after}");
        assert!(syncs(&after) >= syncs(&before) + 1.0, "a durable commit syncs:\n{after}");
    }

    #[test]
    fn a_name_that_is_no_handler_counts_nowhere_visible() {
        let metrics = Metrics::new(["a"]);
        metrics.count("nope", PairOutcome::Success);
        assert!(!metrics.render().contains("nope"));
    }

    /// Every `gridfn_…` name in the PromQL of `samples/grafana/gridfn.json`.
    fn dashboard_metric_names() -> Vec<String> {
        fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, value) in map {
                        match (key.as_str(), value) {
                            ("expr" | "definition", serde_json::Value::String(expr)) => out.push(expr.clone()),
                            (_, value) => exprs(value, out),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|item| exprs(item, out)),
                _ => {}
            }
        }
        let dashboard = serde_json::from_str(include_str!("../../samples/grafana/gridfn.json"))
            .expect("samples/grafana/gridfn.json is JSON");
        let mut found = Vec::new();
        exprs(&dashboard, &mut found);
        let mut names = Vec::new();
        for expr in found {
            let mut rest = expr.as_str();
            while let Some(at) = rest.find("gridfn_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.push(name);
            }
        }
        names
    }

    #[test]
    fn the_grafana_dashboard_queries_only_exported_series_and_shows_every_metric() {
        let exported = Metrics::new(["a"]).series_names();
        let used = dashboard_metric_names();
        assert!(used.len() > 10, "the dashboard's queries were not found: {used:?}");
        for name in &used {
            assert!(
                exported.contains(name),
                "the dashboard queries {name}, which gridfn does not export: {exported:?}"
            );
        }
        let families = Metrics::new(["a"]).render();
        for family in families.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next()) {
            assert!(used.iter().any(|name| name.starts_with(family)), "no panel shows {family}");
        }
    }

    #[test]
    fn series_names_follow_the_openmetrics_suffixes() {
        let names = Metrics::new(["a"]).series_names();
        for name in [
            "gridfn_events_total",
            "gridfn_handler_duration_seconds_bucket",
            "gridfn_instantiation_seconds_sum",
            "gridfn_instances_in_flight",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "gridfn_events"), "a counter's series ends in _total: {names:?}");
    }
}
