"""vault_node.store and membership against a real single-member etcd 3.4 (started here)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from deploy.cluster import free_ports
from vault_node.membership import MemberInfo, Membership
from vault_node.store import EtcdStore, StoreUnavailable, grpc_target, record_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def free_port() -> int:
    return free_ports("127.0.0.1", 1)[0]  # below the ephemeral range (deploy.cluster)


class EtcdProcess:
    """One etcd member on loopback free ports, in its own temp dir; restartable on its data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://{self.endpoint}"
        argv = [
            "etcd", "--name", "n1", "--data-dir", str(self.root / "data"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"n1={peer}", "--initial-cluster-state", "new",
            "--unsafe-no-fsync", "--logger", "zap",
            "--log-outputs", str(self.root / "etcd.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root
        )
        wait_until(self._healthy, 20.0, "etcd did not become healthy")

    def _healthy(self) -> bool:
        async def ping() -> bool:
            store = EtcdStore([self.endpoint], call_timeout_s=0.5)
            try:
                await store.ping()
                return True
            except StoreUnavailable:
                return False
            finally:
                await store.close()

        assert self.proc is not None and self.proc.poll() is None, "etcd exited"
        return asyncio.run(ping())

    def kill(self) -> None:
        """SIGKILL and wait for the PID to be gone (a quick restart on the dir needs that)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


async def await_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.05)


@pytest.fixture
def etcd_member() -> Iterator[EtcdProcess]:
    root = Path(tempfile.mkdtemp(prefix="bkv-node-etcd-"))
    member = EtcdProcess(root)
    try:
        member.start()
        yield member
    finally:
        member.kill()
        shutil.rmtree(root, ignore_errors=True)


def with_store(member: EtcdProcess, body: Callable[[EtcdStore], Awaitable[None]]) -> None:
    async def go() -> None:
        store = EtcdStore([member.endpoint], call_timeout_s=1.0)
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(go())


def test_grpc_target_spans_every_member() -> None:
    assert grpc_target(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]) == (
        "ipv4:127.0.0.1:1,127.0.0.1:2,127.0.0.1",
        3,
    )
    assert record_key(b"\x01\xff") == b"/bkv/v1/records/01ff"


def test_compare_and_swap_on_mod_revision(etcd_member: EtcdProcess) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        assert await store.get(rid) is None
        assert await store.put(rid, b"v1", 0)
        assert not await store.put(rid, b"again", 0)  # create only if absent
        value, rev1 = await store.get(rid) or (b"", 0)
        assert value == b"v1" and rev1 > 0
        assert await store.put(rid, b"v2", rev1)
        assert not await store.put(rid, b"v3", rev1)  # stale revision: conflict
        value, rev2 = await store.get(rid) or (b"", 0)
        assert value == b"v2" and rev2 > rev1
        assert not await store.delete(rid, rev1)
        assert not await store.delete(os.urandom(32), 0)
        assert await store.delete(rid, rev2)
        assert await store.get(rid) is None

    with_store(etcd_member, body)


def test_swap_returns_the_current_entry_on_a_conflict(etcd_member: EtcdProcess) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        assert await store.swap(rid, b"v1", 5) == (0, None)  # absent: conflict, nothing there
        rev1, current = await store.swap(rid, b"v1", 0)
        assert rev1 > 0 and current is None
        assert await store.get(rid) == (b"v1", rev1)  # a put's commit revision is its mod_revision
        assert await store.swap(rid, b"again", 0) == (0, (b"v1", rev1))
        rev2, _ = await store.swap(rid, b"v2", rev1)
        assert rev2 > rev1
        assert await store.swap(rid, b"v3", rev1) == (0, (b"v2", rev2))  # stale compare
        assert await store.delete(rid, rev2)

    with_store(etcd_member, body)


def test_concurrent_increments_lose_nothing(etcd_member: EtcdProcess) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        assert await store.put(rid, b"0", 0)
        conflicts = 0

        async def increment() -> None:
            nonlocal conflicts
            for _ in range(200):  # bounded: a broken CAS fails here, not at the timeout
                value, rev = await store.get(rid) or (b"", 0)
                if await store.put(rid, str(int(value) + 1).encode(), rev):
                    return
                conflicts += 1
            pytest.fail("an increment's CAS never succeeded in 200 tries")

        await asyncio.gather(*(increment() for _ in range(20)))
        value, _ = await store.get(rid) or (b"", 0)
        assert value == b"20"
        assert conflicts > 0

    with_store(etcd_member, body)


def test_store_unavailable_when_etcd_is_down(etcd_member: EtcdProcess) -> None:
    async def body(store: EtcdStore) -> None:
        rid = os.urandom(32)
        assert await store.put(rid, b"v", 0)
        etcd_member.kill()
        for call in (
            lambda: store.get(rid),
            lambda: store.put(rid, b"w", 1),
            lambda: store.delete(rid, 1),
            lambda: store.grant_lease(5),
        ):
            with pytest.raises(StoreUnavailable):
                await call()
        await asyncio.to_thread(etcd_member.start)
        assert (await store.get(rid) or (b"", 0))[0] == b"v"

    with_store(etcd_member, body)


def test_lease_keep_alive_and_revoke(etcd_member: EtcdProcess) -> None:
    async def body(store: EtcdStore) -> None:
        lease = await store.grant_lease(5)
        await store.put_leased("/bkv/v1/test/lease", b"x", lease)
        assert 0 < await store.keep_alive(lease) <= 5
        await store.revoke_lease(lease)
        assert await store.keep_alive(lease) <= 0

    with_store(etcd_member, body)


def test_membership_registers_fails_closed_and_recovers(etcd_member: EtcdProcess) -> None:
    async def body(store: EtcdStore) -> None:
        info = MemberInfo(name="node-1", dc="dc-a", address="127.0.0.1:1234")
        changes: list[bool] = []
        member = Membership(
            store, info, 2, monotonic=time.monotonic, on_change=changes.append,
            retry_interval_s=0.1,
        )  # fmt: skip
        member.start()
        try:
            await await_until(member.serving, 10, "membership never registered")
            raw = await store._client.get(info.key.encode())
            assert json.loads(raw.value) == {
                "name": "node-1",
                "dc": "dc-a",
                "address": "127.0.0.1:1234",
            }
            etcd_member.kill()
            await await_until(lambda: not member.serving(), 5, "still serving without etcd")
            await asyncio.to_thread(etcd_member.start)
            await await_until(member.serving, 10, "did not serve again after etcd returned")
            assert changes[:3] == [True, False, True]
        finally:
            await member.stop()
        assert await store._client.get(info.key.encode()) is None  # lease revoked on stop

    with_store(etcd_member, body)
