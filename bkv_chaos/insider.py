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

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bkv.v1 import node_pb2, node_pb2_grpc
from client.config import ClientConfig
from client.errors import InvalidPassword, VaultError
from client.vault import GrpcConnector, VaultClient
from deploy import etcd
from deploy.cluster import Cluster, free_ports
from deploy.configs import dumps
from deploy.pki import ETCD_TLS_NAME
from etcd_client import EtcdClient, EtcdClientConfig, EtcdError, EtcdTls
from vault_node.store import record_key

INSIDER_FILE = "insider.jsonl"
ETCDCTL_TIMEOUT_S = 30.0
NODE_START_TIMEOUT_S = 60.0


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
    """etcdctl as the cluster's root identity, with JSON output parsed; against the cluster's
    members, or against `urls` (https) of etcd servers of its own (a fork: `Fork.admin`)."""

    def __init__(self, cluster: Cluster, urls: Sequence[str] | None = None) -> None:
        self._cluster = cluster
        self._urls = list(urls) if urls else None

    def _run(self, *args: str, stdin: bytes | None = None, check: bool = True) -> Any:
        if self._urls is None:
            argv = self._cluster.etcdctl_argv(*args)
        else:
            argv = etcd.etcdctl_argv(self._urls, self._cluster.etcd_identity(), args)
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


def accept_store(cluster: Cluster, *, on_cleared: Callable[[], object] | None = None) -> None:
    """The operator accepts the store as it is (the one way past a detected rollback; it gives
    back every guess spent since the point the store was rolled back to): stop every vault
    node, clear its store alarm, high-water mark and group alarms (`store-alarm-clear`) and its
    witnessed heads (`witness-reset`), remove the witnesses' journals, and start every node.

    The nodes start together and are waited for together: a restarted witness answers only once
    it has caught up from a majority of witnesses, so one started alone would wait for the
    others. `on_cleared` is called once every node is stopped and cleared, before any starts:
    the instant the accepted store takes effect."""
    nodes = node_names(cluster)
    for node in nodes:
        cluster.stop(node)
    witnesses = cluster.witness_nodes()
    steps = ["store-alarm-clear"] + (["witness-reset"] if witnesses else [])
    with ThreadPoolExecutor(max_workers=4) as pool:  # one token per process: independent
        list(pool.map(lambda node: [token_step(cluster, node, s) for s in steps], nodes))
    for witness in witnesses:
        cluster.layout.witness_journal(witness).unlink(missing_ok=True)
    if on_cleared is not None:
        on_cleared()
    for node in nodes:
        cluster.start(node, wait=False)
    cluster.wait_healthy(nodes, timeout=NODE_START_TIMEOUT_S)


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


class _RelayToNode:
    """A frontend stub whose `Relay` goes to a vault node's `Open` instead (see NodeRoute)."""

    def __init__(self, frontend: Any, node: Any, account_id: str) -> None:
        self._frontend = frontend
        self._node = node
        self._account_id = account_id

    def __getattr__(self, method: str) -> Any:
        return getattr(self._frontend, method)

    def Relay(self, request: Any, *, timeout: float, metadata: Any = None) -> Any:
        # OpenReply carries `sealed_response` as RelayReply does: the client reads only that.
        return self._node.Open(
            node_pb2.OpenRequest(account_id=self._account_id, envelope=request.envelope),
            timeout=timeout,
        )


class NodeRoute:
    """A `client.vault.Connector` that plays a frontend sending an account to a vault node of
    its choice: logins go to the frontends as usual, every envelope goes straight to `node`'s
    `Open` with a frontend's client certificate from the cluster's pki (what a frontend
    presents). For attacks in which the account reaches a node that no frontend would route it
    to, such as one that sees a forked store."""

    def __init__(self, cluster: Cluster, config: ClientConfig, node: str, account_id: str) -> None:
        pki = cluster.layout.pki
        frontend = pki.frontend_client(cluster.topology.frontends[0].name)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.cluster_ca.cert.read_bytes(),
            private_key=frontend.key.read_bytes(),
            certificate_chain=frontend.cert.read_bytes(),
        )
        self._channel = grpc.secure_channel(
            cluster.process(node).address, credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        )  # fmt: skip
        self._node = node_pb2_grpc.VaultNodeStub(self._channel)
        self._frontends = GrpcConnector(config)
        self._account_id = account_id

    def stub(self, address: str) -> Any:
        return _RelayToNode(self._frontends.stub(address), self._node, self._account_id)

    def ready(self, address: str, timeout: float) -> bool:
        return self._frontends.ready(address, timeout)

    def close(self) -> None:
        self._frontends.close()
        self._channel.close()


def owner_via_node(cluster: Cluster, owner: Owner, node: str) -> Owner:
    """`owner`'s account with a client of its own whose envelopes all go to `node` (NodeRoute),
    with the account key `owner`'s client made."""
    mine = owner.client
    client = VaultClient(
        mine.config, account_id=mine.account.account_id, key_dir=mine.key_dir, ksf="fast",
        connector=NodeRoute(cluster, mine.config, node, mine.account.account_id),
    )  # fmt: skip
    return Owner(client, owner.password, owner.key)


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


# -- snapshot restores ------------------------------------------------------------------------
#
# Flags of a member's command line that `etcdctl snapshot restore` takes as they are: a restore
# with the same names, peer URLs and cluster token gives the cluster its old identity back.
RESTORE_FLAGS = (
    "--name",
    "--initial-cluster",
    "--initial-cluster-token",
    "--initial-advertise-peer-urls",
)
BUMP_KEY = b"/bkv/insider/bump"  # root may write anywhere; no vault process reads this key
BUMP_CONCURRENCY = 64  # writes in flight at once (one revision each)
BUMP_MARGIN = 200  # revisions more than the store had: writes that land before the restore
MEMBER_START_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3  # a temporary member started again on other ports when one was taken
LOG_TAIL_CHARS = 600  # of a temporary member's log, in the error when it fails to start
MEMBER_STOP_GRACE_S = 5.0


def _member_argv(cluster: Cluster, member: str, data_dir: Path, log_file: Path) -> list[str]:
    """`member`'s own etcd command line (deploy.etcd.etcd_argv), on `data_dir`, logging to
    `log_file`."""
    state = cluster.state()
    topology = state.topology
    spec = next(m for m in topology.etcd if m.name == member)
    return etcd.etcd_argv(
        spec, topology.etcd, host=topology.host, options=topology.options,
        pki=cluster.layout.pki, data_dir=data_dir, log_file=log_file, fsync=state.fsync,
        hosts=etcd.member_hosts(topology),
    )  # fmt: skip


def _with_flags(argv: list[str], values: dict[str, str]) -> list[str]:
    """`argv` with the value after each flag of `values` replaced."""
    out = list(argv)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out


def restore_flags(cluster: Cluster, member: str) -> list[str]:
    """`--name ... --initial-cluster ...` for restoring `member`, taken from its own etcd
    command line (deploy.etcd.etcd_argv), so the restored cluster keeps its identity."""
    layout = cluster.layout
    argv = _member_argv(cluster, member, layout.etcd_data(member), layout.etcd_log(member))
    out: list[str] = []
    for flag in RESTORE_FLAGS:
        out += [flag, argv[argv.index(flag) + 1]]
    return out


def snapshot_revision(snapshot: Path) -> int:
    """The store revision a snapshot file holds (`etcdctl snapshot status`)."""
    done = subprocess.run(
        ["etcdctl", "snapshot", "status", str(snapshot), "-w", "json"],
        capture_output=True, timeout=ETCDCTL_TIMEOUT_S, check=False, env=etcd.etcdctl_env(),
    )  # fmt: skip
    if done.returncode != 0:
        raise InsiderError("snapshot status failed: " + done.stderr.decode(errors="replace"))
    return int(json.loads(done.stdout)["revision"])


def store_revision(cluster: Cluster) -> int:
    """The highest revision any running member reports now (its /metrics: no etcd request, so
    no revision of its own). Every node's high-water mark is at most this."""
    tls = etcd.probe_context(cluster.etcd_identity())
    statuses = [etcd.member_status(url, tls) for url in cluster.etcd_client_urls().values()]
    return max((s.revision for s in statuses if s is not None), default=0)


def bump_needed(cluster: Cluster, snapshot: Path, *, margin: int = BUMP_MARGIN) -> int:
    """How many revisions a restore of `snapshot` must add to pass every node's high-water
    mark: the store's revision now minus the snapshot's, plus `margin` for writes that still
    land before the restore begins."""
    return max(0, store_revision(cluster) - snapshot_revision(snapshot)) + margin


def _client_config(cluster: Cluster, endpoints: Sequence[str]) -> EtcdClientConfig:
    identity = cluster.etcd_identity()
    tls = EtcdTls(ca=str(identity.ca), cert=str(identity.cert), key=str(identity.key),
                  server_name=ETCD_TLS_NAME)  # fmt: skip
    return EtcdClientConfig(endpoints=tuple(endpoints), tls=tls, call_timeout_s=10.0)


@dataclass(frozen=True)
class StoreStatus:
    revision: int
    cluster_id: int


def _bump_writes(cluster: Cluster, endpoints: Sequence[str], writes: int) -> StoreStatus:
    """At least `writes` revisions more on the store behind `endpoints`, as root: that many
    puts of `BUMP_KEY` (one revision each), `BUMP_CONCURRENCY` at a time, then its delete.
    A put that failed may still have applied: only the ones answered count, so the store
    moves by `writes` or more. Returns the store's revision and cluster id afterwards."""

    async def run() -> StoreStatus:
        async with EtcdClient(_client_config(cluster, endpoints)) as client:
            # Revisions from linearizable calls only: a member's Status answers from its own
            # state, and a member just restarted may still be applying (CI saw 225 of 230).
            start = (await client.range(BUMP_KEY)).header.revision
            done = 0
            failures = 0

            async def writer() -> None:
                nonlocal done, failures
                while done < writes:
                    done += 1  # claimed before the await: no write beyond `writes` is started
                    try:
                        await client.put(BUMP_KEY, b"")
                    except EtcdError:
                        done -= 1
                        failures += 1
                        if failures > writes // 10 + 20:
                            raise
                        await asyncio.sleep(0.05)

            await asyncio.gather(*(writer() for _ in range(min(BUMP_CONCURRENCY, writes))))
            header = (await client.delete(BUMP_KEY)).header
            if header.revision < start + writes:
                raise InsiderError(f"bumped {header.revision - start} revisions, not {writes}")
            return StoreStatus(header.revision, header.cluster_id)

    return asyncio.run(run())


def _status(cluster: Cluster, endpoints: Sequence[str]) -> StoreStatus:
    async def run() -> StoreStatus:
        async with EtcdClient(_client_config(cluster, endpoints)) as client:
            header = (await client.range(BUMP_KEY)).header  # linearizable, unlike Status
            return StoreStatus(header.revision, header.cluster_id)

    return asyncio.run(run())


def cluster_status(cluster: Cluster) -> StoreStatus:
    """The revision and etcd cluster id the cluster's members answer with now."""
    return _status(cluster, cluster.etcd_endpoints())


class TemporaryMember:
    """One etcd member run by this tool itself (not by the cluster's supervisor), in a process
    group of its own that only `stop` ends: a restored member served on ports of its own."""

    def __init__(
        self, cluster: Cluster, member: str, argv: Sequence[str], log: Path, endpoint: str
    ) -> None:
        self.member = member
        self.endpoint = endpoint  # host:port of its client URL
        self.log = log
        proc = cluster.process(member)
        env = etcd.etcdctl_env()
        options = cluster.topology.options
        if options.etcd_gomaxprocs:
            env["GOMAXPROCS"] = str(options.etcd_gomaxprocs)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [*proc.command_prefix, *argv], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=env, cwd=cluster.directory,
                start_new_session=True,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return "https://" + self.endpoint

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after a grace; wait until it is gone."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, MEMBER_STOP_GRACE_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


class MemberStartError(InsiderError):
    """A temporary member exited or never became healthy; the message ends with its log's last
    lines (the log itself goes with the test's cluster directory)."""

    def __init__(self, member: str, what: str, log: Path) -> None:
        try:
            tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            tail = ""
        super().__init__(f"temporary etcd member {member} {what}; {log} ends with: {tail}")
        # Its ports were free when chosen, yet another process may bind them before it does.
        self.port_taken = "address already in use" in tail


Plan = tuple[str, list[str], Path, str]  # member, argv, log, endpoint (host:port)


def _start_members(cluster: Cluster, plan: Callable[[], Sequence[Plan]]) -> list[TemporaryMember]:
    """Start each of `plan()` as a `TemporaryMember` and wait until every one is healthy (a
    leader elected). On a failure stop them all; when etcd found a port taken (free when
    chosen, bound by another process since), make a new plan, with other ports (bounded);
    otherwise raise MemberStartError."""
    for attempt in range(PORT_ATTEMPTS):
        try:
            return _start_planned(cluster, plan())
        except MemberStartError as exc:
            if not exc.port_taken or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _start_planned(cluster: Cluster, plans: Sequence[Plan]) -> list[TemporaryMember]:
    members = [TemporaryMember(cluster, *plan) for plan in plans]
    tls = etcd.probe_context(cluster.etcd_identity())
    deadline = time.monotonic() + MEMBER_START_TIMEOUT_S
    try:
        while not all(etcd.is_healthy(m.url, tls) for m in members):
            dead = [m for m in members if not m.alive()]
            if dead or time.monotonic() > deadline:
                what = "exited" if dead else "did not become healthy"
                name = (dead or members)[0]
                raise MemberStartError(name.member, what, name.log)
            time.sleep(0.1)
    except BaseException:
        for member in members:
            member.stop()
        raise
    return members


def _free_endpoint(host: str) -> tuple[str, int]:
    return host, free_ports(host, 1)[0]


def _restore_data(cluster: Cluster, snapshot: Path, member: str, data: Path) -> None:
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


@dataclass(frozen=True)
class Restored:
    """What a restore did to the store: the revision the snapshot holds, the highest revision
    a member reported just before the restore (every node's mark is at most this), the
    revision the bump left before any node could reach the store (every later commit is above
    it; the snapshot's without a bump), the store's revision once the restored members serve
    the cluster again, and the etcd cluster id before and after."""

    snapshot_revision: int
    revision_before: int
    revision_after: int
    bumped: int
    cluster_id_before: int
    cluster_id_after: int
    bumped_revision: int = 0

    @property
    def passes_marks(self) -> bool:
        """The restored store's revision is above every revision the store had before."""
        return self.revision_after > self.revision_before

    def to_json(self) -> dict[str, int]:
        return {
            "snapshot_revision": self.snapshot_revision,
            "revision_before": self.revision_before,
            "revision_after": self.revision_after,
            "bumped": self.bumped,
            "cluster_id_before": self.cluster_id_before,
            "cluster_id_after": self.cluster_id_after,
            "bumped_revision": self.bumped_revision,
        }


def restore_snapshot(
    cluster: Cluster, snapshot: Path, *, bump: int = 0, keep_old: Path | None = None
) -> Restored:
    """A restore of the whole store from `snapshot`, as an etcd admin would make it: stop
    every member, `etcdctl snapshot restore` a fresh data dir for each (same names, peer URLs
    and cluster token: the same cluster id), start them again. The old data dirs move to
    `keep_old` (else they are deleted).

    `bump` > 0: before any vault node or frontend can reach the restored store, raise its
    revision by at least `bump` (what etcd 3.5's `--bump-revision` does): the restored members
    first run on client ports of their own (the cluster's processes dial only the usual ones;
    the peer ports stay, so they form their cluster), take `bump` writes as root, stop, and
    only then start on the cluster's ports. With `bump_needed`, the store comes back above
    every node's high-water mark: the store guard alone cannot tell it from a current one."""
    members = [m.name for m in cluster.topology.etcd]
    restored_revision = snapshot_revision(snapshot)
    try:
        before = cluster_status(cluster)
    except Exception:  # noqa: BLE001 - etcd already down: the id is then unknown (0)
        before = StoreStatus(0, 0)
    revision_before = max(store_revision(cluster), before.revision)
    for member in members:
        cluster.kill(member)
    for member in members:
        data = cluster.layout.etcd_data(member)
        if keep_old is not None:
            keep_old.mkdir(parents=True, exist_ok=True)
            data.rename(keep_old / member)
        else:
            shutil.rmtree(data)
        _restore_data(cluster, snapshot, member, data)
    bumped_revision = restored_revision
    try:
        if bump > 0:
            bumped_revision = _bump_offline(cluster, members, bump).revision
    finally:
        for member in members:
            cluster.start(member)
    after = cluster_status(cluster)
    return Restored(
        restored_revision, revision_before, after.revision, bump, before.cluster_id,
        after.cluster_id, bumped_revision,
    )  # fmt: skip


def _bump_offline(cluster: Cluster, members: Sequence[str], bump: int) -> StoreStatus:
    """Run the restored `members` on client ports of their own, bump, stop them."""

    def plan() -> list[Plan]:
        plans = []
        for member in members:
            host, port = _free_endpoint(cluster.topology.host_of(cluster.process(member).dc))
            url = f"https://{host}:{port}"
            log = cluster.layout.etcd_log(member).with_suffix(".bump.log")
            argv = _with_flags(
                _member_argv(cluster, member, cluster.layout.etcd_data(member), log),
                {"--listen-client-urls": url, "--advertise-client-urls": url},
            )
            plans.append((member, argv, log, f"{host}:{port}"))
        return plans

    running = _start_members(cluster, plan)
    try:
        return _bump_writes(cluster, [m.endpoint for m in running], bump)
    finally:
        for temporary in running:
            temporary.stop()


# -- a forked member: two histories at once ----------------------------------------------------


@dataclass
class Fork:
    """One etcd member restored alone from a snapshot and served on ports of its own, while
    the rest of the cluster keeps quorum; `nodes` see only it. `heal_fork` undoes all of it."""

    member: str
    data_dir: Path
    nodes: tuple[str, ...]
    configs: dict[str, str] = field(repr=False)  # node -> its node.toml as it was
    snapshot_revision: int = 0
    revision_after: int = 0
    cluster_id: int = 0
    server: TemporaryMember | None = None

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return self.server.endpoint

    def admin(self, cluster: Cluster) -> EtcdAdmin:
        """etcdctl as root against the fork alone."""
        return EtcdAdmin(cluster, ["https://" + self.endpoint])


def _point_at(cluster: Cluster, node: str, endpoints: Sequence[str]) -> None:
    """Rewrite `node`'s node.toml `[etcd] endpoints` (the file is flat tables: see
    deploy.configs.dumps)."""
    path = cluster.layout.config(node)
    tables = tomllib.loads(path.read_text())
    tables["etcd"]["endpoints"] = list(endpoints)
    path.write_text(dumps(tables))


def fork_member(
    cluster: Cluster,
    member: str,
    snapshot: Path,
    *,
    bump: int,
    nodes: Sequence[str],
    work_dir: Path | None = None,
) -> Fork:
    """Fork the store: stop `member`, restore `snapshot` alone into a fresh data dir (under
    `work_dir`, default DIR/forks) with the member's own restore flags, so the cluster id stays,
    and start it as a one-member cluster of that id (`--force-new-cluster`) on client and peer
    ports of its own (the other members, which keep quorum, still dial its old peer port and
    find nothing). Bump its revision by `bump`, then point `nodes` at it alone: their node.toml
    `[etcd] endpoints` rewritten, each restarted. Two etcd histories are served at once.

    Raises InsiderError (after undoing what was done) if the fork came up with another cluster
    id than the cluster's."""
    cluster_id = cluster_status(cluster).cluster_id
    base = (work_dir or cluster.directory / "forks").resolve()
    data = base / member
    fork = Fork(member, data, tuple(nodes), {}, snapshot_revision(snapshot))
    cluster.stop(member)
    try:
        if data.exists():
            shutil.rmtree(data)
        data.parent.mkdir(parents=True, exist_ok=True)
        _restore_data(cluster, snapshot, member, data)
        fork.server = _start_fork(cluster, member, data)
        status = _bump_writes(cluster, [fork.endpoint], bump)
        fork.revision_after, fork.cluster_id = status.revision, status.cluster_id
        if status.cluster_id != cluster_id:
            raise InsiderError(
                f"the fork has cluster id {status.cluster_id:x}, the cluster {cluster_id:x}"
            )
        for node in nodes:
            fork.configs[node] = cluster.layout.config(node).read_text()
            cluster.stop(node)
            _point_at(cluster, node, [fork.endpoint])
        for node in nodes:
            cluster.start(node, wait=False)
        cluster.wait_healthy(list(nodes), timeout=NODE_START_TIMEOUT_S)
    except BaseException:
        heal_fork(cluster, fork)
        raise
    return fork


def _start_fork(cluster: Cluster, member: str, data: Path) -> TemporaryMember:
    """`member` alone on `data`, on client and peer ports of its own."""
    host = cluster.topology.host_of(cluster.process(member).dc)
    log = cluster.layout.etcd_log(member).with_suffix(".fork.log")

    def plan() -> list[Plan]:
        client_port, peer_port = free_ports(host, 2)
        url = f"https://{host}:{client_port}"
        argv = [
            *_with_flags(
                _member_argv(cluster, member, data, log),
                {"--listen-client-urls": url, "--advertise-client-urls": url,
                 "--listen-peer-urls": f"https://{host}:{peer_port}"},
            ),
            # One member of the old cluster id: the others leave its membership, and it
            # never dials them (they still dial its old peer port, where nothing listens).
            "--force-new-cluster",
        ]  # fmt: skip
        return [(member, argv, log, f"{host}:{client_port}")]

    (server,) = _start_members(cluster, plan)
    return server


def heal_fork(cluster: Cluster, fork: Fork) -> None:
    """Put everything back: the forked nodes' configs (each node stopped first, started after,
    not waited for), the fork stopped and its data removed, the member started on its own data
    (it catches up from the others).

    A node that saw the fork holds a high-water mark above the real store (the fork was
    bumped), so it comes back with its store alarm latched: only the operator's `accept_store`
    (after the heal) returns it to service."""
    for node, text in fork.configs.items():
        cluster.stop(node)
        cluster.layout.config(node).write_text(text)
    if fork.server is not None:
        fork.server.stop()
    shutil.rmtree(fork.data_dir, ignore_errors=True)
    cluster.start(fork.member)
    for node in fork.configs:
        cluster.start(node, wait=False)
