"""A key-value store scoped to this handler (no handler sees another's keys),
kept where gridfn keeps its dedup records; only when the manifest grants
``kv = true``.

Failures are exceptions, all :class:`KvError`: :class:`Denied` (not
granted), :class:`TooLarge` (keys up to 512 bytes, values up to 1 MiB) and
:class:`StoreFailed` (worth a retry)::

    try:
        seen = kv.increment(f"count/{event.type}")
    except kv.Denied:
        seen = None
"""

from __future__ import annotations

from . import _host


class KvError(Exception):
    """A kv call failed."""


class Denied(KvError):
    """The manifest does not grant ``kv`` to this handler."""


class TooLarge(KvError):
    """Keys are at most 512 bytes, values at most 1 MiB."""


class StoreFailed(KvError):
    """The store failed (says why); worth a retry."""


def get(key: str) -> bytes | None:
    """The value at ``key``, or ``None`` when there is none."""
    return _host.current().kv_get(key)


def set(key: str, value: bytes | str) -> None:
    """Stores ``value`` (text is stored as UTF-8) at ``key``."""
    _host.current().kv_set(key, value.encode("utf-8") if isinstance(value, str) else bytes(value))


def delete(key: str) -> None:
    _host.current().kv_delete(key)


def increment(key: str, delta: int = 1) -> int:
    """Adds ``delta`` to the integer at ``key`` (0 when absent), atomically;
    returns the new value."""
    return _host.current().kv_increment(key, delta)
