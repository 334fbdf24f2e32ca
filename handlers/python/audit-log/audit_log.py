"""Logs every event it receives, counts them per event type in its key-value
store (when the manifest grants `kv`), and succeeds: the audit trail of
handlers/audit-log (Rust) in Python, line for line, and the smallest
complete Python handler to start from."""

from gridfn import Retry, Success, handler, kv, log


@handler
def handle(event, delivery):
    try:
        seen = str(kv.increment(f"count/{event.type}"))
    except kv.Denied:
        seen = "-"
    except kv.KvError as error:
        # Counting is part of the audit: a store failure is worth a retry.
        return Retry(f"counting failed: {error}")
    log.info(
        f"audit: {event.type} {event.id} from {event.source} subject={event.subject or '-'} "
        f"attempt={delivery.attempt} bytes={len(event.data)} seen={seen}"
    )
    return Success()
