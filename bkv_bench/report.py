"""bench.json and the text table: what was run, what was measured, and against which ceilings.

The document itself is `bkv_bench.result.BenchResult`; this module builds, writes and prints it.

Only counts, rates, latencies, error type names and settings go in: never a password, a key,
an account key or a session token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bkv_bench.calls import CallsCounted
from bkv_bench.ceilings import Ceiling
from bkv_bench.cpu import CpuUsed
from bkv_bench.floor import Floor
from bkv_bench.histogram import OpSummary
from bkv_bench.result import LONG_TERM_FRACTION, BenchResult, Machine, RunConfig, Setup


def build(
    *,
    config: RunConfig,
    summaries: Sequence[OpSummary],
    combined: OpSummary,
    elapsed_s: float,
    series: Sequence[Mapping[str, Any]],
    substituted: Mapping[str, int],
    setup: Setup,
    ceilings: Sequence[Ceiling],
    marks: Sequence[tuple[float, str]] = (),
    started_at: str = "",
    cpu: CpuUsed | None = None,
    floor: Floor | None = None,
    calls: CallsCounted | None = None,
) -> BenchResult:
    """The whole run as one `BenchResult`, with this machine's facts taken now (at the end)."""
    return BenchResult(
        config=config,
        elapsed_s=elapsed_s,
        total=combined,
        ops=tuple(summaries),
        substituted=dict(substituted),
        setup=setup,
        series=tuple(series),
        machine=Machine.here(),
        marks=tuple(marks),
        ceilings=tuple(ceilings),
        cpu=cpu,
        started_at=started_at,
        floor=floor,
        calls=calls,
    )


def write_json(path: Path, result: BenchResult) -> None:
    path.write_text(
        json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(summaries: Sequence[OpSummary], combined: OpSummary) -> str:
    """One row per operation and a total: count, rate, latency percentiles, errors by type."""
    head = ["op", "count", "ok", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]
    rows = [head]
    for s in [*summaries, combined]:
        lat = s.latency_ms
        rows.append(
            [
                s.op,
                str(s.count),
                str(s.ok),
                f"{s.throughput_per_s:.1f}",
                _ms(lat["p50"]),
                _ms(lat["p90"]),
                _ms(lat["p99"]),
                _ms(lat["p999"]),
                _ms(lat["max"]),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    errors = [
        f"  {s.op}: " + ", ".join(f"{name} {n}" for name, n in s.errors.items())
        for s in summaries
        if s.errors
    ]
    if errors:
        lines += ["errors by type:", *errors]
    else:
        lines.append("errors: none")
    return "\n".join(lines)


def ceilings_text(result: BenchResult) -> str:
    """The ceilings and the cluster's recovery rate as a fraction of each."""
    doc = result.to_json()
    c = doc.get("ceilings")
    v = doc.get("versus_ceilings")
    if not c or not v:
        return ""
    lines = [
        "ceilings (same machine, same run):",
        f"  etcd CAS (one txn per write)       {c.get('etcd_cas_per_s', 0):9.1f} /s",
        f"  unary gRPC over TLS (no-op)        {c.get('grpc_calls_per_s', 0):9.1f} /s",
        f"  server crypto per recovery, 1 core {c.get('crypto_recoveries_per_s', 0):9.1f} /s",
        f"  recovery path, no work (relay+CAS) {c.get('shape_recoveries_per_s', 0):9.1f} /s",
        f"successful recoveries: {v['recoveries_per_s']:.1f} /s",
    ]
    if "etcd" in v:
        e = v["etcd"]
        verdict = "meets" if e["meets_target"] else "below"
        lines.append(
            f"  = {e['fraction_of_bound']:.1%} of the etcd bound (CAS/2 = "
            f"{e['recoveries_bound_per_s']:.1f}/s); target {e['target_fraction']:.0%}: {verdict} "
            f"(long-term {LONG_TERM_FRACTION:.0%})"
        )
    if "grpc" in v:
        g = v["grpc"]
        lines.append(
            f"  = {g['fraction_of_bound']:.1%} of the gRPC bound (calls/2 = "
            f"{g['recoveries_bound_per_s']:.1f}/s)"
        )
    if "crypto" in v:
        k = v["crypto"]
        lines.append(f"  = {k['fraction_of_bound']:.1%} of one core's server crypto")
    if "shape" in v:
        sh = v["shape"]
        lines.append(
            f"  = {sh['fraction_of_bound']:.1%} of the same path without its work "
            f"({sh['recoveries_bound_per_s']:.1f}/s)"
        )
        if "shape_fraction_of_etcd_bound" in sh:
            lines.append(
                f"    that path alone reaches {sh['shape_fraction_of_etcd_bound']:.1%} "
                "of the etcd bound"
            )
    return "\n".join(lines)
