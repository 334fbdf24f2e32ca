#!/usr/bin/env python3
"""Publish Event Grid / CloudEvents batches to gridfn with the real Azure SDK.

This is the Python client half of gridfn's end-to-end tests. It uses the
official ``azure-eventgrid`` package (``EventGridPublisherClient`` with an
``AzureKeyCredential``), exactly as an Azure user would, so the Rust host is
tested against what the SDK really puts on the wire, not against our reading of
the docs.

Usage
-----
::

    python publish.py --endpoint http://127.0.0.1:7071/api/events --key KEY \\
        --schema eventgrid|cloudevents --count N --prefix ID_PREFIX \\
        [--batch-size M] [--retry-total R] [--timeout SECONDS]

Sends N events with ids ``<prefix>-0`` .. ``<prefix>-<N-1>`` in
``ceil(N / M)`` sequential ``send()`` calls (one HTTP request each, unless
the SDK retries), in id order. Every event looks like a
``Microsoft.Storage.BlobCreated`` notification for blob ``<i>.md``:

* Event Grid schema: ``EventGridEvent(id, subject, event_type, data,
  data_version="1.0")``; ``topic`` is only set when ``--topic`` is given.
* CloudEvents schema: ``azure.core.messaging.CloudEvent(source, type,
  id, subject, data)`` (specversion 1.0, ``time`` = now).
* ``subject`` = ``/blobServices/default/containers/docs/blobs/<i>.md``
* ``data.url`` = ``https://gridfnstore.blob.core.windows.net/docs/<i>.md``

On success prints exactly one JSON line to stdout, ``{"sent": N, "batches":
B}``, and exits 0. On failure prints the HTTP status and response body (or the
connection error) to stderr and exits 1; bad arguments exit 2 (argparse).

What the SDK sends (observed with azure-eventgrid 4.22.1 / azure-core 1.41.0 /
requests 2.34.2 against a loopback capture server; see requirements.txt)
-----------------------------------------------------------------------------
Both schemas, one HTTP/1.1 request per ``send()`` call (per batch):

* ``POST <endpoint path>?api-version=2018-01-01``. Nothing is added to the
  path; the query parameter is always added. If the endpoint already has a
  query, ``api-version`` is put *first*: endpoint ``/hook?functionName=f``
  becomes ``/hook?api-version=2018-01-01&functionName=f``.
* Headers, in the order they arrive (nothing else is sent):

  - ``Host: 127.0.0.1:<port>``
  - ``User-Agent: azsdk-python-eventgrid/4.10.0 Python/3.11.7
    (Linux-...-glibc2.36)``. Note 4.10.0: the basic-tier client still
    reports its old internal version, not 4.22.1.
  - ``Accept-Encoding: gzip, deflate``, ``Accept: */*``,
    ``Connection: keep-alive`` (one pooled connection, reused across
    batches because this script uses one client)
  - ``Content-Type``: ``application/json; charset=utf-8`` (Event Grid
    schema) or ``application/cloudevents-batch+json; charset=utf-8``
    (CloudEvents). Note the ``; charset=utf-8`` parameter.
  - ``Content-Length: <n>`` (never chunked)
  - ``x-ms-client-request-id: <uuid1>``, new for each send() call and the
    same on every retry of that call
  - ``aeg-sas-key: <key>``: the raw key from ``AzureKeyCredential``, sent
    on every attempt
  - No other ``aeg-*`` header. In particular, **no** ``aeg-event-type``
    (``Notification``/``SubscriptionValidation``), which the Event Grid
    *service* adds when it delivers to a webhook, so gridfn must not require
    it for SDK-published requests. ``aeg-channel-name`` is only sent for
    partner topics (``channel_name=``), which this script never uses. There
    is no ``traceparent`` unless distributed tracing is set up.

* Body: a JSON array (``json.dumps`` default separators ``", "``/``": "``),
  one element per event, even for a batch of one. The SDK never sends
  structured-mode ``application/cloudevents+json`` (a single object) to a
  basic topic, so test gridfn's single-event path without this script.

  - Event Grid schema element keys, in order: ``id``, ``topic`` (only when
    set), ``subject``, ``data``, ``eventType``, ``eventTime``,
    ``dataVersion``. ``eventTime`` is UTC with microseconds and ``Z``,
    e.g. ``2026-11-21T09:22:29.395388Z``. No ``metadataVersion``.
  - CloudEvents element keys, in order: ``id``, ``source``, ``data``,
    ``type``, ``time``, ``specversion`` (``"1.0"``), ``subject``. ``time``
    looks like ``eventTime`` above. ``datacontenttype``/``dataschema``
    are left out when not set. ``data`` is inline JSON (``data_base64`` is
    only used for bytes).

* Success means **exactly 200**. Any other status, including 201/202/204,
  raises ``HttpResponseError``, so this script exits 1. The response body is
  ignored on 200.

Retries and timeouts (azure-core ``RetryPolicy`` defaults, observed)
--------------------------------------------------------------------
* Statuses: a POST is retried on **500, 503 and 504** only. 408, 429, 502
  and other 4xx are *not* retried, **unless the reply has a ``Retry-After``
  header**. Then *any* status >= 400 (even 401) is retried, after exactly
  ``Retry-After`` seconds.
* At most ``retry_status=3`` retries, so at most **4 requests** per send(),
  each with the same body, ``aeg-sas-key`` and ``x-ms-client-request-id``.
* Backoff without Retry-After: exponential, factor 0.8, times a random jitter
  in [0.8, 1.2]. Observed for a persistent 503: attempts at +0.00 s, +0.00 s,
  +1.65 s and +4.86 s, then the error comes back (about 5.3 s for the whole
  run). 503,503,200 succeeds after about 1.7 s. With ``Retry-After: 2``,
  attempts come at +0, +2, +4 and +6 s.
* Transport errors are **not** retried for POST: connection refused
  (``ServiceRequestError``) and read timeout (``ServiceResponseTimeoutError``)
  fail at once.
* Timeouts: ``connection_timeout`` and ``read_timeout`` are 300 s each by
  default, so a server that hangs holds this script for 5 minutes. Tests
  should pass ``--timeout``.
* ``EventGridPublisherClient`` for a basic topic silently **ignores**
  constructor keyword arguments (``retry_total``, ``connection_timeout``,
  ...): they are not passed on to the inner client. They work as per-call
  keyword arguments of ``send()``, which is how ``--retry-total`` and
  ``--timeout`` are applied.

Plain ``http://`` endpoints
---------------------------
Accepted: ``AzureKeyCredentialPolicy`` (unlike ``BearerTokenCredentialPolicy``)
does not require HTTPS, so ``aeg-sas-key`` goes over plain HTTP without any
extra option. Nothing is needed (``enforce_https=False`` only applies to
token credentials).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import uuid
from typing import Any, Dict, List

from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import AzureError, HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient

EVENT_TYPE = "Microsoft.Storage.BlobCreated"
STORAGE_ACCOUNT = "gridfnstore"
CONTAINER = "docs"
# What Azure Storage puts in a CloudEvent's `source` (and an Event Grid event's `topic`).
SOURCE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/gridfn-test"
    f"/providers/Microsoft.Storage/storageAccounts/{STORAGE_ACCOUNT}"
)


def blob_subject(i: int) -> str:
    """Subject of event number *i*, as Azure Storage writes it."""
    return f"/blobServices/default/containers/{CONTAINER}/blobs/{i}.md"


def blob_created_data(i: int, prefix: str) -> Dict[str, Any]:
    """A realistic Microsoft.Storage.BlobCreated `data` payload for blob `<i>.md`."""
    return {
        "api": "PutBlob",
        # Deterministic (derived from the event id) so tests can assert on them.
        "clientRequestId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"gridfn:{prefix}-{i}:client")),
        "requestId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"gridfn:{prefix}-{i}:request")),
        "eTag": f"0x8D{i:014X}",
        "contentType": "text/markdown",
        "contentLength": 512 + i,
        "blobType": "BlockBlob",
        "url": f"https://{STORAGE_ACCOUNT}.blob.core.windows.net/{CONTAINER}/{i}.md",
        "sequencer": f"{i:032X}",
        "storageDiagnostics": {"batchId": f"{prefix}-batch"},
    }


def make_event(schema: str, prefix: str, i: int, topic: str | None) -> Any:
    """Build event *i* (id ``<prefix>-<i>``) in the requested schema."""
    event_id = f"{prefix}-{i}"
    data = blob_created_data(i, prefix)
    if schema == "eventgrid":
        return EventGridEvent(
            subject=blob_subject(i),
            event_type=EVENT_TYPE,
            data=data,
            data_version="1.0",
            id=event_id,
            topic=topic,
        )
    return CloudEvent(
        source=SOURCE,
        type=EVENT_TYPE,
        id=event_id,
        subject=blob_subject(i),
        data=data,
    )


def parse_args(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Send N Microsoft.Storage.BlobCreated-like events to an Event Grid "
        "endpoint with the azure-eventgrid SDK (AzureKeyCredential -> aeg-sas-key)."
    )
    p.add_argument("--endpoint", required=True, help="full URL to POST to (http:// is fine)")
    p.add_argument("--key", required=True, help="key sent in the aeg-sas-key header")
    p.add_argument("--schema", required=True, choices=["eventgrid", "cloudevents"])
    p.add_argument("--count", required=True, type=int, help="number of events N (>= 0)")
    p.add_argument("--prefix", required=True, help="event ids are <prefix>-0 .. <prefix>-<N-1>")
    p.add_argument("--batch-size", type=int, default=100, help="events per request (default 100)")
    p.add_argument("--topic", default=None,
                   help="Event Grid schema only: set each event's topic (default: left out)")
    p.add_argument("--retry-total", type=int, default=None,
                   help="override the SDK's retry budget per send() (0 = no retries; "
                   "default: SDK default, up to 3 retries on 500/503/504)")
    p.add_argument("--timeout", type=float, default=None,
                   help="connection and read timeout in seconds (default: SDK default, 300)")
    args = p.parse_args(argv)
    if args.count < 0:
        p.error("--count must be >= 0")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.topic is not None and args.schema != "eventgrid":
        p.error("--topic applies to --schema eventgrid only")
    return args


def http_error_details(e: HttpResponseError) -> tuple:
    """(status, reason, body) of a failed send.

    For a 404 the SDK raises a new ResourceNotFoundError without a response
    ("Resource not found. For Event Grid Namespaces ..."); the original error,
    with the response, is its ``__cause__``.
    """
    err: BaseException = e
    while getattr(err, "response", None) is None and isinstance(err.__cause__, HttpResponseError):
        err = err.__cause__
    resp = getattr(err, "response", None)
    if resp is None:
        return (getattr(e, "status_code", None), getattr(e, "reason", None), str(e))
    try:
        body = resp.text()
    except Exception:  # pragma: no cover - best effort
        body = "<unreadable body>"
    return (resp.status_code, resp.reason, body)


def main(argv: List[str]) -> int:
    args = parse_args(argv)

    # The legacy (basic tier) send() passes its per-call kwargs into each generated
    # CloudEvent model, which logs "retry_total is not a known attribute ... will be
    # ignored" as a WARNING. Harmless (the pipeline still gets them): keep stderr clean.
    logging.getLogger("azure.eventgrid._legacy._generated._serialization").setLevel(logging.ERROR)

    # Per-call options: the basic-topic client ignores constructor kwargs.
    send_kwargs: Dict[str, Any] = {}
    if args.retry_total is not None:
        send_kwargs["retry_total"] = args.retry_total
    if args.timeout is not None:
        send_kwargs["connection_timeout"] = args.timeout
        send_kwargs["read_timeout"] = args.timeout

    batches = 0
    sent = 0
    n_batches = math.ceil(args.count / args.batch_size)
    client = EventGridPublisherClient(args.endpoint, AzureKeyCredential(args.key))
    try:
        with client:
            for b in range(n_batches):
                lo = b * args.batch_size
                hi = min(lo + args.batch_size, args.count)
                events = [make_event(args.schema, args.prefix, i, args.topic) for i in range(lo, hi)]
                try:
                    client.send(events, **send_kwargs)
                except HttpResponseError as e:
                    status, reason, body = http_error_details(e)
                    print(
                        f"publish.py: batch {b + 1}/{n_batches} (events {lo}..{hi - 1}) failed: "
                        f"HTTP {status} {reason or ''}".rstrip()
                        + f"; body: {body!r}; sent before failure: {sent}",
                        file=sys.stderr,
                    )
                    return 1
                except AzureError as e:  # connection refused, timeout, ...
                    print(
                        f"publish.py: batch {b + 1}/{n_batches} (events {lo}..{hi - 1}) failed: "
                        f"{type(e).__name__}: {e}; sent before failure: {sent}",
                        file=sys.stderr,
                    )
                    return 1
                batches += 1
                sent += hi - lo
    except Exception as e:  # anything else: still a clear message, not a traceback-only
        print(f"publish.py: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    print(json.dumps({"sent": sent, "batches": batches}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
