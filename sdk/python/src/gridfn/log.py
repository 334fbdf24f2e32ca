"""Logging into gridfn's log, tagged with the handler and event id.

Always granted (``capabilities.log = false`` silences it); each event may log
up to 64 KiB, the rest is dropped and counted. Keyword arguments become
``name=value`` fields after the message, for log search::

    log.warn("quarantine c-1", category="violence")

``print`` and stderr reach the same log, at info level.
"""

from __future__ import annotations

from . import _host

LEVELS = ("trace", "debug", "info", "warn", "error")


def _log(level: str, message: str, fields: dict[str, object]) -> None:
    _host.current().log(level, message, [(name, str(value)) for name, value in fields.items()])


def trace(message: str, **fields: object) -> None:
    _log("trace", message, fields)


def debug(message: str, **fields: object) -> None:
    _log("debug", message, fields)


def info(message: str, **fields: object) -> None:
    _log("info", message, fields)


def warn(message: str, **fields: object) -> None:
    _log("warn", message, fields)


def error(message: str, **fields: object) -> None:
    _log("error", message, fields)
