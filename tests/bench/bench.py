"""Measures every system of tests/bench/run and writes target/bench/raw.json.

Called by tests/bench/run (which builds and installs everything first); run it
by hand only with the paths it needs:

    python bench.py --out target/bench --gridfn target/release/gridfn \
        --native target/release/bench-native \
        --handler target/wasm32-wasip2/release/bench_handler.wasm \
        --handler-py target/wasm32-wasip2/release/bench_handler_py.wasm \
        --http-component target/wasm32-wasip2/release/bench_http_component.wasm \
        [--wasmtime PATH | --wasmtime-skip REASON] --gunicorn VENV/bin/gunicorn \
        [--js-handler target/wasm32-wasip2/release/bench_handler_js.wasm]

Settings from the environment (defaults = the full run):
    BENCH_WARMUP=2 BENCH_DURATION=8 (seconds), BENCH_THREADS=1,
    BENCH_CONNECTIONS=32, BENCH_BATCHES=1,10,100,
    BENCH_SYSTEMS=gridfn,gridfn-reuse,gridfn-batch,gridfn-js,gridfn-js-reuse,gridfn-py,gridfn-py-reuse,native,wasmtime-serve,python,
    BENCH_PACED=1 (gridfn batch-1 latency at ~80 % of its max rate),
    BENCH_STARTUP=1 (gridfn start-up to ready, 1 and 20 handlers, cold/warm).

Every server is started fresh for each (system, batch): its CPU time and
peak RSS belong to that batch alone. Only standard library: it runs with the
bench venv's python but does not need its packages.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "eventgrid.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SYSTEMS = ["gridfn", "gridfn-reuse", "gridfn-batch", "gridfn-interval", "gridfn-js", "gridfn-js-reuse", "gridfn-py",
           "gridfn-py-reuse", "native", "wasmtime-serve", "python"]
# gridfn with a handler: the Rust one (tests/bench/handler) or the same work
# in JavaScript (-js, tests/bench/handler-js) or Python (-py, tests/bench/handler-py);
# gridfn-batch: the Rust one's handle-batch, a delivery's events in one call (`batch = true`).
# gridfn-interval: the Rust handler with `[dedup] sync = "interval"` (records synced once a second
# instead of before each 200), to show what the default `always` costs.
GRIDFN_SYSTEMS = {"gridfn", "gridfn-reuse", "gridfn-batch", "gridfn-interval", "gridfn-js", "gridfn-js-reuse", "gridfn-py",
                  "gridfn-py-reuse"}


def log(*args):
    print("[bench]", *args, file=sys.stderr, flush=True)


def env_num(name, default):
    return float(os.environ.get(name, default))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- /proc: CPU seconds and peak RSS of a process tree ---------------------


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree(root):
    """root and all its live descendants."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid, _ = _stat(int(name))
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_s(root):
    total = 0
    for pid in tree(root):
        try:
            total += _stat(pid)[1]
        except OSError:
            pass
    return total / CLK_TCK


def tree_hwm_mb(root):
    total_kb = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total_kb += int(line.split()[1])
        except OSError:
            pass
    return total_kb / 1024


# ---- servers ----------------------------------------------------------------


class Server:
    def __init__(self, name, argv, port, workdir, env=None):
        self.name, self.argv, self.port = name, argv, port
        self.log_path = os.path.join(workdir, f"{name}-{port}.log")
        self.log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout=60.0, path="/healthz", any_status=False):
        """Seconds from spawn until `path` answers (200, or any HTTP status)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url(path), timeout=1) as r:
                    if r.status == 200 or any_status:
                        return time.perf_counter() - self.started
            except urllib.error.HTTPError:
                if any_status:
                    return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.002)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; log: {self.tail()}")

    def tail(self, n=2000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the session this script started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def gridfn_manifest(path, port, handler_wasm, state_dir, cache_dir, handlers=1, reuse=None, queue=None, sync=None,
                    batch=False):
    lines = [
        "# Generated by tests/bench/bench.py",
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        "allow_anonymous = true",
        f'state_dir = "{state_dir}"',
        f'cache_dir = "{cache_dir}"',
    ]
    if sync is not None:
        lines += ["", "[dedup]", f'sync = "{sync}"']
    for i in range(handlers):
        name = "bench" if handlers == 1 else f"bench-{i:02d}"
        lines += ["", "[[handler]]", f'name = "{name}"', f'module = "{handler_wasm}"']
        if reuse is not None:
            lines.append(f"instance_reuse = {reuse}")
        if queue is not None:
            lines.append(f"queue = {queue}")
        if batch:
            lines.append("batch = true")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---- load -------------------------------------------------------------------


def wrk(url, batch, prefix, seconds, threads, conns, pace_ms=0):
    argv = [
        "wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
        "-s", LUA, url, "--", str(batch), prefix, str(pace_ms),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()} {out.stdout.strip()}")
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            res = json.loads(line[len("BENCHJSON ") :])
            res["text"] = out.stdout
            res["wrk_cpu_s"] = wrk_cpu
            return res
    raise RuntimeError(f"wrk printed no BENCHJSON line:\n{out.stdout}\n{out.stderr}")


def scrape_histogram(url, metric="gridfn_handler_duration_seconds"):
    """{'buckets': [(le, cumulative count)], 'sum': s, 'count': n}, summed over labels."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    buckets, total, count = {}, 0.0, 0
    for line in text.splitlines():
        if not line.startswith(metric):
            continue
        m = re.match(rf"{metric}(_bucket|_sum|_count)(\{{[^}}]*\}})?\s+(\S+)", line)
        if not m:
            continue
        kind, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if kind == "_bucket":
            le = re.search(r'le="([^"]+)"', labels).group(1)
            le = float("inf") if le in ("+Inf", "Inf") else float(le)
            buckets[le] = buckets.get(le, 0) + value
        elif kind == "_sum":
            total += value
        else:
            count += int(value)
    return {"buckets": sorted(buckets.items()), "sum": total, "count": count}


def histogram_diff(after, before):
    b = dict(before["buckets"])
    return {
        "buckets": [(le, c - b.get(le, 0)) for le, c in after["buckets"]],
        "sum": after["sum"] - before["sum"],
        "count": after["count"] - before["count"],
    }


# ---- one (system, batch) run -------------------------------------------------


def measure(server, batch, cfg, nonce, ready_kwargs=None, scrape=False, paced=False):
    ready_s = server.wait_ready(**(ready_kwargs or {}))
    url = server.url("/api/events")
    tag = f"{nonce}-{server.name}-b{batch}"
    warm = wrk(url, batch, tag + "-warm", cfg.warmup, cfg.threads, cfg.conns)
    hist0 = scrape_histogram(server.url("/metrics")) if scrape else None
    cpu0 = tree_cpu_s(server.proc.pid)
    main = wrk(url, batch, tag + "-run", cfg.duration, cfg.threads, cfg.conns)
    cpu1 = tree_cpu_s(server.proc.pid)
    hist = histogram_diff(scrape_histogram(server.url("/metrics")), hist0) if scrape else None
    secs = main["duration_us"] / 1e6
    requests = main["requests"]
    events = requests * batch
    errors = main["non2xx"] + main["connect"] + main["read"] + main["write"] + main["timeout"]
    run = {
        "system": server.name,
        "batch": batch,
        "events_per_s": events / secs if secs else 0.0,
        "requests_per_s": requests / secs if secs else 0.0,
        "p50_ms": main["lat_p50_us"] / 1000,
        "p99_ms": main["lat_p99_us"] / 1000,
        "cpu_s_per_1k": (cpu1 - cpu0) / events * 1000 if events else None,
        "rss_mb": tree_hwm_mb(server.proc.pid),
        "errors": errors,
        "detail": {
            "ready_s": ready_s, "cpu_s": cpu1 - cpu0, "window_s": secs, "requests": requests,
            "non2xx": main["non2xx"],
            "socket_errors": {k: main[k] for k in ("connect", "read", "write", "timeout")},
            "warmup_requests": warm["requests"], "warmup_errors": warm["non2xx"] + warm["connect"] + warm["read"] + warm["write"] + warm["timeout"],
            "lat_mean_ms": main["lat_mean_us"] / 1000, "lat_p90_ms": main["lat_p90_us"] / 1000,
            "lat_max_ms": main["lat_max_us"] / 1000, "wrk": main["text"],
            "loadgen_cpu_s": main["wrk_cpu_s"],  # wrk's own CPU: what the server could not use
        },
    }
    if hist is not None:
        run["detail"]["handler_histogram"] = hist
    if paced and requests:
        run["detail"]["paced"] = paced_run(url, batch, tag, run["requests_per_s"], cfg)
    log(f"{server.name:15s} batch {batch:3d}: {run['events_per_s']:10.0f} events/s {run['requests_per_s']:9.0f} req/s "
        f"p50 {run['p50_ms']:.2f} ms p99 {run['p99_ms']:.2f} ms cpu/1k {run['cpu_s_per_1k'] or 0:.4f} s "
        f"rss {run['rss_mb']:.0f} MB errors {errors}")
    return run


def paced_run(url, batch, tag, max_rps, cfg):
    """Latency at ~80 % of the measured maximum: each connection sends, gets its
    answer, waits 1 ms (wrk's delay()), sends again; the number of connections
    is calibrated so the achieved rate is ~80 % of max_rps."""
    target = 0.8 * max_rps
    conns = max(1, min(256, round(target * 0.0012)))
    for i in range(3):  # calibrate: a connection's rate is ~1 / (1 ms + latency)
        calib = wrk(url, batch, f"{tag}-pace-cal{i}", min(2, cfg.duration), 1, conns, pace_ms=1)
        rate = calib["requests"] / (calib["duration_us"] / 1e6) if calib["requests"] else 0
        if rate <= 0 or 0.75 <= rate / target * 0.8 <= 0.85:
            break
        conns = max(1, min(256, round(conns * target / rate)))
    res = wrk(url, batch, tag + "-pace", cfg.duration, 1, conns, pace_ms=1)
    secs = res["duration_us"] / 1e6
    rps = res["requests"] / secs if secs else 0
    out = {
        "target_rps": target, "connections": conns, "requests_per_s": rps,
        "fraction_of_max": rps / max_rps if max_rps else None,
        "p50_ms": res["lat_p50_us"] / 1000, "p99_ms": res["lat_p99_us"] / 1000,
        "errors": res["non2xx"] + res["connect"] + res["read"] + res["write"] + res["timeout"],
    }
    log(f"paced at {rps:.0f} req/s ({out['fraction_of_max'] or 0:.0%} of max, {conns} conns): "
        f"p50 {out['p50_ms']:.2f} ms p99 {out['p99_ms']:.2f} ms")
    return out


def startup(args, work, handler, counts=(1, 20)):
    """ms from spawn until /healthz answers, with `counts` entries of `handler`,
    cold (empty cache_dir) then warm (the same cache_dir again; median of 3)."""
    out = {}
    for n in counts:
        state = tempfile.mkdtemp(prefix=f"startup{n}-", dir=work)
        cache = os.path.join(state, "cache")
        for phase in ("cold", "warm"):
            samples = []
            for _ in range(1 if phase == "cold" else 3):
                port = free_port()
                manifest = gridfn_manifest(os.path.join(state, "gridfn.toml"), port, handler, state, cache, handlers=n)
                server = Server(f"gridfn-startup{n}", [args.gridfn, "serve", "--config", manifest], port, work)
                try:
                    samples.append(server.wait_ready(timeout=300) * 1000)
                finally:
                    server.stop()
            out[f"handlers_{n}_{phase}"] = statistics.median(samples)
            log(f"start-up, {n} handler(s), {phase}: {out[f'handlers_{n}_{phase}']:.0f} ms")
    return out


DEDUP_CLOSED = re.compile(r"dedup store .* closed: (\d+) commits in (\d+) writes, (\d+) fdatasyncs")


def dedup_stats(log_path, requests):
    """What gridfn's embedded dedup store logged when it closed: commits (one per delivery with done
    events, warm-up and paced runs included), group writes, fdatasyncs, and commits per fdatasync."""
    try:
        with open(log_path, errors="replace") as f:
            found = DEDUP_CLOSED.findall(f.read())
    except OSError:
        found = []
    if not found:
        return None
    commits, writes, syncs = map(int, found[-1])
    return {"commits": commits, "writes": writes, "fdatasyncs": syncs,
            "commits_per_fdatasync": commits / syncs if syncs else None, "measured_requests": requests}


def disk_fdatasyncs_per_s(folder, seconds=1.0):
    """How many append + fdatasync rounds one writer gets from the disk under `folder` in `seconds`:
    the ceiling on syncs per second, and so (with one commit per sync) on durable deliveries."""
    path = os.path.join(folder, "fdatasync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        count, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            os.write(fd, b"x" * 128)
            os.fdatasync(fd)
            count += 1
        return count / (time.monotonic() - started)
    finally:
        os.close(fd)
        os.remove(path)


def machine():
    info = {"cores": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "unknown")
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
            info["memory_mb"] = round(kb / 1024)
    except (OSError, StopIteration):
        pass
    info["kernel"] = os.uname().release
    info["hostname"] = socket.gethostname()
    info["loadavg_start"] = os.getloadavg()
    return info


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--gridfn", required=True)
    p.add_argument("--native", required=True)
    p.add_argument("--handler", required=True)
    p.add_argument("--handler-py", help="the Python handler component (gridfn-py rows)")
    p.add_argument("--http-component", required=True)
    p.add_argument("--wasmtime")
    p.add_argument("--wasmtime-skip", help="why wasmtime-serve is not run")
    p.add_argument("--gunicorn", required=True)
    p.add_argument("--js-handler", help="the JavaScript bench handler; without it the gridfn-js rows are skipped")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    for path in ("gridfn", "native", "handler", "handler_py", "http_component", "gunicorn"):
        if getattr(args, path):
            setattr(args, path, os.path.abspath(getattr(args, path)))

    class Cfg:
        warmup = env_num("BENCH_WARMUP", 2)
        duration = env_num("BENCH_DURATION", 8)
        threads = int(env_num("BENCH_THREADS", 1))
        conns = int(env_num("BENCH_CONNECTIONS", 32))

    batches = [int(b) for b in os.environ.get("BENCH_BATCHES", "1,10,100").split(",")]
    systems = os.environ.get("BENCH_SYSTEMS", ",".join(SYSTEMS)).split(",")
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(os.path.abspath(args.out), "work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    nonce = uuid.uuid4().hex[:8]
    raw = {
        "machine": {**machine(), "disk_fdatasyncs_per_s": disk_fdatasyncs_per_s(work)},
        "config": {"warmup_s": Cfg.warmup, "duration_s": Cfg.duration, "wrk_threads": Cfg.threads,
                   "connections": Cfg.conns, "batches": batches, "smoke": args.smoke,
                   "gridfn": args.gridfn},
        "runs": [], "skipped": [], "gridfn": {},
    }

    def skip(system, reason):
        log(f"{system}: SKIPPED: {reason}")
        raw["skipped"].append({"system": system, "reason": reason})

    for system in systems:
        if system in GRIDFN_SYSTEMS:
            reuse = 64 if system.endswith("-reuse") else None
            sync = "interval" if system == "gridfn-interval" else None
            batched = system == "gridfn-batch"
            handler = args.handler
            if "-js" in system:
                if not args.js_handler:
                    skip(system, "no --js-handler (scripts/components builds it)")
                    continue
                handler = os.path.abspath(args.js_handler)
            if system.startswith("gridfn-py"):
                if not args.handler_py:
                    skip(system, "no --handler-py component")
                    continue
                handler = args.handler_py
            state = tempfile.mkdtemp(prefix=system + "-", dir=work)
            manifest = os.path.join(state, "gridfn.toml")
            # The handler's wait queue must hold every event in flight (connections x batch),
            # else gridfn sheds load with 503s by design; fall back to the default if the
            # key is refused (an older gridfn).
            queue = int(env_num("BENCH_GRIDFN_QUEUE", max(1024, 2 * Cfg.conns * max(batches))))
            for q in (queue, None):
                gridfn_manifest(manifest, 0, handler, state, os.path.join(work, "gridfn-cache"), reuse=reuse, queue=q,
                                sync=sync, batch=batched)
                chk = subprocess.run([args.gridfn, "check", "--config", manifest], capture_output=True, text=True)
                if chk.returncode == 0:
                    queue = q
                    break
            if chk.returncode != 0:
                reason = (chk.stderr or chk.stdout).strip().replace("\n", " ")
                skip(system, f"gridfn check refused the manifest: {reason}")
                continue
            raw["config"][f"{system}_handler_keys"] = {"instance_reuse": reuse, "queue": queue, "batch": batched}
        if system == "wasmtime-serve" and not args.wasmtime:
            skip(system, args.wasmtime_skip or "wasmtime not available")
            continue
        for batch in batches:
            port = free_port()
            ready_kwargs, scrape, paced = {}, False, False
            if system in GRIDFN_SYSTEMS:
                gridfn_manifest(manifest, port, handler, state, os.path.join(work, "gridfn-cache"), reuse=reuse, queue=queue,
                                sync=sync, batch=batched)
                argv = [args.gridfn, "serve", "--config", manifest, "--listen", f"127.0.0.1:{port}"]
                # The sandbox figures below are the Rust and Python handlers'; a
                # JavaScript or Python component's first start compiles 12-19 MB
                # (tens of seconds).
                # (gridfn-batch's histogram would time calls, not events.)
                scrape = "-js" not in system and not batched
                if "-js" in system or "-py" in system:
                    ready_kwargs = {"timeout": 600.0}
                paced = batch == 1 and env_num("BENCH_PACED", 1) > 0 and system == "gridfn"
            elif system == "native":
                argv = [args.native, "--listen", f"127.0.0.1:{port}"]
            elif system == "wasmtime-serve":
                # -S cli: wasm32-wasip2 std imports wasi:cli/environment etc. beyond the proxy world
                argv = [args.wasmtime, "serve", "-S", "cli", "--addr", f"127.0.0.1:{port}", args.http_component]
                ready_kwargs = {"path": "/", "any_status": True}
            elif system == "python":
                workers = 2 * (os.cpu_count() or 1)
                argv = [args.gunicorn, "--chdir", HERE, "-w", str(workers), "-k", "gthread", "--threads", "8",
                        "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--backlog", "2048", "python_app:app"]
            else:
                raise SystemExit(f"unknown system {system} (BENCH_SYSTEMS)")
            server = Server(system, argv, port, work)
            try:
                run = measure(server, batch, Cfg, nonce, ready_kwargs, scrape, paced)
            except Exception as err:  # a broken system must not hide the others
                log(f"{system} batch {batch}: FAILED: {err}")
                run = {"system": system, "batch": batch, "failed": str(err)}
            finally:
                server.stop()
            if system in GRIDFN_SYSTEMS and "failed" not in run:
                run["dedup"] = dedup_stats(server.log_path, run["detail"]["requests"])
            raw["runs"].append(run)

    if "gridfn" in systems and env_num("BENCH_STARTUP", 1) > 0:
        raw["gridfn"]["startup_ms"] = startup(args, work, args.handler)
    if "gridfn-py" in systems and args.handler_py and env_num("BENCH_STARTUP", 1) > 0:
        raw["gridfn"]["startup_ms_py"] = startup(args, work, args.handler_py, counts=(1,))
    raw["machine"]["loadavg_end"] = os.getloadavg()
    with open(os.path.join(args.out, "raw.json"), "w") as f:
        json.dump(raw, f, indent=1)
    log(f"wrote {os.path.join(args.out, 'raw.json')}")


if __name__ == "__main__":
    main()
