"""The benchmark's chart: request outcomes over time, which instance served them, strategy phases."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"ok": "#2e8b57", "5xx": "#ff8c00", "conn_error": "#d62728", "other_error": "#7b3294", "4xx": "#999999"}
LABELS = {"ok": "ok", "5xx": "HTTP 5xx", "conn_error": "connection error", "other_error": "other error", "4xx": "4xx"}
PHASE_SHADES = ("#eef3fb", "#fbf3e8")


def draw(  # noqa: PLR0912, PLR0915 - one figure, drawn top to bottom
    result: dict[str, Any], outcomes: Sequence[tuple[float, str, str]], png: Path, began: float
) -> None:
    """outcomes: (seconds since began, kind, "ip:port" of the instance chosen)."""
    per_second: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for t, kind, _ in outcomes:
        per_second[kind][int(t)] += 1
    outcomes = [o for o in outcomes if o[0] >= 0]
    end = max((t for t, _, _ in outcomes), default=1.0)

    # instances in order of first appearance, one row each
    rows: dict[str, int] = {}
    for _, _, inst in outcomes:
        if inst != "none" and inst not in rows:
            rows[inst] = len(rows)

    fig, (ax_rate, ax_inst) = plt.subplots(
        2, 1, figsize=(16, 8.5), sharex=True, gridspec_kw={"height_ratios": [1.2, 1.0]}
    )
    for ax in (ax_rate, ax_inst):
        for i, row in enumerate(result["strategies"]):
            ax.axvspan(row["started"] - began, row["settled"] - began, color=PHASE_SHADES[i % 2], zorder=0)
            ax.axvline(row["ended"] - began, color="#555555", lw=0.8, ls=":", zorder=1)

    # top: requests per second by outcome
    seconds = list(range(int(end) + 1))
    ok = [per_second["ok"].get(s, 0) for s in seconds]
    ax_rate.plot(seconds, ok, color=COLORS["ok"], lw=0.8, label="ok per second")
    bottom = [0] * len(seconds)
    for kind in ("conn_error", "5xx", "other_error"):
        values = [per_second[kind].get(s, 0) for s in seconds]
        if any(values):
            ax_rate.bar(seconds, values, bottom=bottom, width=1.0, color=COLORS[kind], label=LABELS[kind], zorder=3)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax_rate.set_ylabel("requests / s")
    rate = result["settings"]["rate_per_s"]
    top = min(max([*ok, *bottom, 1]), rate * 1.3) * 1.45  # start-up bursts are cut off
    ax_rate.set_ylim(0, top)
    for row in result["strategies"]:
        mid = (row["started"] + row["settled"]) / 2 - began
        failed = row["failed"]
        text = f"{row['strategy']}\n{row.get('consumer', 'cached')}\nfailed {failed}\nrollout {row['rollout_s']:.0f} s"
        ax_rate.text(
            mid,
            top * 0.97,
            text,
            ha="center",
            va="top",
            fontsize=8.5,
            color="#b22222" if failed else "#1f4e79",
            fontweight="bold",
        )
    ax_rate.legend(loc="lower left", fontsize=8, ncol=4, framealpha=0.9)
    consumers = result["settings"].get("consumers", {"cached": ""})
    through = {"cached": "35 s cache", "push": "cache off, following Nacos pushes"}
    kubernetes = result["versions"].get("kubernetes")
    where = f"Kubernetes {kubernetes} Deployment: " if kubernetes else ""
    ax_rate.set_title(
        f"{where}Rolling update of {result['settings']['providers']} providers, consumer at "
        f"{result['settings']['rate_per_s']} req/s through Spring Cloud LoadBalancer "
        f"({'; then '.join(through.get(c, c) for c in consumers)}) - {result['date'][:10]}",
        fontsize=11,
    )

    # bottom: which instance each request went to, and each old pod's termination
    for kind in ("ok", "conn_error", "5xx", "other_error"):
        pts = sorted({(int(t * 4) / 4, rows[inst]) for t, k, inst in outcomes if k == kind and inst in rows})
        if pts:
            ax_inst.scatter(
                [p[0] for p in pts],
                [p[1] for p in pts],
                s=4 if kind == "ok" else 10,
                marker="|" if kind == "ok" else "x",
                color=COLORS[kind],
                label=LABELS[kind] if kind != "ok" else "request served (ok)",
                zorder=3,
                rasterized=True,
            )
    first_label = True
    for row in result["strategies"]:
        for term in row["terminations"]:
            inst = f"{term['ip']}:{term['port']}"
            if inst not in rows:
                continue
            y = rows[inst]
            ax_inst.plot(
                [term["deleted"] - began, term["sigterm"] - began],
                [y + 0.3, y + 0.3],
                color="#1f77b4",
                lw=3,
                solid_capstyle="butt",
                label="preStop" if first_label else None,
                zorder=2,
            )
            ax_inst.plot(
                [term["sigterm"] - began, term["exited"] - began],
                [y + 0.3, y + 0.3],
                color="#000000",
                lw=3,
                solid_capstyle="butt",
                label="SIGTERM to exit" if first_label else None,
                zorder=2,
            )
            first_label = False
    ax_inst.set_yticks(list(rows.values()), list(rows.keys()), fontsize=7)
    ax_inst.set_ylim(-0.7, len(rows) - 0.2)
    ax_inst.invert_yaxis()
    ax_inst.set_ylabel("provider instance")
    ax_inst.set_xlabel("seconds since start (shaded: one strategy's roll plus settling; dotted: last old pod gone)")
    ax_inst.legend(loc="upper right", fontsize=8, ncol=4, framealpha=0.9)
    ax_inst.set_xlim(0, end + 1)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
