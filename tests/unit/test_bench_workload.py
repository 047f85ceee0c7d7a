"""The bench workload over a fake client: pools, re-registration, error counting, no lockouts."""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bkv_bench.config import Mix
from bkv_bench.histogram import Recorder
from bkv_bench.workload import Workload
from client.config import ClientConfig
from client.errors import InvalidPassword, Locked, Unavailable
from vault_protocol.backup_key import BackupKey

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

MAX_ATTEMPTS = 5


class FakeVault:
    """Server state of every account: password, key, attempts (locks at MAX_ATTEMPTS)."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.fail_next_recover = 0


class FakeClient:
    def __init__(self, vault: FakeVault) -> None:
        self.vault = vault
        self.account_id = ""

    async def create_account(self, account_id: str) -> str:
        self.account_id = account_id
        return account_id

    async def register(self, password: str) -> BackupKey:
        key = BackupKey(bytes(32 * [len(self.vault.records) % 256]))
        self.vault.records[self.account_id] = {"pw": password, "key": key, "attempts": 0}
        return key

    async def recover(self, password: str) -> BackupKey:
        await asyncio.sleep(0)
        if self.vault.fail_next_recover:
            self.vault.fail_next_recover -= 1
            raise Unavailable()
        rec = self.vault.records[self.account_id]
        if rec["attempts"] >= MAX_ATTEMPTS:
            raise Locked()
        rec["attempts"] += 1
        if password != rec["pw"]:
            raise InvalidPassword(MAX_ATTEMPTS - rec["attempts"])
        rec["attempts"] = 0
        return rec["key"]  # type: ignore[no-any-return]

    async def delete(self) -> bool:
        return self.vault.records.pop(self.account_id, None) is not None


def make(vault: FakeVault, recorder: Recorder) -> Workload:
    config = ClientConfig(frontends=("127.0.0.1:1",), ca="", server_name="localhost",
                          fleet_public_key="x", fleet_id="00" * 16, insecure=True)  # fmt: skip
    return Workload(config, Path("/nonexistent"), ksf="fast", recorder=recorder,
                    client_factory=lambda *a: FakeClient(vault))  # fmt: skip


def test_mixed_run_counts_add_up_and_never_locks_an_account() -> None:
    vault = FakeVault()
    recorder = Recorder(start=0.0)
    mix = Mix.parse("recover=40,register=10,wrong=40,delete=10")

    async def main() -> None:
        w = make(vault, recorder)
        await w.setup(8, mix, concurrency=4)
        ops = ["recover", "wrong", "delete", "register"] * 50
        await asyncio.gather(*(w.execute(op, 0.0) for op in ops))
        assert await w.cleanup() == 0

    asyncio.run(main())
    assert recorder.total == 200
    assert sum(recorder.summary(op, 1.0).count for op in recorder.ops()) == 200
    assert recorder.total_errors == 0  # no Locked, no wrong key
    assert recorder.substituted  # deleted and near-locked accounts were re-registered
    assert vault.records == {}  # cleanup deleted every bench record


def test_errors_are_counted_by_type() -> None:
    vault = FakeVault()
    recorder = Recorder(start=0.0)

    async def main() -> None:
        w = make(vault, recorder)
        await w.setup(2, Mix.parse("recover=1"), concurrency=2)
        vault.fail_next_recover = 3
        await asyncio.gather(*(w.execute("recover", 0.0) for _ in range(5)))
        w.abandon("recover", "dropped")

    asyncio.run(main())
    s = recorder.summary("recover", 1.0)
    assert (s.count, s.ok) == (6, 2)
    assert s.errors == {"Unavailable": 3, "dropped": 1}


def test_repr_of_an_account_shows_no_password_or_key() -> None:
    vault = FakeVault()

    async def main() -> str:
        w = make(vault, Recorder(start=0.0))
        await w.setup(1, Mix.parse("recover=1"), concurrency=1)
        return repr(w.accounts[0])

    text = asyncio.run(main())
    assert vault.records
    (rec,) = vault.records.values()
    assert rec["pw"] not in text
    assert "password" not in text and "key=" not in text
