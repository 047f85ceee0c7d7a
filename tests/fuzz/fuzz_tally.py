"""Counting fuzz answers against what each case may get, for a report at the end of a target."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import grpc
from bad_input_wire import RESOURCE_EXHAUSTED, Answer
from hypothesis import HealthCheck, settings

CI = bool(os.environ.get("CI"))


def fuzz_settings(max_examples: int) -> settings:
    """Bounded, no deadline (shared cores), derandomized under CI, no example database."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=CI,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


@dataclass
class Tally:
    """Answers by status, and every answer outside what its case allowed (first few kept)."""

    codes: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

    @property
    def sent(self) -> int:
        return sum(self.codes.values())

    @property
    def reached(self) -> int:
        """Answers that were not the rate limiter's."""
        return self.sent - self.codes[RESOURCE_EXHAUSTED.name]

    def record(
        self,
        label: str,
        answer: Answer,
        allowed: frozenset[grpc.StatusCode],
        detail: str = "",
    ) -> None:
        self.codes[answer.code.name] += 1
        self.labels[label.split("/")[0]] += 1
        if answer.code in allowed:
            return
        self.violation_count += 1
        if len(self.violations) < 10:
            expected = sorted(c.name for c in allowed)
            self.violations.append(f"{label}: {answer!r}, expected {expected} {detail}")

    def violation(self, message: str) -> None:
        self.violation_count += 1
        if len(self.violations) < 10:
            self.violations.append(message)

    def report(self) -> str:
        return (
            f"{self.sent} answers {dict(self.codes)}; recipes {dict(self.labels)}; "
            f"{self.violation_count} violations:\n  " + "\n  ".join(self.violations)
        )
