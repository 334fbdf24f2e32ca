//! The pull sources' Prometheus metrics, registered with the rest in
//! [`crate::metrics::Metrics`] and, like a handler's, created for every
//! source (`[[pull]]` and push subscription, labelled `topic/subscription`)
//! when gridfn starts, so each series is 0 before the first event and the
//! consumer finds its handles with one map lookup.
//!
//! - `gridfn_pull_received_events_total{source}`: events received.
//! - `gridfn_pull_settled_events_total{source,operation}`: tokens settled,
//!   by `acknowledge`, `release` or `reject`.
//! - `gridfn_pull_lock_renewals_total{source}`: locks renewed while a
//!   handler ran.
//! - `gridfn_pull_failed_lock_tokens_total{source,operation}`: tokens a
//!   settle or renewal did not take: listed in `failedLockTokens`, or in a
//!   call that failed (their events come back when the lock expires).

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::namespace::broker::Settle;

/// The `operation` label, in the order of [`operation_index`].
const OPERATIONS: [&str; 4] = ["acknowledge", "release", "reject", "renew_lock"];

fn operation_index(settle: Settle) -> usize {
    match settle {
        Settle::Acknowledge => 0,
        Settle::Release { .. } => 1,
        Settle::Reject => 2,
        Settle::RenewLock => 3,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    source: String,
    operation: &'static str,
}

/// The families, and each source's handles into them.
pub struct PullMetrics {
    received: Family<SourceLabels, Counter>,
    settled: Family<OperationLabels, Counter>,
    renewals: Family<SourceLabels, Counter>,
    failed: Family<OperationLabels, Counter>,
    sources: HashMap<String, SourceMetrics>,
    /// For a source that was not registered (never, from the consumers).
    unknown: SourceMetrics,
}

/// One source's series.
#[derive(Default)]
pub struct SourceMetrics {
    received: Counter,
    /// Acknowledge, release, reject (renewals count in `renewals`).
    settled: [Counter; 3],
    renewals: Counter,
    /// By operation, in the order of `OPERATIONS`.
    failed: [Counter; 4],
}

impl PullMetrics {
    /// Registers the families in `registry`; sources are added with [`PullMetrics::add_source`].
    pub fn register(registry: &mut Registry) -> PullMetrics {
        let metrics = PullMetrics {
            received: Family::default(),
            settled: Family::default(),
            renewals: Family::default(),
            failed: Family::default(),
            sources: HashMap::new(),
            unknown: SourceMetrics::default(),
        };
        registry.register(
            "gridfn_pull_received_events",
            "Events received from namespace subscriptions ([[pull]] and push subscriptions), by source (topic/subscription)",
            metrics.received.clone(),
        );
        registry.register(
            "gridfn_pull_settled_events",
            "Received events settled, by source and operation: acknowledge, release (a retry), reject",
            metrics.settled.clone(),
        );
        registry.register(
            "gridfn_pull_lock_renewals",
            "Locks renewed while a handler still ran, by source",
            metrics.renewals.clone(),
        );
        registry.register(
            "gridfn_pull_failed_lock_tokens",
            "Lock tokens a settle call did not take (failedLockTokens, or the call failed), by source and operation; their events come back when the lock expires",
            metrics.failed.clone(),
        );
        metrics
    }

    /// Creates `source`'s series at 0.
    pub fn add_source(&mut self, source: &str) {
        let labels = || SourceLabels { source: source.to_owned() };
        let operation = |operation| OperationLabels { source: source.to_owned(), operation };
        let handles = SourceMetrics {
            received: self.received.get_or_create(&labels()).clone(),
            settled: [0, 1, 2].map(|i| self.settled.get_or_create(&operation(OPERATIONS[i])).clone()),
            renewals: self.renewals.get_or_create(&labels()).clone(),
            failed: OPERATIONS.map(|o| self.failed.get_or_create(&operation(o)).clone()),
        };
        self.sources.insert(source.to_owned(), handles);
    }

    pub fn source(&self, source: &str) -> &SourceMetrics {
        self.sources.get(source).unwrap_or(&self.unknown)
    }
}

impl SourceMetrics {
    pub fn received(&self, count: usize) {
        self.received.inc_by(count as u64);
    }

    /// One settle call's result: `succeeded` tokens took it, `failed` did not.
    pub fn settled(&self, settle: Settle, succeeded: usize, failed: usize) {
        match settle {
            Settle::RenewLock => self.renewals.inc_by(succeeded as u64),
            other => self.settled[operation_index(other)].inc_by(succeeded as u64),
        };
        self.failed[operation_index(settle)].inc_by(failed as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_sources_series_exist_at_zero_and_count_by_operation() {
        let mut registry = Registry::default();
        let mut metrics = PullMetrics::register(&mut registry);
        metrics.add_source("jobs/runner");
        let render = |registry: &Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text
        };
        let value = |text: &str, series: &str| -> Option<f64> {
            text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        };
        let text = render(&registry);
        for series in [
            r#"gridfn_pull_received_events_total{source="jobs/runner"}"#,
            r#"gridfn_pull_settled_events_total{source="jobs/runner",operation="reject"}"#,
            r#"gridfn_pull_lock_renewals_total{source="jobs/runner"}"#,
            r#"gridfn_pull_failed_lock_tokens_total{source="jobs/runner",operation="renew_lock"}"#,
        ] {
            assert_eq!(value(&text, series), Some(0.0), "{series} in\n{text}");
        }
        let source = metrics.source("jobs/runner");
        source.received(3);
        source.settled(Settle::Release { delay: Duration::from_secs(10) }, 2, 1);
        source.settled(Settle::RenewLock, 1, 0);
        let text = render(&registry);
        assert_eq!(value(&text, r#"gridfn_pull_received_events_total{source="jobs/runner"}"#), Some(3.0));
        assert_eq!(
            value(&text, r#"gridfn_pull_settled_events_total{source="jobs/runner",operation="release"}"#),
            Some(2.0)
        );
        assert_eq!(
            value(&text, r#"gridfn_pull_settled_events_total{source="jobs/runner",operation="acknowledge"}"#),
            Some(0.0)
        );
        assert_eq!(
            value(&text, r#"gridfn_pull_failed_lock_tokens_total{source="jobs/runner",operation="release"}"#),
            Some(1.0)
        );
        assert_eq!(value(&text, r#"gridfn_pull_lock_renewals_total{source="jobs/runner"}"#), Some(1.0));
        metrics.source("nobody").received(1);
        assert!(!render(&registry).contains("nobody"));
    }
}
