#!/usr/bin/env python3
"""Draws the benchmark plots from results.json and lateness_ms.json: lateness
CDFs per rate (router beside the produce-to-consume probe, and beside
sleep-and-requeue), p99 against rate, throughput bars, memory against backlog,
and Kafka writes per delivered record against delay. Scenarios that were not
run draw nothing."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
r = json.loads((out / "results.json").read_text())
raw_path = out / "lateness_ms.json"
raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
prec = r["precision"]


def cdf(ax, values, label, style="-", color=None):
    v = sorted(values)
    if not v:
        return
    n = len(v)
    ax.plot(v, [(i + 1) / n for i in range(n)], style, color=color, label=f"{label} (n={n})")


def by_rate(system):
    """{rate: [lateness ms]} for 'router', 'probe' or 'requeue', rates ascending."""
    got = raw.get(system, {})
    return sorted(((int(k), v) for k, v in got.items()), key=lambda kv: kv[0])


colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
router, probe, requeue = by_rate("router"), by_rate("probe"), by_rate("requeue")
if router or requeue:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5.5))
    probes = dict(probe)
    for i, (rate, values) in enumerate(router):
        c = colors[i % len(colors)]
        cdf(a1, values, f"router {rate}/s", "-", c)
        cdf(a1, probes.get(rate, []), f"probe {rate}/s", ":", c)
    a1.set_title("Router and the produce-to-consume probe, per rate")
    for i, (rate, values) in enumerate(requeue):
        cdf(a2, values, f"sleep-and-requeue {rate}/s", "--", colors[i % len(colors)])
    for i, (rate, values) in enumerate(router):
        cdf(a2, values, f"router {rate}/s", "-", colors[i % len(colors)])
    a2.set_title(f"Sleep-and-requeue ({prec.get('requeue_sleep_ms', '?')} ms sleep) vs router")
    a2.set_xscale("symlog")
    for a in (a1, a2):
        a.set_xlabel("arrival minus due time (ms)")
        a.set_ylabel("fraction of records")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "lateness_cdf.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [
        ("router", prec.get("router") or [], lambda x: x["router"], "o-"),
        ("probe (floor)", prec.get("router") or [], lambda x: x["probe"], "^:"),
        ("sleep-and-requeue", prec.get("requeue") or [], lambda x: x["requeue"], "s--"),
    ]
    for label, items, pick, style in rows:
        if items:
            ax.plot([x["rate"] for x in items], [pick(x)["lateness"]["p99_ms"] for x in items], style, label=f"{label} p99")
    if prec.get("router"):
        ax.plot([x["rate"] for x in prec["router"]], [x["router"]["lateness"]["max_ms"] for x in prec["router"]], "o-", alpha=0.4, label="router max")
    ax.set_xscale("log")
    ax.set_yscale("symlog")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("records/s")
    ax.set_ylabel("lateness (ms)")
    ax.set_title("Lateness against rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "precision_by_rate.png", dpi=110)

t = r.get("throughput")
if t:
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(["router", "bare forwarder"], [t["router_records_per_s"], t["bare_records_per_s"]], color=["tab:blue", "tab:gray"])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("records/s")
    ax.set_title(f"Throughput, {t['records']} x {t['record_bytes']} B records (ratio {t['ratio']:.2f})")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)

m = r.get("memory")
if m:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p["waiting"] for p in m["points"]], [p["rss_mib"] for p in m["points"]], "o-")
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
