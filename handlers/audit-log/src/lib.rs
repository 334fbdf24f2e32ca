//! Logs every event it receives, and succeeds: an audit trail of everything
//! that reached gridfn, and the smallest complete handler to start from.

use gridfn_sdk::{Delivery, Event, Outcome, export_handler, log};

fn handle(event: &Event, delivery: &Delivery) -> Outcome {
    log::info(&format!(
        "audit: {} {} from {} subject={} attempt={} bytes={}",
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
