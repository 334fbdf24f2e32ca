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

A handler that does better with many events at once (one database round
trip, one model call for the lot) is a :func:`batch_handler`: a function
from a list of events to one outcome each, in the same order. gridfn calls
it with a delivery's events when the manifest sets ``batch``::

    from gridfn import Reject, Success, batch_handler

    @batch_handler
    def handle_batch(events, delivery):
        return [Success() if event.data else Reject("no data") for event in events]
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
    "batch_handler",
    "call",
    "call_batch",
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

BatchHandler = Callable[[list[Event], Delivery], list[Outcome]]


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


def call_batch(fn: BatchHandler, events: list[Event], delivery: Delivery) -> list[Outcome]:
    """Runs ``fn`` on a batch as gridfn does: an exception that escapes it,
    or an answer that is not a list, retries every event of the call (with
    the traceback on stderr), and an item that is not an outcome retries its
    own event. A list of the wrong length is returned as it is: gridfn then
    retries every event of the call and logs why."""
    try:
        outcomes = fn(list(events), delivery)
        if isinstance(outcomes, (str, bytes)) or not hasattr(outcomes, "__iter__"):
            why = f"handle_batch returned {outcomes!r}, not a list of outcomes"
            return [Retry(why) for _ in events]
        outcomes = list(outcomes)
    except Exception as error:
        traceback.print_exc()
        return [Retry(f"handler raised {type(error).__name__}: {error}") for _ in events]
    return [
        outcome
        if isinstance(outcome, (Success, Retry, Reject))
        else Retry(f"handle_batch answered {outcome!r} for event {n}, not Success(), Retry(...) or Reject(...)")
        for n, outcome in enumerate(outcomes)
    ]


def handler(fn: Handler) -> Handler:
    """Marks ``fn`` as the module's handler and returns it unchanged.

    componentize-py looks for a class ``WitWorld`` in the module it builds;
    this defines it there, calling ``fn`` for every event. One handler per
    module (and at most one :func:`batch_handler` beside it).
    """
    _export(fn, "handle", "@handler")
    return fn


def batch_handler(fn: BatchHandler) -> BatchHandler:
    """Marks ``fn`` as the module's batch handler and returns it unchanged.

    The component then exports ``handle-batch`` (``python -m gridfn.build``
    builds it for gridfn's ``batch-handler`` world), which gridfn calls with
    many events at once when the handler's manifest entry sets ``batch``.
    It still exports ``handle`` for manifests without ``batch``: the
    module's :func:`handler` when it has one, else ``fn`` on a batch of one.
    """
    _export(fn, "handle_batch", "@batch_handler")
    return fn


def _export(fn: Callable[..., Any], export: str, decorator: str) -> None:
    """Makes ``fn`` the ``export`` of the ``WitWorld`` class in its module."""
    module = sys.modules.get(fn.__module__)
    if module is None:
        raise RuntimeError(f"{decorator}: module {fn.__module__!r} is not imported")
    existing = getattr(module, "WitWorld", None)
    exports = dict(getattr(existing, "gridfn_exports", {}))
    if existing is not None and not exports:
        raise RuntimeError(f"{decorator}: {fn.__module__} already defines WitWorld itself")
    previous = exports.get(export)
    # A reloaded module decorates the same function again; anything else is a mistake.
    if previous is not None and previous.__qualname__ != fn.__qualname__:
        raise RuntimeError(f"{decorator}: {fn.__module__} already has {previous.__qualname__}; one per module")
    exports[export] = fn
    from ._component import world_for

    module.WitWorld = world_for(exports.get("handle"), exports.get("handle_batch"))
