//! Output batching as an Event Grid subscription does it: a delivery holds
//! at most `max_events` events and, when it holds more than one, stays
//! within the preferred size; an event larger than the preferred size still
//! goes, alone. Events keep their order.

use std::ops::Range;

/// A subscription's batching settings, checked against Event Grid's limits.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Events per delivery: 1 to 5,000 (Event Grid's default is 1).
    max_events: usize,
    /// Preferred delivery size in bytes: 1 to 1,024 KB (default 64 KB).
    preferred_bytes: usize,
}

/// Event Grid's largest `maxEventsPerBatch`.
pub const MAX_EVENTS_PER_BATCH: u32 = 5_000;
/// Event Grid's largest `preferredBatchSizeInKilobytes`.
pub const MAX_PREFERRED_KB: u32 = 1_024;

impl Batching {
    /// Err when a value is outside Event Grid's ranges.
    pub fn new(max_events: u32, preferred_kb: u32) -> Result<Batching, String> {
        if !(1..=MAX_EVENTS_PER_BATCH).contains(&max_events) {
            return Err(format!("max events per batch must be 1 to {MAX_EVENTS_PER_BATCH}, not {max_events}"));
        }
        if !(1..=MAX_PREFERRED_KB).contains(&preferred_kb) {
            return Err(format!("preferred batch size must be 1 to {MAX_PREFERRED_KB} KB, not {preferred_kb}"));
        }
        Ok(Batching { max_events: max_events as usize, preferred_bytes: preferred_kb as usize * 1024 })
    }

    /// Splits events of the given JSON sizes (in order) into deliveries:
    /// index ranges into `sizes`. A delivery's size is its JSON array's:
    /// the events, the commas between them and the brackets.
    pub fn split(&self, sizes: &[usize]) -> Vec<Range<usize>> {
        let mut batches = Vec::new();
        let mut start = 0;
        let mut bytes = 2;
        for (i, &size) in sizes.iter().enumerate() {
            let count = i - start;
            let grown = bytes + size + usize::from(count > 0);
            if count > 0 && (count == self.max_events || grown > self.preferred_bytes) {
                batches.push(start..i);
                start = i;
                bytes = 2 + size;
            } else {
                bytes = grown;
            }
        }
        if start < sizes.len() {
            batches.push(start..sizes.len());
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_each_event_is_its_own_delivery() {
        let batching = Batching::new(1, 64).unwrap();
        assert_eq!(batching.split(&[10, 20, 30]), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn deliveries_hold_at_most_max_events() {
        let batching = Batching::new(4, 1024).unwrap();
        assert_eq!(batching.split(&[100; 10]), vec![0..4, 4..8, 8..10]);
    }

    #[test]
    fn deliveries_stay_within_the_preferred_size() {
        // 1 KB preferred: [400,400] is 2 + 800 + 1 = 803 bytes; a third
        // event would make it 1,204.
        let batching = Batching::new(5000, 1).unwrap();
        assert_eq!(batching.split(&[400, 400, 400, 400, 400]), vec![0..2, 2..4, 4..5]);
        // Exactly 1,024 bytes fits: 2 + 511 + 1 + 510.
        assert_eq!(batching.split(&[511, 510, 1]), vec![0..2, 2..3]);
    }

    #[test]
    fn an_event_larger_than_the_preferred_size_goes_alone() {
        let batching = Batching::new(10, 1).unwrap();
        assert_eq!(batching.split(&[10, 5000, 10, 10]), vec![0..1, 1..2, 2..4]);
    }

    #[test]
    fn nothing_to_send_is_no_delivery() {
        assert!(Batching::new(10, 64).unwrap().split(&[]).is_empty());
    }

    #[test]
    fn limits_outside_event_grids_ranges_are_refused() {
        assert!(Batching::new(0, 64).is_err());
        assert!(Batching::new(5001, 64).is_err());
        assert!(Batching::new(5000, 1024).is_ok());
        assert!(Batching::new(1, 0).is_err());
        assert!(Batching::new(1, 1025).is_err());
    }
}
