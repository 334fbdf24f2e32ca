#!/usr/bin/env python3
"""Delivers Event Grid schema events to gridfn with the azure-eventgrid SDK.

    python send_with_sdk.py EVENTS.json --endpoint http://127.0.0.1:7073/api/events --key KEY

EVENTS.json is an array of Event Grid schema events (as storage.py prints
them). Each becomes an ``EventGridEvent`` with its own id, topic, subject,
type, time and data, and ``EventGridPublisherClient`` sends them in one
``send()``, the way an application publishes to an Event Grid topic (key in
``aeg-sas-key``). gridfn answers only when every handler is done, so when this
returns the events have been handled. Needs the venv tests/python/setup.sh makes.
"""

import argparse
import json
import sys
from datetime import datetime

from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.eventgrid import EventGridEvent, EventGridPublisherClient


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", help="a JSON file holding an array of Event Grid schema events")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()

    with open(args.events) as f:
        raw = json.load(f)
    events = [
        EventGridEvent(
            subject=e["subject"],
            event_type=e["eventType"],
            data=e["data"],
            data_version=e.get("dataVersion", ""),
            topic=e.get("topic"),
            id=e["id"],
            event_time=datetime.fromisoformat(e["eventTime"].replace("Z", "+00:00")),
        )
        for e in raw
    ]
    client = EventGridPublisherClient(args.endpoint, AzureKeyCredential(args.key))
    try:
        client.send(events)
    except HttpResponseError as e:
        print(f"send_with_sdk.py: gridfn answered {e.status_code}: {e.message}", file=sys.stderr)
        return 1
    print(f"sent {len(events)} Event Grid schema event(s) with azure-eventgrid", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
