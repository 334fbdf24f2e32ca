//! {{name}}: a gridfn handler. It logs each order it receives, and rejects an
//! event whose data is not an order: gridfn dead-letters it instead of
//! retrying, since no retry can fix it.
//!
//! Test: `{{test}}`; build: `{{build}}`.

use gridfn_sdk::{Delivery, Event, Outcome, export_handler, log};
use serde::Deserialize;

/// What this handler expects in an event's `data` (see events/sample.json).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    order_id: String,
    amount: f64,
}

fn handle(event: &Event, _delivery: &Delivery) -> Outcome {
    match summary(event.event_type(), event.id(), event.data()) {
        Ok(line) => {
            log::info(&line);
            Outcome::Success
        }
        Err(why) => Outcome::reject(why),
    }
}

/// The log line for one event, or why its data is not an order. Apart from
/// `handle` so that `cargo test` runs it on this machine, without gridfn.
fn summary(event_type: &str, id: &str, data: &[u8]) -> Result<String, String> {
    let order: Order = serde_json::from_slice(data).map_err(|e| format!("not an order: {e}"))?;
    Ok(format!("order {} received, amount {:.2} ({event_type} {id})", order.order_id, order.amount))
}

export_handler!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    /// The event in events/sample.json (an Event Grid delivery of one event).
    fn sample() -> serde_json::Value {
        let delivery: serde_json::Value = serde_json::from_str(include_str!("../events/sample.json")).unwrap();
        delivery[0].clone()
    }

    #[test]
    fn the_sample_order_is_logged() {
        let event = sample();
        let data = serde_json::to_vec(&event["data"]).unwrap();
        let line = summary(event["eventType"].as_str().unwrap(), event["id"].as_str().unwrap(), &data);
        assert_eq!(line.as_deref(), Ok("order o-1001 received, amount 42.50 (Contoso.Orders.OrderPlaced e-1001)"));
    }

    #[test]
    fn data_that_is_not_an_order_is_rejected() {
        let why = summary("Contoso.Orders.OrderPlaced", "e-2", br#"{"amount": 1}"#).unwrap_err();
        assert!(why.starts_with("not an order: missing field `orderId`"), "{why}");
    }
}
