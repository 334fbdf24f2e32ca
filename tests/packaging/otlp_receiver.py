"""A small OTLP/HTTP traces receiver, for tests/e2e/packaging.rs: what a
collector sees of the spans gridfn exports.

    otlp_receiver.py PORT_FILE

Listens on a free loopback port (written to PORT_FILE once listening).
POST /v1/traces with an OTLP protobuf body (ExportTraceServiceRequest,
decoded with opentelemetry-proto) is answered 200 with an empty
ExportTraceServiceResponse; anything else 400. GET /spans answers every span
received so far as a JSON array: name, trace_id, span_id, parent_span_id
(lowercase hex, "" for none), the resource's service.name, and the
attributes as a string map.
"""

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

SPANS = []
LOCK = threading.Lock()


def value_text(value):
    """An AnyValue as the text tracing recorded it as."""
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


def decode(body):
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: value_text(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "name": span.name,
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "service": resource.get("service.name", ""),
                    "attributes": {a.key: value_text(a.value) for a in span.attributes},
                })
    return spans


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.answer(400, b"expected POST /v1/traces with application/x-protobuf", "text/plain")
            return
        try:
            spans = decode(body)
        except DecodeError as error:
            self.answer(400, str(error).encode(), "text/plain")
            return
        with LOCK:
            SPANS.extend(spans)
        self.answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def do_GET(self):
        if self.path != "/spans":
            self.answer(404, b"", "text/plain")
            return
        with LOCK:
            body = json.dumps(SPANS).encode()
        self.answer(200, body, "application/json")

    def answer(self, status, body, content_type):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    # Renamed into place, so a reader never sees half a number.
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
