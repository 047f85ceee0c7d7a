"""What the frontend sees (issue 17, "the frontend learns nothing"): over a real local cluster,
every operation and every outcome shows the frontend one pattern of relays and sizes.

The recorder sits at the frontend's `Relay` interface, in the client's connector: it records
the bytes the frontend receives to relay (the envelope) and the bytes it hands back (the sealed
answer), which are exactly what the frontend forwards to and gets from a vault node, the number
of relays per operation and the time each took. Protocol 3 (vault_protocol.continuation):
two relays per operation, step-1 envelopes of one size, step-2 envelopes of one size, and
answers of one size, for register, right, wrong, locked and unregistered recoveries, status and
delete. Timing is reported in buckets (printed; `-s` shows it), not asserted: see
docs/architecture.md for the differences that remain.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from client import InvalidPassword, Locked, NotRegistered, VaultClient
from client.config import load_config
from client.vault import GrpcConnector
from deploy.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PASSWORD = "the right passphrase for the frontend view"


@dataclass
class Relayed:
    envelope: int
    answer: int
    seconds: float


@dataclass
class Recorder:
    """Every relay the frontend saw, grouped by the operation the test was running."""

    operation: str = ""
    seen: dict[str, list[list[Relayed]]] = field(default_factory=lambda: defaultdict(list))

    def begin(self, operation: str) -> None:
        self.operation = operation
        self.seen[operation].append([])

    def record(self, relayed: Relayed) -> None:
        self.seen[self.operation][-1].append(relayed)


class _RecordingStub:
    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self._inner = inner
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if name != "Relay":
            return method

        def relay(request: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            reply = method(request, *args, **kwargs)
            self._recorder.record(
                Relayed(
                    len(request.envelope), len(reply.sealed_response), time.perf_counter() - start
                )
            )
            return reply

        return relay


class RecordingConnector(GrpcConnector):
    """The client's own connector, every Relay call recorded as the frontend receives it."""

    def __init__(self, config: Any, recorder: Recorder) -> None:
        super().__init__(config)
        self._recorder = recorder

    def stub(self, address: str) -> Any:
        return _RecordingStub(super().stub(address), self._recorder)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _client(cluster: Cluster, key_dir: Path, recorder: Recorder, **kw: Any) -> VaultClient:
    config = load_config(cluster.client_config_path)
    return VaultClient(
        config, key_dir=key_dir, ksf="fast", connector=RecordingConnector(config, recorder), **kw
    )


@pytest.fixture
def clients(
    healthy_cluster: Cluster, tmp_path: Path, recorder: Recorder
) -> Iterator[tuple[VaultClient, VaultClient]]:
    """Two accounts: one that registers, recovers and gets locked, one never registered."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    with (
        _client(healthy_cluster, dirs[0], recorder) as a,
        _client(healthy_cluster, dirs[1], recorder) as b,
    ):
        a.create_account()
        b.create_account()
        yield a, b


def _expect(kind: type[BaseException] | None, call: Callable[[], object]) -> None:
    if kind is None:
        call()
        return
    with pytest.raises(kind):
        call()


def test_every_operation_and_outcome_shows_the_frontend_one_pattern(
    clients: tuple[VaultClient, VaultClient], recorder: Recorder
) -> None:
    vault, stranger = clients
    rounds = 3
    for _ in range(rounds):
        recorder.begin("register")
        key = vault.register(PASSWORD, max_attempts=2)
        recorder.begin("recover right")
        assert vault.recover(PASSWORD) == key
        recorder.begin("recover wrong")
        _expect(InvalidPassword, lambda: vault.recover("a wrong guess"))
        recorder.begin("status")
        assert vault.status().guesses_left == 1
        recorder.begin("recover wrong")
        _expect(InvalidPassword, lambda: vault.recover("another wrong guess"))
        recorder.begin("recover locked")  # the guess limit is spent: this one locks
        _expect(Locked, lambda: vault.recover(PASSWORD))
        recorder.begin("recover locked")
        _expect(Locked, lambda: vault.recover(PASSWORD))
        recorder.begin("recover unregistered")
        _expect(NotRegistered, lambda: stranger.recover(PASSWORD))
        recorder.begin("status")
        assert stranger.status().registered is False
        recorder.begin("delete")
        assert vault.delete() is True

    counts = {op: {len(run) for run in runs} for op, runs in recorder.seen.items()}
    assert all(c == {2} for c in counts.values()), counts  # two relays, whatever happened
    relays = [run for runs in recorder.seen.values() for run in runs]
    first = {run[0].envelope for run in relays}
    second = {run[1].envelope for run in relays}
    answers = {r.answer for run in relays for r in run}
    assert len(first) == 1 and len(second) == 1, (first, second)
    assert len(answers) == 1, answers

    # Timing, in 5 ms buckets of each step's relay time, per operation (reported, not asserted).
    lines = [
        f"envelopes: step 1 {first.pop()} B, step 2 {second.pop()} B, answers {answers.pop()} B"
    ]
    for op, runs in sorted(recorder.seen.items()):
        for step in (0, 1):
            times = [run[step].seconds * 1000 for run in runs]
            buckets = sorted({int(t // 5) * 5 for t in times})
            lines.append(
                f"{op:22s} step {step + 1}: median {statistics.median(times):6.1f} ms,"
                f" buckets {buckets} ms"
            )
    print("\n" + "\n".join(lines))
