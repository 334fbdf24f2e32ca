#!/usr/bin/env python3
"""Measures the sample pipeline: documents/s, chunks/s, and where the time goes.

    samples/embeddings/run            # in one terminal; then in another:
    python3 samples/embeddings/bench.py [--documents 200] [--batch 10] [--concurrency 4]

Writes N distinct documents (paragraphs of docs/ in a different order and
number each, 1 to 4 KB, under .gridfn/bench/), uploads them to Azurite, then
delivers their BlobCreated events the way Event Grid pushes to a webhook:
``--batch`` events per POST, ``--concurrency`` POSTs in flight. The clock runs
from the first delivery to the last answer (gridfn answers once every handler,
including the EmbeddingsRefreshed events published on the local topic, is
done). Then it reads embeddings-refresh's ``embedded`` log lines for those
documents and adds up fetch_ms, embed_ms and store_ms: the share of the
handler's time each step took.
"""

import argparse
import json
import random
import re
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATE = HERE / ".gridfn"
CHROMA = "http://127.0.0.1:8000/api/v2/tenants/default_tenant/databases/default_database/collections"


def write_documents(count: int, folder: Path, run: str) -> list[Path]:
    paragraphs = [p.strip() for doc in sorted((HERE / "docs").iterdir()) for p in doc.read_text().split("\n\n")]
    paragraphs = [p for p in paragraphs if not p.startswith("#")]
    rng = random.Random(13)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        picked = rng.sample(paragraphs, rng.randint(3, 8))
        path = folder / f"bench-{run}-{i:04d}.md"
        path.write_text(f"# Bench document {i} of run {run}\n\n" + "\n\n".join(picked) + "\n")
        paths.append(path)
    return paths


def chunk_count() -> int:
    try:
        collection = json.load(urllib.request.urlopen(f"{CHROMA}/documents"))["id"]
        return json.load(urllib.request.urlopen(f"{CHROMA}/{collection}/count"))
    except OSError:
        return 0


def deliver(url: str, key: str, events: list) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(events).encode(), headers={"Content-Type": "application/json", "aeg-sas-key": key}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--batch", type=int, default=10, help="events per delivery (Event Grid's maxEventsPerBatch)")
    parser.add_argument("--concurrency", type=int, default=4, help="deliveries in flight at once")
    parser.add_argument("--gridfn", default="http://127.0.0.1:7073/api/events")
    parser.add_argument("--key", default="dev-key")
    args = parser.parse_args()

    # New blob names each run, so every run embeds (an unchanged document would be a no-op).
    run = time.strftime("%H%M%S")
    paths = write_documents(args.documents, STATE / "bench" / run, run)
    upload = subprocess.run(
        [sys.executable, str(HERE / "storage.py"), "upload", "--schema", "eventgrid", *map(str, paths)],
        capture_output=True, text=True, check=True,
    )
    events = json.loads(upload.stdout)
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    kilobytes = sum(p.stat().st_size for p in paths) / 1024
    chunks_before = chunk_count()

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        answers = list(pool.map(lambda batch: deliver(args.gridfn, args.key, batch), batches))
    seconds = time.perf_counter() - start
    chunks = chunk_count() - chunks_before

    totals = {key: sum(a[key] for a in answers) for key in ("succeeded", "duplicates", "rejected", "unmatched")}
    ids = {e["id"] for e in events}
    steps = {"fetch_ms": 0, "embed_ms": 0, "store_ms": 0, "total_ms": 0}
    seen = 0
    for line in (STATE / "logs" / "gridfn.log").read_text().splitlines():
        match = re.search(r'event_id="([^"]+)"', line)
        if " embedded blob=" in line and match and match.group(1) in ids:
            seen += 1
            for step in steps:
                steps[step] += int(re.search(rf"{step}=(\d+)", line).group(1))

    print(f"{len(events)} documents ({kilobytes:.0f} KB), {chunks} chunks, {len(batches)} deliveries of "
          f"{args.batch}, {args.concurrency} at a time: {seconds:.2f} s")
    print(f"  {len(events) / seconds:.1f} documents/s, {chunks / seconds:.1f} chunks/s; answers: {totals}")
    if seen:
        handler = steps["total_ms"]
        rest = handler - steps["fetch_ms"] - steps["embed_ms"] - steps["store_ms"]
        print(f"  per document, in embeddings-refresh ({seen} logged): {handler / seen:.1f} ms, of which")
        for name, ms in [("fetch (Azurite)", steps["fetch_ms"]), ("embed (server.py)", steps["embed_ms"]),
                         ("store (Chroma)", steps["store_ms"]), ("other (lookup, chunk, kv)", rest)]:
            print(f"    {name:26} {ms / seen:6.1f} ms  {100 * ms / handler:4.0f}%")
    return 0 if totals["rejected"] == 0 and chunks > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
