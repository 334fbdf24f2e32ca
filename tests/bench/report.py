"""Turns target/bench/raw.json (from bench.py) into the outputs of issue 7:

    target/bench/summary.json  {"machine": ..., "runs": [...], "gridfn": {...}}
    target/bench/summary.md    a table per batch size, ratios, targets
    target/bench/chart.png     events/s per system per batch (log scale)

    python report.py target/bench [--check]

--check (smoke mode): exit non-zero unless the three files were written and
every run that was not skipped has 0 errors. No timing assertions ever: the
targets are reported, not enforced.
"""

import json
import math
import os
import sys

SYSTEMS = ["gridfn", "gridfn-reuse", "gridfn-batch", "gridfn-interval", "gridfn-js", "gridfn-js-reuse", "gridfn-py",
           "gridfn-py-reuse",
           "native", "wasmtime-serve", "python"]
RUN_KEYS = ["system", "batch", "events_per_s", "requests_per_s", "p50_ms", "p99_ms", "cpu_s_per_1k", "rss_mb", "errors"]


def r(x, nd=3):
    return None if x is None else round(x, nd)


def hist_quantile(buckets, count, q):
    """Estimate a quantile (seconds) from cumulative buckets, linear inside a bucket."""
    if not count:
        return None
    want, lo, prev = q * count, 0.0, 0.0
    for le, cum in buckets:
        if cum >= want:
            if math.isinf(le):
                return lo  # beyond the last finite bound: report the bound
            frac = (want - prev) / (cum - prev) if cum > prev else 1.0
            return lo + (le - lo) * frac
        lo, prev = le, cum
    return lo


def summarize(raw):
    runs, sandbox = [], {}
    for run in raw["runs"]:
        if "failed" in run:
            runs.append({**{k: None for k in RUN_KEYS}, "system": run["system"], "batch": run["batch"],
                         "errors": None, "failed": run["failed"]})
            continue
        out = {k: run[k] for k in RUN_KEYS}
        for k in ("events_per_s", "requests_per_s"):
            out[k] = r(out[k], 1)
        for k in ("p50_ms", "p99_ms", "rss_mb"):
            out[k] = r(out[k], 3)
        out["cpu_s_per_1k"] = r(out["cpu_s_per_1k"], 5)
        if run.get("dedup"):
            out["dedup"] = {k: r(v, 2) for k, v in run["dedup"].items()}
        runs.append(out)
        hist = run.get("detail", {}).get("handler_histogram")
        if hist and hist["count"]:
            q = lambda p: r(hist_quantile(hist["buckets"], hist["count"], p) * 1e6, 1)
            sandbox[f"{run['system']}/batch{run['batch']}"] = {
                "mean_us": r(hist["sum"] / hist["count"] * 1e6, 1), "p50_us_est": q(0.5), "p99_us_est": q(0.99),
                "events": hist["count"],
            }
    for s in raw["skipped"]:
        for b in raw["config"]["batches"]:
            runs.append({**{k: None for k in RUN_KEYS}, "system": s["system"], "batch": b, "skipped": s["reason"]})
    fresh = [v for k, v in sandbox.items() if k.startswith("gridfn/")]
    total = sum(v["events"] for v in fresh)
    gridfn = {
        "sandbox_us_mean": r(sum(v["mean_us"] * v["events"] for v in fresh) / total, 1) if total else None,
        "sandbox_us_p50_est": next((v["p50_us_est"] for k, v in sandbox.items() if k == "gridfn/batch1"), None),
        "sandbox_us_p99_est": next((v["p99_us_est"] for k, v in sandbox.items() if k == "gridfn/batch1"), None),
        "sandbox_by_run": sandbox,
        "sandbox_note": "gridfn_handler_duration_seconds over the measured window; p50/p99 interpolated inside "
                        "exponential buckets (10 us x 4^k), so they are rough",
        "paced_batch1": next((run["detail"]["paced"] for run in raw["runs"]
                              if run.get("system") == "gridfn" and run.get("batch") == 1 and "paced" in run.get("detail", {})), None),
        "startup_ms": {k: r(v, 1) for k, v in raw["gridfn"].get("startup_ms", {}).items()},
        "startup_ms_py": {k: r(v, 1) for k, v in raw["gridfn"].get("startup_ms_py", {}).items()},
    }
    loadgen = {f"{x['system']}/batch{x['batch']}": r(100 * x["detail"]["loadgen_cpu_s"] / x["detail"]["window_s"], 1)
               for x in raw["runs"] if "loadgen_cpu_s" in x.get("detail", {}) and x["detail"].get("window_s")}
    machine = {**raw["machine"], "bench": {**raw["config"], "loadgen_cpu_pct_of_one_core": loadgen}}
    return {"machine": machine, "runs": runs, "gridfn": gridfn}


def get(summary, system, batch):
    for run in summary["runs"]:
        if run["system"] == system and run["batch"] == batch and run.get("events_per_s") is not None:
            return run
    return None


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "n/a"


def fmt(x, nd=0):
    return "—" if x is None else f"{x:,.{nd}f}"


def markdown(summary):
    m = summary["machine"]
    cfg = m["bench"]
    lines = [
        "# gridfn benchmark",
        "",
        f"{m.get('date')} on {m.get('cpu_model')} ({m.get('cores')} cores, {m.get('memory_mb')} MB, Linux {m.get('kernel')}); "
        f"load average at start {', '.join(f'{x:.2f}' for x in m.get('loadavg_start', []))}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_end', []))}. "
        f"wrk -t{cfg['wrk_threads']} -c{cfg['connections']}, {cfg['warmup_s']:g} s warm-up, {cfg['duration_s']:g} s measured"
        f"{' (SMOKE: numbers meaningless)' if cfg.get('smoke') else ''}; load generator and servers on the same machine.",
        "",
    ]
    for batch in cfg["batches"]:
        lines += [f"## {batch} event{'s' if batch > 1 else ''} per request", "",
                  "| system | events/s | req/s | p50 ms | p99 ms | CPU s / 1k events | peak RSS MB | errors | wrk CPU % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for system in SYSTEMS:
            rows = [x for x in summary["runs"] if x["system"] == system and x["batch"] == batch]
            for x in rows:
                if x.get("skipped") or x.get("failed"):
                    lines.append(f"| {system} | {'skipped' if x.get('skipped') else 'FAILED'}: "
                                 f"{(x.get('skipped') or x.get('failed'))[:160]} | | | | | | | |")
                    continue
                flag = " ⚠" if x["errors"] else ""
                lines.append(f"| {system} | {fmt(x['events_per_s'])} | {fmt(x['requests_per_s'])} | {fmt(x['p50_ms'], 2)} | "
                             f"{fmt(x['p99_ms'], 2)} | {fmt(x['cpu_s_per_1k'], 4)} | {fmt(x['rss_mb'], 1)} | {x['errors']}{flag} | "
                             f"{fmt(cfg.get('loadgen_cpu_pct_of_one_core', {}).get(f'{system}/batch{batch}'))} |")
        lines.append("")
        ratios = []
        for g in ("gridfn", "gridfn-reuse", "gridfn-py", "gridfn-py-reuse"):
            gr = get(summary, g, batch)
            if not gr:
                continue
            parts = [f"{g}/{peer} {ratio(gr['events_per_s'], (get(summary, peer, batch) or {}).get('events_per_s'))}"
                     for peer in ("native", "wasmtime-serve", "python")]
            ratios.append("Ratios (events/s): " + ", ".join(parts) + ".")
        js = [f"{j}/{g} {ratio((get(summary, j, batch) or {}).get('events_per_s'), (get(summary, g, batch) or {}).get('events_per_s'))}"
              for j, g in (("gridfn-js", "gridfn"), ("gridfn-js-reuse", "gridfn-reuse"), ("gridfn-js-reuse", "gridfn-js"))
              if get(summary, j, batch)]
        if js:
            ratios.append("JavaScript handler (events/s): " + ", ".join(js) + ".")
        lines += ratios + [""]

    g = summary["gridfn"]
    lines += ["## gridfn internals", ""]
    lines.append(f"- Sandbox cost per event (instantiate + call, `gridfn_handler_duration_seconds`; Rust handler, fresh instances): mean "
                 f"{fmt(g['sandbox_us_mean'], 1)} µs; batch 1: p50 ≈ {fmt(g['sandbox_us_p50_est'], 1)} µs, "
                 f"p99 ≈ {fmt(g['sandbox_us_p99_est'], 1)} µs (bucket estimates).")
    for k, v in g["sandbox_by_run"].items():
        lines.append(f"  - {k}: mean {v['mean_us']} µs, p50 ≈ {v['p50_us_est']} µs, p99 ≈ {v['p99_us_est']} µs over {v['events']:,} events")
    p = g.get("paced_batch1")
    if p:
        lines.append(f"- Batch 1 at {fmt(p['requests_per_s'])} req/s ({(p['fraction_of_max'] or 0):.0%} of max; "
                     f"{p['connections']} connections, 1 ms think time): p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, errors {p['errors']}.")
    disk = m.get("disk_fdatasyncs_per_s")
    lines.append(f"- Durability: this disk sustains {fmt(disk)} append + `fdatasync` rounds/s from one writer (the ceiling "
                 "on syncs/s; `dedup.sync = \"always\"` answers a delivery only after its sync, so group commit must share "
                 "each sync among concurrent deliveries). Commits (deliveries with done events) per `fdatasync`, whole run of "
                 "each server (warm-up included):")
    for x in summary["runs"]:
        d = x.get("dedup")
        if d and d.get("fdatasyncs"):
            lines.append(f"  - {x['system']}/batch{x['batch']}: {fmt(d['commits'])} commits, {fmt(d['fdatasyncs'])} fdatasyncs: "
                         f"{fmt(d['commits_per_fdatasync'], 1)} commits per sync")
    for batch in cfg["batches"]:
        a, i = get(summary, "gridfn", batch), get(summary, "gridfn-interval", batch)
        if a and i:
            lines.append(f"- Batch {batch}: `sync = \"interval\"` / `\"always\"` {ratio(i['events_per_s'], a['events_per_s'])} events/s, "
                         f"p99 {fmt(i['p99_ms'], 2)} vs {fmt(a['p99_ms'], 2)} ms.")
    for key, what in (("startup_ms", "Rust handler"), ("startup_ms_py", "Python handler")):
        s = g.get(key) or {}
        if s:
            lines.append(f"- Start-up to ready (`/healthz`), {what}: " + ", ".join(
                f"{n} handler{'s' if n > 1 else ''} cold {fmt(s.get(f'handlers_{n}_cold'))} ms / warm {fmt(s.get(f'handlers_{n}_warm'))} ms"
                for n in (1, 20) if f"handlers_{n}_cold" in s) + ".")
    lines += ["", "## Goals (issues 7, 14 and 16; reported, not asserted)", ""]
    lines += targets(summary)
    return "\n".join(lines) + "\n"


def targets(summary):
    def ev(system, batch):
        x = get(summary, system, batch)
        return x["events_per_s"] if x else None

    def check(label, value, goal, ok):
        if value is None:
            return f"- {label}: not measured"
        return f"- {label}: {value} (target {goal}) — {'met' if ok else 'MISSED'}"

    out = []
    g1, n1, w1, p1 = ev("gridfn", 1), ev("native", 1), ev("wasmtime-serve", 1), ev("python", 1)
    g100, n100, r100, p100 = ev("gridfn", 100), ev("native", 100), ev("gridfn-reuse", 100), ev("python", 100)
    if g1 and n1:
        out.append(check("batch 1 fresh, gridfn/native", f"{g1 / n1:.2f}×", "≥ 0.5×", g1 / n1 >= 0.5))
    if g1 and w1:
        out.append(check("batch 1 fresh, gridfn/wasmtime-serve", f"{g1 / w1:.2f}×", "≥ 2×", g1 / w1 >= 2))
    p = summary["gridfn"].get("paced_batch1")
    if p:
        out.append(check(f"batch 1 p99 at {(p['fraction_of_max'] or 0):.0%} of max", f"{p['p99_ms']:.2f} ms", "< 5 ms", p["p99_ms"] < 5))
    if g100:
        out.append(check("batch 100 fresh, events/s", f"{g100:,.0f}", "≥ 120,000", g100 >= 120000))
    if r100 and n100:
        out.append(check("batch 100 reuse, gridfn-reuse/native", f"{r100 / n100:.2f}×", "≥ 0.5×", r100 / n100 >= 0.5))
    elif not r100:
        out.append("- batch 100 reuse: not measured (gridfn-reuse skipped or failed)")
    b100, w100 = ev("gridfn-batch", 100), ev("wasmtime-serve", 100)
    if b100 and w100:
        out.append(check("batch 100 handle-batch, gridfn-batch/wasmtime-serve", f"{b100 / w100:.2f}×", "≥ 1.0×", b100 / w100 >= 1.0))
    rss100 = (get(summary, "gridfn", 100) or {}).get("rss_mb")
    if rss100:
        out.append(check("batch 100 fresh, peak RSS", f"{rss100:.1f} MB", "≤ 100 MB", rss100 <= 100))
    if b100 and g100:
        out.append(f"- batch 100 handle-batch vs a fresh instance per event: {b100 / g100:.1f}× ({b100:,.0f} vs {g100:,.0f} events/s)")
    if g1 and p1:
        out.append(check("batch 1, gridfn/python", f"{g1 / p1:.1f}×", "≥ 10×", g1 / p1 >= 10))
    if g100 and p100:
        out.append(check("batch 100, gridfn/python", f"{g100 / p100:.1f}×", "≥ 4×", g100 / p100 >= 4))
    # Issue 16: a Python handler in gridfn at least matches the Flask webhook.
    for system in ("gridfn-py", "gridfn-py-reuse"):
        for batch in (1, 100):
            mine, flask = ev(system, batch), ev("python", batch)
            if mine and flask:
                out.append(check(f"batch {batch}, {system}/python", f"{mine / flask:.2f}×", "≥ 1×", mine / flask >= 1))
    return out


def chart(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = summary["machine"]["bench"]["batches"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    width = 0.8 / len(SYSTEMS)
    for i, system in enumerate(SYSTEMS):
        xs, ys = [], []
        for j, b in enumerate(batches):
            x = get(summary, system, b)
            if x and x["events_per_s"]:
                xs.append(j + (i - (len(SYSTEMS) - 1) / 2) * width)
                ys.append(x["events_per_s"])
        if xs:
            ax.bar(xs, ys, width, label=system)
    ax.set_yscale("log")
    ax.set_xticks(range(len(batches)), [f"{b} event{'s' if b > 1 else ''}/request" for b in batches])
    ax.set_ylabel("events/s (log scale)")
    m = summary["machine"]
    ax.set_title(f"gridfn and peers, {m.get('cores')} cores, {m.get('date', '')[:10]}"
                 f"{' (smoke)' if m['bench'].get('smoke') else ''}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
    check_mode = "--check" in sys.argv[2:]
    with open(os.path.join(out, "raw.json")) as f:
        raw = json.load(f)
    summary = summarize(raw)
    paths = {name: os.path.join(out, name) for name in ("summary.json", "summary.md", "chart.png")}
    for p in paths.values():
        if os.path.exists(p):
            os.remove(p)
    with open(paths["summary.json"], "w") as f:
        json.dump(summary, f, indent=1)
    md = markdown(summary)
    with open(paths["summary.md"], "w") as f:
        f.write(md)
    chart(summary, paths["chart.png"])
    print(md)
    problems = []
    for run in summary["runs"]:
        if run.get("failed"):
            problems.append(f"{run['system']} batch {run['batch']} failed: {run['failed']}")
        elif not run.get("skipped") and run["errors"]:
            problems.append(f"{run['system']} batch {run['batch']}: {run['errors']} errors (non-2xx or socket)")
        elif not run.get("skipped") and not run["events_per_s"]:
            problems.append(f"{run['system']} batch {run['batch']}: no request completed")
    p = summary["gridfn"].get("paced_batch1")
    if p and p["errors"]:
        problems.append(f"gridfn paced batch 1: {p['errors']} errors")
    for p in problems:
        print(f"FLAGGED: {p}", file=sys.stderr)
    if check_mode:
        missing = [n for n, p in paths.items() if not os.path.getsize(p)]
        if missing:
            problems.append(f"not written: {missing}")
        if problems:
            print("smoke check FAILED", file=sys.stderr)
            sys.exit(1)
        print("smoke check passed: summary.json, summary.md, chart.png written; every run had 0 errors", file=sys.stderr)


if __name__ == "__main__":
    main()
