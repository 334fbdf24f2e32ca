#!/usr/bin/env python3
"""Publish the classic Event Grid lab's content-moderation events to gridfn.

The lab ("Publish and receive events with Azure Event Grid", Microsoft
Learn) publishes the five results in moderation_events.json with the
``azure-eventgrid`` SDK: each entry becomes an
``azure.core.messaging.CloudEvent`` with the entry's type, source, subject and
data, a fresh UUID as its id and ``data.timestamp`` set to the current UTC
time, and all five go out in one ``send()``. This script builds them the same
way. Only the client differs: the lab's ``EventGridPublisherClient`` targets
an Event Grid namespace topic with Microsoft Entra credentials; here it
targets gridfn's endpoint with the key gridfn checks (``AzureKeyCredential``,
sent as ``aeg-sas-key``), as it would a basic Event Grid topic.

    python publish.py [--endpoint URL] [--key KEY] [--events FILE] [--json]

Defaults: the sample's endpoint http://127.0.0.1:7072/api/events, the key
``$GRIDFN_KEY`` (else ``dev-key``). Prints what it published, as a table or
(``--json``) one JSON array; exits 1 if gridfn does not answer 200.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import AzureError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridPublisherClient

HERE = Path(__file__).resolve().parent


def lab_events(path: Path) -> list[CloudEvent]:
    """The lab's event definitions, made into CloudEvents at publish time."""
    events = []
    for definition in json.loads(path.read_text()):
        data = dict(definition["data"], timestamp=datetime.now(timezone.utc).isoformat())
        events.append(
            CloudEvent(
                type=definition["type"],
                source=definition["source"],
                subject=definition["subject"],
                data=data,
                id=str(uuid.uuid4()),
            )
        )
    return events


def summary(event: CloudEvent) -> dict:
    """What the lab's app shows for a published event, plus its id."""
    return {
        "id": event.id,
        "content_id": event.data["contentId"],
        "event_type": event.type.split(".")[-1],
        "category": event.data["category"],
        "confidence": event.data["confidence"],
        "status": "published",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="http://127.0.0.1:7072/api/events")
    parser.add_argument("--key", default=os.environ.get("GRIDFN_KEY") or "dev-key")
    parser.add_argument("--events", type=Path, default=HERE / "moderation_events.json")
    parser.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    args = parser.parse_args(argv)

    # The basic-topic client logs a warning per event for per-call options it
    # passes on; nothing is wrong.
    logging.getLogger("azure.eventgrid._legacy._generated._serialization").setLevel(logging.ERROR)

    events = lab_events(args.events)
    client = EventGridPublisherClient(args.endpoint, AzureKeyCredential(args.key))
    try:
        # One request for all of them, as the lab sends them; no retries and
        # a short timeout, so a stopped gridfn is reported at once.
        client.send(events, retry_total=0, connection_timeout=30, read_timeout=30)
    except AzureError as error:
        print(f"publishing to {args.endpoint} failed: {error}", file=sys.stderr)
        return 1

    published = [summary(event) for event in events]
    if args.json:
        print(json.dumps(published))
    else:
        for row in published:
            print(f"{row['content_id']:<9} {row['event_type']:<16} {row['category']:<12} "
                  f"{row['confidence']:<5} {row['status']}  id={row['id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
