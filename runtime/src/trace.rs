//! W3C Trace Context: the `traceparent` a delivery arrives with (the HTTP
//! header, or the CloudEvents distributed-tracing extension on one event)
//! and the one gridfn hands on, so a handler's run and the events it
//! publishes join the sender's trace.
//!
//! Each (event, handler) pair is one span of that trace: its id is new, its
//! parent is the event's `traceparent` (else the request's); with neither,
//! the pair starts a trace of its own. The pair's `tracing` span carries the
//! ids (`trace_id`, `span_id`, `parent_id`), and the events the handler
//! publishes carry `traceparent` = (trace, the pair's span), so their
//! handlers are the pair's children.
//!
//! The ids are for correlating logs, for the systems downstream, and, with
//! `gridfn serve --otlp-endpoint`, for the spans [`crate::otlp`] exports:
//! those carry these same ids.

use std::fmt;

use http::HeaderMap;

use crate::event::Event;

/// The name of the header and of the CloudEvents extension attribute.
pub const TRACEPARENT: &str = "traceparent";

/// One `traceparent` value: a trace, a span in it (the parent of whoever
/// receives it), and the trace flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value as the W3C recommendation says: version
    /// `00` exactly `00-<32 hex>-<16 hex>-<2 hex>`; a later version (not
    /// `ff`) may append fields, and its first four are read. Lowercase hex
    /// only; an all-zero trace or span id is invalid. `None` for anything
    /// else, and the receiver then starts a trace of its own.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        // 2 + 1 + 32 + 1 + 16 + 1 + 2 characters; fields of the right length
        // and all hex leave the dashes exactly where they belong.
        let (head, tail) = (value.get(..55)?, &value[55..]);
        let mut fields = head.split('-');
        let mut field = |len: usize| {
            fields.next().filter(|f| f.len() == len && f.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        };
        let (version, trace_id, span_id, flags) = (field(2)?, field(32)?, field(16)?, field(2)?);
        let tail_allowed = match version {
            "00" => tail.is_empty(),
            "ff" => false,
            _ => tail.is_empty() || tail.starts_with('-'),
        };
        let trace_id = u128::from_str_radix(trace_id, 16).ok()?;
        let span_id = u64::from_str_radix(span_id, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (tail_allowed && trace_id != 0 && span_id != 0).then_some(TraceParent { trace_id, span_id, flags })
    }

    /// The `traceparent` header of a request, if it has a valid one.
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceParent> {
        headers.get(TRACEPARENT)?.to_str().ok().and_then(TraceParent::parse)
    }

    /// The event's own `traceparent` extension, if it has a valid one.
    pub fn from_event(event: &Event) -> Option<TraceParent> {
        event.extensions.iter().find(|(name, _)| name == TRACEPARENT).and_then(|(_, value)| TraceParent::parse(value))
    }

    /// A new span in the same trace, with the same flags.
    pub fn child(&self) -> TraceParent {
        TraceParent { span_id: random_span_id(), ..*self }
    }

    /// Records the trace id on `span` as `trace_id`, and the span id as `field`.
    pub fn record(&self, span: &tracing::Span, field: &str) {
        span.record("trace_id", tracing::field::display(format_args!("{:032x}", self.trace_id)));
        span.record(field, tracing::field::display(format_args!("{:016x}", self.span_id)));
    }

    /// The first span of a new trace, sampled.
    pub fn root() -> TraceParent {
        let trace_id = uuid::Uuid::new_v4().as_u128();
        TraceParent { trace_id, span_id: random_span_id(), flags: 0x01 }
    }
}

/// 00-trace-span-flags, lowercase.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

fn random_span_id() -> u64 {
    // A v4 uuid is random but for its version bits; either half is a
    // random non-zero u64 but for a 2^-58 chance.
    let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
    (high ^ low).max(1)
}

/// The span of one (event, handler) pair: a child of the event's
/// `traceparent`, else of the request's (`delivery`), else the root of a new
/// trace. Its ids are recorded on the pair's `tracing` span (fields
/// `trace_id`, `span_id`, and `parent_id` when there is a parent); it is the
/// `traceparent` of the events the handler publishes.
pub fn pair_span(event: &Event, delivery: Option<TraceParent>) -> TraceParent {
    let parent = TraceParent::from_event(event).or(delivery);
    let current = current_pair();
    // When the span is exported, its ids are the exporter's (there is no
    // setting them), so the pair takes those.
    let span = crate::otlp::join(&current, parent)
        .unwrap_or_else(|| parent.map_or_else(TraceParent::root, |parent| parent.child()));
    if let Some(parent) = parent {
        parent.record(&current, "parent_id");
    }
    span.record(&current, "span_id");
    span
}

/// The pair's `tracing` span when it is the current one, else a disabled
/// span. A disabled pair span is never entered, so the current span is then
/// the delivery's, and the pair's fields must not land there.
pub fn current_pair() -> tracing::Span {
    let current = tracing::Span::current();
    match current.metadata() {
        // The name `Pipeline::run_pair`'s `#[instrument]` gives it.
        Some(metadata) if metadata.name() == "pair" => current,
        _ => tracing::Span::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_and_prints_back() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.span_id, 0x00f067aa0ba902b7);
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), EXAMPLE);
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert_eq!(TraceParent::parse(later).map(|t| t.span_id), Some(0x00f067aa0ba902b7));
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let child = parent.child();
        assert_eq!((child.trace_id, child.flags), (parent.trace_id, parent.flags));
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
    }

    #[test]
    fn a_root_is_a_valid_new_trace() {
        let (a, b) = (TraceParent::root(), TraceParent::root());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceParent::parse(&a.to_string()), Some(a));
    }
}
