"""In-memory stand-ins for gridfn's imports, so a handler's unit tests run
under plain CPython (pytest) before it is built into a component::

    from gridfn import Success, testing
    from my_handler import handle

    def test_counts_each_type():
        host = testing.Host(kv=True)
        assert host.run(handle, testing.event("Contoso.A", {"n": 1})) == Success()
        assert host.kv_data == {"count/Contoso.A": b"1"}
        assert host.messages("info") == ["audit: Contoso.A ..."]

A :class:`Host` grants what its arguments say and denies the rest, as
gridfn does for a manifest: ``config`` (a dict), ``kv`` (True, or a dict of
initial values; ``kv_failure`` makes every call fail as a broken store
would), ``publish``, ``log`` and ``http`` (allowed origins, each with a
function answering its requests). :meth:`Host.run` runs a handler as gridfn
does: an exception becomes :class:`gridfn.Retry`, and published events are
kept only when the outcome is :class:`gridfn.Success`. :meth:`Host.run_batch`
runs a :func:`gridfn.batch_handler` on a list of events and answers its
outcomes, as gridfn would read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import Delivery, Event, Outcome, Retry, Success, _host, call, call_batch, http, kv, publish

#: Answers one outbound request.
Responder = Callable[[http.Request], http.Response]


@dataclass(frozen=True)
class LogLine:
    level: str
    message: str
    fields: list[tuple[str, str]] = field(default_factory=list)


def event(
    type: str,
    data: Any = None,
    *,
    id: str = "event-1",
    source: str = "/gridfn/tests",
    subject: str | None = None,
    time: str | None = None,
    extensions: dict[str, str] | None = None,
) -> Event:
    """An event whose data is ``data`` encoded as JSON (``bytes`` are taken as they are)."""
    payload = data if isinstance(data, bytes) else json.dumps(data).encode("utf-8")
    return Event(
        id=id,
        type=type,
        source=source,
        subject=subject,
        time=time,
        data_content_type="application/json",
        data=payload,
        extensions=dict(extensions or {}),
    )


class Host:
    """What one handler is granted, and what it did with it."""

    def __init__(
        self,
        *,
        handler: str = "handler",
        config: dict[str, str] | None = None,
        kv: bool | dict[str, bytes] = False,
        kv_failure: str | None = None,
        publish: bool = False,
        log: bool = True,
        http: dict[str, Responder] | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self.kv_granted = kv is not False
        #: The handler's key space.
        self.kv_data: dict[str, bytes] = dict(kv) if isinstance(kv, dict) else {}
        self.kv_failure = kv_failure
        self.publish_granted = publish
        self.log_granted = log
        self.origins = {_origin(url): responder for url, responder in (http or {}).items()}
        self.logs: list[LogLine] = []
        #: Events published by the last run (only kept when it succeeded).
        self.published: list[publish.OutgoingEvent] = []
        #: Every outbound request that was allowed, in order.
        self.requests: list[http.Request] = []
        self._queued: list[publish.OutgoingEvent] = []
        self._previous: _host.Host | None = None
        #: True while run_batch runs: gridfn grants no publish to batch handlers.
        self._batch = False

    def run(self, fn: Callable[[Event, Delivery], Outcome], event: Event, delivery: Delivery | None = None) -> Outcome:
        """Runs ``fn`` on ``event`` as gridfn would, with this host's grants."""
        self._queued = []
        recorded = dict(self.kv_data)
        with self:
            outcome = call(fn, event, delivery or Delivery(handler=self.handler))
        self.published = self._queued if outcome == Success() else []
        if isinstance(outcome, Retry):
            # gridfn applies a run's kv writes only with its record (success
            # or rejection): a retried run leaves none.
            self.kv_data = recorded
        return outcome

    def run_batch(
        self,
        fn: Callable[[list[Event], Delivery], list[Outcome]],
        events: list[Event],
        delivery: Delivery | None = None,
    ) -> list[Outcome]:
        """Runs ``fn`` on ``events`` as gridfn's ``handle-batch`` would: an
        exception retries every event, and ``publish`` is denied (gridfn
        refuses ``publish`` for a handler with ``batch``). The answer is
        returned as it is, so a test sees a list of the wrong length, which
        gridfn would retry as a whole."""
        self._queued, self.published, self._batch = [], [], True
        recorded = dict(self.kv_data)
        try:
            with self:
                outcomes = call_batch(fn, events, delivery or Delivery(handler=self.handler))
        finally:
            self._batch = False
        # As gridfn: the call's kv writes go with the first of its events
        # recorded (succeeded or rejected); a call whose events all retry (an
        # answer of the wrong length retries them all) leaves none.
        if len(outcomes) != len(events) or all(isinstance(outcome, Retry) for outcome in outcomes):
            self.kv_data = recorded
        return outcomes

    def messages(self, level: str | None = None) -> list[str]:
        """The logged messages, of ``level`` only when given."""
        return [line.message for line in self.logs if level is None or line.level == level]

    def __enter__(self) -> Host:
        self._previous = _host.install(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _host.install(self._previous)

    # The gridfn._host.Host interface.

    def log(self, level: str, message: str, fields: list[tuple[str, str]]) -> None:
        if self.log_granted:
            self.logs.append(LogLine(level, message, fields))

    def config_get(self, key: str) -> str | None:
        return None if self.config is None else self.config.get(key)

    def _kv_check(self, key: str) -> None:
        if not self.kv_granted:
            raise kv.Denied("the manifest does not grant kv")
        if self.kv_failure is not None:
            raise kv.StoreFailed(self.kv_failure)
        if len(key.encode("utf-8")) > 512:
            raise kv.TooLarge("keys are at most 512 bytes")

    def kv_get(self, key: str) -> bytes | None:
        self._kv_check(key)
        return self.kv_data.get(key)

    def kv_set(self, key: str, value: bytes) -> None:
        self._kv_check(key)
        if len(value) > 1 << 20:
            raise kv.TooLarge("values are at most 1 MiB")
        self.kv_data[key] = value

    def kv_delete(self, key: str) -> None:
        self._kv_check(key)
        self.kv_data.pop(key, None)

    def kv_increment(self, key: str, delta: int) -> int:
        self._kv_check(key)
        current = self.kv_data.get(key, b"0")
        try:
            value = int(current.decode("ascii")) + delta
        except ValueError:
            raise kv.StoreFailed(f"{key} does not hold an integer") from None
        self.kv_data[key] = str(value).encode("ascii")
        return value

    def publish(self, event: publish.OutgoingEvent) -> None:
        if self._batch:
            raise publish.Denied("a batch handler cannot publish (gridfn refuses publish with batch)")
        if not self.publish_granted:
            raise publish.Denied("the manifest does not grant publish")
        if not event.type:
            raise publish.Invalid("the event type is empty")
        if len(self._queued) >= 100:
            raise publish.TooLarge("at most 100 events per handled event")
        self._queued.append(event)

    def http_send(self, request: http.Request) -> http.Response:
        responder = self.origins.get(_origin(request.url))
        if responder is None:
            raise http.Denied("gridfn denied the request: the host is not in allowed_outbound_hosts")
        self.requests.append(request)
        return responder(request)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise http.InvalidRequest(f"{url!r} is not an absolute http(s) URL")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"
