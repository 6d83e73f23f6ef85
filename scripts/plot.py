#!/usr/bin/env python3
"""Draws the benchmark plots from results.json: lateness CDFs (router and
sleep-and-requeue), throughput bars, memory against backlog, and Kafka writes
per delivered record against delay."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
r = json.loads((out / "results.json").read_text())


def cdf(ax, values, label, style="-"):
    v = sorted(values)
    if not v:
        return
    n = len(v)
    ax.plot(v, [(i + 1) / n for i in range(n)], style, label=f"{label} (n={n})")


fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
# (scenarios skipped with BENCH_ONLY have no samples and draw empty panels)
for kind, values in sorted(r["lateness_ms"]["router"].items()):
    if kind != "all":
        cdf(a1, values, f"router {kind}")
for kind, values in sorted(r["lateness_ms"]["requeue"].items()):
    if kind != "all":
        cdf(a2, values, f"sleep-and-requeue {kind}", "--")
cdf(a2, r["lateness_ms"]["router"].get("all", []), "router, all")
a1.set_title("Router: lateness at the target consumer")
a2.set_title(f"Sleep-and-requeue ({r['baseline'].get('sleep_ms', '?')} ms sleep) vs router")
for a in (a1, a2):
    a.set_xlabel("arrival minus due time (ms)")
    a.set_ylabel("fraction of records")
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
a2.set_xscale("symlog")
fig.tight_layout()
fig.savefig(out / "lateness_cdf.png", dpi=110)

def skipped(section):
    return r.get(section, {}).get("skipped", False)


t = r["throughput"]
if skipped("throughput") or skipped("memory"):
    sys.exit(0)
fig, ax = plt.subplots(figsize=(6, 4))
bars = ax.bar(["router", "bare forwarder"], [t["router_records_per_s"], t["bare_records_per_s"]], color=["tab:blue", "tab:gray"])
ax.bar_label(bars, fmt="%.0f")
ax.set_ylabel("records/s")
ax.set_title(f"Throughput, {t['records']} x {t['record_bytes']} B records (ratio {t['ratio']:.2f})")
fig.tight_layout()
fig.savefig(out / "throughput.png", dpi=110)

m = r["memory"]["points"]
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot([p["waiting"] for p in m], [p["rss_mib"] for p in m], "o-")
ax.set_xlabel("records waiting in the 1h tier")
ax.set_ylabel("router resident memory (MiB)")
ax.set_ylim(bottom=0)
ax.set_title("Memory against backlog")
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(out / "memory.png", dpi=110)

w = r["write_amplification"]["rows"]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot([x["delay_ms"] / 1000 for x in w], [x["router_writes"] for x in w], "o-", label="router (hop plan)")
ax.plot([x["delay_ms"] / 1000 for x in w], [x["requeue_writes_at_least"] for x in w], "s--", label="sleep-and-requeue (at least)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("delay (s)")
ax.set_ylabel("Kafka writes per delivered record")
ax.grid(alpha=0.3, which="both")
ax.legend()
fig.tight_layout()
fig.savefig(out / "write_amplification.png", dpi=110)
