#!/usr/bin/env python3
"""Draws soak.png from the soak's soak.jsonl (one line a minute) and
soak-summary.json (the restart time): lateness p50/p99/max, records delivered,
cancelled and dead-lettered, RSS and CPU of the router and the broker, records
and bytes held, and consumer lag per tier, each per minute, with the router's
restart marked."""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "results/soak")
rows = [json.loads(line) for line in (out / "soak.jsonl").read_text().splitlines() if line.strip()]
summary_path = out / "soak-summary.json"
summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
if not rows:
    sys.exit("soak.jsonl is empty")

# x: the middle of each minute, in minutes from the start.
x = [r["minute"] + 0.5 for r in rows]
restart = summary.get("restart_at_s")
restart_min = restart / 60 if restart is not None else next(
    (r["minute"] + 0.5 for r in rows if r.get("restart")), None
)


def mark(ax):
    if restart_min is not None:
        ax.axvline(restart_min, color="grey", linestyle="--", linewidth=1)
        ax.text(restart_min, ax.get_ylim()[1], " restart", va="top", fontsize=8, color="grey")
    ax.set_xlabel("minute")
    ax.grid(alpha=0.3)


fig, axes = plt.subplots(3, 2, figsize=(14, 12))
title = f"soak: {summary.get('minutes', len(rows))} min at {summary.get('rate', '?')} records/s"
if summary:
    title += (
        f" - sent {summary['sent']}, delivered {summary['delivered']}, lost {summary['lost']},"
        f" early {summary['early']}, cancelled-but-delivered {summary['cancelled_but_delivered']}"
    )
fig.suptitle(title)

ax = axes[0][0]
final = summary.get("final_lateness") or []
for key, label, style in (("p50_ms", "p50", "o-"), ("p99_ms", "p99", "s-"), ("max_ms", "max", "^-")):
    ax.plot(x, [r["lateness"][key] for r in rows], style, label=label)
if final:
    ax.plot(
        [i + 0.5 for i in range(len(final))],
        [f["p99_ms"] for f in final],
        "k:",
        label="p99 after the final wait",
    )
ax.set_yscale("symlog", linthresh=10)
ax.set_ylabel("lateness of records due in the minute (ms)")
ax.set_title("Lateness")
ax.legend(fontsize=8)
mark(ax)

ax = axes[0][1]
ax.plot(x, [r["delivered"] for r in rows], "o-", label="delivered")
ax.plot(x, [r["cancelled"] for r in rows], "s-", label="cancelled (router)")
ax.plot(x, [r["cancels_acked"] for r in rows], "x--", label="cancellations acknowledged")
ax.plot(x, [r["dead_lettered"] for r in rows], "^-", label="dead-lettered")
ax.set_yscale("symlog", linthresh=10)
ax.set_ylabel("records per minute")
ax.set_title("Records")
ax.legend(fontsize=8)
mark(ax)

ax = axes[1][0]
ax.plot(x, [r["router_rss_mib"] for r in rows], "o-", label="router")
if any(r.get("broker_rss_mib") is not None for r in rows):
    ax2 = ax.twinx()
    ax2.plot(x, [r.get("broker_rss_mib") or 0 for r in rows], "s--", color="tab:orange", label="broker (right)")
    ax2.set_ylabel("broker RSS (MiB)")
    ax2.legend(loc="lower right", fontsize=8)
ax.set_ylabel("router RSS (MiB)")
ax.set_title("Resident memory")
ax.legend(loc="upper left", fontsize=8)
mark(ax)

ax = axes[1][1]
ax.plot(x, [r["router_cpu"] for r in rows], "o-", label="router")
if any(r.get("broker_cpu") is not None for r in rows):
    ax.plot(x, [r.get("broker_cpu") or 0 for r in rows], "s-", label="broker")
ax.set_ylabel("CPU (fraction of a core)")
ax.set_title("CPU")
ax.legend(fontsize=8)
mark(ax)

ax = axes[2][0]
ax.plot(x, [r["held_records"] for r in rows], "o-", label="records held")
ax.set_ylabel("records held")
ax2 = ax.twinx()
ax2.plot(x, [r["held_bytes"] / 1024 for r in rows], "s--", color="tab:orange", label="bytes held (right)")
ax2.set_ylabel("held (KiB)")
ax.set_title("Held in memory (sampled at each minute's end)")
ax.legend(loc="upper left", fontsize=8)
ax2.legend(loc="lower right", fontsize=8)
mark(ax)


def tier_ms(name):
    digits = "".join(c for c in name if c.isdigit()) or "0"
    unit = name[len(digits):]
    return int(digits) * {"h": 3600000, "m": 60000, "s": 1000}.get(unit, 1)


ax = axes[2][1]
tiers = sorted({t for r in rows for t in r["lag"]}, key=tier_ms)
for t in tiers:
    ax.plot(x, [r["lag"].get(t, 0) for r in rows], "o-", label=t)
ax.set_yscale("symlog", linthresh=10)
ax.set_ylabel("consumer lag (records)")
ax.set_title("Consumer lag per tier (the router's 10 s sample)")
ax.legend(fontsize=8, ncol=2)
mark(ax)

fig.tight_layout()
fig.savefig(out / "soak.png", dpi=110)
print(f"wrote {out / 'soak.png'}")
