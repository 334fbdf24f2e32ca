#!/usr/bin/env python3
"""Drive an Event Grid namespace topic with the real Azure SDK, one call per run.

The Python client half of gridfn's namespace tests: ``azure-eventgrid``'s
``EventGridPublisherClient(endpoint, AzureKeyCredential(key),
namespace_topic=...)`` and ``EventGridConsumerClient(endpoint,
AzureKeyCredential(key), namespace_topic=..., subscription=...)``, used
exactly as an Azure user would use them against a namespace; only the
endpoint is gridfn's (``http://127.0.0.1:PORT``).

With ``--token JWT`` instead of ``--key``, both clients get a
``TokenCredential`` (``StaticTokenCredential`` below) that hands the SDK
that token, as ``DefaultAzureCredential`` would hand it one from Entra ID:
the SDK sends it as ``Authorization: Bearer``. azure-core refuses bearer
tokens over plain http unless a call passes ``enforce_https=False``, so
every call does when the endpoint is ``http://`` (gridfn on loopback). The
scopes the SDK asks for are printed to stderr as ``scopes: ...``.

Usage::

    namespace.py --endpoint URL --key KEY --topic TOPIC publish FILE.json
    namespace.py --endpoint URL --token JWT --topic TOPIC publish FILE.json
    namespace.py ... --subscription SUB receive [--max-events N] [--max-wait S]
    namespace.py ... --subscription SUB acknowledge|reject|renew TOKEN...
    namespace.py ... --subscription SUB release [--delay S] TOKEN...

``publish`` sends the JSON array of events in FILE (each with ``type``,
``source``, ``subject``, ``data``; an ``id`` is made when absent) as
``azure.core.messaging.CloudEvent`` objects in one ``send()`` and prints
``{"ids": [...]}``. ``receive`` prints ``[{"lockToken", "deliveryCount",
"id", "type", "subject", "data"}, ...]``. The settle commands print
``{"succeeded": [...], "failed": [{"lockToken", "code", "message"}]}``.

An ``HttpResponseError`` prints ``{"status", "code", "message"}`` and exits
3; anything else exits 1 with a message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridConsumerClient, EventGridPublisherClient


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--key")
    who.add_argument("--token")
    p.add_argument("--topic", required=True)
    p.add_argument("--subscription")
    commands = p.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish")
    publish.add_argument("file")
    receive = commands.add_parser("receive")
    receive.add_argument("--max-events", type=int, default=None)
    receive.add_argument("--max-wait", type=int, default=None)
    for name in ["acknowledge", "reject", "renew", "release"]:
        settle = commands.add_parser(name)
        settle.add_argument("tokens", nargs="+")
        if name == "release":
            settle.add_argument("--delay", type=int, default=None)
    return p.parse_args(argv)


def settled(result):
    return {
        "succeeded": list(result.succeeded_lock_tokens),
        "failed": [
            {"lockToken": f.lock_token, "code": f.error.code, "message": f.error.message}
            for f in result.failed_lock_tokens
        ],
    }


class StaticTokenCredential:
    """A ``TokenCredential`` (azure.core's protocol: ``get_token(*scopes)``)
    that always returns one token, valid for the next hour."""

    def __init__(self, token):
        self.token = token

    def get_token(self, *scopes, **kwargs):
        print("scopes: " + " ".join(scopes), file=sys.stderr)
        return AccessToken(self.token, int(time.time()) + 3600)


def run(args):
    if args.token is not None:
        credential = StaticTokenCredential(args.token)
        options = {"enforce_https": False} if args.endpoint.startswith("http://") else {}
    else:
        credential = AzureKeyCredential(args.key)
        options = {}
    if args.command == "publish":
        with open(args.file, encoding="utf-8") as f:
            raw = json.load(f)
        events = [
            CloudEvent(
                source=e["source"],
                type=e["type"],
                subject=e.get("subject"),
                data=e.get("data"),
                id=e.get("id", str(uuid.uuid4())),
            )
            for e in raw
        ]
        with EventGridPublisherClient(args.endpoint, credential, namespace_topic=args.topic) as client:
            client.send(events, **options)
        return {"ids": [e.id for e in events]}
    consumer = EventGridConsumerClient(
        args.endpoint, credential, namespace_topic=args.topic, subscription=args.subscription
    )
    with consumer:
        if args.command == "receive":
            details = consumer.receive(max_events=args.max_events, max_wait_time=args.max_wait, **options)
            return [
                {
                    "lockToken": d.broker_properties.lock_token,
                    "deliveryCount": d.broker_properties.delivery_count,
                    "id": d.event.id,
                    "type": d.event.type,
                    "subject": d.event.subject,
                    "data": d.event.data,
                }
                for d in details
            ]
        if args.command == "acknowledge":
            return settled(consumer.acknowledge(lock_tokens=args.tokens, **options))
        if args.command == "reject":
            return settled(consumer.reject(lock_tokens=args.tokens, **options))
        if args.command == "renew":
            return settled(consumer.renew_locks(lock_tokens=args.tokens, **options))
        return settled(consumer.release(lock_tokens=args.tokens, release_delay=args.delay, **options))


def main(argv):
    args = parse_args(argv)
    try:
        result = run(args)
    except HttpResponseError as e:
        # A 404 from the publisher comes back re-raised; the original has the response.
        error = e
        while getattr(error, "response", None) is None and isinstance(error.__cause__, HttpResponseError):
            error = error.__cause__
        code = error.error.code if getattr(error, "error", None) is not None else None
        print(json.dumps({"status": error.status_code, "code": code, "message": str(e)}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
