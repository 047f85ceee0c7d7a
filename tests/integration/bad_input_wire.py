"""Raw wire access to a running cluster, for the bad-input tests (integration and fuzz tiers).

Everything here talks to the real processes as an attacker would: bytes in, a gRPC status out.

    wire = Wire(cluster)
    account = register_account(wire, key_dir, "fuzz")          # a real account, known password
    answer = relay(wire.frontend(0), account.token, envelope)  # -> Answer(code, details, body)
    answer = open_on_node(wire.node("dc-a-node-1"), account.id, envelope)   # mTLS as fe-1
    watch = Watch(wire); ...; watch.assert_unharmed()           # no crash, no traceback
    assert_account_intact(account)                              # guesses untouched, recoverable
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from bkv.v1 import envelope_pb2, frontend_pb2, node_pb2
from client.config import ClientConfig, load_config, load_fleet_key
from client.session import AUTH_CLOCK, AccountKey, login_request
from client.vault import VaultClient
from deploy.cluster import Cluster
from vault_protocol.account_auth import AccountSigner, sign_request
from vault_protocol.backup_key import BackupKey
from vault_protocol.continuation import StepKeys, seal_continued
from vault_protocol.envelope import (
    PROTOCOL_VERSION,
    FleetKey,
    envelope_info,
    open_response,
    pad,
    seal_request,
)
from vault_protocol.ksf import IdentityKsf

Code = grpc.StatusCode
OK = Code.OK
INVALID_ARGUMENT = Code.INVALID_ARGUMENT
UNAUTHENTICATED = Code.UNAUTHENTICATED
FAILED_PRECONDITION = Code.FAILED_PRECONDITION
RESOURCE_EXHAUSTED = Code.RESOURCE_EXHAUSTED

# DESIGN.md invariant 7 / docs/architecture.md: what bad input may get. UNAVAILABLE only when a
# process is really down, which the bad-input tests never cause; INTERNAL/UNKNOWN never.
DOCUMENTED = frozenset(
    {OK, INVALID_ARGUMENT, UNAUTHENTICATED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED}
)

# Lines that only an unhandled exception writes: Python's traceback header, the frontend's and
# the node's INTERNAL log lines, and grpc's own "Unexpected [X] raised by servicer method".
LOG_ALARMS = re.compile(
    r"Traceback \(most recent call last\)|failed unexpectedly|unexpected \w+ in Open at"
    r"|Unexpected \[\w+\] raised by servicer"
)

FRONTEND_METHODS = ("GetChallenge", "Login", "Relay")
OPEN_METHOD = "/bkv.v1.VaultNode/Open"
HPKE_SUITE = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
HPKE_ENC_BYTES = 65
TLS_NAME = "localhost"
CALL_TIMEOUT_S = 10.0


def frontend_method(name: str) -> str:
    return f"/bkv.v1.Frontend/{name}"


@dataclass(frozen=True)
class Answer:
    """A call's outcome: the status, its details, and the serialized reply when OK."""

    code: grpc.StatusCode
    details: str = ""
    body: bytes = b""
    trailing: tuple[tuple[str, str | bytes], ...] = ()

    def __repr__(self) -> str:
        return f"Answer({self.code.name}, {self.details[:80]!r}, {len(self.body)} bytes)"


def call_raw(
    channel: grpc.Channel,
    method: str,
    payload: bytes,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = CALL_TIMEOUT_S,
) -> Answer:
    """Send `payload` as the request message bytes (no client-side serialization at all)."""
    rpc = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    try:
        body = rpc(payload, metadata=tuple(metadata), timeout=timeout)
    except grpc.RpcError as err:
        call = cast(grpc.Call, err)
        return Answer(call.code(), call.details() or "", b"", tuple(call.trailing_metadata() or ()))
    return Answer(OK, "", bytes(body))


class Wire:
    """Channels to the cluster's frontends (TLS, cluster CA) and nodes (mTLS as a frontend)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.config: ClientConfig = load_config(cluster.client_config_path)
        self.fleet: FleetKey = load_fleet_key(self.config)
        pki = cluster.layout.pki
        self.ca = pki.cluster_ca.cert.read_bytes()
        client = pki.frontend_client(cluster.topology.frontends[0].name)
        self._client_cert = client.cert.read_bytes()
        self._client_key = client.key.read_bytes()
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    @property
    def frontend_addresses(self) -> tuple[str, ...]:
        return self.config.frontends

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.cluster.topology.nodes]

    def _channel(self, address: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
        with self._lock:
            if address not in self._channels:
                self._channels[address] = grpc.secure_channel(
                    address,
                    credentials,
                    options=[
                        ("grpc.ssl_target_name_override", TLS_NAME),
                        ("grpc.enable_retries", 0),
                        # Let the server, not this client, decide what is too large.
                        ("grpc.max_send_message_length", -1),
                    ],
                )
            return self._channels[address]

    def frontend(self, index: int = 0) -> grpc.Channel:
        address = self.frontend_addresses[index % len(self.frontend_addresses)]
        return self._channel(address, grpc.ssl_channel_credentials(root_certificates=self.ca))

    def node(self, name: str) -> grpc.Channel:
        """A channel to a vault node with the first frontend's client certificate (mTLS)."""
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self._client_key,
            certificate_chain=self._client_cert,
        )
        return self._channel(self.cluster.process(name).address, credentials)

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    @classmethod
    @contextlib.contextmanager
    def started(cls, cluster: Cluster) -> Iterator[Wire]:
        """A wire to `cluster` with every process running (an earlier test, or a failed chaos
        test, may have left one down), closed afterwards: the module fixtures' `wire`."""
        cluster.start_all()
        wire = cls(cluster)
        try:
            yield wire
        finally:
            wire.close()


# -- frontend calls ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wire(cluster: Cluster) -> Iterator[Wire]:
    """The fixture every user of this module takes (integration and fuzz conftests)."""
    with Wire.started(cluster) as w:
        yield w


def get_challenge(channel: grpc.Channel, account_id: str) -> Answer:
    request = frontend_pb2.ChallengeRequest(account_id=account_id)
    return call_raw(channel, frontend_method("GetChallenge"), request.SerializeToString())


def login_with(channel: grpc.Channel, request: frontend_pb2.LoginRequest) -> Answer:
    return call_raw(channel, frontend_method("Login"), request.SerializeToString())


def login(channel: grpc.Channel, key: AccountKey) -> str:
    """GetChallenge -> sign -> Login; the session token."""
    challenge = get_challenge(channel, key.account_id)
    assert challenge.code == OK, challenge
    reply = login_with(
        channel,
        login_request(key, frontend_pb2.ChallengeReply.FromString(challenge.body).challenge),
    )
    assert reply.code == OK, reply
    return str(frontend_pb2.LoginReply.FromString(reply.body).session_token)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def relay(channel: grpc.Channel, token: str | None, envelope: bytes) -> Answer:
    """Frontend.Relay of `envelope` with `token` (None: no authorization metadata)."""
    request = frontend_pb2.RelayRequest(envelope=envelope)
    metadata = bearer(token) if token is not None else ()
    return call_raw(channel, frontend_method("Relay"), request.SerializeToString(), metadata)


def open_on_node(channel: grpc.Channel, account_id: str, envelope: bytes) -> Answer:
    """VaultNode.Open as a frontend would call it."""
    request = node_pb2.OpenRequest(account_id=account_id, envelope=envelope)
    return call_raw(channel, OPEN_METHOD, request.SerializeToString())


def sealed_response(answer: Answer, node_level: bool = False) -> bytes:
    """The SealedResponse bytes of an OK Relay (or, `node_level`, Open) answer."""
    assert answer.code == OK, answer
    if node_level:
        return bytes(node_pb2.OpenReply.FromString(answer.body).sealed_response)
    return bytes(frontend_pb2.RelayReply.FromString(answer.body).sealed_response)


# -- envelopes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sealed:
    """A sealed request and the key its answer opens with (protocol 3: step 1's answer key, or
    step 2's). A step 1's answer registers its ticket's keys for the step 2 that follows."""

    envelope: bytes
    response_key: bytes
    keys: StepKeys | None = None

    def open(self, sealed: bytes) -> envelope_pb2.VaultResponse:
        response = open_response(self.response_key, sealed)
        if self.keys is not None and response.ticket:
            _STEP_KEYS[bytes(response.ticket)] = self.keys
        return response


@dataclass(frozen=True)
class Continued:
    """A second step: its request and the ticket of the step 1 it continues."""

    request: envelope_pb2.VaultRequest
    ticket: bytes


# The step keys of every step 1 answered here, by its ticket (what a client keeps between steps).
_STEP_KEYS: dict[bytes, StepKeys] = {}
# The account keys of the accounts made here (`register_account`), which sign their step 1s.
_SIGNERS: dict[str, AccountSigner] = {}


def seal(
    fleet: FleetKey,
    account_id: str,
    request: envelope_pb2.VaultRequest | Continued,
    signer: AccountSigner | None = None,
) -> Sealed:
    """A genuine envelope: a step 1 (`seal_request`, a fresh response key, signed by `signer`
    or by the key of an account `register_account` made; unsigned for any other), or a step 2
    (`seal_continued` under the keys of its ticket's step 1; an unknown ticket gets keys of
    no step 1, an empty one is sent empty as a frontend could)."""
    if isinstance(request, Continued):
        keys = _STEP_KEYS.get(request.ticket) or StepKeys.derive(secrets.token_bytes(32))
        ticket = request.ticket or b"\x00"
        blob = seal_continued(
            fleet.fleet_id, account_id, ticket, keys.request2, request.request, os.urandom
        )
        if not request.ticket:
            envelope = envelope_pb2.ContinuedEnvelope.FromString(blob)
            envelope.ticket = b""
            blob = bytes(envelope.SerializeToString(deterministic=True))
        return Sealed(blob, keys.answer2)
    request.response_key = secrets.token_bytes(32)
    keys = StepKeys.derive(bytes(request.response_key))
    signer = signer or _SIGNERS.get(account_id)
    if signer is not None:
        sign_request(request, fleet.fleet_id, account_id, signer, AUTH_CLOCK.next())
    return Sealed(seal_request(fleet, account_id, request), keys.answer1, keys)


def status_request() -> envelope_pb2.VaultRequest:
    """A status question's first step (protocol 3: its second is `StatusRequest` continued)."""
    return envelope_pb2.VaultRequest(begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_STATUS))


def seal_plaintext(
    fleet: FleetKey,
    account_id: str,
    plaintext: bytes,
    *,
    info_fleet_id: bytes | None = None,
    envelope_fleet_id: bytes | None = None,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """HPKE-seal arbitrary `plaintext` (no padding, no checks) into a SealedEnvelope.

    `info_fleet_id` changes the fleet id bound into HPKE's info, `envelope_fleet_id` the one the
    envelope claims: what a client that is wrong (or lying) about the fleet would send.
    """
    info = envelope_info(info_fleet_id or fleet.fleet_id, account_id)
    sealed = HPKE_SUITE.encrypt(plaintext, fleet.public_key, info)
    envelope = envelope_pb2.SealedEnvelope(
        version=version,
        fleet_id=fleet.fleet_id if envelope_fleet_id is None else envelope_fleet_id,
        enc=sealed[:HPKE_ENC_BYTES],
        ciphertext=sealed[HPKE_ENC_BYTES:],
    )
    return bytes(envelope.SerializeToString(deterministic=True))


def seal_padded(fleet: FleetKey, account_id: str, request: envelope_pb2.VaultRequest) -> bytes:
    """Pad and seal `request` as is (even without response key or operation)."""
    return seal_plaintext(fleet, account_id, pad(request.SerializeToString(deterministic=True)))


def other_fleet() -> FleetKey:
    """A fleet key nobody in the cluster holds."""
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return FleetKey(
        key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


# -- accounts ------------------------------------------------------------------------------------


@dataclass
class Account:
    """A registered account with a known password (IdentityKsf: test speed, not security)."""

    key: AccountKey
    client: VaultClient
    password: bytes
    backup_key: BackupKey
    token: str = field(repr=False, default="")

    @property
    def id(self) -> str:
        return self.key.account_id


def register_account(
    wire: Wire, key_dir: Path, prefix: str, max_attempts: int | None = None
) -> Account:
    """Create an account key, log in, register a fresh backup key behind a random password."""
    account_id = f"{prefix}-{secrets.token_hex(8)}"
    key = AccountKey.create(key_dir, account_id)
    _SIGNERS[account_id] = key.signer
    client = VaultClient(wire.config, account_id=account_id, key_dir=key_dir, ksf=IdentityKsf())
    password = secrets.token_hex(16).encode()
    backup_key = client.register(password, max_attempts=max_attempts)
    account = Account(key, client, password, backup_key)
    account.token = login(wire.frontend(0), key)
    return account


def assert_account_intact(account: Account, max_attempts: int = 10) -> None:
    """No bad input counted a guess or touched the record: full guesses, and it recovers."""
    status = account.client.status()
    assert status.registered and not status.locked, status
    assert status.max_attempts == max_attempts, status
    assert status.guesses_left == max_attempts, f"a guess was counted: {status}"
    assert account.client.recover(account.password) == account.backup_key
    assert account.client.status().guesses_left == max_attempts


# -- process health and logs ---------------------------------------------------------------------


def wait_healthy(cluster: Cluster, timeout: float = 15.0) -> dict[str, int | None]:
    """Poll until every process is healthy; its child pids."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = cluster.status()
        unhealthy = [s.name for s in statuses if not s.healthy]
        if not unhealthy:
            return {s.name: s.pid for s in statuses}
        if time.monotonic() > deadline:
            raise AssertionError(f"processes not healthy: {unhealthy}")
        time.sleep(0.2)


class Watch:
    """Remembers every process's pid and where its log ends; checks nothing crashed since."""

    def __init__(self, wire: Wire) -> None:
        self.cluster = wire.cluster
        self.pids = wait_healthy(self.cluster)
        self.logs = {
            name: self.cluster.layout.log(name)
            for name in [n.name for n in self.cluster.topology.nodes]
            + [f.name for f in self.cluster.topology.frontends]
        }
        self.offsets = {name: _size(path) for name, path in self.logs.items()}

    def new_log_text(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, path in self.logs.items():
            with path.open("rb") as f:
                f.seek(self.offsets[name])
                out[name] = f.read().decode("utf-8", "replace")
        return out

    def alarms(self) -> list[str]:
        """Log lines written since the start that only an unhandled exception writes."""
        return [
            f"{name}: {line}"
            for name, text in self.new_log_text().items()
            for line in text.splitlines()
            if LOG_ALARMS.search(line)
        ]

    def assert_processes_unharmed(self) -> None:
        """Every process healthy, and none was restarted (same child pid as at the start)."""
        after = wait_healthy(self.cluster)
        restarted = {
            n: (self.pids[n], after.get(n)) for n in self.pids if after.get(n) != self.pids[n]
        }
        assert not restarted, f"processes died and were restarted (pid before, after): {restarted}"

    def assert_unharmed(self) -> None:
        self.assert_processes_unharmed()
        alarms = self.alarms()
        assert not alarms, "unhandled exceptions in the logs:\n" + "\n".join(alarms[:20])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Pacer:
    """Keeps calls under a rate (per second) so that they reach the node, not the rate limiter.

    A time-based wait is the point here (the frontend's token bucket refills with time).
    """

    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate_per_s
        self._clock = clock
        self._next = clock()

    def wait(self) -> None:
        now = self._clock()
        if now < self._next:
            time.sleep(self._next - now)
        self._next = max(now, self._next) + self._interval
