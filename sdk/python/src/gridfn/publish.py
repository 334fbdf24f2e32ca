"""Emit new events, as CloudEvents 1.0, to the topic the manifest names
(``[handler.capabilities] publish = ...``).

Events are held until the handler returns: they are sent only when the
outcome is :class:`gridfn.Success`, and if sending fails the event being
handled is retried. Failures are :class:`PublishError`: :class:`Denied`,
:class:`TooLarge` (over 100 events or 1 MiB per handled event),
:class:`Invalid` (says why)::

    publish.event("Contoso.Thumbnail.Made", {"url": url}, subject=event.subject)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import _host


class PublishError(Exception):
    """A publish call failed."""


class Denied(PublishError):
    """The manifest does not grant ``publish`` to this handler."""


class TooLarge(PublishError):
    """At most 100 events and 1 MiB per handled event."""


class Invalid(PublishError):
    """The event is not valid, e.g. an empty type."""


@dataclass(frozen=True)
class OutgoingEvent:
    """One CloudEvent to publish, as the host receives it."""

    type: str
    #: The payload: JSON text when the content type is JSON.
    data: bytes
    #: None: gridfn derives ``<handled id>:<handler>:<n>``, so a retried
    #: handler publishes the same ids again and downstream dedup drops them.
    id: str | None = None
    #: None: ``/gridfn/handlers/<handler>``.
    source: str | None = None
    subject: str | None = None
    #: None: ``application/json``.
    data_content_type: str | None = None


def event(
    type: str,
    data: Any = None,
    *,
    id: str | None = None,
    source: str | None = None,
    subject: str | None = None,
) -> None:
    """Queues a CloudEvent whose data is ``data`` encoded as JSON."""
    send(
        OutgoingEvent(
            type=type,
            data=json.dumps(data, separators=(",", ":")).encode("utf-8"),
            id=id,
            source=source,
            subject=subject,
        )
    )


def send(outgoing: OutgoingEvent) -> None:
    """Queues ``outgoing`` as it is (any content type)."""
    _host.current().publish(outgoing)
