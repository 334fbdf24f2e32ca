"""Outbound HTTP, to the hosts the manifest lists in ``[handler.capabilities]
allowed_outbound_hosts`` (e.g. ``["https://api.example.com"]``), a small
``requests``-like helper over ``wasi:http/outgoing-handler``::

    try:
        response = http.get("https://api.example.com/v1/status")
    except http.Denied:
        return Reject("api.example.com is not in allowed_outbound_hosts")
    except http.HttpError as error:
        return Retry(str(error))
    if response.status != 200:
        return Retry(f"the API answered {response.status}")
    status = response.json()

A request to a host not on the list raises :class:`Denied` and never reaches
the network. A call never outlives the handler's deadline. A response with
any status is a :class:`Response`, not an exception.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass, field
from typing import Any

from . import _host


class HttpError(Exception):
    """The request could not be made or failed."""


class Denied(HttpError):
    """The host is not in ``allowed_outbound_hosts``; nothing was sent."""


class InvalidRequest(HttpError):
    """The URL or a header could not be used (says why)."""


class Failed(HttpError):
    """The request was sent (or tried) and failed: DNS, connection, timeout..."""


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), as text."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value.decode("utf-8", "replace")
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def get(url: str, *, headers: dict[str, str] | None = None) -> Response:
    """``GET url``."""
    return send(Request("GET", url, list((headers or {}).items())))


def post(
    url: str,
    data: bytes | str | None = None,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """``POST url`` with ``data`` as the body, or ``json`` encoded as JSON
    (content-type ``application/json`` unless ``headers`` say otherwise)."""
    header_list = list((headers or {}).items())
    if json is not None:
        body = _json.dumps(json, separators=(",", ":")).encode("utf-8")
        if not any(name.lower() == "content-type" for name, _ in header_list):
            header_list.append(("content-type", "application/json"))
    elif isinstance(data, str):
        body = data.encode("utf-8")
    else:
        body = data or b""
    return send(Request("POST", url, header_list, body))


def send(request: Request) -> Response:
    """Sends ``request`` and reads the whole response."""
    return _host.current().http_send(request)
