"""VaultClient and AsyncVaultClient make the same decisions: one fake transport, one script.

Each scenario runs twice, once through the blocking client and once through the awaiting one,
against fresh copies of the same fake frontends that record every probe, call and pause; the two
records (and the outcomes) must be equal. Failover, readiness and retries are decided in
`client.core`, so a difference here means a client grew a decision of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from inproc_cluster import InProcessVault
from test_client_errors import FakeRpcError
from test_client_protocol import PASSWORD
from test_client_vault import FE, AsyncFakeFrontends, FakeFrontends, Sleeps

from client import AsyncVaultClient, VaultClient
from client.config import ClientConfig, load_config
from client.retry import RetryPolicy
from vault_protocol.ksf import IdentityKsf

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class RecordingFrontends(FakeFrontends):
    """FakeFrontends that log probes, calls and their outcomes, and can script failures."""

    def __init__(self, vault: InProcessVault) -> None:
        super().__init__(vault)
        self.log: list[tuple[Any, ...]] = []
        self.script: list[str] = []  # per Relay: "lost" (counted, answer lost), "unauth", "ok"
        self.not_serving: set[str] = set()

    def ready(self, address: str, timeout: float) -> bool:
        ready = super().ready(address, timeout) and address not in self.not_serving
        self.log.append(("probe", address, ready))
        return ready

    def handle(self, address: str, method: str, request: Any, metadata: Any) -> Any:
        action = self.script.pop(0) if method == "Relay" and self.script else "ok"
        try:
            if action == "unauth":
                self.tokens.clear()
                raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)
            if action == "not-applied":
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, (("bkv-not-applied", "1"),))
            reply = super().handle(address, method, request, metadata)
            if action == "lost":
                raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, (), "connection reset")
        except FakeRpcError as err:
            self.log.append(("call", address, method, err.code().name))
            raise
        self.log.append(("call", address, method, "OK"))
        return reply


@dataclass
class Scenario:
    """Setup before the client's first call, then the operations under test."""

    name: str
    arrange: Callable[[RecordingFrontends], None]
    act: Callable[[RecordingFrontends], None] = lambda fe: None  # after setup, before the ops
    ops: tuple[str, ...] = ("status",)
    retry: RetryPolicy | None = None


def _unavailable_everywhere(fe: RecordingFrontends) -> None:
    fe.unavailable = {FE[0]: 100, FE[1]: 100}


SCENARIOS = [
    Scenario("plain", lambda fe: None, ops=("status", "recover", "wrong", "status")),
    Scenario("failover", lambda fe: fe.unavailable.update({FE[1]: 100}), ops=("status", "status")),
    Scenario("not serving is skipped", lambda fe: fe.not_serving.add(FE[1])),
    Scenario("cannot connect is skipped", lambda fe: fe.down.add(FE[1])),
    Scenario("all down", lambda fe: None, act=lambda fe: fe.down.update(FE), ops=("status",)),
    Scenario(
        "a failed frontend is probed again",
        lambda fe: None,
        act=lambda fe: fe.unavailable.update({FE[1]: 1}),
        ops=("status", "status"),
    ),
    Scenario(
        "guess step twice at most", lambda fe: None, act=_unavailable_everywhere, ops=("recover",)
    ),
    Scenario(
        "other steps backoff",
        lambda fe: None,
        act=_unavailable_everywhere,
        retry=RetryPolicy(max_attempts=4, base_delay_s=0.05),
    ),
    Scenario(
        "not applied costs no guess retry",
        lambda fe: None,
        act=lambda fe: fe.script.extend(["not-applied", "not-applied", "lost", "lost"]),
        ops=("recover",),
    ),
    Scenario(
        "re-login gives no new retry",
        lambda fe: None,
        act=lambda fe: fe.script.extend(["lost", "unauth", "lost", "lost"]),
        ops=("recover", "status"),
    ),
    Scenario(
        "throttled finish is waited out",
        lambda fe: None,
        act=lambda fe: (setattr(fe, "relays", 0), fe.limited_relays.update({2, 3})),
        ops=("recover", "status"),
    ),
    Scenario(
        "throttled start goes back",
        lambda fe: None,
        act=lambda fe: (setattr(fe, "relays", 0), fe.limited_relays.add(1)),
        ops=("recover",),
    ),
]


@pytest.fixture
def config_for(tmp_path: Path) -> Callable[[InProcessVault, str], ClientConfig]:
    def make(vault: InProcessVault, name: str) -> ClientConfig:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "fleet.pub").write_bytes(vault.fleet.to_pem())
        path = folder / "client.toml"
        path.write_text(
            f'[cluster]\nfrontends = ["{FE[0]}", "{FE[1]}"]\ninsecure = true\n'
            f'fleet_public_key = "fleet.pub"\nfleet_id = "{vault.fleet.fleet_id.hex()}"\n'
            '[client]\nksf = "fast"\n'
        )
        return load_config(path)

    return make


def _outcome(err: BaseException | None, value: Any) -> tuple[str, Any]:
    if err is not None:
        return ("raised", type(err).__name__, getattr(err, "guesses_left", None))
    if hasattr(value, "guesses_left"):
        return ("status", (value.registered, value.guesses_left, value.locked))
    return ("returned", type(value).__name__)


def _kwargs(scenario: Scenario, t: Sleeps) -> dict[str, Any]:
    return {
        "account_id": "twin",
        "ksf": IdentityKsf(),
        "clock": t.clock,
        "uniform": lambda: 0.5,
        "retry": scenario.retry,
    }


def run_sync(scenario: Scenario, config: ClientConfig, fe: RecordingFrontends) -> list[Any]:
    t = Sleeps()
    record: list[Any] = []
    with VaultClient(config, connector=fe, sleep=t.sleep, **_kwargs(scenario, t)) as client:
        client.create_account()
        client.register(PASSWORD, max_attempts=5)
        fe.log.clear()
        scenario.act(fe)
        for op in scenario.ops:
            err, value = None, None
            try:
                value = _op(client, op)
            except Exception as caught:  # noqa: BLE001 - the outcome is what we compare
                err = caught
            record.append((op, _outcome(err, value), list(fe.log), list(t.slept)))
            fe.log.clear()
    return record


def _op(client: VaultClient, op: str) -> Any:
    if op == "status":
        return client.status()
    return client.recover(PASSWORD if op == "recover" else PASSWORD + "x")


async def _aop(client: AsyncVaultClient, op: str) -> Any:
    if op == "status":
        return await client.status()
    return await client.recover(PASSWORD if op == "recover" else PASSWORD + "x")


def run_async(scenario: Scenario, config: ClientConfig, fe: RecordingFrontends) -> list[Any]:
    t = Sleeps()
    record: list[Any] = []

    async def go() -> None:
        async with AsyncVaultClient(
            config, connector=AsyncFakeFrontends(fe), sleep=t.asleep, **_kwargs(scenario, t)
        ) as client:
            await client.create_account()
            await client.register(PASSWORD, max_attempts=5)
            fe.log.clear()
            scenario.act(fe)
            for op in scenario.ops:
                err, value = None, None
                try:
                    value = await _aop(client, op)
                except Exception as caught:  # noqa: BLE001 - the outcome is what we compare
                    err = caught
                record.append((op, _outcome(err, value), list(fe.log), list(t.slept)))
                fe.log.clear()

    asyncio.run(go())
    return record


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_both_clients_decide_alike(
    scenario: Scenario, config_for: Callable[[InProcessVault, str], ClientConfig]
) -> None:
    records = []
    for name, runner in (("sync", run_sync), ("async", run_async)):
        vault = InProcessVault()
        fe = RecordingFrontends(vault)
        scenario.arrange(fe)
        records.append(runner(scenario, config_for(vault, name), fe))
    blocking, awaiting = records
    assert blocking == awaiting
    assert any(entry[2] for entry in blocking)  # the scenario did exercise the transport


def test_the_scenarios_show_the_decisions(
    config_for: Callable[[InProcessVault, str], ClientConfig],
) -> None:
    """A few of the shared records spelled out, so that "alike" is not "alike and wrong"."""
    by_name = {s.name: s for s in SCENARIOS}

    def record(name: str) -> list[Any]:
        vault = InProcessVault()
        fe = RecordingFrontends(vault)
        by_name[name].arrange(fe)
        return run_sync(by_name[name], config_for(vault, name.replace(" ", "-")), fe)

    # A frontend is probed before its first call, then trusted until it fails.
    [(_, outcome, log, _)] = record("not serving is skipped")
    assert outcome[0] == "status"
    assert ("probe", FE[1], False) not in log  # probed during setup, skipped since
    assert {entry[1] for entry in log if entry[0] == "call"} == {FE[0]}
    # After UNAVAILABLE the next try goes to the next frontend, the failed one is probed again.
    first, second = record("a failed frontend is probed again")
    calls = [e[1] for e in first[2] if e[0] == "call"]
    # (protocol 3: a status is two relays, both to the frontend that answered)
    assert calls[:2] == [FE[1], FE[0]] and set(calls[1:]) == {FE[0]}
    assert second[2][0] == ("call", FE[0], "Relay", "OK")
    # The guess-counting step reaches a frontend at most twice; not-applied answers don't count.
    [(_, outcome, log, _)] = record("guess step twice at most")
    assert outcome[:2] == ("raised", "Unavailable")
    assert [e[2] for e in log if e[0] == "call"] == ["Relay", "Relay"]
    [(_, outcome, log, _)] = record("not applied costs no guess retry")
    assert [e[3] for e in log if e[0] == "call"] == ["UNAVAILABLE"] * 4
    # Backoff with jitter (u = 0.5) between the tries of a step that counts no guess.
    [(_, _, _, slept)] = record("other steps backoff")
    assert slept == [0.025, 0.05, 0.1]


@pytest.mark.parametrize(("ksf", "hops"), [("fast", 0), ("costly", 2)])
def test_the_ksf_step_runs_on_the_loop_only_when_the_ksf_is_cheap(
    config_for: Callable[[InProcessVault, str], ClientConfig],
    monkeypatch: pytest.MonkeyPatch,
    ksf: str,
    hops: int,
) -> None:
    """A cheap KSF (the fast load-test preset) runs on the event loop: a worker-thread hop
    costs more than it; anything costlier keeps its step off the loop (register and recover:
    two hops)."""
    import client.aio as aio
    from vault_protocol.ksf import Argon2idKsf

    threads: list[Any] = []
    to_thread = asyncio.to_thread

    async def counted(fn: Any, *args: Any) -> Any:
        threads.append(fn)
        return await to_thread(fn, *args)

    monkeypatch.setattr(aio.asyncio, "to_thread", counted)
    chosen = Argon2idKsf(1, 1, 256) if ksf == "fast" else Argon2idKsf(1, 1, 4096)
    vault = InProcessVault()
    fe = RecordingFrontends(vault)

    async def go() -> None:
        async with AsyncVaultClient(
            config_for(vault, ksf), connector=AsyncFakeFrontends(fe), account_id="k", ksf=chosen
        ) as client:
            await client.create_account()
            key = await client.register(PASSWORD)
            assert await client.recover(PASSWORD) == key

    asyncio.run(go())
    assert len(threads) == hops
