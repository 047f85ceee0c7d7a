"""The real `bkv` command line (a subprocess) against a real cluster: every exit code by a real
situation, and a 1 GiB backup round trip in constant memory.

Needs the session-scoped `cluster` fixture of tests/integration/conftest.py (from deploy); it is
asked for the path of its client.toml (`client_config_path`, or the fixture value itself).
Accounts are fresh per test and use `--ksf fast` (weaker Argon2id) to keep the suite quick.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BKV = str(Path(sys.executable).with_name("bkv"))
PASSWORD = "integration-password-4711"


def _client_toml(cluster: Any) -> Path:
    for name in ("client_config_path", "client_toml", "client_config"):
        value = getattr(cluster, name, None)
        if value is not None:
            return Path(value() if callable(value) else value)
    return Path(cluster)


class Bkv:
    """Runs `.venv/bin/bkv` with a config, a fresh account and its own key folder."""

    def __init__(self, config: Path, key_dir: Path, account: str) -> None:
        self.config, self.key_dir, self.account = config, key_dir, account

    def __call__(
        self, *args: str, stdin: str = "", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        argv = [
            BKV, "--config", str(self.config), "--account", self.account,
            "--key-dir", str(self.key_dir), "--ksf", "fast", *args,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("BKV_")}
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env
        )

    def json(self, *args: str, stdin: str = "") -> tuple[int, dict[str, Any]]:
        proc = self("--json", *args, stdin=stdin)
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def client_toml(healthy_cluster: Any) -> Path:
    return _client_toml(healthy_cluster)


@pytest.fixture
def bkv(client_toml: Path, tmp_path: Path) -> Bkv:
    return Bkv(client_toml, tmp_path / "keys", f"it-{uuid.uuid4().hex[:12]}")


@pytest.mark.timeout(120)
def test_exit_0_register_and_recover_round_trip(bkv: Bkv) -> None:
    assert bkv("account", "create").returncode == 0
    key_file = bkv.key_dir / f"{bkv.account}.account.key"
    assert (os.stat(key_file).st_mode & 0o777) == 0o600
    code, reg = bkv.json("register", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and reg["ok"] and len(reg["key"]) == 64
    code, rec = bkv.json("recover", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0 and rec["key"] == reg["key"]
    code, st = bkv.json("status")
    assert code == 0 and st["registered"] and not st["locked"] and st["guesses_left"] >= 1
    proc = bkv("delete")
    assert proc.returncode == 0 and PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.timeout(60)
def test_exit_2_bad_key_and_missing_file(bkv: Bkv, tmp_path: Path) -> None:
    assert bkv("account", "create").returncode == 0
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not-a-key\n")
    proc = bkv("register", "--password-stdin", "--key-file", str(bad_key), stdin=PASSWORD)
    assert proc.returncode == 2 and "bad key" in proc.stderr and "not-a-key" not in proc.stderr
    code, out = bkv.json("backup", "encrypt", str(tmp_path / "nope"), str(tmp_path / "x"),
                         stdin="00" * 32)  # fmt: skip
    assert code == 2 and out["error"] == "bad_input"
    # The key on the command line (visible to every local user through ps) is refused.
    proc = bkv("register", "--password-stdin", "--key", "00" * 32, stdin=PASSWORD)
    assert proc.returncode == 2 and "--key-file" in proc.stderr and "00" * 32 not in proc.stderr
    code, st = bkv.json("status")
    assert code == 0 and not st["registered"]


@pytest.mark.timeout(120)
def test_exit_3_wrong_password_then_4_locked(bkv: Bkv) -> None:
    assert bkv("account", "create").returncode == 0
    proc = bkv("register", "--password-stdin", "--max-attempts", "2", stdin=PASSWORD)
    assert proc.returncode == 0
    proc = bkv("recover", "--password-stdin", stdin="wrong-one")
    assert proc.returncode == 3 and "1 guesses left" in proc.stderr
    code, out = bkv.json("recover", "--password-stdin", stdin="wrong-two")
    assert code == 3 and out["error"] == "invalid_password" and out["guesses_left"] == 0
    code, out = bkv.json("recover", "--password-stdin", stdin=PASSWORD)  # right, but too late
    assert code == 4 and out["error"] == "locked"
    code, st = bkv.json("status")
    assert code == 0 and st["locked"] is True


@pytest.mark.timeout(60)
def test_exit_5_not_registered(bkv: Bkv) -> None:
    assert bkv("account", "create").returncode == 0
    code, out = bkv.json("recover", "--password-stdin", stdin=PASSWORD)
    assert code == 5 and out["error"] == "not_registered"


@pytest.mark.timeout(60)
def test_exit_6_when_every_frontend_is_down(bkv: Bkv, client_toml: Path, tmp_path: Path) -> None:
    assert bkv("account", "create").returncode == 0
    cluster = tomllib.loads(client_toml.read_text())["cluster"]
    import socket

    dead: list[str] = []
    for _ in range(2):  # ports nobody listens on
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead.append(f"127.0.0.1:{s.getsockname()[1]}")
    down = tmp_path / "down.toml"
    down.write_text(
        "[cluster]\n"
        f"frontends = {json.dumps(dead)}\n"
        f"ca = {json.dumps(cluster['ca'])}\n"
        f"server_name = {json.dumps(cluster['server_name'])}\n"
        f"fleet_public_key = {json.dumps(cluster['fleet_public_key'])}\n"
        f"fleet_id = {json.dumps(cluster['fleet_id'])}\n"
        "[client]\nconnect_timeout_s = 0.3\noverall_deadline_s = 3.0\n"
    )
    other = Bkv(down, bkv.key_dir, bkv.account)
    code, out = other.json("status")
    assert code == 6 and out["error"] == "unavailable"


@pytest.mark.timeout(60)
def test_exit_7_account_key_mismatch(bkv: Bkv, tmp_path: Path) -> None:
    assert bkv("account", "create").returncode == 0  # binds the account id to this key
    impostor = Bkv(bkv.config, tmp_path / "other-keys", bkv.account)
    code, out = impostor.json("account", "create")  # another key for the same account id
    assert code == 7 and out["error"] == "unauthenticated"
    code, out = impostor.json("status")
    assert code == 7


def _write_gib(path: Path, mib: int) -> str:
    """Stream `mib` MiB of varied bytes into `path`; returns its SHA-256."""
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(mib):
            chunk = i.to_bytes(8, "big") + block[8:]
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# Runs the `bkv` console script in a fresh interpreter and reports that process's own peak RSS
# (VmHWM of its address space). ru_maxrss from wait4 is no good here: on Linux a child's maxrss
# starts at its parent's size when it execs (the big pytest process, through vfork).
_MEASURE = """
import runpy, sys
out, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    with open("/proc/self/status") as status:
        hwm = next(line for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(hwm.split()[1])
"""


def _run_measured(argv: list[str], tmp_path: Path) -> tuple[int, int]:
    """Run the `bkv` script argv[0] with argv[1:]; return (exit code, its peak RSS in KiB)."""
    report = tmp_path / "vmhwm"
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(report), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        timeout=850,
    )
    return proc.returncode, int(report.read_text())


@pytest.mark.timeout(900)
def test_one_gib_backup_round_trip_in_constant_memory(tmp_path: Path) -> None:
    src, enc, dec = tmp_path / "plain.bin", tmp_path / "plain.bkv", tmp_path / "plain.out"
    expected = _write_gib(src, 1024)
    key_file = tmp_path / "key.txt"
    key_file.write_text("0123456789abcdef" * 4 + "\n")
    limit_kib = 200 * 1024
    try:
        code, peak = _run_measured(
            [BKV, "backup", "encrypt", str(src), str(enc), "--key-file", str(key_file)], tmp_path
        )
        assert code == 0
        assert peak < limit_kib, f"encrypt peak RSS {peak} KiB"
        src.unlink()
        code, peak = _run_measured(
            [BKV, "backup", "decrypt", str(enc), str(dec), "--key-file", str(key_file)], tmp_path
        )
        assert code == 0
        assert peak < limit_kib, f"decrypt peak RSS {peak} KiB"
        assert _sha256(dec) == expected
    finally:
        for p in (src, enc, dec):
            p.unlink(missing_ok=True)
