"""The real frontend process against a real etcd and fake mTLS vault nodes.

Each stack: one locked-down etcd (`SecureEtcd`: TLS, client-certificate auth, auth on; the
frontend's etcd user may read /bkv/v1/nodes/ and read-write /bkv/v1/accounts/ and
/bkv/v1/sessions/, nothing else), certificates made here (a cluster CA for server certificates, a
frontend CA for the frontend's client certificate), fake VaultNode servers that require the
frontend's client certificate, and `python -m frontend_chatd --config frontend.toml`.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from etcd_fixtures import SecureEtcd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bkv.v1 import frontend_pb2, frontend_pb2_grpc, node_pb2, node_pb2_grpc
from deploy.cluster import free_ports
from deploy.etcd_auth import frontend_grants
from deploy.pki import CertPaths, Issued, issue_client, issue_server, make_ca
from etcd_client import EtcdClient
from frontend_chatd.accounts import LOGIN_CONTEXT
from frontend_chatd.sessions import SessionKeys, SessionTokens

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
FRONTEND = (sys.executable, "-m", "frontend_chatd")
SERVICE = "bkv.v1.Frontend"
T = TypeVar("T")
ETCD_USER = "bkv-frontend-fe-1"  # CN of the frontend's etcd client certificate
ETCD_ROLES, ETCD_USERS = frontend_grants("fe-1")  # exactly what bkv-cluster grants a frontend


def free_port() -> int:
    return free_ports("127.0.0.1", 1)[0]  # below the ephemeral range (deploy.cluster)


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- certificates --------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(issued: Issued, directory: Path, name: str) -> tuple[Path, Path]:
    """`name`.pem and `name`.key (0600) in `directory`: (certificate path, key path)."""
    paths = CertPaths(directory / f"{name}.pem", directory / f"{name}.key")
    issued.write(paths)
    return paths.cert, paths.key


# --- etcd ----------------------------------------------------------------------------------


def etcd_run(etcd: SecureEtcd, coro_fn: Callable[[EtcdClient], Any]) -> Any:
    """Run `coro_fn(client)` with a client connected as root (the test plays the nodes)."""

    async def main() -> Any:
        async with EtcdClient(etcd.config_for("root", call_timeout_s=5)) as client:
            return await coro_fn(client)

    return asyncio.run(main())


def start_etcd() -> SecureEtcd:
    """One locked-down etcd member with the frontend's etcd user; the caller closes it."""
    etcd = SecureEtcd(ETCD_ROLES, ETCD_USERS)
    try:
        etcd.start()
    except BaseException:
        etcd.close()
        raise
    return etcd


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- fake vault node -----------------------------------------------------------------------


@dataclass
class FakeNode:
    """A VaultNode servicer that requires a frontend client certificate and records calls."""

    name: str
    dc: str
    port: int
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    server: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def Open(self, request: node_pb2.OpenRequest, context: Any) -> node_pb2.OpenReply:
        self.calls.append((request.account_id, bytes(request.envelope)))
        if request.envelope == b"stale-ticket":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "ticket already used")
        return node_pb2.OpenReply(sealed_response=f"{self.name}:".encode() + request.envelope)

    def start(self, cert: Path, key: Path, frontend_ca: Path) -> None:
        servicer = type("S", (node_pb2_grpc.VaultNodeServicer,), {"Open": self.Open})()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        node_pb2_grpc.add_VaultNodeServicer_to_server(servicer, self.server)
        credentials = grpc.ssl_server_credentials(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=frontend_ca.read_bytes(),
            require_client_auth=True,
        )
        assert self.server.add_secure_port(self.address, credentials) == self.port
        self.server.start()

    def kill(self) -> None:
        self.server.stop(None).wait(5)


# --- the stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    directory: Path
    etcd: SecureEtcd
    cluster_ca: Issued
    frontend_ca: Issued
    session_secret: bytes
    frontend: subprocess.Popen[bytes] | None = None
    frontend_port: int = 0
    channel: Any = None
    nodes: list[FakeNode] = field(default_factory=list)
    leases: dict[str, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.directory / "frontend.log"

    @property
    def etcd_endpoint(self) -> str:
        return self.etcd.endpoint

    def restart_etcd_after_kill(self, between: Callable[[], None]) -> None:
        """SIGKILL etcd, run `between` while it is down, start it again on its data dir."""
        self.etcd.kill()  # waits for the PID to be gone before a restart (PLATFORM)
        between()
        self.etcd.start()

    def add_node(self, name: str, dc: str) -> FakeNode:
        node = FakeNode(name, dc, free_port())
        cert, key = _write(issue_server(self.cluster_ca, name, now=_now()), self.directory, name)
        node.start(cert, key, self.directory / "frontend-ca.pem")
        self.nodes.append(node)
        self.register(node)
        return node

    def node_key(self, node: FakeNode) -> bytes:
        return f"/bkv/v1/nodes/{node.dc}/{node.name}".encode()

    def register(self, node: FakeNode) -> None:
        value = json.dumps({"name": node.name, "dc": node.dc, "address": node.address})

        async def put(client: EtcdClient) -> None:
            lease = await client.lease_grant(60)
            await client.put(self.node_key(node), value.encode(), lease=lease.lease_id)

        etcd_run(self.etcd, put)

    def unregister(self, node: FakeNode) -> None:
        etcd_run(self.etcd, lambda c: c.delete(self.node_key(node)))

    def write_config(self, **limits: float) -> Path:
        d = self.directory
        secret = d / "session.key"
        secret.write_bytes(self.session_secret)
        fe_cert, fe_key = _write(issue_server(self.cluster_ca, "fe-1", now=_now()), d, "fe-1")
        client = issue_client(self.frontend_ca, "fe-1-client", now=_now())
        client_cert, client_key = _write(client, d, "fe-1-client")
        etcd_tls = self.etcd.tls_for(ETCD_USER)
        values = {
            "account_rate_per_s": 20.0,
            "account_burst": 40,
            "peer_rate_per_s": 1000.0,
            "peer_burst": 2000,
            "max_request_bytes": 65536,
            "node_deadline_s": 3.0,
        } | limits
        self.frontend_port = free_port()
        text = f"""
[frontend]
name = "fe-1"
dc = "dc-a"
listen = "127.0.0.1:{self.frontend_port}"
session_secret_file = "{secret}"
enrollment_secret_file = ""
session_ttl_s = 3600
[limits]
account_rate_per_s = {float(values["account_rate_per_s"])}
account_burst = {int(values["account_burst"])}
peer_rate_per_s = {float(values["peer_rate_per_s"])}
peer_burst = {int(values["peer_burst"])}
max_request_bytes = {int(values["max_request_bytes"])}
node_deadline_s = {float(values["node_deadline_s"])}
[etcd]
endpoints = ["{self.etcd_endpoint}"]
ca = "{etcd_tls.ca}"
cert = "{etcd_tls.cert}"
key = "{etcd_tls.key}"
server_name = "{etcd_tls.server_name}"
[tls]
cert = "{fe_cert}"
key = "{fe_key}"
cluster_ca = "{d / "cluster-ca.pem"}"
client_cert = "{client_cert}"
client_key = "{client_key}"
"""
        path = d / "frontend.toml"
        path.write_text(text)
        return path

    def start_frontend(self, **limits: float) -> None:
        config = self.write_config(**limits)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            # The cluster tests run the default loop (uvloop); this stack runs the standard one.
            self.frontend = subprocess.Popen(
                [*FRONTEND, "--config", str(config), "--event-loop", "asyncio"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(self.directory / "cluster-ca.pem").read_bytes()
        )
        self.channel = grpc.secure_channel(f"127.0.0.1:{self.frontend_port}", credentials)

    def health(self) -> int:
        assert self.frontend is not None
        if self.frontend.poll() is not None:
            raise AssertionError("frontend exited:\n" + self.log_path.read_text())
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            return int(stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1).status)
        except grpc.RpcError:
            return -1

    def wait_serving(self, serving: bool = True) -> None:
        want = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        wait_for(lambda: self.health() == want, what=f"health {want}")

    @property
    def stub(self) -> Any:
        return frontend_pb2_grpc.FrontendStub(self.channel)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.frontend is not None:
            stop(self.frontend)
        for node in self.nodes:
            node.kill()
        self.etcd.close()


@pytest.fixture(scope="module")
def pki_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="bkv-fe-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def make_stack(directory: Path, **limits: float) -> Stack:
    directory.mkdir(parents=True, exist_ok=True)
    cluster_ca, frontend_ca = make_ca("cluster-ca", now=_now()), make_ca("frontend-ca", now=_now())
    (directory / "cluster-ca.pem").write_bytes(cluster_ca.cert_pem)
    (directory / "frontend-ca.pem").write_bytes(frontend_ca.cert_pem)
    etcd = start_etcd()
    stack = Stack(directory, etcd, cluster_ca, frontend_ca, os.urandom(32))
    try:
        stack.add_node("n1", "dc-a")
        stack.start_frontend(**limits)
        stack.wait_serving()
    except BaseException:
        stack.close()
        raise
    return stack


@pytest.fixture(scope="module")
def stack(pki_dir: Path) -> Iterator[Stack]:
    s = make_stack(pki_dir / "main", account_rate_per_s=2.0, account_burst=10)
    try:
        yield s
    finally:
        s.close()


# --- client helpers ------------------------------------------------------------------------


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def login(stack: Stack, account: str, key: Ed25519PrivateKey) -> frontend_pb2.LoginReply:
    challenge = stack.stub.GetChallenge(
        frontend_pb2.ChallengeRequest(account_id=account), timeout=5
    ).challenge
    return stack.stub.Login(
        frontend_pb2.LoginRequest(
            account_id=account,
            public_key=raw(key),
            challenge=challenge,
            signature=key.sign(LOGIN_CONTEXT + challenge),
        ),
        timeout=5,
    )


def relay(stack: Stack, token: str | None, envelope: bytes) -> Any:
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    return stack.stub.Relay(
        frontend_pb2.RelayRequest(envelope=envelope), metadata=metadata, timeout=10
    )


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


# --- tests ---------------------------------------------------------------------------------


def test_health_serving_and_reflection_lists_service(stack: Stack) -> None:
    assert stack.health() == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    replies = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_login_binds_key_and_rejects_another(stack: Stack) -> None:
    key = Ed25519PrivateKey.generate()
    reply = login(stack, "alice@example.org", key)
    assert reply.session_token.startswith("v1.")
    assert reply.expires_at_ms > time.time() * 1000
    bound = etcd_run(stack.etcd, lambda c: c.get(b"/bkv/v1/accounts/alice@example.org"))
    assert bytes(bound.value) == raw(key)
    login(stack, "alice@example.org", key)  # the same key logs in again
    err = rpc_error(lambda: login(stack, "alice@example.org", Ed25519PrivateKey.generate()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = rpc_error(
        lambda: stack.stub.GetChallenge(frontend_pb2.ChallengeRequest(account_id="a b"), timeout=5)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_frontends_etcd_user_has_only_its_role(stack: Stack) -> None:
    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return stack.etcd.ctl(ETCD_USER, *args)

    assert ctl("get", "--prefix", "/bkv/v1/nodes/").returncode == 0
    assert ctl("put", "/bkv/v1/sessions/probe", "x").returncode == 0
    for denied in [
        ("put", "/bkv/v1/nodes/dc-a/impostor", "{}"),  # a frontend cannot announce a node
        ("get", "/bkv/v1/records/00"),  # nor read sealed records
        ("put", "/bkv/v1/records/00", "x"),
        ("user", "list"),
    ]:
        result = ctl(*denied)
        assert result.returncode != 0 and "permission denied" in result.stderr, denied


def test_racing_first_logins_bind_exactly_one_key(stack: Stack) -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(6)]
    with futures.ThreadPoolExecutor(len(keys)) as pool:
        outcomes = list(pool.map(lambda k: _login_outcome(stack, "race@example.org", k), keys))
    assert outcomes.count(grpc.StatusCode.OK) == 1
    assert outcomes.count(grpc.StatusCode.UNAUTHENTICATED) == len(keys) - 1
    winner = keys[outcomes.index(grpc.StatusCode.OK)]
    bound = etcd_run(stack.etcd, lambda c: c.get(b"/bkv/v1/accounts/race@example.org"))
    assert bytes(bound.value) == raw(winner)


def _login_outcome(stack: Stack, account: str, key: Ed25519PrivateKey) -> grpc.StatusCode:
    try:
        login(stack, account, key)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_relay_rejects_missing_forged_and_expired_tokens(stack: Stack) -> None:
    token = login(stack, "bob", Ed25519PrivateKey.generate()).session_token
    keys = SessionKeys.derive(stack.session_secret)
    expired, _ = SessionTokens(keys, 3600, lambda: time.time() - 7200).mint("bob")
    forged, _ = SessionTokens(SessionKeys.derive(os.urandom(32)), 3600, time.time).mint("bob")
    parts = token.split(".")
    swapped = ".".join([parts[0], "YWxpY2U", parts[2], parts[3]])  # account "alice", bob's MAC
    calls_before = len(stack.nodes[0].calls)
    for bad in [None, "", forged, expired, swapped, "v1.garbage"]:
        err = rpc_error(lambda bad=bad: relay(stack, bad, b"envelope"))  # type: ignore[misc]
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, bad
    assert len(stack.nodes[0].calls) == calls_before


def test_relay_reaches_node_with_session_account(stack: Stack) -> None:
    token = login(stack, "carol", Ed25519PrivateKey.generate()).session_token
    reply = relay(stack, token, b"sealed-envelope-bytes")
    assert reply.sealed_response == b"n1:sealed-envelope-bytes"
    assert stack.nodes[0].calls[-1] == ("carol", b"sealed-envelope-bytes")
    err = rpc_error(lambda: relay(stack, token, b"stale-ticket"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ticket already used" in (err.details() or "")
    err = rpc_error(lambda: relay(stack, token, b""))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_request_rejected(stack: Stack) -> None:
    token = login(stack, "dave", Ed25519PrivateKey.generate()).session_token
    calls_before = len(stack.nodes[0].calls)
    err = rpc_error(lambda: relay(stack, token, b"\x00" * (10 * 1024 * 1024)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(stack.nodes[0].calls) == calls_before


def test_account_rate_limit_with_retry_after(stack: Stack) -> None:
    token = login(stack, "erin", Ed25519PrivateKey.generate()).session_token
    other = login(stack, "frank", Ed25519PrivateKey.generate()).session_token
    error = None
    for _ in range(40):  # burst 10, refill 2/s: exhausted long before 40 calls
        try:
            relay(stack, token, b"x")
        except grpc.RpcError as e:
            error = e
            break
    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(error.trailing_metadata() or ())
    assert 0 < int(trailing["retry-after-ms"]) <= 1000
    assert relay(stack, other, b"y").sealed_response == b"n1:y"  # other accounts unaffected


def test_log_lines_carry_no_secrets(stack: Stack) -> None:
    token = login(stack, "grace", Ed25519PrivateKey.generate()).session_token
    relay(stack, token, b"secret-envelope-marker")
    wait_for(lambda: "method=Relay" in stack.log_path.read_text(), what="access log")
    text = stack.log_path.read_text()
    assert token not in text and token.split(".")[3] not in text
    assert "secret-envelope-marker" not in text and "grace" not in text
    assert stack.session_secret.hex() not in text


def test_failover_to_other_dc_and_removal(pki_dir: Path) -> None:
    s = make_stack(pki_dir / "failover")
    try:
        n1 = s.nodes[0]
        token = login(s, "heidi", Ed25519PrivateKey.generate()).session_token
        assert relay(s, token, b"a").sealed_response == b"n1:a"
        n2 = s.add_node("n2", "dc-b")
        # Same DC first: with both live, n1 (dc-a, like the frontend) gets every request.
        for _ in range(3):
            assert relay(s, token, b"b").sealed_response == b"n1:b"
        n1.kill()  # its membership key stays on its lease: the relay must fail over
        assert relay(s, token, b"c").sealed_response == b"n2:c"
        assert n2.calls[-1] == ("heidi", b"c")
        # Removing the dead node's key takes it out of routing: no more attempts at n1.
        s.unregister(n1)

        def n1_dropped() -> bool:
            before = s.log_path.read_text().count("vault node n1 (dc-a) unreachable")
            assert relay(s, token, b"d").sealed_response == b"n2:d"
            return s.log_path.read_text().count("vault node n1 (dc-a) unreachable") == before

        wait_for(n1_dropped, what="n1 dropped from routing")
        s.unregister(n2)
        s.wait_serving(False)
        err = rpc_error(lambda: relay(s, token, b"e"))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()


def test_watch_resumes_after_etcd_restart(pki_dir: Path) -> None:
    s = make_stack(pki_dir / "etcd-restart")
    try:
        token = login(s, "ivan", Ed25519PrivateKey.generate()).session_token
        s.restart_etcd_after_kill(lambda: s.wait_serving(False))
        s.wait_serving(True)  # the watch came back by itself
        # A node announced after the restart is seen: the watch really follows new revisions.
        s.add_node("n2", "dc-b")
        s.nodes[0].kill()

        def reaches_n2() -> bool:
            try:
                return bool(relay(s, token, b"f").sealed_response == b"n2:f")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                return False

        wait_for(reaches_n2, what="relay to the node registered after the etcd restart")
    finally:
        s.close()


def test_graceful_stop_on_sigterm(pki_dir: Path) -> None:
    s = make_stack(pki_dir / "sigterm")
    try:
        assert s.frontend is not None
        s.frontend.send_signal(signal.SIGTERM)
        assert s.frontend.wait(15) == 0
        assert "stopping" in s.log_path.read_text()
    finally:
        s.close()


def test_bad_config_exits_with_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "frontend.toml"
    config.write_text('[frontend]\nname = ""\n')
    result = subprocess.run(
        [sys.executable, "-m", "frontend_chatd", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "missing table [limits]" in result.stderr and "frontend.dc: missing" in result.stderr


@pytest.mark.parametrize("module", ["frontend_chatd", "vault_node"])
def test_unknown_event_loop_is_refused(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--config", "unused.toml", "--event-loop", "trio"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--event-loop: invalid choice: 'trio'" in result.stderr
