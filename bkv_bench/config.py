"""What one `bkv-bench` run does: the operation mix and the run's settings, validated at once.

>>> Mix.parse("recover=80,register=10,wrong=5,delete=5").fraction("recover")
0.8
>>> BenchConfig(mix=Mix.parse("recover=1"), concurrency=0, count=0).problems()
['concurrency must be at least 1', 'give either a count or a duration (> 0)']
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

OPS: tuple[str, ...] = ("recover", "register", "wrong", "delete")
DEFAULT_MIX = "recover=80,register=10,wrong=5,delete=5"
Mode = Literal["closed", "open"]


class BenchConfigError(ValueError):
    """A bench setting is unusable; the message lists every problem at once."""


@dataclass(frozen=True)
class Mix:
    """Relative weights of the operations (any positive numbers; only ratios matter)."""

    weights: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, text: str) -> Mix:
        """Parse `op=weight,...`; BenchConfigError listing every malformed part."""
        problems: list[str] = []
        weights: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep:
                problems.append(f"mix: {part!r} is not op=weight")
                continue
            if name not in OPS:
                problems.append(f"mix: unknown operation {name!r} (known: {', '.join(OPS)})")
                continue
            if name in weights:
                problems.append(f"mix: {name} is given twice")
                continue
            try:
                weight = float(value)
            except ValueError:
                problems.append(f"mix: weight of {name} is not a number: {value.strip()!r}")
                continue
            if not weight >= 0 or weight == float("inf"):
                problems.append(f"mix: weight of {name} must be a finite number >= 0")
                continue
            weights[name] = weight
        mix = cls(tuple((op, weights[op]) for op in OPS if op in weights))
        problems += mix.problems() if not problems else []
        if problems:
            raise BenchConfigError("; ".join(problems))
        return mix

    def problems(self) -> list[str]:
        if sum(w for _, w in self.weights) <= 0:
            return ["mix: at least one operation needs a weight above 0"]
        return []

    @property
    def total(self) -> float:
        return sum(w for _, w in self.weights)

    def fraction(self, op: str) -> float:
        """The share of `op` in the mix (0 when absent)."""
        return dict(self.weights).get(op, 0.0) / self.total

    def choose(self, rng: random.Random) -> str:
        """One operation drawn with the mix's weights."""
        names = [op for op, w in self.weights if w > 0]
        return rng.choices(names, weights=[w for op, w in self.weights if w > 0])[0]

    def text(self) -> str:
        return ",".join(f"{op}={w:g}" for op, w in self.weights)


@dataclass(frozen=True)
class BenchConfig:
    """One run.

    mix: operation weights.
    concurrency: closed loop: workers each with one operation in flight; open loop: the most
        operations in flight before new ones are dropped (and counted as `dropped`).
    count: operations to run (0: run for `duration_s`).
    duration_s: seconds to run (0: run `count` operations).
    max_seconds: hard stop of the measured phase whatever `count` says.
    accounts: accounts registered in the setup phase (split into pools by the mix).
    ksf: the client's Argon2id preset ("fast" for load tests, "default" otherwise).
    rate: open loop when > 0: operations started per second at fixed intervals.
    ceilings: also measure the etcd CAS, gRPC and crypto ceilings in this run (and the floor).
    floor: measure the floor, the work a recovery cannot do without (bkv_bench.floor), and the
        etcd CAS ceiling it takes its etcd part from.
    ceiling_seconds: how long each ceiling measurement runs.
    seed: seeds the choice of operations and accounts (not the cryptography).
    """

    mix: Mix
    concurrency: int = 8
    count: int = 0
    duration_s: float = 0.0
    max_seconds: float = 600.0
    accounts: int = 64
    ksf: str = "fast"
    rate: float = 0.0
    ceilings: bool = False
    floor: bool = False
    ceiling_seconds: float = 3.0
    seed: int = 1
    marks: tuple[tuple[float, str], ...] = field(default=())

    @property
    def mode(self) -> Mode:
        return "open" if self.rate > 0 else "closed"

    def problems(self) -> list[str]:
        out = list(self.mix.problems())
        if self.concurrency < 1:
            out.append("concurrency must be at least 1")
        if self.count < 0 or self.duration_s < 0:
            out.append("count and duration must not be negative")
        elif (self.count > 0) == (self.duration_s > 0):
            out.append(
                "give either a count or a duration (> 0)"
                if self.count == 0
                else "give a count or a duration, not both"
            )
        if self.max_seconds <= 0:
            out.append("max_seconds must be positive")
        if self.accounts < 1:
            out.append("accounts must be at least 1")
        if self.ksf not in ("fast", "default"):
            out.append("ksf must be fast or default")
        if self.rate < 0:
            out.append("rate must not be negative")
        if self.ceiling_seconds <= 0:
            out.append("ceiling_seconds must be positive")
        return out

    def validate(self) -> BenchConfig:
        problems = self.problems()
        if problems:
            raise BenchConfigError("; ".join(problems))
        return self
