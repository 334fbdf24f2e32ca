#!/usr/bin/env python3
"""An OpenAI-compatible embeddings server for gridfn's tests and the offline demo.

    python server.py --host 127.0.0.1 --port 8100 [--key KEY]
    python server.py --self-test

It answers the two URL shapes real clients use, so a handler written against
it works unchanged against OpenAI, Azure OpenAI, Ollama, vLLM or TEI:

    POST /v1/embeddings                                   Authorization: Bearer KEY
    POST /openai/deployments/{deployment}/embeddings?api-version=...   api-key: KEY

Body ``{"input": str | [str], "model": str?, "dimensions": int?,
"encoding_format": "float" | "base64"?}``; answer
``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding":
[...]}], "model": ..., "usage": {"prompt_tokens": n, "total_tokens": n}}``.
Keys are only checked when ``--key`` is given. Errors use OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``.

The model is wordllama's l2_supercat at 256 dimensions: a static token
embedding table (mean-pooled, then unit-normalised like OpenAI's vectors) that
ships inside the wheel together with its tokenizer, so nothing is downloaded
and it embeds hundreds of chunks in milliseconds on a CPU.

Test switches (so tests can make the server misbehave on cue):

    POST /_control {"fail": {"status": 503, "count": 2}}                  next 2 calls answer 503
    POST /_control {"fail": {"status": 429, "count": 1, "retry_after": 2}}  429 + Retry-After: 2
    POST /_control {"reset": true}                 clear the switch and the call log
    GET  /_control/calls   [{"time": unix seconds, "status": 200, "inputs": n}, ...]

The standard library's ThreadingHTTPServer serves it (HTTP/1.1, keep-alive,
chunked request bodies); no web framework.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

MODEL_NAME = "wordllama-l2-supercat-256"
DIMENSIONS = 256
# wordllama trains its vectors so that a prefix is itself an embedding
# (Matryoshka); these are the prefixes it was trained for.
TRUNCATIONS = (64, 128, 256)
# OpenAI's limit on inputs per request; a client that batches must respect it.
MAX_INPUTS = 2048
MAX_BODY = 64 * 1024 * 1024


def load_model():
    """wordllama's shipped weights and tokenizer, with downloads disabled.

    The loader looks for the tokenizer first under ``<package>/tokenizer/``, but
    the wheel ships it under ``<package>/tokenizers/``; its second place is
    ``<cache_dir>/tokenizers/``, so the package folder itself is the cache.
    """
    import wordllama
    from wordllama import WordLlama

    package = Path(wordllama.__file__).parent
    return WordLlama.load(config="l2_supercat", dim=DIMENSIONS, cache_dir=package, disable_download=True)


class Embedder:
    """The model plus what the API needs around it: token counts and unit vectors.

    It tokenizes once and pools the token vectors itself, the way wordllama's
    ``embed`` does (mean over the attention mask), because the API also needs
    each text's token count and tokenizing is most of the cost. The self-test
    checks the result against ``embed``.
    """

    # Texts tokenized and pooled at once: the token array is texts x longest x 256 floats.
    BATCH = 64

    def __init__(self, model):
        self.model = model

    def embed(self, texts: list[str], dimensions: int = DIMENSIONS) -> tuple[np.ndarray, int]:
        """Unit vectors for `texts`, and how many tokens they held."""
        vectors, tokens = [], 0
        table = self.model.embedding
        for start in range(0, len(texts), self.BATCH):
            encoded = self.model.tokenize(texts[start : start + self.BATCH])
            ids = np.clip(np.array([e.ids for e in encoded], dtype=np.int32), 0, table.shape[0] - 1)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
            tokens += int(mask.sum())
            vectors.append(self.model.avg_pool(table[ids], mask)[:, :dimensions])
        pooled = np.concatenate(vectors).astype(np.float32)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        # A text with no known token embeds to zeros; leave it zero, not NaN.
        return pooled / np.where(norms == 0, 1, norms), tokens


class ApiError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None, headers=None):
        super().__init__(message)
        self.status = status
        kind = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
        self.headers = headers or {}


@dataclass
class Request:
    """An embeddings request body, parsed: it can only hold what the model accepts."""

    inputs: list[str]
    model: str
    dimensions: int
    base64: bool

    @staticmethod
    def parse(body: bytes) -> "Request":
        try:
            data = json.loads(body)
        except ValueError as e:
            raise ApiError(400, f"the body is not JSON: {e}", "invalid_json")
        if not isinstance(data, dict):
            raise ApiError(400, "the body must be a JSON object", "invalid_json")
        raw = data.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(text, str) for text in inputs):
            raise ApiError(400, "'input' must be a string or an array of strings", "invalid_input", "input")
        if not inputs or len(inputs) > MAX_INPUTS:
            raise ApiError(400, f"'input' must hold 1 to {MAX_INPUTS} strings", "invalid_input", "input")
        if any(text == "" for text in inputs):
            raise ApiError(400, "'input' must not contain empty strings", "invalid_input", "input")
        dimensions = data.get("dimensions", DIMENSIONS)
        if dimensions not in TRUNCATIONS or isinstance(dimensions, bool):
            raise ApiError(400, f"'dimensions' must be one of {list(TRUNCATIONS)}", "invalid_value", "dimensions")
        encoding = data.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", "invalid_value", "encoding_format")
        model = data.get("model") or MODEL_NAME
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", "invalid_value", "model")
        return Request(inputs, model, dimensions, encoding == "base64")


def count_inputs(body: bytes) -> int:
    """How many inputs a body asked for, for the call log, even when it is invalid."""
    try:
        raw = json.loads(body).get("input")
    except (ValueError, AttributeError):
        return 0
    return 1 if isinstance(raw, str) else len(raw) if isinstance(raw, list) else 0


@dataclass
class Switches:
    """The test switches and the call log, shared by every request thread."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    fail_status: int = 0
    fail_count: int = 0
    retry_after: int | None = None
    calls: list = field(default_factory=list)

    def arm(self, spec: dict) -> None:
        status, count = spec.get("status"), spec.get("count", 1)
        retry_after = spec.get("retry_after")
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ApiError(400, "fail.status must be an HTTP error status (400-599)", "invalid_value", "fail.status")
        if not isinstance(count, int) or count < 0:
            raise ApiError(400, "fail.count must be a non-negative integer", "invalid_value", "fail.count")
        if retry_after is not None and (not isinstance(retry_after, int) or retry_after < 0):
            raise ApiError(400, "fail.retry_after must be whole seconds", "invalid_value", "fail.retry_after")
        with self.lock:
            self.fail_status, self.fail_count, self.retry_after = status, count, retry_after

    def reset(self) -> None:
        with self.lock:
            self.fail_status, self.fail_count, self.retry_after = 0, 0, None
            self.calls.clear()

    def take_failure(self) -> ApiError | None:
        """The failure this call must answer with, if the switch is armed (and count it down)."""
        with self.lock:
            if self.fail_count <= 0:
                return None
            self.fail_count -= 1
            status, retry_after = self.fail_status, self.retry_after
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        code = "rate_limit_exceeded" if status == 429 else "server_error"
        return ApiError(status, f"failing on purpose (test switch): {status}", code, headers=headers)

    def record(self, status: int, inputs: int) -> None:
        with self.lock:
            self.calls.append({"time": time.time(), "status": status, "inputs": inputs})

    def log(self) -> list:
        with self.lock:
            return list(self.calls)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse one connection per batch run
    server_version = "gridfn-embeddings/1"
    # Set on the class by serve():
    embedder: Embedder
    switches: Switches
    key: str | None
    quiet: bool

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        try:
            body = self.read_body()
        except ApiError as e:
            self.send_json(e.status, e.body, e.headers, close=True)
            return
        if url.path == "/v1/embeddings":
            self.embeddings(body, self.bearer_key_ok)
        elif len(parts) == 4 and parts[0] == "openai" and parts[1] == "deployments" and parts[3] == "embeddings":
            self.embeddings(body, self.api_key_ok, api_version=parse_qs(url.query).get("api-version"))
        elif url.path == "/_control":
            self.control(body)
        else:
            self.not_found()

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/_control/calls":
            self.send_json(200, self.switches.log())
        else:
            self.not_found()

    def embeddings(self, body: bytes, key_ok, api_version=True) -> None:
        try:
            failure = self.switches.take_failure()
            if failure:
                raise failure
            if not key_ok():
                raise ApiError(401, "incorrect or missing API key", "invalid_api_key")
            if not api_version:
                raise ApiError(400, "the api-version query parameter is required", "missing_api_version", "api-version")
            request = Request.parse(body)
            answer = self.answer(request)
        except ApiError as e:
            self.switches.record(e.status, count_inputs(body))
            self.send_json(e.status, e.body, e.headers)
            return
        self.switches.record(200, len(request.inputs))
        self.send_json(200, answer)

    def answer(self, request: Request) -> dict:
        vectors, tokens = self.embedder.embed(request.inputs, request.dimensions)

        def encode(vector: np.ndarray):
            if request.base64:
                return base64.b64encode(vector.astype("<f4").tobytes()).decode()
            return vector.tolist()

        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def control(self, body: bytes) -> None:
        try:
            command = json.loads(body or b"{}")
            if not isinstance(command, dict) or not ({"fail", "reset"} & command.keys()):
                raise ApiError(400, 'expected {"fail": {...}} or {"reset": true}', "invalid_control")
            if command.get("reset"):
                self.switches.reset()
            if "fail" in command:
                if not isinstance(command["fail"], dict):
                    raise ApiError(400, "fail must be an object", "invalid_control", "fail")
                self.switches.arm(command["fail"])
        except ValueError as e:
            self.send_json(400, {"error": {"message": f"the body is not JSON: {e}", "code": "invalid_json"}})
            return
        except ApiError as e:
            self.send_json(e.status, e.body)
            return
        self.send_json(200, {"ok": True})

    def bearer_key_ok(self) -> bool:
        return self.key is None or self.headers.get("Authorization") == f"Bearer {self.key}"

    def api_key_ok(self) -> bool:
        return self.key is None or self.headers.get("api-key") == self.key

    def not_found(self) -> None:
        self.send_json(404, {"error": {"message": f"no route for {self.command} {self.path}", "code": "not_found"}})

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked (wasi-http clients send either)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY:
                    raise ApiError(413, "request body too large", "too_large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ApiError(413, "request body too large", "too_large")
        return self.rfile.read(length)

    def send_json(self, status: int, payload, headers=None, close: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def serve(host: str, port: int, key: str | None, embedder: Embedder, quiet: bool = False) -> ThreadingHTTPServer:
    """A bound server (not yet serving); port 0 picks a free port."""
    handler = type("BoundHandler", (Handler,), {"embedder": embedder, "switches": Switches(), "key": key, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def self_test(embedder: Embedder) -> int:
    """Checks the model ranks by meaning and the HTTP API answers, through a real socket."""
    import urllib.request

    failures = []

    def check(ok: bool, what: str) -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    question = "How does Event Grid deliver events?"
    related = "Event Grid pushes each event to the subscriber's webhook and retries delivery with backoff."
    unrelated = "Knead the dough for ten minutes, then let it rise in a warm place."
    (q, r, u), tokens = embedder.embed([question, related, unrelated])
    check(q.shape == (DIMENSIONS,), f"vectors have {DIMENSIONS} dimensions")
    check(abs(float(np.linalg.norm(q)) - 1) < 1e-5, "vectors are unit length")
    reference = embedder.model.embed([question, related, unrelated], norm=True)
    check(np.allclose(np.stack([q, r, u]), reference, atol=1e-5), "vectors equal wordllama's own embed()")
    alone = sum(len(embedder.model.tokenize(text)[0].ids) for text in (question, related, unrelated))
    check(tokens == alone, f"{tokens} tokens counted, as tokenized one by one (padding not counted)")
    close, far = float(q @ r), float(q @ u)
    check(close > far + 0.2, f"'{question}' is closer to Event Grid ({close:.3f}) than to bread ({far:.3f})")

    chunks = [f"Chunk {i}: " + related * 8 for i in range(500)]  # about 800 characters each
    start = time.perf_counter()
    embedder.embed(chunks)
    elapsed = time.perf_counter() - start
    check(elapsed < 5.0, f"500 chunks of {len(chunks[0])} characters embedded in {elapsed * 1000:.0f} ms")

    server = serve("127.0.0.1", 0, "self-test-key", embedder, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for path, header in [
            ("/v1/embeddings", ("Authorization", "Bearer self-test-key")),
            ("/openai/deployments/d/embeddings?api-version=2024-02-01", ("api-key", "self-test-key")),
        ]:
            request = urllib.request.Request(
                base + path,
                data=json.dumps({"input": [question, related]}).encode(),
                headers={"Content-Type": "application/json", header[0]: header[1]},
            )
            with urllib.request.urlopen(request) as response:
                answer = json.load(response)
            vectors = [item["embedding"] for item in answer["data"]]
            check(
                len(vectors) == 2 and len(vectors[0]) == DIMENSIONS and answer["usage"]["prompt_tokens"] > 0,
                f"POST {path.split('?')[0]} answers 2 vectors of {DIMENSIONS}",
            )
    finally:
        server.shutdown()
    print("self-test passed" if not failures else f"self-test FAILED: {len(failures)} check(s)")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="port to listen on; 0 picks a free one (default 8100)")
    parser.add_argument("--key", help="API key clients must send (Bearer for /v1, api-key for Azure's shape); none: no check")
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    parser.add_argument("--self-test", action="store_true", help="check the model and the API, then exit (0: passed)")
    args = parser.parse_args()

    embedder = Embedder(load_model())
    if args.self_test:
        return self_test(embedder)
    server = serve(args.host, args.port, args.key, embedder, args.quiet)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
