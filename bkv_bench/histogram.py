"""Latency and outcome recording: one HdrHistogram per operation, plus a per-second series.

Latencies are recorded in microseconds (1 µs .. 60 s, 3 significant digits) and reported in
milliseconds. Only successful operations enter the latency histograms; every operation, failed
or not, is counted, and failures are counted by error type.

>>> r = Recorder(start=0.0)
>>> r.record("recover", 0.5, 0.020)
>>> r.record("recover", 0.7, None, error="Unavailable")
>>> s = r.summary("recover", elapsed_s=1.0)
>>> (s.count, s.ok, s.errors, round(s.latency_ms["p50"]))
(2, 1, {'Unavailable': 1}, 20)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p999", 99.9),
)


def new_histogram() -> Any:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def latency_ms(histogram: Any) -> dict[str, float | None]:
    """p50/p90/p99/p999/max/mean in milliseconds; None for every field when empty."""
    keys = [k for k, _ in PERCENTILES] + ["max", "mean"]
    if histogram.get_total_count() == 0:
        return dict.fromkeys(keys)
    out: dict[str, float | None] = {
        k: round(histogram.get_value_at_percentile(p) / 1000.0, 3) for k, p in PERCENTILES
    }
    out["max"] = round(histogram.get_max_value() / 1000.0, 3)
    out["mean"] = round(histogram.get_mean_value() / 1000.0, 3)
    return out


def _us(seconds: float) -> int:
    return min(HIGHEST_US, max(LOWEST_US, round(seconds * 1e6)))


@dataclass
class OpSummary:
    """What the report shows for one operation."""

    op: str
    count: int
    ok: int
    errors: dict[str, int]
    throughput_per_s: float
    latency_ms: dict[str, float | None]


@dataclass
class Bucket:
    """One second of the run: completions, errors and a latency histogram (all operations)."""

    count: int = 0
    errors: int = 0
    histogram: Any = field(default_factory=new_histogram)


class Recorder:
    """Collects outcomes as they complete. `start` is the clock value of the measured phase."""

    def __init__(self, start: float, bucket_s: float = 1.0) -> None:
        self.start = start
        self.bucket_s = bucket_s
        self._hist: dict[str, Any] = {}
        self._count: Counter[str] = Counter()
        self._errors: dict[str, Counter[str]] = {}
        self._buckets: dict[int, Bucket] = {}
        self.substituted: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self._count.values())

    @property
    def total_errors(self) -> int:
        return sum(sum(c.values()) for c in self._errors.values())

    def ops(self) -> list[str]:
        return sorted(self._count)

    def record(
        self, op: str, finished_at: float, latency_s: float | None, *, error: str | None = None
    ) -> None:
        """One finished operation: its latency when it succeeded, else the error type."""
        self._count[op] += 1
        index = max(0, math.floor((finished_at - self.start) / self.bucket_s))
        # Not setdefault(index, Bucket()): that builds a histogram (tens of KB) on every call.
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = Bucket()
        bucket.count += 1
        if error is not None:
            self._errors.setdefault(op, Counter())[error] += 1
            bucket.errors += 1
            return
        if latency_s is None:
            raise ValueError("a successful operation needs a latency")
        us = _us(latency_s)
        histogram = self._hist.get(op)
        if histogram is None:
            histogram = self._hist[op] = new_histogram()
        histogram.record_value(us)
        bucket.histogram.record_value(us)

    def summary(self, op: str, elapsed_s: float) -> OpSummary:
        errors = dict(sorted(self._errors.get(op, Counter()).items()))
        count = self._count[op]
        hist = self._hist.get(op) or new_histogram()
        return OpSummary(
            op=op,
            count=count,
            ok=count - sum(errors.values()),
            errors=errors,
            throughput_per_s=count / elapsed_s if elapsed_s > 0 else 0.0,
            latency_ms=latency_ms(hist),
        )

    def combined(self, elapsed_s: float) -> OpSummary:
        """All operations together."""
        hist = new_histogram()
        for h in self._hist.values():
            hist.add(h)
        errors: Counter[str] = Counter()
        for c in self._errors.values():
            errors.update(c)
        return OpSummary(
            op="all",
            count=self.total,
            ok=self.total - sum(errors.values()),
            errors=dict(sorted(errors.items())),
            throughput_per_s=self.total / elapsed_s if elapsed_s > 0 else 0.0,
            latency_ms=latency_ms(hist),
        )

    def series(self, elapsed_s: float | None = None) -> list[dict[str, Any]]:
        """Per bucket: start offset (s), throughput (ops/s), errors, p50 and p99 (ms).

        With `elapsed_s`, the last (partial) bucket's rate is over its real width.
        """
        out: list[dict[str, Any]] = []
        if not self._buckets:
            return out
        last = max(self._buckets)
        for i in range(last + 1):
            b = self._buckets.get(i, Bucket())
            lat = latency_ms(b.histogram)
            width = self.bucket_s
            if i == last and elapsed_s is not None:
                width = min(self.bucket_s, max(elapsed_s - i * self.bucket_s, self.bucket_s / 10))
            out.append(
                {
                    "t_s": round(i * self.bucket_s, 3),
                    "throughput_per_s": round(b.count / width, 3),
                    "errors": b.errors,
                    "p50_ms": lat["p50"],
                    "p99_ms": lat["p99"],
                }
            )
        return out
