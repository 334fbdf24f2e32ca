//! Event Grid's delivery rules for a webhook: which answers are a delivery,
//! which failures it never retries, when it retries the others, and when it
//! gives up (max delivery attempts, event time to live). From Microsoft's
//! "Event Grid message delivery and retry".

use std::time::Duration;

use http::StatusCode;

/// Event Grid's retry schedule: the wait after the 1st, 2nd, … failed
/// attempt; after the last step it waits 12 hours each time. (Event Grid
/// adds a little randomness to each step; `send` does not, so runs repeat.)
const SCHEDULE: [Duration; 9] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(3 * 60 * 60),
    Duration::from_secs(6 * 60 * 60),
];
const AFTER_SCHEDULE: Duration = Duration::from_secs(12 * 60 * 60);

/// Event Grid's largest (and default) max delivery attempts.
pub const MAX_ATTEMPTS: u32 = 30;
/// Event Grid's largest (and default) event time to live, in minutes.
pub const MAX_TTL_MINUTES: u32 = 1_440;

/// What one delivery attempt's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200–204: the events are delivered.
    Delivered,
    /// 400, 401, 403, 413: a configuration problem retrying cannot fix; the
    /// events are dead-lettered (or dropped) at once.
    Final { outcome: String },
    /// Anything else (other statuses, no answer within the timeout, no
    /// connection): retried on the schedule.
    Retry { outcome: String },
}

impl Answer {
    pub fn from_status(status: StatusCode) -> Answer {
        match status.as_u16() {
            200..=204 => Answer::Delivered,
            400 | 401 | 403 | 413 => Answer::Final { outcome: outcome_name(status) },
            _ => Answer::Retry { outcome: outcome_name(status) },
        }
    }
}

/// A status as Event Grid names delivery outcomes: its reason phrase
/// without spaces (`BadRequest`, `ServiceUnavailable`).
pub fn outcome_name(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => reason.split([' ', '-']).collect(),
        None => format!("Http{}", status.as_u16()),
    }
}

/// When to retry and when to give up, on a clock that may run faster than
/// Event Grid's (`--time-scale`).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// 1 to 30 attempts in all, the first included.
    max_attempts: u32,
    /// From publishing, how long an event may still be attempted (scaled).
    ttl: Duration,
    /// Multiplies every wait and the TTL: 0.001 turns 10 s into 10 ms.
    scale: f64,
}

impl RetryPolicy {
    /// Err when a value is outside Event Grid's ranges, or the scale is not a
    /// positive number.
    pub fn new(max_attempts: u32, ttl_minutes: u32, scale: f64) -> Result<RetryPolicy, String> {
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            return Err(format!("max delivery attempts must be 1 to {MAX_ATTEMPTS}, not {max_attempts}"));
        }
        if !(1..=MAX_TTL_MINUTES).contains(&ttl_minutes) {
            return Err(format!("event time to live must be 1 to {MAX_TTL_MINUTES} minutes, not {ttl_minutes}"));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!("time scale must be a positive number, not {scale}"));
        }
        let ttl = Duration::from_secs(u64::from(ttl_minutes) * 60).mul_f64(scale);
        Ok(RetryPolicy { max_attempts, ttl, scale })
    }

    /// The wait after `failed` attempts (1 after the first), scaled; `None`
    /// when the attempts are used up.
    pub fn delay_after(&self, failed: u32) -> Option<Duration> {
        if failed >= self.max_attempts {
            return None;
        }
        let step = SCHEDULE.get(failed.saturating_sub(1) as usize).copied().unwrap_or(AFTER_SCHEDULE);
        Some(step.mul_f64(self.scale))
    }

    /// Whether an event published `age` ago (real time) is past its time to
    /// live. Event Grid checks it when an attempt comes due.
    pub fn expired(&self, age: Duration) -> bool {
        age > self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn the_schedule_is_event_grids() {
        let policy = RetryPolicy::new(30, 1440, 1.0).unwrap();
        let waits: Vec<_> = (1..=12).map(|n| policy.delay_after(n)).collect();
        let expected = [10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200, 43200, 43200];
        assert_eq!(waits, expected.map(secs));
    }

    #[test]
    fn max_attempts_counts_the_first_attempt() {
        let policy = RetryPolicy::new(3, 1440, 1.0).unwrap();
        assert_eq!(policy.delay_after(1), secs(10));
        assert_eq!(policy.delay_after(2), secs(30));
        assert_eq!(policy.delay_after(3), None, "three attempts made: give up");
        assert_eq!(RetryPolicy::new(1, 1440, 1.0).unwrap().delay_after(1), None);
    }

    #[test]
    fn time_scale_compresses_waits_and_ttl_alike() {
        let policy = RetryPolicy::new(30, 1, 0.001).unwrap();
        assert_eq!(policy.delay_after(1), Some(Duration::from_millis(10)));
        assert_eq!(policy.delay_after(4), Some(Duration::from_millis(300)));
        assert!(!policy.expired(Duration::from_millis(59)));
        assert!(policy.expired(Duration::from_millis(61)), "1 minute at 0.001 is 60 ms");
    }

    #[test]
    fn only_400_401_403_and_413_are_final() {
        for code in [400, 401, 403, 413] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(Answer::from_status(status), Answer::Final { .. }), "{code}");
        }
        for code in [200, 201, 202, 203, 204] {
            assert_eq!(Answer::from_status(StatusCode::from_u16(code).unwrap()), Answer::Delivered, "{code}");
        }
        for code in [205, 301, 404, 408, 429, 500, 502, 503] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(matches!(Answer::from_status(status), Answer::Retry { .. }), "{code}");
        }
    }

    #[test]
    fn outcomes_are_named_as_event_grid_names_them() {
        assert_eq!(outcome_name(StatusCode::BAD_REQUEST), "BadRequest");
        assert_eq!(outcome_name(StatusCode::SERVICE_UNAVAILABLE), "ServiceUnavailable");
        assert_eq!(outcome_name(StatusCode::NOT_FOUND), "NotFound");
        assert_eq!(outcome_name(StatusCode::from_u16(599).unwrap()), "Http599");
    }

    #[test]
    fn values_outside_event_grids_ranges_are_refused() {
        assert!(RetryPolicy::new(0, 1440, 1.0).is_err());
        assert!(RetryPolicy::new(31, 1440, 1.0).is_err());
        assert!(RetryPolicy::new(30, 0, 1.0).is_err());
        assert!(RetryPolicy::new(30, 1441, 1.0).is_err());
        assert!(RetryPolicy::new(30, 1440, 0.0).is_err());
        assert!(RetryPolicy::new(30, 1440, f64::NAN).is_err());
    }
}
