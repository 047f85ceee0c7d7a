"""Bad-input and account-swap probes, sent at the gRPC level (below the client library).

* To a frontend's `Relay`, with a valid session of a probe account: garbage, empty, truncated,
  oversized envelopes, one sealed to another fleet, well-sealed requests with malformed OPAQUE
  messages, and calls without or with a forged session token.
* To a vault node's `Open`, with a frontend's client certificate from the cluster's pki dir:
  garbage envelopes, an empty and an overlong account id.
* Wire-level (`wire=True`): request bytes that are not a protobuf at all, to `Relay` and to
  `Open` (grpcio alone answers these UNKNOWN; the servers map them to INVALID_ARGUMENT).
  `bkv-chaos` sends them by default (`--no-wire-probes` leaves them out).
* Account swap: a recovery start sealed for a good account A, relayed with the probe account's
  session — the frontend passes the probe's account to the node, whose open must fail because
  the envelope's HPKE info binds A (recorded as a `recover` of A by the probe account).

Each probe is one history operation (`bad_input`, with the gRPC status name): documented codes
are `bad_input_rejected`, INTERNAL/UNKNOWN are `internal`, UNAVAILABLE/deadline are indefinite.
The probes' own bytes are random or zero: none is a secret of the run.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bkv.v1 import envelope_pb2, frontend_pb2, frontend_pb2_grpc, node_pb2
from bkv_chaos.recorder import Outcome, Recorder
from client.session import AUTH_CLOCK, AccountKey, login_request
from vault_protocol import opaque
from vault_protocol.account_auth import sign_request
from vault_protocol.continuation import seal_continued
from vault_protocol.envelope import FleetKey, seal_request

CALL_TIMEOUT_S = 3.0
FORGED_TOKEN = "forged-session"  # noqa: S105 - a probe's fake token, not a credential
OVERSIZED_BYTES = 70_000  # above the frontends' default max_request_bytes (65536)
# A field tag with a truncated varint: a corrupt wire format.
NOT_PROTOBUF = b"\xff\xff\xff\xff\x0f"


@dataclass(frozen=True)
class ProbeTargets:
    """Where to send probes and with which credentials (all files from the cluster dir)."""

    frontends: tuple[str, ...]
    nodes: tuple[tuple[str, str], ...]  # (name, host:port)
    ca_cert: Path
    frontend_client_cert: Path
    frontend_client_key: Path
    server_name: str = "localhost"

    def validate(self) -> None:
        problems = []
        if not self.frontends:
            problems.append("no frontend to probe")
        for path in (self.ca_cert, self.frontend_client_cert, self.frontend_client_key):
            if not path.is_file():
                problems.append(f"no such file {path}")
        if problems:
            raise ValueError("probe targets: " + "; ".join(problems))


def outcome_of(code: grpc.StatusCode) -> Outcome:
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Outcome("unavailable", False)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return Outcome("internal", True)
    if code == grpc.StatusCode.OK:
        return Outcome("ok", True)
    return Outcome("bad_input_rejected", True)


def swap_outcome(code: grpc.StatusCode) -> Outcome:
    """How the account-swap probe is recorded (isolation accepts only refusals)."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Outcome("unavailable", False)
    if code == grpc.StatusCode.OK:
        return Outcome("ok", True)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Outcome("unauthenticated", True)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Outcome("rate_limited", True)
    return Outcome("protocol", True)


def _raw(x: bytes) -> bytes:
    return x


Probe = Callable[[], grpc.StatusCode]


class Prober:
    """Sends one probe per `step()`, in a fixed cycle; records each in the history."""

    def __init__(
        self,
        targets: ProbeTargets,
        fleet: FleetKey,
        recorder: Recorder,
        rng: random.Random,
        key_dir: Path,
        account: str,
        victims: Sequence[str],
        *,
        wire: bool = True,
    ) -> None:
        targets.validate()
        self._t = targets
        self._fleet = fleet
        self._rec = recorder
        self._rng = rng
        self._account = AccountKey.create(key_dir, account)
        self._victims = list(victims)
        self._token: str | None = None
        ca = targets.ca_cert.read_bytes()
        options = [("grpc.ssl_target_name_override", targets.server_name)]
        fe_creds = grpc.ssl_channel_credentials(root_certificates=ca)
        node_creds = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=targets.frontend_client_key.read_bytes(),
            certificate_chain=targets.frontend_client_cert.read_bytes(),
        )
        self._fe_channels = [grpc.secure_channel(a, fe_creds, options) for a in targets.frontends]
        self._node_channels = [
            (name, grpc.secure_channel(a, node_creds, options)) for name, a in targets.nodes
        ]
        self._probes: list[tuple[str, Probe]] = [
            ("fe-garbage", lambda: self._relay(self._bytes(200))),
            ("fe-empty", lambda: self._relay(b"")),
            ("fe-truncated", lambda: self._relay(self._sealed_status()[:-17])),
            ("fe-wrong-fleet", lambda: self._relay(self._sealed_status(self._other_fleet()))),
            ("fe-oversized", lambda: self._relay(self._bytes(OVERSIZED_BYTES))),
            ("fe-no-token", lambda: self._relay(self._sealed_status(), token="")),
            ("fe-forged-token", lambda: self._relay(self._sealed_status(), token=FORGED_TOKEN)),
            ("fe-bad-ke1", lambda: self._relay(self._sealed_bad_ke1())),
            ("fe-bad-record", lambda: self._relay(self._sealed_bad_record())),
            ("node-garbage", lambda: self._open(account, self._bytes(300))),
            ("node-empty-account", lambda: self._open("", self._sealed_status())),
            ("node-long-account", lambda: self._open("a" * 300, self._sealed_status())),
        ]
        if wire:
            self._probes += [
                ("node-not-protobuf", lambda: self.open_raw(NOT_PROTOBUF)),
                ("fe-not-protobuf", lambda: self.relay_raw(NOT_PROTOBUF)),
            ]
        self._index = 0
        self._lock = threading.Lock()

    @property
    def account(self) -> str:
        return self._account.account_id

    def close(self) -> None:
        for channel in self._fe_channels:
            channel.close()
        for _, channel in self._node_channels:
            channel.close()

    # -- steps --

    def step(self) -> None:
        with self._lock:
            name, probe = self._probes[self._index % len(self._probes)]
            self._index += 1
            swap = self._index % 4 == 0 and bool(self._victims)
        if self._session() is None:
            return  # no session during a fault: nothing to probe with (not an operation)
        if swap:
            self._swap()
        with self._rec.op("probe", "bad_input", f"probe:{name}") as r:
            code = probe()
            r.status_code, r.outcome = code.name, outcome_of(code)

    def _swap(self) -> None:
        victim = self._rng.choice(self._victims)
        with self._rec.op("probe", "recover", victim, actor=self.account) as r:
            # A recovery start sealed for the victim, relayed under the probe's own session.
            _, ke1 = opaque.login_start(b"not the victim's password", self._bytes)
            request = envelope_pb2.VaultRequest(
                response_key=self._bytes(32), recover_start=envelope_pb2.RecoverStart(ke1=ke1)
            )
            sign_request(request, self._fleet.fleet_id, victim, self._account.signer,
                         AUTH_CLOCK.next())  # fmt: skip
            code = self._relay(seal_request(self._fleet, victim, request))
            r.status_code, r.outcome = code.name, swap_outcome(code)

    # -- frontend --

    def _session(self) -> str | None:
        if self._token is not None:
            return self._token
        stub = frontend_pb2_grpc.FrontendStub(self._rng.choice(self._fe_channels))
        try:
            challenge = stub.GetChallenge(
                frontend_pb2.ChallengeRequest(account_id=self.account), timeout=CALL_TIMEOUT_S
            )
            reply = stub.Login(
                login_request(self._account, challenge.challenge), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError:
            return None
        self._token = str(reply.session_token)
        return self._token

    def _relay(self, envelope: bytes, token: str | None = None) -> grpc.StatusCode:
        token = self._token if token is None else token
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        stub = frontend_pb2_grpc.FrontendStub(self._rng.choice(self._fe_channels))
        try:
            stub.Relay(
                frontend_pb2.RelayRequest(envelope=envelope),
                timeout=CALL_TIMEOUT_S,
                metadata=metadata,
            )
        except grpc.RpcError as err:
            return _code(err)
        return grpc.StatusCode.OK

    def relay_raw(self, payload: bytes) -> grpc.StatusCode:
        channel = self._rng.choice(self._fe_channels)
        call = channel.unary_unary(
            "/bkv.v1.Frontend/Relay", request_serializer=_raw, response_deserializer=_raw
        )
        try:
            call(
                payload,
                timeout=CALL_TIMEOUT_S,
                metadata=(("authorization", f"Bearer {self._token}"),),
            )
        except grpc.RpcError as err:
            return _code(err)
        return grpc.StatusCode.OK

    # -- vault node --

    def _open(self, account: str, envelope: bytes) -> grpc.StatusCode:
        request = node_pb2.OpenRequest(account_id=account, envelope=envelope)
        return self.open_raw(request.SerializeToString())

    def open_raw(self, payload: bytes) -> grpc.StatusCode:
        if not self._node_channels:
            return grpc.StatusCode.UNAVAILABLE
        _, channel = self._rng.choice(self._node_channels)
        call = channel.unary_unary(
            "/bkv.v1.VaultNode/Open", request_serializer=_raw, response_deserializer=_raw
        )
        try:
            call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            return _code(err)
        return grpc.StatusCode.OK

    # -- payloads --

    def _bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def _sealed(self, request: envelope_pb2.VaultRequest, fleet: FleetKey | None = None) -> bytes:
        # Signed by the probe account's key as the client would (a node that refused the
        # signature would never reach the check each probe is there for).
        request.response_key = self._bytes(32)
        fleet = fleet or self._fleet
        sign_request(request, fleet.fleet_id, self.account, self._account.signer, AUTH_CLOCK.next())
        return seal_request(fleet, self.account, request)

    def _sealed_status(self, fleet: FleetKey | None = None) -> bytes:
        # Protocol 3: a status question's first step is a Begin (the operation inside).
        begin = envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_STATUS)
        return self._sealed(envelope_pb2.VaultRequest(begin=begin), fleet)

    def _sealed_bad_ke1(self) -> bytes:
        # Checked before any read or write: a malformed KE1 must not cost a guess.
        bad = envelope_pb2.RecoverStart(ke1=bytes(opaque.KE1_BYTES))
        return self._sealed(envelope_pb2.VaultRequest(recover_start=bad))

    def _sealed_bad_record(self) -> bytes:
        bad = envelope_pb2.RegisterFinish(
            registration_record=bytes(opaque.RECORD_BYTES), wrapped_key=bytes(60)
        )
        # A second step travels continued, under a ticket: this one no node issued.
        return seal_continued(
            self._fleet.fleet_id,
            self.account,
            self._bytes(418),
            self._bytes(32),
            envelope_pb2.VaultRequest(register_finish=bad),
            self._bytes,
        )

    @staticmethod
    def _other_fleet() -> FleetKey:
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        return FleetKey(
            key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )


def _code(err: grpc.RpcError) -> grpc.StatusCode:
    code = err.code() if hasattr(err, "code") else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
