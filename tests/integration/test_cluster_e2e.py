"""The cluster issue's end-to-end properties, through the real frontends of a real 3-DC cluster.

Real etcd (3 members), real SoftHSM tokens (6 vault nodes), real frontends (2), the client library.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import grpc
import pytest

from bkv.v1 import envelope_pb2, node_pb2, node_pb2_grpc
from client import InvalidPassword, Locked, NotRegistered, Unavailable, VaultClient
from client.config import ksf_named, load_config
from client.errors import StaleSignature
from client.session import AUTH_CLOCK, AccountKey
from deploy.cluster import Cluster
from deploy.configs import Layout
from deploy.demo import run_scenario
from vault_common.wire import parse_account_refusal
from vault_protocol import envelope, opaque
from vault_protocol.account_auth import sign_request
from vault_protocol.continuation import StepKeys
from vault_protocol.errors import AuthenticationError

pytestmark = pytest.mark.integration

T = TypeVar("T")
PASSWORD = "a long and correct passphrase"
STALE_TRIES = 40  # fresh signatures per concurrent guess (see test_guess_limit_under_concurrency)


def client_for(cluster: Cluster, key_dir: Path, *, reverse: bool = False, **kw) -> VaultClient:
    """A client with the fast KSF; `reverse` puts fe-2 first so that calls spread over both."""
    config = load_config(cluster.client_config_path)
    if reverse:
        config = dataclasses.replace(config, frontends=tuple(reversed(config.frontends)))
    return VaultClient(config, key_dir=key_dir, ksf="fast", **kw)


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    return d


@pytest.fixture
def vault(healthy_cluster: Cluster, key_dir: Path) -> Iterator[VaultClient]:
    with client_for(healthy_cluster, key_dir) as v:
        v.create_account()
        yield v


def audit_by_node(cluster: Cluster) -> dict[str, list[dict[str, object]]]:
    """Every node's audit lines, per audit file (one file per node)."""
    out: dict[str, list[dict[str, object]]] = {}
    for path in sorted((cluster.directory / "logs").glob("*.audit.jsonl")):
        lines = out.setdefault(path.name, [])
        raws = [raw for raw in path.read_text().splitlines() if raw.strip()]
        for i, raw in enumerate(raws):
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                if i < len(raws) - 1:  # only a node killed mid-line, i.e. the last line, is torn
                    raise
    return out


def audit_lines(cluster: Cluster) -> list[dict[str, object]]:
    return [line for lines in audit_by_node(cluster).values() for line in lines]


def evaluations(cluster: Cluster) -> int:
    return sum(1 for line in audit_lines(cluster) if line.get("event") == "evaluate")


@pytest.mark.timeout(300)
def test_main_scenario_end_to_end(healthy_cluster: Cluster, tmp_path: Path) -> None:
    """README's scenario (register, recover, wrong guesses, reset, backup file, dc-b killed)."""
    run_scenario(healthy_cluster, tmp_path, "fast")
    # Every process (dc-b's restarted ones included) is healthy again, within a deadline.
    healthy_cluster.wait_healthy([p.name for p in healthy_cluster.status()], timeout=30)


@pytest.mark.timeout(300)
def test_guess_limit_under_concurrency(healthy_cluster: Cluster, key_dir: Path) -> None:
    """50 concurrent wrong guesses, over both frontends and all six nodes: exactly max_attempts
    are evaluated, the rest are Locked, and then the right password is Locked too.

    Frontends route one account to one node per data centre (record-cache affinity), so half of
    the guesses go through the two frontends with the client library and half straight to every
    vault node, as a frontend would send them (its client certificate, the sealed envelope).
    """
    max_attempts = 10
    with client_for(healthy_cluster, key_dir) as owner:
        account = owner.create_account()
        key = owner.register(PASSWORD)
    assert key is not None
    before = evaluations(healthy_cluster)
    audit_before = {name: len(lines) for name, lines in audit_by_node(healthy_cluster).items()}
    config = load_config(healthy_cluster.client_config_path)
    fleet = envelope.FleetKey.from_pem(Path(config.fleet_public_key).read_bytes())
    stubs = node_stubs(healthy_cluster)
    assert len(stubs) == 6
    barrier = threading.Barrier(50)

    # Every guess is signed by the account key, and the vault takes one account's signed guesses
    # in the order of their timestamps: under this much concurrency many come too late, are
    # refused as stale (nothing applied) and are signed again, as a caller that insists would.
    signer = AccountKey.load(key_dir, account).signer

    def via_frontend(i: int) -> str:
        with client_for(healthy_cluster, key_dir, account_id=account, reverse=i % 4 == 1) as c:
            c.login()
            barrier.wait(timeout=60)
            for _ in range(STALE_TRIES):
                try:
                    c.recover(f"wrong password {i}")
                except InvalidPassword:
                    return "invalid_password"
                except Locked:
                    return "locked"
                except StaleSignature:
                    continue
                return "ok"
            return "stale"

    def via_node(i: int) -> str:
        state, ke1 = opaque.login_start(f"wrong password {i}".encode(), os.urandom)
        response_key = os.urandom(32)
        request = envelope_pb2.VaultRequest(
            response_key=response_key, recover_start=envelope_pb2.RecoverStart(ke1=ke1)
        )
        stub = stubs[(i // 2) % len(stubs)][0]
        barrier.wait(timeout=60)
        floor = 0
        for _ in range(STALE_TRIES):
            sign_request(request, fleet.fleet_id, account, signer, AUTH_CLOCK.next(floor))
            sealed = envelope.seal_request(fleet, account, request)
            try:
                reply = stub.Open(
                    node_pb2.OpenRequest(account_id=account, envelope=sealed), timeout=30
                )
                break
            except grpc.RpcError as err:
                refusal = parse_account_refusal(err.details() or "")
                if refusal is None or refusal[0] != "stale":
                    raise
                floor = refusal[1]
        else:
            return "stale"
        answer = envelope.open_response(
            StepKeys.derive(response_key).answer1, reply.sealed_response
        )
        if answer.outcome == envelope_pb2.OUTCOME_LOCKED:
            return "locked"
        assert answer.outcome == envelope_pb2.OUTCOME_OK
        with pytest.raises(AuthenticationError):  # the wrong password fails at KE2
            opaque.login_finish(
                state, answer.recover_start.ke2, opaque.OpaqueConfig(ksf=ksf_named("fast"))
            )
        return "invalid_password"

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            outcomes = Counter(
                pool.map(lambda i: via_node(i) if i % 2 else via_frontend(i), range(50))
            )
    finally:
        for _, channel in stubs:
            channel.close()
    assert outcomes == Counter({"invalid_password": max_attempts, "locked": 50 - max_attempts})
    # Counted from the nodes' audit lines, not from the clients' view alone.
    assert evaluations(healthy_cluster) - before == max_attempts
    touched = {
        line["node"]
        for name, lines in audit_by_node(healthy_cluster).items()
        for line in lines[audit_before.get(name, 0) :]
        if line.get("event") in ("evaluate", "lock", "locked")
    }
    assert len(touched) == 6, f"every vault node should have answered a guess, got {touched}"
    with client_for(healthy_cluster, key_dir, account_id=account) as c:
        with pytest.raises(Locked):
            c.recover(PASSWORD)
        assert c.status().locked


@pytest.mark.timeout(300)
def test_registration_survives_dc_loss_and_quorum_loss_fails_closed(
    healthy_cluster: Cluster, vault: VaultClient
) -> None:
    key = vault.register(PASSWORD)
    healthy_cluster.kill_dc("dc-b")
    assert vault.recover(PASSWORD) == key  # acknowledged write survives one DC's loss

    healthy_cluster.kill_dc("dc-c")  # two of three etcd members gone: no quorum
    before = evaluations(healthy_cluster)
    for _ in range(3):
        with pytest.raises(Unavailable):
            vault.recover(PASSWORD)
        with pytest.raises(Unavailable):
            vault.recover("a wrong guess while the cluster has no quorum")
    assert evaluations(healthy_cluster) == before, "a password was evaluated without quorum"

    # Quorum returns: the survivors serve again by themselves (nothing else is restarted).
    survivors = {p.name: p.pid for p in healthy_cluster.status() if p.dc == "dc-a"}
    healthy_cluster.start_dc("dc-b")
    recovered = poll(lambda: vault.recover(PASSWORD), timeout=60)
    assert recovered == key
    assert {p.name: p.pid for p in healthy_cluster.status() if p.dc == "dc-a"} == survivors
    status = vault.status()
    assert status.guesses_left == status.max_attempts  # nothing was counted during the outage


def poll(fn: Callable[[], T], timeout: float) -> T:
    """Call `fn` until it stops raising Unavailable (the condition), within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.timeout(300)
def test_no_secret_in_logs_or_etcd(healthy_cluster: Cluster, vault: VaultClient) -> None:
    key = vault.register(PASSWORD)
    assert vault.recover(PASSWORD) == key
    with pytest.raises(InvalidPassword):
        vault.recover("another wrong one")
    needles = secret_needles(PASSWORD, bytes(key), key.display())
    paths = sorted((healthy_cluster.directory / "logs").iterdir())
    names = {p.name for p in paths}  # the scan below must not pass by reading nothing
    assert {f"{p.name}.log" for p in healthy_cluster.status()} <= names, names
    assert any(name.endswith(".audit.jsonl") for name in names), names
    for path in paths:
        blob = path.read_bytes()
        for label, needle in needles.items():
            assert needle not in blob, f"{label} found in {path.name}"
    values = etcd_values(healthy_cluster)
    assert any(k.startswith(b"/bkv/v1/records/") for k, _ in values)
    for k, v in values:
        for label, needle in needles.items():
            assert needle not in v and needle not in k, f"{label} found in etcd key {k!r}"


def secret_needles(password: str, key: bytes, display: str) -> dict[str, bytes]:
    return {
        "password": password.encode(),
        "key (raw)": key,
        "key (hex)": key.hex().encode(),
        "key (HEX)": key.hex().upper().encode(),
        "key (display)": display.encode(),
        "key (base64)": base64.b64encode(key).rstrip(b"="),
    }


def etcd_values(cluster: Cluster) -> list[tuple[bytes, bytes]]:
    """Every key and value in etcd, read with etcdctl as root (independent of our etcd client)."""
    done = cluster.etcdctl("get", "", "--prefix", "-w", "json", timeout=20)
    assert done.returncode == 0, done.stderr
    kvs = json.loads(done.stdout).get("kvs", [])
    return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))) for kv in kvs]


@pytest.mark.timeout(300)
def test_accounts_are_isolated(healthy_cluster: Cluster, key_dir: Path) -> None:
    with client_for(healthy_cluster, key_dir) as alice, client_for(healthy_cluster, key_dir) as bob:
        alice.create_account()
        bob.create_account()
        key = alice.register(PASSWORD)
        # Bob, with his own valid session, reaches only his own (absent) record.
        with pytest.raises(NotRegistered):
            bob.recover(PASSWORD)
        assert bob.delete() is False
        assert not bob.status().registered
        status = alice.status()
        assert status.registered and status.guesses_left == status.max_attempts
        assert alice.recover(PASSWORD) == key


@pytest.mark.timeout(120)
def test_frontend_that_swaps_the_account_is_rejected_by_the_node(
    healthy_cluster: Cluster, vault: VaultClient
) -> None:
    """A lying frontend relays Alice's envelope as Mallory's: the HPKE open fails at the node."""
    key = vault.register(PASSWORD)
    config = load_config(healthy_cluster.client_config_path)
    fleet = envelope.FleetKey.from_pem(Path(config.fleet_public_key).read_bytes())
    assert vault.account_id is not None
    _, ke1 = opaque.login_start(PASSWORD.encode(), os.urandom)
    request = envelope_pb2.VaultRequest(
        response_key=os.urandom(32), recover_start=envelope_pb2.RecoverStart(ke1=ke1)
    )
    sign_request(request, fleet.fleet_id, vault.account_id, vault.account.signer, AUTH_CLOCK.next())
    sealed = envelope.seal_request(fleet, vault.account_id, request)
    before = evaluations(healthy_cluster)
    stub, channel = node_stub(healthy_cluster)
    with channel:
        with pytest.raises(grpc.RpcError) as err:
            stub.Open(node_pb2.OpenRequest(account_id="mallory", envelope=sealed), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The same envelope under the right account opens (the rejection was the swap).
        reply = stub.Open(
            node_pb2.OpenRequest(account_id=vault.account_id, envelope=sealed), timeout=10
        )
        assert reply.sealed_response
    assert evaluations(healthy_cluster) == before + 1
    assert vault.recover(PASSWORD) == key


def node_stubs(cluster: Cluster) -> list[tuple[node_pb2_grpc.VaultNodeStub, grpc.Channel]]:
    """Stubs to every healthy vault node, authenticated with a frontend's client certificate."""
    pki = Layout(cluster.directory).pki
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.cluster_ca.cert.read_bytes(),
        private_key=pki.frontend_client("fe-1").key.read_bytes(),
        certificate_chain=pki.frontend_client("fe-1").cert.read_bytes(),
    )
    out = []
    for node in cluster.status():
        if node.role == "node" and node.healthy:
            channel = grpc.secure_channel(node.address, creds)
            out.append((node_pb2_grpc.VaultNodeStub(channel), channel))
    return out


def node_stub(cluster: Cluster) -> tuple[node_pb2_grpc.VaultNodeStub, grpc.Channel]:
    """A stub to one vault node, authenticated with a frontend's client certificate."""
    first, *rest = node_stubs(cluster)
    for _, channel in rest:
        channel.close()
    return first
