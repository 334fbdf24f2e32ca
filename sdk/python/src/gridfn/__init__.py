"""Write gridfn event handlers as plain Python functions.

A handler takes an :class:`Event` and its :class:`Delivery` and returns an
outcome, :class:`Success`, :class:`Retry` or :class:`Reject`, which gridfn
turns into what makes Event Grid forget, retry or dead-letter the event::

    from gridfn import Reject, Success, handler, log

    @handler
    def handle(event, delivery):
        blob = event.json()
        if "url" not in blob:
            return Reject("not a BlobCreated payload")
        log.info(f"new blob {blob['url']}")
        return Success()

The capabilities are modules: :mod:`gridfn.log`, :mod:`gridfn.config`,
:mod:`gridfn.kv`, :mod:`gridfn.publish` and :mod:`gridfn.http` (outbound HTTP
through ``wasi:http``). Under plain CPython they answer from the in-memory
stand-ins in :mod:`gridfn.testing`, so a handler's tests run with pytest
before ``python -m gridfn.build`` turns it into a WebAssembly component.

An exception that escapes the handler becomes a :class:`Retry` (its
traceback goes to the handler's log), like a trap in a Rust handler.
"""

from __future__ import annotations

import json as _json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import config, http, kv, log, publish

__all__ = [
    "Delivery",
    "Event",
    "Outcome",
    "Reject",
    "Retry",
    "Success",
    "call",
    "config",
    "handler",
    "http",
    "kv",
    "log",
    "publish",
]


@dataclass(frozen=True)
class Event:
    """One event, whatever schema it arrived in (Event Grid or CloudEvents 1.0)."""

    #: Unique per source; gridfn deduplicates on (handler, source, id).
    id: str
    #: ``eventType`` (Event Grid) or ``type`` (CloudEvents).
    type: str
    #: ``topic`` (Event Grid) or ``source`` (CloudEvents): who emitted it.
    source: str
    subject: str | None = None
    #: When it happened, as sent (RFC 3339 text).
    time: str | None = None
    data_content_type: str | None = None
    data_version: str | None = None
    #: The payload byte for byte as received: JSON text for JSON data.
    data: bytes = b""
    #: CloudEvents extension attributes.
    extensions: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The payload parsed as JSON (raises ``ValueError`` when it is not)."""
        return _json.loads(self.data)

    def text(self) -> str:
        """The payload as UTF-8 text (raises ``UnicodeDecodeError`` when it is not)."""
        return self.data.decode("utf-8")


@dataclass(frozen=True)
class Delivery:
    """How the event reached the handler."""

    #: The handler's name in gridfn.toml.
    handler: str
    #: 0 on the first attempt; Event Grid's delivery count plus local retries.
    attempt: int = 0
    #: The Event Grid subscription that delivered it, when the sender said.
    subscription: str | None = None
    #: True when the event is replayed from a dead-letter store.
    replay: bool = False


@dataclass(frozen=True)
class Success:
    """Done: Event Grid may forget the event; redeliveries do not run it again."""


@dataclass(frozen=True)
class Retry:
    """A transient failure: try again later, no sooner than ``after_ms``."""

    reason: str
    after_ms: int | None = None


@dataclass(frozen=True)
class Reject:
    """Never going to work: dead-letter the event with this reason."""

    reason: str


Outcome = Success | Retry | Reject

Handler = Callable[[Event, Delivery], Outcome]


def call(fn: Handler, event: Event, delivery: Delivery) -> Outcome:
    """Runs ``fn`` as gridfn does: an exception that escapes it, or a value
    that is not an outcome, becomes :class:`Retry` (a trap in a Rust
    handler), with the traceback on stderr, which gridfn logs."""
    try:
        outcome = fn(event, delivery)
    except Exception as error:
        traceback.print_exc()
        return Retry(f"handler raised {type(error).__name__}: {error}")
    if not isinstance(outcome, (Success, Retry, Reject)):
        return Retry(f"handler returned {outcome!r}, not Success(), Retry(...) or Reject(...)")
    return outcome


def handler(fn: Handler) -> Handler:
    """Marks ``fn`` as the module's handler and returns it unchanged.

    componentize-py looks for a class ``WitWorld`` in the module it builds;
    this defines it there, calling ``fn`` for every event. One handler per
    module.
    """
    module = sys.modules.get(fn.__module__)
    if module is None:
        raise RuntimeError(f"@handler: module {fn.__module__!r} is not imported")
    existing = getattr(module, "WitWorld", None)
    # A reloaded module decorates the same function again; anything else is a mistake.
    if existing is not None and getattr(existing, "handler_name", None) != fn.__qualname__:
        raise RuntimeError(f"@handler: {fn.__module__} already has a handler (WitWorld); one per module")
    from ._component import world_for

    module.WitWorld = world_for(fn)
    return fn
