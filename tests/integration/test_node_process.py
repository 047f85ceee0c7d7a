"""A real vault node process: SoftHSM token, etcd, mTLS; register/recover through VaultNode.Open."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from account_keys import signed
from etcd_fixtures import ROOT, SecureEtcd
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hsm_fixtures import provision_tokens
from test_node_store import wait_until

from bkv.v1 import envelope_pb2, node_pb2, node_pb2_grpc
from deploy.cluster import free_ports
from deploy.etcd_auth import node_grants, node_user
from deploy.pki import Issued, issue_client, issue_server, make_ca
from vault_protocol import opaque
from vault_protocol.backup_key import BackupKey, open_transport, unwrap_key, wrap_key
from vault_protocol.continuation import StepKeys, seal_continued
from vault_protocol.envelope import FleetKey, open_response, seal_request
from vault_protocol.errors import AuthenticationError
from vault_protocol.ksf import IdentityKsf

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NODE = (sys.executable, "-m", "vault_node")
ACCOUNT = "alice@example"
PASSWORD = b"correct horse battery staple"
OPAQUE_CONFIG = opaque.OpaqueConfig(context=b"BKV-v1", ksf=IdentityKsf())
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# -- the node under test ------------------------------------------------------------------------


@dataclass
class NodeUnderTest:
    root: Path
    etcd: SecureEtcd
    proc: subprocess.Popen[bytes]
    address: str
    cluster_ca: Issued
    frontend: Issued
    rogue: Issued
    fleet: FleetKey
    stderr_path: Path
    audit_path: Path
    step_keys: dict[bytes, StepKeys] = field(default_factory=dict)  # by each step 1's ticket

    def channel(self, client: Issued | None = None) -> grpc.Channel:
        client = client or self.frontend
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.cluster_ca.cert_pem,
            private_key=client.key_pem,
            certificate_chain=client.cert_pem,
        )
        return grpc.secure_channel(self.address, creds)

    def health(self) -> int:
        with self.channel() as ch:
            try:
                reply = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="bkv.v1.VaultNode"), timeout=2
                )
            except grpc.RpcError:
                return -1
            return int(reply.status)

    def open(
        self, request: envelope_pb2.VaultRequest, account: str = ACCOUNT, ticket: bytes = b""
    ) -> envelope_pb2.VaultResponse:
        """A step 1, or (with `ticket`) the step 2 continued under that step 1's keys."""
        if ticket:
            keys = self.step_keys[ticket]
            envelope = seal_continued(
                self.fleet.fleet_id, account, ticket, keys.request2, request, os.urandom
            )
            answer_key = keys.answer2
        else:
            request.response_key = os.urandom(32)
            keys = StepKeys.derive(request.response_key)
            signed(request, self.fleet.fleet_id, account)
            envelope = seal_request(self.fleet, account, request)
            answer_key = keys.answer1
        with self.channel() as ch:
            reply = node_pb2_grpc.VaultNodeStub(ch).Open(
                node_pb2.OpenRequest(account_id=account, envelope=envelope), timeout=10
            )
        response = open_response(answer_key, reply.sealed_response)
        if response.ticket:
            self.step_keys[bytes(response.ticket)] = keys
        return response


@pytest.fixture
def node() -> Iterator[NodeUnderTest]:
    root = Path(tempfile.mkdtemp(prefix="bkv-node-proc-"))
    etcd = SecureEtcd(*node_grants("node-1", "dc-a"))  # what bkv-cluster grants a node
    etcd_cert, etcd_key = etcd.user_cert(node_user("node-1"))
    proc: subprocess.Popen[bytes] | None = None
    stderr_file = None
    try:
        specs, fleet_public = provision_tokens(root / "hsm", ["node-1"])
        spec = specs[0]
        etcd.start()
        now = datetime.datetime.now(datetime.UTC)
        cluster_ca, frontend_ca, other_ca = (
            make_ca(name, now=now) for name in ("cluster", "frontend", "x")
        )
        server = issue_server(cluster_ca, "node-1", now=now)
        frontend = issue_client(frontend_ca, "fe-1", now=now)
        rogue = issue_client(other_ca, "fe-1", now=now)  # same name, wrong CA
        pki = root / "pki"
        pki.mkdir()
        (pki / "cluster-ca.pem").write_bytes(cluster_ca.cert_pem)
        (pki / "frontend-ca.pem").write_bytes(frontend_ca.cert_pem)
        (pki / "node-1.pem").write_bytes(server.cert_pem)
        (pki / "node-1.key").write_bytes(server.key_pem)
        os.chmod(pki / "node-1.key", 0o600)
        node_client_ca = make_ca("node-client", now=now)
        node_client = issue_client(node_client_ca, "node-1", now=now)
        (pki / "node-client-ca.pem").write_bytes(node_client_ca.cert_pem)
        (pki / "node-1-node-client.pem").write_bytes(node_client.cert_pem)
        (pki / "node-1-node-client.key").write_bytes(node_client.key_pem)
        os.chmod(pki / "node-1-node-client.key", 0o600)
        address, witness_address = (f"127.0.0.1:{p}" for p in free_ports("127.0.0.1", 2))
        audit_path = root / "node-1.audit.jsonl"
        config = root / "node.toml"
        config.write_text(
            f"""
[node]
name = "node-1"
dc = "dc-a"
listen = "{address}"
advertise = "{address}"
max_attempts = 3
ticket_ttl_s = 60
lease_ttl_s = 2
audit_log = "{audit_path}"
[etcd]
endpoints = ["{etcd.endpoint}"]
ca = "{etcd.ca_path}"
cert = "{etcd_cert}"
key = "{etcd_key}"
[tls]
ca = "{pki / "cluster-ca.pem"}"
cert = "{pki / "node-1.pem"}"
key = "{pki / "node-1.key"}"
client_ca = "{pki / "frontend-ca.pem"}"
[witness]
groups = 256
name = "node-1"
serve = true
listen = "{witness_address}"
peers = ["node-1={witness_address}"]
ca = "{pki / "cluster-ca.pem"}"
client_cert = "{pki / "node-1-node-client.pem"}"
client_key = "{pki / "node-1-node-client.key"}"
client_ca = "{pki / "node-client-ca.pem"}"
journal = "{root / "node-1.witness.jsonl"}"
[hsm]
module = "{spec.module}"
softhsm_conf = "{spec.softhsm_conf}"
token_label = "{spec.token_label}"
pin_file = "{spec.pin_file}"
"""
        )
        stderr_path = root / "node-1.stderr"
        stderr_file = open(stderr_path, "wb")
        # The cluster tests run the default loop (uvloop); this node runs the standard one.
        proc = subprocess.Popen(
            [*NODE, "--config", str(config), "--event-loop", "asyncio"],
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            cwd=root,
        )
        under_test = NodeUnderTest(
            root, etcd, proc, address, cluster_ca, frontend, rogue,
            FleetKey(fleet_public.public_key), stderr_path, audit_path,
        )  # fmt: skip

        def serving() -> bool:
            assert proc is not None and proc.poll() is None, stderr_path.read_text()
            return under_test.health() == SERVING

        wait_until(serving, 30, "node never became SERVING")
        yield under_test
    finally:
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        finally:
            if stderr_file is not None:
                stderr_file.close()
            try:
                etcd.close()
            finally:
                shutil.rmtree(root, ignore_errors=True)


def register(node: NodeUnderTest, password: bytes) -> BackupKey:
    state, req = opaque.registration_start(password, os.urandom)
    r1 = node.open(
        envelope_pb2.VaultRequest(
            register_start=envelope_pb2.RegisterStart(registration_request=req)
        )
    )
    record, export_key = opaque.registration_finish(
        state, r1.register_start.registration_response, OPAQUE_CONFIG, os.urandom
    )
    key = BackupKey.generate(os.urandom)
    r2 = node.open(
        envelope_pb2.VaultRequest(
            register_finish=envelope_pb2.RegisterFinish(
                registration_record=record,
                wrapped_key=wrap_key(key, export_key, ACCOUNT, os.urandom),
            )
        ),
        ticket=r1.ticket,
    )
    assert r2.outcome == envelope_pb2.OUTCOME_OK
    return key


def recover(node: NodeUnderTest, password: bytes) -> BackupKey:
    state, ke1 = opaque.login_start(password, os.urandom)
    r1 = node.open(envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1)))
    assert r1.outcome == envelope_pb2.OUTCOME_OK
    ke3, session_key, export_key = opaque.login_finish(state, r1.recover_start.ke2, OPAQUE_CONFIG)
    r2 = node.open(
        envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3)),
        ticket=r1.ticket,
    )
    assert r2.outcome == envelope_pb2.OUTCOME_OK
    wrapped = open_transport(session_key, r2.recover_finish.transported_key)
    return unwrap_key(wrapped, export_key, ACCOUNT)


def test_node_serves_register_and_recover_over_mtls(node: NodeUnderTest) -> None:
    key = register(node, PASSWORD)
    # A wrong guess is counted and reported inside the sealed answer.
    state, ke1 = opaque.login_start(b"wrong", os.urandom)
    r = node.open(envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1)))
    assert r.outcome == envelope_pb2.OUTCOME_OK and r.guesses_left == 2
    with pytest.raises(AuthenticationError):
        opaque.login_finish(state, r.recover_start.ke2, OPAQUE_CONFIG)
    assert recover(node, PASSWORD).display() == key.display()

    audit = node.audit_path.read_text()
    assert audit.count('"event":"evaluate"') == 2 and '"event":"success"' in audit
    logs = node.stderr_path.read_text()
    for secret in (PASSWORD.decode(), key.display(), key.display().replace(" ", "")):
        assert secret not in audit and secret not in logs
    assert "INTERNAL" not in logs and "unexpected" not in logs and "Traceback" not in logs


def test_bad_input_gets_precise_status(node: NodeUnderTest) -> None:
    with node.channel() as ch:
        stub = node_pb2_grpc.VaultNodeStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Open(node_pb2.OpenRequest(account_id=ACCOUNT, envelope=b"junk"), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            stub.Open(node_pb2.OpenRequest(account_id=ACCOUNT, envelope=bytes(70_000)), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The frontend swaps the account: the HPKE open fails.
        request = envelope_pb2.VaultRequest(
            response_key=os.urandom(32),
            begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_STATUS),
        )
        envelope = seal_request(node.fleet, ACCOUNT, request)
        with pytest.raises(grpc.RpcError) as info:
            stub.Open(node_pb2.OpenRequest(account_id="mallory", envelope=envelope), timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_certificate_not_from_the_frontend_ca_is_rejected(node: NodeUnderTest) -> None:
    with node.channel(node.rogue) as ch:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    creds = grpc.ssl_channel_credentials(root_certificates=node.cluster_ca.cert_pem)
    with grpc.secure_channel(node.address, creds) as ch:  # no client certificate at all
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_fails_closed_without_etcd_and_recovers(node: NodeUnderTest) -> None:
    register(node, PASSWORD)
    evaluations = node.audit_path.read_text().count('"event":"evaluate"')
    node.etcd.kill()
    wait_until(lambda: node.health() == NOT_SERVING, 10, "still SERVING without etcd")
    _, ke1 = opaque.login_start(PASSWORD, os.urandom)
    with pytest.raises(grpc.RpcError) as info:
        node.open(envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1)))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert node.audit_path.read_text().count('"event":"evaluate"') == evaluations
    node.etcd.start()
    wait_until(lambda: node.health() == SERVING, 15, "did not serve again after etcd returned")
    recover(node, PASSWORD)


def test_sigterm_stops_gracefully(node: NodeUnderTest) -> None:
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(15) == 0
    logs = node.stderr_path.read_text()
    assert "stopped" in logs and "Traceback" not in logs
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = node.etcd.ctl(ROOT, "get", "--prefix", "/bkv/v1/nodes/")
        assert out.returncode == 0, out.stderr
        if "node-1" not in out.stdout:
            break
        time.sleep(0.1)
    assert "node-1" not in out.stdout  # the lease was revoked, the key is gone at once
