"""Where the capability modules send their calls.

Inside a component that is gridfn's imports (:mod:`gridfn._component`);
under plain CPython it is whatever :mod:`gridfn.testing` installed. Outside
both, a capability call fails loudly instead of pretending to work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .http import Request, Response
    from .publish import OutgoingEvent


class Host(Protocol):
    """The host imports, in Python terms; errors are the capability modules' exceptions."""

    def log(self, level: str, message: str, fields: list[tuple[str, str]]) -> None: ...
    def config_get(self, key: str) -> str | None: ...
    def kv_get(self, key: str) -> bytes | None: ...
    def kv_set(self, key: str, value: bytes) -> None: ...
    def kv_delete(self, key: str) -> None: ...
    def kv_increment(self, key: str, delta: int) -> int: ...
    def publish(self, event: OutgoingEvent) -> None: ...
    def http_send(self, request: Request) -> Response: ...


_current: Host | None = None


def current() -> Host:
    if _current is None:
        raise RuntimeError(
            "gridfn capabilities work inside a handler run by gridfn, or in tests under gridfn.testing.Host"
        )
    return _current


def install(host: Host | None) -> Host | None:
    """Makes `host` the one capability calls go to; returns the previous one."""
    global _current
    previous, _current = _current, host
    return previous
