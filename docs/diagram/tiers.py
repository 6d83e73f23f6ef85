"""Draws docs/tiers.png, the README's picture of the tiers and a cascade.

    python3 docs/diagram/tiers.py        (needs matplotlib)

A record due in 95 minutes enters the largest tier that fits (delay-1h);
each time a tier's wait is over, the router forwards it to the largest tier
that fits what is left (three times delay-10m, five times delay-1m), then
delivers it to its target. Inside a tier partition every record waits the
same time, so the partition is sorted by due time and the router only looks
at its head.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

TIERS = ["1h", "10m", "1m", "30s", "5s", "1s"]  # longest first: a cascade runs left to right
CASCADE = {"1h": "1 hop", "10m": "3 hops", "1m": "5 hops"}
OUT = Path(__file__).resolve().parent.parent / "tiers.png"


def box(ax, x, y, w, h, text, face, size=10, weight="normal"):
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
            linewidth=1.2, edgecolor="#333333", facecolor=face,
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size,
            weight=weight)


def arrow(ax, start, end, color="#333333", rad=0.0, style="-|>", width=1.4):
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=14, linewidth=width,
            color=color, connectionstyle=f"arc3,rad={rad}",
        )
    )


def main():
    fig, ax = plt.subplots(figsize=(10, 4.6), dpi=110)
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4.6)
    ax.axis("off")

    # The producer, on the left.
    box(ax, 0.1, 2.55, 1.5, 0.8, "producer\n(any language)", "#e8f0fe")
    ax.text(0.85, 2.25, "headers:\ndelay-target=orders\ndelay-deliver-at=now+95m",
            ha="center", va="top", fontsize=7.5, family="monospace")

    # The tier topics, one column each; records inside sorted by due time.
    xs = {}
    for i, tier in enumerate(TIERS):
        x = 2.2 + i * 1.05
        xs[tier] = x
        cascade = tier in CASCADE
        box(ax, x, 2.4, 0.9, 1.1, f"delay-{tier}", "#fff4d6" if cascade else "#f4f4f4",
            size=9, weight="bold" if cascade else "normal")
        for j in range(4):  # a partition's records, head at the bottom
            ax.add_patch(plt.Rectangle((x + 0.2, 2.5 + j * 0.11), 0.5, 0.08,
                                       facecolor="#bbbbbb", edgecolor="none"))
    ax.text(2.2 + 2.5 * 1.05 + 0.45, 4.25,
            "tier topics: in a partition every record waits the same time, so it is sorted by due time",
            ha="center", fontsize=8.5)

    # The router underneath, one task per partition.
    box(ax, 2.2, 0.45, 6.2, 0.85,
        "kafka-delay-router (consumer group): one task per tier partition looks at its head,\n"
        "pauses the partition until the head is due, then forwards or delivers it",
        "#e6f4ea", size=8.5)

    # The target on the right.
    box(ax, 8.75, 2.55, 1.15, 0.8, "orders\n(target)", "#e8f0fe", weight="bold")

    # The cascade of a record due in 95 minutes, left to right.
    red = "#c0392b"
    arrow(ax, (1.6, 2.95), (xs["1h"], 2.95), red)
    arrow(ax, (xs["1h"] + 0.6, 2.4), (xs["10m"] + 0.3, 2.4), red, rad=0.9)
    arrow(ax, (xs["10m"] + 0.6, 2.4), (xs["1m"] + 0.3, 2.4), red, rad=0.9)
    arrow(ax, (xs["1m"] + 0.6, 2.4), (9.1, 2.55), red, rad=0.22)
    ax.text(xs["1h"] + 0.97, 1.62, "after 1h, 35m left:\nto delay-10m", ha="center",
            fontsize=7.5, color=red)
    ax.text(xs["10m"] + 0.97, 1.62, "3 waits, 5m left:\nto delay-1m", ha="center",
            fontsize=7.5, color=red)
    ax.text(6.9, 1.7, "5 waits, then due: delivered", ha="center", fontsize=7.5,
            color=red)
    ax.text(5.3, 0.15,
            "a record due in 95 minutes: 1 entry + 8 forwards + 1 delivery "
            "(kafka-delay-router plan --delay 95m)",
            ha="center", fontsize=8.5, color=red)

    fig.tight_layout()
    fig.savefig(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
