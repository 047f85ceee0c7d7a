"""A run's `Verdict`: every invariant's result and the run's figures, as `verdict.json` and a table.

    {"invariants": {<name>: {"checked": int, "unchecked": int, "violations": int,
                             "details": [{"explanation": str, "evidence": str}, ...]}, ...},
     "operations": {<op>: {<outcome>: int}},
     "faults": [{"kind", "target", "start", "end", "recovered_at", "time_to_recover_s"}, ...],
     "time_to_recover_s": {"p50": float|null, "p99": float|null},
     "availability": float|null}

`availability` is the fraction of definite outcomes among the operations invoked outside every
quorum-loss window (the majority side's view); `time_to_recover_s` is over the faults that
ended, from `end` to the first definite success that returned after it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from bkv_chaos import checker
from bkv_chaos.checker import InvariantResult, Secrets
from bkv_chaos.history import (
    AUDIT_GLOB,
    FAULTS_FILE,
    HISTORY_FILE,
    LOSE_QUORUM,
    RUN_FILE,
    Fault,
    HistoryOp,
    read_faults,
    read_history,
    read_run_info,
)
from bkv_chaos.insider import INSIDER_FILE, read_results
from vault_common.audit_line import read_audits

INVARIANTS = (
    "guess_limit",
    "permanent_lockout",
    "no_lost_registration",
    "fail_closed",
    "confidentiality",
    "isolation",
    "bad_input",
    "storage_replay",
)


@dataclass(frozen=True)
class FaultReport:
    kind: str
    target: str
    start: float
    end: float | None
    recovered_at: float | None
    time_to_recover_s: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "start": self.start,
            "end": self.end,
            "recovered_at": self.recovered_at,
            "time_to_recover_s": self.time_to_recover_s,
        }


def operation_counts(history: Sequence[HistoryOp]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for op in history:
        per_op = counts.setdefault(op.op, {})
        per_op[op.outcome] = per_op.get(op.outcome, 0) + 1
    return {op: dict(sorted(outcomes.items())) for op, outcomes in sorted(counts.items())}


def fault_reports(history: Sequence[HistoryOp], faults: Sequence[Fault]) -> tuple[FaultReport, ...]:
    reports = []
    for fault in faults:
        success = None if fault.end is None else checker.first_success_after(history, fault.end)
        recovered_at = None if success is None else success.complete
        ttr = None if recovered_at is None or fault.end is None else recovered_at - fault.end
        reports.append(
            FaultReport(fault.kind, fault.target, fault.start, fault.end, recovered_at, ttr)
        )
    return tuple(reports)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def availability(history: Sequence[HistoryOp], faults: Sequence[Fault]) -> float | None:
    windows = [
        (f.start, math.inf if f.end is None else f.end) for f in faults if f.kind == LOSE_QUORUM
    ]
    outside = [
        op
        for op in history
        if op.op != "bad_input" and not any(lo <= op.invoke <= hi for lo, hi in windows)
    ]
    if not outside:
        return None
    return sum(op.definite for op in outside) / len(outside)


@dataclass(frozen=True)
class Verdict:
    """A run's verdict; `to_json()` is verdict.json (the keys in the module docstring)."""

    invariants: tuple[InvariantResult, ...]
    operations: Mapping[str, Mapping[str, int]]
    faults: tuple[FaultReport, ...]
    time_to_recover_p50_s: float | None
    time_to_recover_p99_s: float | None
    availability: float | None

    @property
    def passed(self) -> bool:
        """Every invariant present and none violated."""
        names = {r.name for r in self.invariants}
        return all(name in names for name in INVARIANTS) and all(r.ok for r in self.invariants)

    def to_json(self) -> dict[str, Any]:
        return {
            "invariants": {
                r.name: {
                    "checked": r.checked,
                    "unchecked": r.unchecked,
                    "violations": len(r.violations),
                    "details": [
                        {"explanation": v.explanation, "evidence": v.evidence} for v in r.violations
                    ],
                }
                for r in self.invariants
            },
            "operations": {op: dict(outcomes) for op, outcomes in self.operations.items()},
            "faults": [r.to_json() for r in self.faults],
            "time_to_recover_s": {
                "p50": self.time_to_recover_p50_s,
                "p99": self.time_to_recover_p99_s,
            },
            "availability": self.availability,
        }


def build_verdict(
    results: Sequence[InvariantResult], history: Sequence[HistoryOp], faults: Sequence[Fault]
) -> Verdict:
    reports = fault_reports(history, faults)
    ttrs = [r.time_to_recover_s for r in reports if r.time_to_recover_s is not None]
    return Verdict(
        invariants=tuple(results),
        operations=operation_counts(history),
        faults=reports,
        time_to_recover_p50_s=percentile(ttrs, 50),
        time_to_recover_p99_s=percentile(ttrs, 99),
        availability=availability(history, faults),
    )


def exit_code(verdict: Verdict) -> int:
    """0 only when every invariant is present and has no violation; 1 otherwise."""
    return 0 if verdict.passed else 1


def format_table(verdict: Verdict) -> str:
    rows = [f"{'invariant':<22} {'checked':>8} {'unchecked':>9} {'violations':>10}  result"]
    for r in verdict.invariants:
        result = "PASS" if r.ok else "FAIL"
        rows.append(
            f"{r.name:<22} {r.checked:>8} {r.unchecked:>9} {len(r.violations):>10}  {result}"
        )
        rows.extend(f"    - {v.explanation}: {v.evidence}" for v in r.violations[:5])
        if len(r.violations) > 5:
            rows.append(f"    ... and {len(r.violations) - 5} more")
    total = sum(sum(outcomes.values()) for outcomes in verdict.operations.values())
    rows.append(f"operations: {total}, faults: {len(verdict.faults)}")
    rows.append(
        f"time to recover (s): p50 {_num(verdict.time_to_recover_p50_s)}, "
        f"p99 {_num(verdict.time_to_recover_p99_s)}"
    )
    rows.append(f"availability (majority side): {_num(verdict.availability)}")
    return "\n".join(rows)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_verdict(verdict: Verdict, out: TextIO = sys.stdout) -> None:
    print(format_table(verdict), file=out)


def write_verdict(path: Path, verdict: Verdict) -> None:
    path.write_text(
        json.dumps(verdict.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8"
    )


def check_run(
    run_dir: Path,
    secrets: Secrets,
    etcd_values: list[bytes],
    log_files: list[Path],
    *,
    grace_s: float = 0.5,
    indefinite_horizon_s: float = math.inf,
    default_max_attempts: int | None = None,
) -> Verdict:
    """Read a run directory (history.jsonl, faults.jsonl, run.json, *.audit.jsonl) and judge it.

    `faults.jsonl` may be absent (no faults); the others must exist. Raises `RecordFormatError`
    for a malformed line.
    """
    history = read_history(run_dir / HISTORY_FILE)
    faults_path = run_dir / FAULTS_FILE
    faults = read_faults(faults_path) if faults_path.exists() else ()
    info = read_run_info(run_dir / RUN_FILE)
    audit = read_audits(run_dir.glob(AUDIT_GLOB))
    start = info.start_unix
    rollbacks, unreadable = checker.rollback_windows(faults)
    results = (
        checker.guess_limit(audit, default_max_attempts, rollbacks, start),
        checker.permanent_lockout(audit, history, rollbacks, start),
        checker.no_lost_registration(history, indefinite_horizon_s, rollbacks),
        checker.fail_closed(audit, history, faults, start, grace_s),
        checker.confidentiality(secrets, log_files, etcd_values),
        checker.isolation(history),
        checker.bad_input(history, info.processes_alive, rollbacks),
        checker.storage_replay(
            audit, read_results(run_dir / INSIDER_FILE), rollbacks, start, unreadable
        ),
    )
    return build_verdict(results, history, faults)
