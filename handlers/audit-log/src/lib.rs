//! Logs every event it receives and, when the manifest grants `kv`, keeps an
//! audit trail of them: a count per event type (`count/<type>`) and one entry
//! per event (`trail/<seq>/<id>`), so the trail of everything that reached
//! gridfn can be listed while it runs (`gridfn kv list audit-log --prefix trail/`).
//! Also the smallest complete handler to start from.
//!
//! Each trail entry is JSON: `seq`, `id`, `type`, `source`, `subject`, `time`
//! (the event's own, as sent), `outcome`, `attempt` and `replay`. `outcome` is
//! the audit log's: an entry is written only on the way to `success` (a store
//! failure retries the event instead), so what the other handlers made of the
//! event is in gridfn's metrics and dead-letter store, not here. `seq` comes
//! from one counter, zero-padded in the key so that key order is the order
//! in which gridfn recorded the events. gridfn applies a run's kv writes only
//! when it records the run, so the counter counts each event exactly once,
//! and a run's `increment` answers the count recorded before it plus one:
//! events running at the same time (one delivery's) share a `seq`, and the
//! event id after it keeps their entries apart.

use gridfn_sdk::{Delivery, Event, Outcome, export_handler, kv, log};

/// The counter behind the trail's sequence numbers (outside `trail/`, so a
/// listing of the trail is only entries).
const SEQUENCE: &str = "seq/trail";

fn handle(event: &Event, delivery: &Delivery) -> Outcome {
    let seen = match kv::increment(&format!("count/{}", event.event_type()), 1) {
        Ok(count) => count.to_string(),
        Err(kv::Error::Denied) => "-".to_owned(),
        // Counting is part of the audit: a store failure is worth a retry.
        Err(err) => return Outcome::retry(format!("counting failed: {err}")),
    };
    let trail = match record(event, delivery) {
        Ok(Some(key)) => key,
        Ok(None) => "-".to_owned(),
        Err(err) => return Outcome::retry(format!("recording the trail failed: {err}")),
    };
    log::info(&format!(
        "audit: {} {} from {} subject={} attempt={} bytes={} seen={seen} trail={trail}",
        event.event_type(),
        event.id(),
        event.source(),
        event.subject().unwrap_or("-"),
        delivery.attempt(),
        event.data().len(),
    ));
    Outcome::Success
}

/// Writes the event's trail entry; its key, or `None` without `kv`.
fn record(event: &Event, delivery: &Delivery) -> Result<Option<String>, kv::Error> {
    let seq = match kv::increment(SEQUENCE, 1) {
        Ok(seq) => seq,
        Err(kv::Error::Denied) => return Ok(None),
        Err(err) => return Err(err),
    };
    let key = format!("trail/{seq:010}/{}", event.id());
    let entry = serde_json::json!({
        "seq": seq,
        "id": event.id(),
        "type": event.event_type(),
        "source": event.source(),
        "subject": event.subject(),
        "time": event.time(),
        "outcome": "success",
        "attempt": delivery.attempt(),
        "replay": delivery.is_replay(),
    });
    kv::set(&key, entry.to_string().as_bytes())?;
    Ok(Some(key))
}

export_handler!(handle);
