"""A PNG of the run: successes and errors per second, with the fault windows shaded.

Pure binning (`per_second`) is separate from drawing (`plot_run`, matplotlib's Agg backend, so
it needs no display).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bkv_chaos.history import Fault, HistoryOp


def per_second(
    history: Sequence[HistoryOp], bin_s: float = 1.0
) -> tuple[list[float], list[int], list[int]]:
    """(bin starts, definite successes, everything else) by completion time."""
    if not history:
        return [], [], []
    bins = math.floor(max(op.complete for op in history) / bin_s) + 1
    ok = [0] * bins
    errors = [0] * bins
    for op in history:
        index = int(op.complete // bin_s)
        if op.is_definite_ok or (op.op == "bad_input" and op.outcome == "bad_input_rejected"):
            ok[index] += 1
        elif op.definite and op.outcome in ("invalid_password", "locked", "not_registered"):
            ok[index] += 1  # an answer the workload expects is not an error
        else:
            errors[index] += 1
    return [i * bin_s for i in range(bins)], ok, errors


def plot_run(
    history: Sequence[HistoryOp], faults: Sequence[Fault], path: Path, title: str = ""
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts, ok, errors = per_second(history)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    try:
        end = max([*starts, *(f.end or f.start for f in faults), 1.0]) + 1
        colours = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan",
                   "tab:pink", "tab:gray", "tab:blue"]  # fmt: skip
        kinds = sorted({f.kind for f in faults})
        for fault in faults:
            colour = colours[kinds.index(fault.kind) % len(colours)]
            ax.axvspan(fault.start, fault.end if fault.end is not None else end,
                       color=colour, alpha=0.18, lw=0)  # fmt: skip
            ax.text(fault.start, 1.0, f" {fault.kind}", transform=ax.get_xaxis_transform(),
                    va="top", fontsize=8, color=colour, rotation=90)  # fmt: skip
        ax.step(starts, ok, where="post", label="answered (per s)", color="tab:green")
        ax.step(starts, errors, where="post", label="unavailable / error (per s)", color="tab:red")
        ax.set_xlim(0, end)
        ax.set_xlabel("seconds since the run started")
        ax.set_ylabel("operations per second")
        ax.set_title(title or "bkv-chaos: throughput and errors; shaded = fault windows")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
