#!/usr/bin/env python3
"""Uploads (or deletes) blobs and prints the events Blob Storage would send for them.

    python storage.py upload --schema eventgrid|cloudevents FILE...   > events.json
    python storage.py delete --schema eventgrid|cloudevents NAME...   > events.json

Talks to a Blob service (Azurite by default: http://127.0.0.1:10000/devstoreaccount1
and its well-known development key) with Shared Key requests, creating the
container if it is missing. For each blob it prints what a storage account's
Event Grid system topic delivers: ``Microsoft.Storage.BlobCreated`` (data: api,
clientRequestId, requestId, eTag, contentType, contentLength, blobType, url,
sequencer, storageDiagnostics) or ``Microsoft.Storage.BlobDeleted``, in the
Event Grid schema or as CloudEvents 1.0, as one JSON array on stdout.

Standard library only, so it runs with any python3.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import mimetypes
import sys
import uuid
from datetime import datetime, timezone
from email.utils import formatdate
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

# Azurite's development account: public, documented, the same on every machine.
AZURITE_URL = "http://127.0.0.1:10000/devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# What the events name as their topic/source: an ARM resource id, as Azure sends it.
TOPIC = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/gridfn-samples"
    "/providers/Microsoft.Storage/storageAccounts/{account}"
)
CONTENT_TYPES = {".md": "text/markdown", ".txt": "text/plain"}


class BlobService:
    """Shared Key requests to one account (path-style URL, as Azurite serves it)."""

    def __init__(self, account_url: str, key: str):
        self.account_url = account_url.rstrip("/")
        url = urlsplit(self.account_url)
        # Azurite puts the account in the path; Azure in the host name.
        self.account = url.path.strip("/").split("/")[0] or url.hostname.split(".")[0]
        self.key = base64.b64decode(key)

    def request(self, method: str, path: str, query: dict[str, str] | None = None, body: bytes = b"", headers=None):
        query = query or {}
        url = f"{self.account_url}/{path}" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        headers = {
            "x-ms-date": formatdate(usegmt=True),
            "x-ms-version": "2021-08-06",
            "x-ms-client-request-id": str(uuid.uuid4()),
            # urllib adds a form Content-Type to any PUT without one; name it so it is signed.
            **({"Content-Type": "application/octet-stream"} if method == "PUT" else {}),
            **(headers or {}),
        }
        headers["Authorization"] = f"SharedKey {self.account}:{self.sign(method, url, headers, len(body))}"
        try:
            with urlopen(Request(url, data=body if method == "PUT" else None, method=method, headers=headers)) as response:
                return response.status, response.headers, headers["x-ms-client-request-id"]
        except HTTPError as e:
            return e.code, e.headers, headers["x-ms-client-request-id"]
        except URLError as e:
            sys.exit(f"storage.py: cannot reach {self.account_url}: {e.reason} (is Azurite running?)")

    def sign(self, method: str, url: str, headers: dict, length: int) -> str:
        """The Shared Key signature (Blob service, version 2009-09-19 and later)."""
        lower = {k.lower(): v for k, v in headers.items()}
        standard = [
            method,
            lower.get("content-encoding", ""),
            lower.get("content-language", ""),
            str(length) if length else "",
            lower.get("content-md5", ""),
            lower.get("content-type", ""),
            "",  # Date: x-ms-date is used instead
            "", "", "", "", "",  # If-* conditions, Range
        ]
        canonical_headers = "".join(f"{k}:{lower[k]}\n" for k in sorted(lower) if k.startswith("x-ms-"))
        parts = urlsplit(url)
        resource = f"/{self.account}{parts.path}"
        for name, value in sorted(p.split("=", 1) for p in parts.query.split("&") if p):
            resource += f"\n{name.lower()}:{value}"
        to_sign = "\n".join(standard) + "\n" + canonical_headers + resource
        return base64.b64encode(hmac.new(self.key, to_sign.encode(), hashlib.sha256).digest()).decode()

    def ensure_container(self, container: str) -> None:
        status, _, _ = self.request("PUT", container, {"restype": "container"})
        if status not in (201, 409):  # 409: it exists already
            sys.exit(f"storage.py: creating container {container} answered {status}")


def event(kind: str, service: BlobService, container: str, name: str, data: dict, schema: str) -> dict:
    topic = TOPIC.format(account=service.account)
    subject = f"/blobServices/default/containers/{container}/blobs/{name}"
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    event_type = f"Microsoft.Storage.{kind}"
    event_id = str(uuid.uuid4())
    if schema == "cloudevents":
        return {"specversion": "1.0", "id": event_id, "source": topic, "type": event_type, "subject": subject,
                "time": now, "datacontenttype": "application/json", "data": data}
    return {"id": event_id, "topic": topic, "subject": subject, "eventType": event_type, "eventTime": now,
            "data": data, "dataVersion": "", "metadataVersion": "1"}


def blob_data(service: BlobService, container: str, name: str, api: str, answer, **fields) -> dict:
    """The `data` of a Blob Storage event: what the request changed, and which request it was."""
    status, headers, client_request_id = answer
    return {
        "api": api,
        "clientRequestId": client_request_id,
        "requestId": headers.get("x-ms-request-id", str(uuid.uuid4())),
        **fields,
        "blobType": "BlockBlob",
        "url": f"{service.account_url}/{container}/{name}",
        "sequencer": f"{uuid.uuid4().int % 10**32:032d}",
        "storageDiagnostics": {"batchId": str(uuid.uuid4())},
    }


def upload(service: BlobService, container: str, path: Path, schema: str) -> dict:
    body = path.read_bytes()
    content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    answer = service.request(
        "PUT", f"{container}/{path.name}", body=body,
        headers={"x-ms-blob-type": "BlockBlob", "Content-Type": content_type, "Content-Length": str(len(body))},
    )
    if answer[0] != 201:
        sys.exit(f"storage.py: uploading {path} answered {answer[0]}")
    data = blob_data(
        service, container, path.name, "PutBlob", answer,
        eTag=answer[1].get("ETag", "").strip('"'), contentType=content_type, contentLength=len(body),
    )
    data["accessTier"] = "Default"
    return event("BlobCreated", service, container, path.name, data, schema)


def delete(service: BlobService, container: str, name: str, schema: str) -> dict:
    answer = service.request("DELETE", f"{container}/{name}")
    if answer[0] != 202:
        sys.exit(f"storage.py: deleting {name} answered {answer[0]}")
    content_type = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
    data = blob_data(service, container, name, "DeleteBlob", answer, contentType=content_type)
    return event("BlobDeleted", service, container, name, data, schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["upload", "delete"])
    parser.add_argument("items", nargs="+", help="files to upload, or blob names to delete")
    parser.add_argument("--schema", choices=["eventgrid", "cloudevents"], default="eventgrid")
    parser.add_argument("--account-url", default=AZURITE_URL)
    parser.add_argument("--key", default=AZURITE_KEY, help="the account key (default: Azurite's)")
    parser.add_argument("--container", default="docs")
    args = parser.parse_args()

    service = BlobService(args.account_url, args.key)
    service.ensure_container(args.container)
    if args.action == "upload":
        events = [upload(service, args.container, Path(item), args.schema) for item in args.items]
    else:
        events = [delete(service, args.container, item, args.schema) for item in args.items]
    json.dump(events, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
