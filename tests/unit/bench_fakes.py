"""Stand-ins for `bkv-bench`'s main in the curves and pairs tests: each records its argument
lists; `FakeBench` writes the bench.json its subclass makes, `FailingBench` fails every run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class FakeBench:
    """Records every call and writes `document(args)` as the run's bench.json under `--out`."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def document(self, args: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, argv: Sequence[str]) -> int:
        args = list(argv)
        self.calls.append(args)
        doc = self.document(args)
        out = Path(args[args.index("--out") + 1]) / "20261123T000000Z"
        out.mkdir(parents=True)
        (out / "bench.json").write_text(json.dumps(doc))
        return 0


class FailingBench:
    """A bench whose every run fails (exit status 1)."""

    def __init__(self) -> None:
        self.calls: list[Sequence[str]] = []

    def __call__(self, argv: Sequence[str]) -> int:
        self.calls.append(argv)
        return 1


def recover_op(throughput: float, latency_ms: dict[str, float]) -> dict[str, Any]:
    """bench.json's `ops` with ten good recoveries at `throughput` per second."""
    return {
        "recover": {
            "count": 10,
            "ok": 10,
            "errors": {},
            "throughput_per_s": throughput,
            "latency_ms": latency_ms,
        }
    }
