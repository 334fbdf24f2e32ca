//! What a `send` run measured: every request's latency (an HdrHistogram),
//! the answers by status, retries, and what became of the events; printed
//! as a summary at the end, as text or JSON.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::deliver::Fate;

/// Counters the deliveries update as they go.
pub struct Stats {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Request latency in microseconds, 1 µs to 10 minutes, 3 significant digits.
    latency: Histogram<u64>,
    /// Answers by status code, `timeout` or `error` for none.
    answers: BTreeMap<String, u64>,
    retries: u64,
    events: Events,
}

#[derive(Default, Serialize, Clone)]
pub struct Events {
    pub published: u64,
    pub batches: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    /// Events dead-lettered or dropped, by Event Grid's dead-letter reason.
    pub reasons: BTreeMap<String, u64>,
}

/// The end-of-run summary.
#[derive(Serialize)]
pub struct Summary {
    pub to: String,
    pub seconds: f64,
    pub events: Events,
    pub requests: u64,
    pub retries: u64,
    pub answers: BTreeMap<String, u64>,
    /// Request latency percentiles, milliseconds.
    pub latency_ms: BTreeMap<String, f64>,
    pub events_per_second: f64,
}

impl Default for Stats {
    fn default() -> Self {
        let latency = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Stats { inner: Mutex::new(Inner { latency, answers: BTreeMap::new(), retries: 0, events: Events::default() }) }
    }
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One request made, and its answer (`None`: no answer).
    pub fn attempt(&self, latency: Duration, status: Option<http::StatusCode>) {
        let mut inner = self.lock();
        inner.latency.saturating_record((latency.as_micros() as u64).max(1));
        let key = status.map_or_else(|| "no answer".to_owned(), |s| s.as_u16().to_string());
        *inner.answers.entry(key).or_default() += 1;
    }

    pub fn retry(&self) {
        self.lock().retries += 1;
    }

    pub fn published(&self, events: usize) {
        let mut inner = self.lock();
        inner.events.published += events as u64;
        inner.events.batches += 1;
    }

    /// What became of a batch of `events`.
    pub fn fate(&self, events: usize, fate: &Fate) {
        let events = events as u64;
        let mut inner = self.lock();
        let counts = &mut inner.events;
        let reason = match fate {
            Fate::Delivered => {
                counts.delivered += events;
                return;
            }
            Fate::DeadLettered(reason) => {
                counts.dead_lettered += events;
                reason
            }
            Fate::Dropped(reason) => {
                counts.dropped += events;
                reason
            }
        };
        *counts.reasons.entry(reason.clone()).or_default() += events;
    }

    pub fn summary(&self, to: &str, elapsed: Duration) -> Summary {
        let inner = self.lock();
        let mut latency_ms = BTreeMap::new();
        if !inner.latency.is_empty() {
            for (name, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
                latency_ms.insert(name.to_owned(), inner.latency.value_at_quantile(quantile) as f64 / 1000.0);
            }
            latency_ms.insert("max".to_owned(), inner.latency.max() as f64 / 1000.0);
        }
        let seconds = elapsed.as_secs_f64();
        Summary {
            to: to.to_owned(),
            seconds,
            events: inner.events.clone(),
            requests: inner.latency.len(),
            retries: inner.retries,
            answers: inner.answers.clone(),
            latency_ms,
            events_per_second: if seconds > 0.0 { inner.events.delivered as f64 / seconds } else { 0.0 },
        }
    }
}

impl Summary {
    /// Every event ended delivered.
    pub fn all_delivered(&self) -> bool {
        self.events.delivered == self.events.published
    }

    pub fn render_text(&self) -> String {
        let e = &self.events;
        let mut text = format!(
            "sent {} event(s) in {} batch(es) to {} in {:.2} s ({:.0} events/s delivered)\n",
            e.published, e.batches, self.to, self.seconds, self.events_per_second
        );
        text.push_str(&format!(
            "delivered {}, dead-lettered {}, dropped {}\n",
            e.delivered, e.dead_lettered, e.dropped
        ));
        for (reason, count) in &e.reasons {
            text.push_str(&format!("  {reason}: {count}\n"));
        }
        let answers: Vec<String> = self.answers.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        text.push_str(&format!("requests {} (retries {}): {}\n", self.requests, self.retries, answers.join(", ")));
        if !self.latency_ms.is_empty() {
            let order = ["p50", "p90", "p99", "p99.9", "max"];
            let parts: Vec<String> =
                order.iter().filter_map(|k| self.latency_ms.get(*k).map(|v| format!("{k} {v:.2}"))).collect();
            text.push_str(&format!("latency ms: {}\n", parts.join("  ")));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let stats = Stats::default();
        for ms in 1..=100 {
            stats.attempt(Duration::from_millis(ms), Some(http::StatusCode::OK));
        }
        let summary = stats.summary("http://x", Duration::from_secs(1));
        assert_eq!(summary.requests, 100);
        let p50 = summary.latency_ms["p50"];
        assert!((49.9..=50.1).contains(&p50), "p50 {p50}");
        let p99 = summary.latency_ms["p99"];
        assert!((98.9..=99.1).contains(&p99), "p99 {p99}");
        assert_eq!(summary.answers["200"], 100);
    }

    #[test]
    fn fates_count_events_not_batches() {
        let stats = Stats::default();
        stats.published(3);
        stats.published(2);
        stats.fate(3, &Fate::Delivered);
        stats.fate(2, &Fate::DeadLettered("MaxDeliveryAttemptsExceeded".into()));
        let summary = stats.summary("http://x", Duration::from_secs(1));
        assert_eq!((summary.events.published, summary.events.batches), (5, 2));
        assert_eq!((summary.events.delivered, summary.events.dead_lettered), (3, 2));
        assert_eq!(summary.events.reasons["MaxDeliveryAttemptsExceeded"], 2);
        assert!(!summary.all_delivered());
    }
}
