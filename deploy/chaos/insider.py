"""An etcd insider's attacks on the guess limit, run for real: etcdctl with the admin identity.

What an operator with etcd access (`bkv-cluster etcdctl`) can try against an account, each
attack returning an `AttackResult` that says what the attacker wrote (at which revisions) and
what the account's owner got afterwards:

* `put_back`: save the account's record, spend guesses, write the saved value back, repeat;
* `history_write`: guess until the key is erased, read the pre-lock value from etcd's history
  (`get --rev`) if it is still there, else use a copy saved before, and write it back;
* `recreate`: delete the key and put an earlier value back (a new incarnation of the key);
* `copy`: put another account's record onto the key.

The vault must answer every one without an evaluation on the attacker's value and without the
key: the chaos checker's `storage_replay` invariant reads the results (`insider.jsonl`) and the
nodes' audit lines. Account ids map to etcd keys through the nodes' `id_mac` key only, so the
tool asks a node's token for the mapping (`vault_node.ceremony_cli record-id`): an operator
tool, not part of the attack.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.errors import InvalidPassword, VaultError
from deploy import etcd
from deploy.cluster import Cluster
from vault_node.store import record_key

INSIDER_FILE = "insider.jsonl"
ETCDCTL_TIMEOUT_S = 30.0


class InsiderError(Exception):
    """An etcdctl call of the attacker failed (not an answer of the vault)."""


@dataclass(frozen=True)
class KeyState:
    """One key as etcd returns it."""

    value: bytes = field(repr=False)
    create_revision: int
    mod_revision: int
    version: int


def _kv(item: dict[str, Any]) -> KeyState:
    return KeyState(
        base64.b64decode(item.get("value", "")),
        int(item.get("create_revision", 0)),
        int(item.get("mod_revision", 0)),
        int(item.get("version", 0)),
    )


class EtcdAdmin:
    """etcdctl as the cluster's root identity, with JSON output parsed."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    def _run(self, *args: str, stdin: bytes | None = None, check: bool = True) -> Any:
        argv = self._cluster.etcdctl_argv(*args)
        done = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=ETCDCTL_TIMEOUT_S, check=False,
            env=etcd.etcdctl_env(),
        )  # fmt: skip
        if done.returncode != 0:
            if not check:
                return done
            last = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise InsiderError(f"etcdctl {args[0]} failed: {' '.join(last)}")
        return done

    def _json(self, *args: str, stdin: bytes | None = None) -> dict[str, Any]:
        done = self._run(*args, "-w", "json", stdin=stdin)
        parsed = json.loads(done.stdout)
        if not isinstance(parsed, dict):
            raise InsiderError("etcdctl printed no JSON object")
        return parsed

    def get(self, key: bytes, *, revision: int = 0) -> KeyState | None:
        args = ["get", key.decode()] + ([f"--rev={revision}"] if revision else [])
        kvs = self._json(*args).get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def history_readable(self, key: bytes, revision: int) -> bool:
        """Whether `get KEY --rev=revision` still answers (False once it is compacted)."""
        done = self._run("get", key.decode(), f"--rev={revision}", check=False)
        if done.returncode == 0:
            return True
        if b"compacted" in done.stderr:
            return False
        raise InsiderError("etcdctl get --rev failed: " + done.stderr.decode(errors="replace"))

    def put(self, key: bytes, value: bytes) -> int:
        """An unconditional put (the value on stdin: records are binary); its revision."""
        return int(self._json("put", key.decode(), stdin=value)["header"]["revision"])

    def delete(self, key: bytes) -> int:
        return int(self._json("del", key.decode())["header"]["revision"])

    def revision(self) -> int:
        return int(self._json("get", "/bkv/", "--keys-only", "--limit=1")["header"]["revision"])

    def dump(self) -> list[bytes]:
        """Every key and every value in etcd, as separate items."""
        items: list[bytes] = []
        for kv in self._json("get", "", "--from-key").get("kvs") or []:
            items.append(base64.b64decode(kv.get("key", "")))
            items.append(base64.b64decode(kv.get("value", "")))
        return items

    def snapshot_save(self, path: Path, member: str) -> None:
        """`etcdctl snapshot save` from one member (a snapshot is taken from one endpoint)."""
        argv = self._cluster.etcdctl_argv("snapshot", "save", str(path), members=[member])
        done = subprocess.run(
            argv, capture_output=True, timeout=ETCDCTL_TIMEOUT_S, check=False,
            env=etcd.etcdctl_env(),
        )  # fmt: skip
        if done.returncode != 0:
            raise InsiderError("etcdctl snapshot save failed")


def token_step(cluster: Cluster, node: str, step: str, *extra: str) -> str:
    """Run a `vault_node.ceremony_cli` step on `node`'s token (the node may be running: two
    processes on one token directory work); its standard output."""
    hsm = cluster.layout.hsm_dir(node)
    argv = [
        sys.executable, "-m", "vault_node.ceremony_cli", step,
        "--module", "/usr/lib/softhsm/libsofthsm2.so", "--conf", str(hsm / "softhsm2.conf"),
        "--label", node, "--pin-file", str(hsm / "pin"), *extra,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise InsiderError(f"{step} on {node} failed: {done.stderr.strip()[-200:]}")
    return done.stdout


def node_names(cluster: Cluster) -> list[str]:
    return [p.name for p in cluster.state().processes if p.role == "node"]


def record_id_of(cluster: Cluster, account: str) -> bytes:
    """The record id (etcd key's id) of `account`, from the first vault node's token."""
    return bytes.fromhex(
        token_step(cluster, node_names(cluster)[0], "record-id", "--account", account).strip()
    )


def store_status(cluster: Cluster, node: str) -> dict[str, Any]:
    """`node`'s store checkpoint as its token holds it (high-water mark, alarm, pin)."""
    status = json.loads(token_step(cluster, node, "store-status"))
    assert isinstance(status, dict)
    return status


def clear_alarms(cluster: Cluster) -> None:
    """Stop every vault node, clear its store alarm and mark, start it again (an operator
    accepting the store as it is: the one way past a detected rollback)."""
    nodes = node_names(cluster)
    for node in nodes:
        cluster.stop(node)
    for node in nodes:
        token_step(cluster, node, "store-alarm-clear")
    for node in nodes:
        cluster.start(node)


@dataclass
class AttackResult:
    """One attack on one record: what the attacker wrote, and what its owner got after it."""

    kind: str
    record_id: str  # hex
    written: list[int] = field(default_factory=list)  # revisions of the attacker's writes
    outcomes: list[str] = field(default_factory=list)  # the owner's calls after the first write
    key_returned: bool = False  # a recovery after an attacker's write returned the key
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "record_id": self.record_id,
            "written": self.written,
            "outcomes": self.outcomes,
            "key_returned": self.key_returned,
            "notes": self.notes,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> AttackResult:
        return cls(
            kind=str(obj["kind"]),
            record_id=str(obj["record_id"]),
            written=[int(r) for r in obj.get("written", [])],
            outcomes=[str(o) for o in obj.get("outcomes", [])],
            key_returned=bool(obj.get("key_returned", False)),
            notes=dict(obj.get("notes", {})),
        )


class Owner:
    """The attacked account's owner: one client, its password and key, and what it sees."""

    def __init__(self, client: Any, password: str, key: Any) -> None:
        self.client = client
        self.password = password
        self.key = key

    def recover(self, password: str | None = None) -> tuple[str, bool]:
        """One recovery: (outcome code, whether it returned the registered key)."""
        try:
            got = self.client.recover(password or self.password)
        except VaultError as exc:
            return exc.code, False
        return "ok", got == self.key

    def guess_wrong(self) -> str:
        try:
            self.client.recover("not the password " + self.password)
        except InvalidPassword:
            return "invalid_password"
        except VaultError as exc:
            return exc.code
        return "ok"


def _after_write(result: AttackResult, owner: Owner, wrong: int) -> None:
    for _ in range(wrong):
        result.outcomes.append(owner.guess_wrong())
    outcome, returned = owner.recover()
    result.outcomes.append(outcome)
    result.key_returned = result.key_returned or returned


def put_back(
    admin: EtcdAdmin, owner: Owner, record_id: bytes, *, cycles: int = 3, guesses: int = 5
) -> AttackResult:
    """Save the record, spend `guesses`, write the saved value back; `cycles` times."""
    key = record_key(record_id)
    result = AttackResult("put_back", record_id.hex())
    for _ in range(cycles):
        saved = admin.get(key)
        if saved is None:
            raise InsiderError("the record to attack is not in etcd")
        for _ in range(guesses):
            outcome = owner.guess_wrong()
            if result.written:
                result.outcomes.append(outcome)
        result.written.append(admin.put(key, saved.value))
        _after_write(result, owner, wrong=0)
    return result


def history_write(
    admin: EtcdAdmin,
    owner: Owner,
    record_id: bytes,
    max_attempts: int,
    *,
    clock: Callable[[], float] = time.monotonic,
    compaction_wait_s: float = 30.0,
) -> AttackResult:
    """Guess until locked, then write the pre-lock value back, from history if still there."""
    key = record_key(record_id)
    result = AttackResult("history_write", record_id.hex())
    before = admin.get(key)
    if before is None:
        raise InsiderError("the record to attack is not in etcd")
    for _ in range(max_attempts + 1):
        if owner.guess_wrong() == "locked":
            break
    locked_at = clock()
    from_history = (
        admin.get(key, revision=before.mod_revision)
        if admin.history_readable(key, before.mod_revision)
        else None
    )
    value = (from_history or before).value
    result.notes["read_from_history"] = from_history is not None
    result.written.append(admin.put(key, value))
    _after_write(result, owner, wrong=2)
    # Erasure that leaves no history: how long the pre-lock value stayed readable.
    deadline = locked_at + compaction_wait_s
    while admin.history_readable(key, before.mod_revision) and clock() < deadline:
        time.sleep(0.1)
    readable = admin.history_readable(key, before.mod_revision)
    result.notes["history_compacted"] = not readable
    result.notes["compacted_within_s"] = None if readable else round(clock() - locked_at, 3)
    return result


def recreate(admin: EtcdAdmin, owner: Owner, record_id: bytes) -> AttackResult:
    """Delete the key and put its earlier value back, then once more (version 1, then 2)."""
    key = record_key(record_id)
    result = AttackResult("recreate", record_id.hex())
    saved = admin.get(key)
    if saved is None:
        raise InsiderError("the record to attack is not in etcd")
    owner.guess_wrong()
    admin.delete(key)
    for _ in range(2):
        result.written.append(admin.put(key, saved.value))
        _after_write(result, owner, wrong=1)
    return result


def copy(admin: EtcdAdmin, owner: Owner, record_id: bytes, source_id: bytes) -> AttackResult:
    """Put another account's record onto this account's key."""
    source = admin.get(record_key(source_id))
    if source is None:
        raise InsiderError("the record to copy is not in etcd")
    result = AttackResult("copy", record_id.hex(), notes={"source": source_id.hex()})
    result.written.append(admin.put(record_key(record_id), source.value))
    _after_write(result, owner, wrong=1)
    return result


def write_results(path: Path, results: Sequence[AttackResult]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for result in results:
            f.write(json.dumps(result.to_json(), separators=(",", ":")) + "\n")


def read_results(path: Path) -> list[AttackResult]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [AttackResult.from_json(json.loads(line)) for line in lines if line.strip()]


# Flags of a member's command line that `etcdctl snapshot restore` takes as they are: a restore
# with the same names, peer URLs and cluster token gives the cluster its old identity back.
RESTORE_FLAGS = (
    "--name",
    "--initial-cluster",
    "--initial-cluster-token",
    "--initial-advertise-peer-urls",
)


def restore_flags(cluster: Cluster, member: str) -> list[str]:
    """`--name ... --initial-cluster ...` for restoring `member`, taken from its own etcd
    command line (deploy.etcd.etcd_argv), so the restored cluster keeps its identity."""
    state = cluster.state()
    topology = state.topology
    spec = next(m for m in topology.etcd if m.name == member)
    argv = etcd.etcd_argv(
        spec, topology.etcd, host=topology.host, options=topology.options,
        pki=cluster.layout.pki, data_dir=cluster.layout.etcd_data(member),
        log_file=cluster.layout.etcd_log(member), fsync=state.fsync,
        hosts=etcd.member_hosts(topology),
    )  # fmt: skip
    out: list[str] = []
    for flag in RESTORE_FLAGS:
        out += [flag, argv[argv.index(flag) + 1]]
    return out


def restore_snapshot(cluster: Cluster, snapshot: Path, *, keep_old: Path | None = None) -> None:
    """A plain restore of the whole store from `snapshot`, as an etcd admin would make it:
    stop every member, `etcdctl snapshot restore` a fresh data dir for each (same names, peer
    URLs and cluster token: the same cluster id), start them again. The old data dirs move to
    `keep_old` (else they are deleted)."""
    members = [m.name for m in cluster.topology.etcd]
    for member in members:
        cluster.kill(member)
    for member in members:
        data = cluster.layout.etcd_data(member)
        if keep_old is not None:
            keep_old.mkdir(parents=True, exist_ok=True)
            data.rename(keep_old / member)
        else:
            import shutil

            shutil.rmtree(data)
        done = subprocess.run(
            ["etcdctl", "snapshot", "restore", str(snapshot), "--data-dir", str(data),
             *restore_flags(cluster, member)],
            capture_output=True, timeout=ETCDCTL_TIMEOUT_S, check=False,
            env=etcd.etcdctl_env(),
        )  # fmt: skip
        if done.returncode != 0:
            raise InsiderError(
                "snapshot restore failed: " + done.stderr.decode(errors="replace")[-300:]
            )
    for member in members:
        cluster.start(member)
