"""vault_node.witness_server and witnessing.RemoteWitnesses in one process: MAC'd answers,
majorities, the journal that survives a restart, and catch-up from a majority."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bkv.store.v1 import sealed_pb2
from bkv.v1 import witness_pb2
from vault_node.heads import ZERO_HASH, Head
from vault_node.key_meta import ABSENT
from vault_node.soft_token import SoftToken
from vault_node.witness_core import Ref, Verdict
from vault_node.witness_server import WitnessServer, read_checkpoint, read_journal
from vault_node.witnessing import RemoteWitnesses

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

NAMES = ("w1", "w2", "w3")


def h(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def head(version: int, group: int = 3) -> Head:
    prev = ZERO_HASH if version <= 1 else h(version - 1)
    return Head(group, version, prev, h(version) if version else ZERO_HASH, ABSENT)


class Fleet:
    def __init__(self, root: Path, *, ready: bool = True) -> None:
        self.root = root
        self.made: list[WitnessServer] = []
        self.token = SoftToken()
        self.tokens = {name: self.token.same_fleet() for name in NAMES}
        self.servers = {name: self.make(name) for name in NAMES}
        for server in self.servers.values():
            server.state.ready = ready

    def make(self, name: str) -> WitnessServer:
        server = WitnessServer(
            name, 16, len(NAMES), self.tokens[name], self.root / f"{name}.witness.jsonl",
            checkpoint_interval_s=60,
        )  # fmt: skip
        self.made.append(server)
        return server

    def close(self) -> None:
        for server in self.made:
            server.close()

    def client(self, token: SoftToken | None = None) -> RemoteWitnesses:
        mac_token = token or self.token
        return RemoteWitnesses(
            list(self.servers.values()), len(NAMES),
            lambda data: mac_token.hmac_sha256("witness", data), os.urandom,
        )  # fmt: skip


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(tmp_path)
    try:
        yield made
    finally:
        made.close()


def capture(client: RemoteWitnesses, version: int) -> bool:
    async def go() -> bool:
        return (await client.capture(head(version - 1), head(version))).captured

    return asyncio.run(go())


def test_a_majority_captures_and_a_rollback_is_shown_with_evidence(
    fleet: Fleet, tmp_path: Path
) -> None:
    client = fleet.client()
    for v in range(1, 4):
        assert capture(client, v)
    assert {s.state.latest(3).version for s in fleet.servers.values()} == {3}

    async def rolled_back() -> str:
        return (await client.capture(head(1), Head(3, 2, h(1), h(99), ABSENT))).rollback

    evidence = asyncio.run(rolled_back())
    assert "holds version 3" in evidence


def test_answers_with_a_bad_mac_count_for_nothing(fleet: Fleet, tmp_path: Path) -> None:
    other_fleet = SoftToken()  # a token of another fleet: its witness key is not ours
    assert not capture(fleet.client(token=other_fleet), 1)
    assert capture(fleet.client(), 1)


def test_a_witness_majority_down_confirms_nothing(fleet: Fleet, tmp_path: Path) -> None:
    for name in ("w2", "w3"):
        fleet.servers[name].state.ready = False  # answers NOT_READY
    assert not capture(fleet.client(), 1)
    fleet.servers["w2"].state.ready = True
    assert capture(fleet.client(), 1)


def test_the_journal_and_a_catch_up_survive_a_restart(fleet: Fleet, tmp_path: Path) -> None:
    client = fleet.client()
    for v in range(1, 6):
        assert capture(client, v)
    assert read_journal(tmp_path / "w1.witness.jsonl")[-1].version == 5
    # w1 restarts (killed: no last checkpoint): its journal gives every head back.
    restarted = fleet.make("w1")
    assert restarted.state.latest(3).version == 5 and not restarted.state.ready
    # w2 restarts with its state lost: it catches up from a majority (w1 and w3 answer).
    (tmp_path / "w2.witness.jsonl").unlink()
    fleet.tokens["w2"].data.clear()
    fleet.servers["w1"] = restarted
    fleet.servers["w2"] = lost = fleet.make("w2")
    assert lost.state.latest(3).version == 0

    async def catch_up() -> bool:
        return await lost.catch_up(fleet.client())

    assert asyncio.run(catch_up()) and lost.state.ready
    assert lost.state.latest(3) == fleet.servers["w3"].state.latest(3)


def test_a_checkpoint_goes_to_the_token_and_a_restart_reads_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    client = fleet.client()
    for v in range(1, 3):
        assert capture(client, v)
    w1 = fleet.servers["w1"]
    assert w1.checkpoint() and not w1.checkpoint()  # written once, then nothing changed
    (tmp_path / "w1.witness.jsonl").unlink()
    assert fleet.make("w1").state.latest(3).version == 2


def test_a_malformed_capture_is_refused_and_heads_are_macd(fleet: Fleet, tmp_path: Path) -> None:
    w1 = fleet.servers["w1"]

    async def go() -> tuple[witness_pb2.CaptureReply, witness_pb2.HeadsReply]:
        bad = witness_pb2.CaptureRequest(
            nonce=os.urandom(16), base=witness_pb2.HeadRef(group=99, version=0, hash=b"x"),
            base_prev=b"", head=witness_pb2.HeadRef(group=99, version=1, hash=b"y"),
        )  # fmt: skip
        return await w1.capture(bad), await w1.heads(witness_pb2.HeadsRequest(nonce=b"n" * 16))

    reply, heads = asyncio.run(go())
    assert reply.verdict == Verdict.ROLLBACK and len(reply.mac) == 32
    assert heads.witness == "w1" and heads.ready and len(heads.mac) == 32


def test_a_running_witness_cut_off_catches_up_when_it_answers_behind(fleet: Fleet) -> None:
    """w3 missed 30 captures (cut off, not restarted): more than an ancestor list bridges. Its
    BEHIND answer starts a catch-up from the others; afterwards it captures again."""
    for v in range(1, 31):
        for name in ("w1", "w2"):
            base = head(v - 1)
            fleet.servers[name].state.capture(
                witness_pb2_ref(base), base.prev, witness_pb2_ref(head(v))
            )
    w3 = fleet.servers["w3"]

    async def go() -> None:
        client = fleet.client()
        w3.start(fleet.client())
        try:
            request = witness_pb2.CaptureRequest(
                nonce=os.urandom(16), base=head(30).ref, base_prev=h(29), head=head(31).ref
            )
            assert Verdict((await w3.capture(request)).verdict) is Verdict.BEHIND
            for _ in range(200):  # the background round: a condition, bounded
                if w3.state.latest(3).version == 30:
                    break
                await asyncio.sleep(0.01)
            assert w3.state.latest(3) == fleet.servers["w1"].state.latest(3)
            assert (await client.capture(head(30), head(31))).captured
            request = witness_pb2.CaptureRequest(
                nonce=os.urandom(16), base=head(31).ref, base_prev=h(30), head=head(32).ref
            )
            assert Verdict((await w3.capture(request)).verdict) is Verdict.CAPTURED
        finally:
            await w3.stop()

    asyncio.run(go())


def witness_pb2_ref(value: Head) -> Ref:
    return Ref.of(value.ref)


def test_the_nodes_own_witness_is_asked_in_process_without_a_mac(fleet: Fleet) -> None:
    """A node that is a witness judges its own writes in process: no MAC, no token call; its
    peers' answers are still MAC-checked (another fleet's MACs count for nothing)."""
    other_fleet = SoftToken()
    endpoints = list(fleet.servers.values())

    def client(token: SoftToken) -> RemoteWitnesses:
        return RemoteWitnesses(
            endpoints, len(NAMES), lambda data: token.hmac_sha256("witness", data), os.urandom,
            local="w1",
        )  # fmt: skip

    calls = {"n": 0}
    mac = fleet.servers["w1"]._mac

    def counted(data: bytes) -> bytes:
        calls["n"] += 1
        return mac(data)

    fleet.servers["w1"]._mac = counted  # type: ignore[method-assign]
    assert capture(client(fleet.token), 1)
    assert calls["n"] == 0 and fleet.servers["w1"].state.latest(3).version == 1
    # Only w1's answer counts when the MAC key is another fleet's: one of three, no majority.
    assert not capture(client(other_fleet), 2)


def test_a_witness_reset_by_the_operator_adopts_the_stores_heads(fleet: Fleet) -> None:
    """`witness-reset` (the store accepted as it is): at its next start the witness forgets its
    chain, journal included, takes every group's head from the store, checkpoints them, and
    only then catches up and serves."""
    client = fleet.client()
    for v in range(1, 40):
        assert capture(client, v)
    fleet.tokens["w1"].replace_data(
        "witness_heads", sealed_pb2.WitnessCheckpoint(adopt_store=True).SerializeToString()
    )
    restarted = fleet.make("w1")
    assert restarted.adopt_store and not restarted.state.ready
    assert restarted.state.latest(3).version == 0  # the journal is forgotten too
    fleet.servers["w1"] = restarted
    store = [Ref(3, 7, h(7)), Ref(5, 2, h(2))]  # the accepted store's heads

    async def store_heads() -> list[Ref]:
        return store

    async def go() -> None:
        restarted.start(fleet.client(), store_heads=store_heads)
        try:
            for _ in range(200):
                if restarted.state.ready:
                    break
                await asyncio.sleep(0.01)
        finally:
            await restarted.stop()

    asyncio.run(go())
    assert restarted.state.ready and not restarted.adopt_store
    # Its peers still hold version 39 of group 3: catch-up moves it forward, never back.
    assert restarted.state.latest(3).version == 39 and restarted.state.latest(5) == store[1]
    heads, _, adopt = read_checkpoint(fleet.tokens["w1"])
    assert not adopt and Ref(5, 2, h(2)) in heads


class _Slow:
    """A witness endpoint whose answers wait for `release` (a peer far away), or a forged one."""

    def __init__(self, inner: WitnessServer, forge: int = 0) -> None:
        self.name = inner.name
        self.inner = inner
        self.forge = forge
        self.release = asyncio.Event()
        self.answered = asyncio.Event()

    async def capture(self, request: witness_pb2.CaptureRequest) -> witness_pb2.CaptureReply:
        await self.release.wait()
        reply = await self.inner.capture(request)
        if self.forge:
            reply.verdict = self.forge  # the MAC no longer covers what the answer says
        self.answered.set()
        return reply

    async def heads(self, request: witness_pb2.HeadsRequest) -> witness_pb2.HeadsReply:
        return await self.inner.heads(request)


def _counting_client(fleet: Fleet, slow: _Slow) -> tuple[RemoteWitnesses, list[bytes]]:
    macs: list[bytes] = []

    def mac(data: bytes) -> bytes:
        macs.append(data)
        return fleet.token.hmac_sha256("witness", data)

    endpoints = [fleet.servers["w1"], fleet.servers["w2"], slow]
    return RemoteWitnesses(endpoints, len(NAMES), mac, os.urandom), macs


def test_an_answer_after_the_majority_is_checked_only_when_it_is_not_captured(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    async def go() -> None:
        slow = _Slow(fleet.servers["w3"])
        client, macs = _counting_client(fleet, slow)
        assert (await client.capture(head(0), head(1))).captured
        assert len(macs) == 2  # w1 and w2 made the majority
        slow.release.set()
        await slow.answered.wait()
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(macs) == 2  # w3's late CAPTURED: nobody reads it, no token operation
        assert fleet.servers["w3"].state.latest(3).version == 1  # w3 did capture it

        # A late non-CAPTURED answer is verified before it is logged as evidence: a forged
        # ROLLBACK (its MAC covers CAPTURED) raises nothing.
        forged = _Slow(fleet.servers["w3"], forge=int(Verdict.ROLLBACK))
        client, macs = _counting_client(fleet, forged)
        assert (await client.capture(head(1), head(2))).captured
        forged.release.set()
        await forged.answered.wait()
        for _ in range(3):
            await asyncio.sleep(0)
        assert len(macs) == 3
        assert "late with a bad MAC" in caplog.text and "after the capture was decided" not in (
            caplog.text
        )

    asyncio.run(go())


def test_a_checkpoint_is_due_after_enough_captures(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vault_node.witness_server as witness_server

    monkeypatch.setattr(witness_server, "CHECKPOINT_CAPTURES", 3)
    client = fleet.client()
    w1 = fleet.servers["w1"]
    for v in (1, 2):
        assert capture(client, v)
    assert not w1._due.is_set()
    assert capture(client, 3)
    assert w1._due.is_set()  # the checkpoint loop wakes before its interval
    assert w1.checkpoint() and not w1._due.is_set()
    heads, _, _ = read_checkpoint(fleet.tokens["w1"])
    assert [r.version for r in heads] == [3]
