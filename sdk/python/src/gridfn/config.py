"""Values the manifest sets for this handler (``[handler.capabilities]
config = { ... }``). Keys it does not set read as ``None``, and so does every
key when the capability is not granted."""

from __future__ import annotations

from . import _host


def get(key: str, default: str | None = None) -> str | None:
    """The value of ``key``, or ``default`` when the manifest does not set it."""
    value = _host.current().config_get(key)
    return default if value is None else value
