"""bench.png: throughput and latency over the run, with fault marks (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first


def plot(
    path: Path,
    series: Sequence[Mapping[str, Any]],
    *,
    marks: Sequence[tuple[float, str]] = (),
    title: str = "bkv-bench",
) -> None:
    """Two panels sharing the time axis: ops/s (and errors/s), then p50/p99 latency in ms."""
    t = [float(p["t_s"]) for p in series]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), dpi=100)
    try:
        top.plot(t, [p["throughput_per_s"] for p in series], label="ops/s", color="tab:blue")
        top.plot(t, [p["errors"] for p in series], label="errors/s", color="tab:red")
        top.set_ylabel("operations / s")
        top.legend(loc="upper right")
        top.grid(alpha=0.3)
        for key, color in (("p50_ms", "tab:green"), ("p99_ms", "tab:orange")):
            points = [(x, p[key]) for x, p in zip(t, series, strict=True) if p[key] is not None]
            if points:
                bottom.plot(
                    [x for x, _ in points],
                    [y for _, y in points],
                    label=key.replace("_ms", ""),
                    color=color,
                )
        bottom.set_ylabel("latency (ms)")
        bottom.set_xlabel("seconds since start of the measured phase")
        bottom.grid(alpha=0.3)
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(loc="upper right")
        for at, label in marks:
            for ax in (top, bottom):
                ax.axvline(at, color="black", linestyle="--", linewidth=1)
            top.annotate(
                label,
                (at, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=8,
            )
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
