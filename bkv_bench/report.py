"""bench.json and the text table: what was run, what was measured, and against which ceilings.

Only counts, rates, latencies, error type names and settings go in: never a password, a key,
an account key or a session token.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bkv_bench.ceilings import CAS_PER_RECOVERY, ROUND_TRIPS_PER_RECOVERY, Ceiling
from bkv_bench.histogram import OpSummary

# The target: recoveries at 50% of the etcd bound (CAS ceiling / CAS_PER_RECOVERY).
TARGET_FRACTION = 0.5


def op_json(s: OpSummary) -> dict[str, Any]:
    return {
        "count": s.count,
        "ok": s.ok,
        "throughput_per_s": round(s.throughput_per_s, 3),
        "latency_ms": s.latency_ms,
        "errors": s.errors,
    }


def ceilings_json(ceilings: Sequence[Ceiling]) -> dict[str, Any]:
    names = {
        "etcd_cas": "etcd_cas_per_s",
        "grpc_unary_tls": "grpc_calls_per_s",
        "crypto_recovery": "crypto_recoveries_per_s",
        "shape_recovery": "shape_recoveries_per_s",
    }
    out: dict[str, Any] = {names[c.name]: round(c.per_s, 1) for c in ceilings if c.name in names}
    out["details"] = {
        c.name: {
            "ops": c.ops,
            "seconds": round(c.seconds, 3),
            "concurrency": c.concurrency,
            "errors": c.errors,
            **c.notes,
        }
        for c in ceilings
    }
    return out


def versus_ceilings(recoveries_per_s: float, ceilings: Mapping[str, Any]) -> dict[str, Any]:
    """The cluster's recovery rate as a fraction of what each ceiling allows for recoveries."""
    out: dict[str, Any] = {"recoveries_per_s": round(recoveries_per_s, 3)}
    cas = ceilings.get("etcd_cas_per_s")
    if cas:
        bound = cas / CAS_PER_RECOVERY
        out["etcd"] = {
            "recoveries_bound_per_s": round(bound, 1),
            "fraction_of_bound": round(recoveries_per_s / bound, 4),
            "target_fraction": TARGET_FRACTION,
            "meets_target": recoveries_per_s >= TARGET_FRACTION * bound,
        }
    calls = ceilings.get("grpc_calls_per_s")
    if calls:
        bound = calls / ROUND_TRIPS_PER_RECOVERY
        out["grpc"] = {
            "recoveries_bound_per_s": round(bound, 1),
            "fraction_of_bound": round(recoveries_per_s / bound, 4),
        }
    crypto = ceilings.get("crypto_recoveries_per_s")
    if crypto:
        out["crypto"] = {
            "recoveries_bound_per_s_one_core": round(crypto, 1),
            "fraction_of_bound": round(recoveries_per_s / crypto, 4),
        }
    shape = ceilings.get("shape_recoveries_per_s")
    if shape:
        out["shape"] = {
            "recoveries_bound_per_s": round(shape, 1),
            "fraction_of_bound": round(recoveries_per_s / shape, 4),
        }
        if cas:
            # The best fraction of the etcd bound that the plumbing alone reaches: if it is below
            # the target, no work done inside this process layout can meet the target here.
            out["shape"]["shape_fraction_of_etcd_bound"] = round(
                shape / (cas / CAS_PER_RECOVERY), 4
            )
    return out


def machine() -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_end": load,
    }


def build(
    *,
    config: Mapping[str, Any],
    summaries: Sequence[OpSummary],
    combined: OpSummary,
    elapsed_s: float,
    series: Sequence[Mapping[str, Any]],
    substituted: Mapping[str, int],
    setup: Mapping[str, Any],
    ceilings: Sequence[Ceiling],
    marks: Sequence[tuple[float, str]] = (),
    started_at: str = "",
) -> dict[str, Any]:
    """The whole bench.json document."""
    report: dict[str, Any] = {
        "started_at": started_at,
        "config": dict(config),
        "elapsed_s": round(elapsed_s, 3),
        "total": op_json(combined),
        "ops": {s.op: op_json(s) for s in summaries},
        "substituted": dict(substituted),
        "setup": dict(setup),
        "series": list(series),
        "marks": [{"t_s": t, "label": label} for t, label in marks],
        "machine": machine(),
    }
    if ceilings:
        report["ceilings"] = ceilings_json(ceilings)
        recover = next((s for s in summaries if s.op == "recover"), None)
        ok_rate = recover.ok / elapsed_s if recover and elapsed_s > 0 else 0.0
        report["versus_ceilings"] = versus_ceilings(ok_rate, report["ceilings"])
    return report


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n", encoding="utf-8")


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


def ceilings_text(report: Mapping[str, Any]) -> str:
    """The ceilings and the cluster's recovery rate as a fraction of each."""
    c = report.get("ceilings")
    v = report.get("versus_ceilings")
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
            f"{e['recoveries_bound_per_s']:.1f}/s); target 50%: {verdict}"
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
