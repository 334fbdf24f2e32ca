//! Logs every event it receives, counts them per event type in its key-value
//! store (when the manifest grants `kv`), and succeeds: an audit trail of
//! everything that reached gridfn, and the smallest complete handler to start
//! from.

use gridfn_sdk::{Delivery, Event, Outcome, export_handler, kv, log};

fn handle(event: &Event, delivery: &Delivery) -> Outcome {
    let seen = match kv::increment(&format!("count/{}", event.event_type()), 1) {
        Ok(count) => count.to_string(),
        Err(kv::Error::Denied) => "-".to_owned(),
        // Counting is part of the audit: a store failure is worth a retry.
        Err(err) => return Outcome::retry(format!("counting failed: {err}")),
    };
    log::info(&format!(
        "audit: {} {} from {} subject={} attempt={} bytes={} seen={seen}",
        event.event_type(),
        event.id(),
        event.source(),
        event.subject().unwrap_or("-"),
        delivery.attempt(),
        event.data().len(),
    ));
    Outcome::Success
}

export_handler!(handle);
