"""Counting fuzz answers against what each case may get, for a report at the end of a target."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import grpc
from bad_input_wire import OK, RESOURCE_EXHAUSTED, Answer, sealed_response
from fuzz_cases import Case
from hypothesis import HealthCheck, settings

from bkv.v1 import envelope_pb2
from vault_protocol.continuation import StepKeys
from vault_protocol.envelope import open_response

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


def check_sealed_ok(tally: Tally, case: Case, answer: Answer, *, node_level: bool = False) -> None:
    """An OK answer (a Relay's, or with `node_level` a node's Open) must carry a genuine sealed
    answer under the request's response key."""
    if answer.code != OK or case.response_key is None:
        return
    try:
        response = open_response(
            StepKeys.derive(case.response_key).answer1, sealed_response(answer, node_level)
        )
    except Exception as err:  # noqa: BLE001 - reported as a violation with its type
        tally.violation(f"{case.label}: OK answer did not open: {type(err).__name__}")
        return
    if response.outcome != envelope_pb2.Outcome.OUTCOME_OK:
        tally.violation(f"{case.label}: sealed outcome {response.outcome}")
