"""The floor: the work one recovery cannot do without, measured on this machine in the same run.

Protocol 3, the witnessed record log and the fast KSF. Each part is a count per recovery times a
CPU cost per operation measured here, with the real code:

* `token_ecdh`: the one envelope open's ECDH in a SoftHSM token (`vault_node.hsm.Token.ecdh`,
  python-pkcs11 included), measured in a child process with a throwaway token
  (`python -m bkv_bench.floor token`): a process loads one SoftHSM configuration only;
* `hpke_open_software`: the rest of that envelope open (RFC 9180 key schedule, AES-GCM, parsing);
* `ristretto255_server`: OPAQUE's ristretto255 multiplications on the server side (counted in
  `server_login_start`, priced at one measured multiplication each);
* `token_aes_gcm`: the token's AES-GCM operations: two record seals and two group-head seals (one
  record write per step, each with its group's head: DESIGN invariant 8) and the ticket's seal
  and open;
* `token_hmac_oprf`: the per-record OPRF key, an HMAC-SHA512 in the token;
* `client_crypto`: the client's side of one recovery with the fast KSF (`client.protocol`'s
  recover flow driven against a software vault, only the client's steps timed): OPAQUE with
  its own multiplications and the KSF, HPKE sealing, the step-2 seal, the answers' opens, the key
  unwrap;
* `etcd_txn`: two etcd transactions, at the etcd members' CPU per transaction measured during the
  run's CAS ceiling (`bkv_bench.ceilings.etcd_cas_ceiling` with the members' PIDs).

What is not in it is plumbing: gRPC and TLS in every process, the relays, the etcd clients, the
witness captures' messages, the audit line, the records' protobuf. `cpu_efficiency` in bench.json
is this floor over the measured CPU per recovery of every process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkv.v1 import envelope_pb2
from bkv_bench import server_work
from bkv_bench.protocol_cost import MultCounter
from client.config import ksf_named
from client.protocol import FlowContext, Outbound, recover_flow
from vault_protocol import account_auth, continuation, envelope, opaque, ristretto
from vault_protocol.backup_key import BackupKey, seal_transport, wrap_key
from vault_protocol.ksf import to_params

# Operations per recovery (vault_node/service.py, protocol 3).
TOKEN_AES_GCM_PER_RECOVERY = 6  # record seal x2, head seal x2, ticket seal, ticket open
ETCD_TXN_PER_RECOVERY = 2
TOKEN_TIMEOUT_S = 120.0
ACCOUNT = server_work.ACCOUNT
CREDENTIAL = ACCOUNT.encode()
TICKET_BYTES = server_work.TICKET_PADDED + 28 + 16  # a sealed ticket's size: nonce, tag, framing


@dataclass(frozen=True)
class FloorPart:
    """One kind of unavoidable work: operations per recovery and measured CPU µs each."""

    name: str
    count: float
    us_each: float
    what: str

    @property
    def ms(self) -> float:
        return self.count * self.us_each / 1000

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "us_each": round(self.us_each, 1),
            "ms": round(self.ms, 3),
            "what": self.what,
        }


@dataclass(frozen=True)
class Floor:
    """The floor of one recovery; `missing` names parts that could not be measured."""

    parts: tuple[FloorPart, ...]
    missing: tuple[str, ...] = ()

    @property
    def ms_per_recovery(self) -> float:
        return sum(p.ms for p in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "ms_per_recovery": round(self.ms_per_recovery, 3),
            "parts": {p.name: p.to_json() for p in self.parts},
            "missing": list(self.missing),
        }


def efficiency(floor_ms: float, cpu_ms_per_op: float | None) -> float | None:
    """floor ÷ CPU per recovery (None without a CPU figure).

    >>> efficiency(3.0, 12.0)
    0.25
    >>> efficiency(3.0, None) is None
    True
    """
    if not cpu_ms_per_op:
        return None
    return round(floor_ms / cpu_ms_per_op, 4)


def cpu_us(fn: Callable[[], object], seconds: float) -> float:
    """CPU µs per call of `fn` (this process's CPU time, not wall time): best of 3 batches, so
    that another process taking the core does not count, but a slow call does."""
    fn()
    batch, spent = 1, 0.0
    while batch < 1 << 16:  # size a batch to about a third of `seconds`
        t0 = time.process_time()
        for _ in range(batch):
            fn()
        spent = time.process_time() - t0
        if spent >= seconds / 3:
            break
        batch *= 2
    best = spent / batch
    for _ in range(2):
        t0 = time.process_time()
        for _ in range(batch):
            fn()
        best = min(best, (time.process_time() - t0) / batch)
    return best * 1e6


# -- the token, in a child process ---------------------------------------------------------------


def token_costs(seconds: float) -> dict[str, float]:
    """CPU µs of one ECDH, one AES-GCM seal and one HMAC-SHA512 in a throwaway SoftHSM token,
    measured by a child process (`python -m bkv_bench.floor token`)."""
    done = subprocess.run(
        [sys.executable, "-m", "bkv_bench.floor", "token", "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=TOKEN_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"token measurement failed: {done.stderr.strip()[-300:]}")
    costs: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return costs


def _measure_token(seconds: float) -> dict[str, float]:
    """In the child: a fresh token with fleet-style keys, each operation timed through
    `vault_node.hsm.Token` (what a node runs, python-pkcs11 and its thread rule included)."""
    from vault_node import hsm
    from vault_node.ceremony_cli import fleet_generate
    from vault_node.softhsm import create_token

    with tempfile.TemporaryDirectory(prefix="bkv-bench-floor-") as tmp:
        spec = create_token(Path(tmp) / "token", "bkv-floor")
        os.environ["SOFTHSM2_CONF"] = str(spec.softhsm_conf)
        hsm.adopt_calling_thread()
        token = hsm.Token.open(spec, read_write=True)
        try:
            token.run_in_session(fleet_generate)
            peer = server_work.prepare(os.urandom).fleet.public_key_bytes  # any P-256 point
            nonce, plaintext, aad = os.urandom(12), os.urandom(300), b"bkv-bench floor"
            return {
                "ecdh": cpu_us(lambda: token.ecdh(peer), seconds),
                "aes_gcm": cpu_us(
                    lambda: token.aes_gcm_seal("record", nonce, plaintext, aad), seconds
                ),
                "hmac_sha512": cpu_us(lambda: token.hmac_sha512("oprf_seed", aad), seconds),
            }
        finally:
            token.close()  # the token's directory goes with `tmp`


# -- software parts, in this process ---------------------------------------------------------------


def _advance(flow: Generator[Outbound, bytes, BackupKey], answer: bytes | None) -> Outbound:
    return next(flow) if answer is None else flow.send(answer)


class SoftwareVault:
    """The server side of recoveries with software keys: answers a client's two envelopes, so
    that the client's own steps can be timed apart (nothing here is timed)."""

    def __init__(self, ksf_name: str = "fast") -> None:
        rng = os.urandom
        self.work = server_work.prepare(rng)
        self.ksf = ksf_named(ksf_name)
        self.client_opaque = opaque.OpaqueConfig(ksf=self.ksf)
        state, request = opaque.registration_start(self.password, rng)
        response = opaque.server_registration_response(request, CREDENTIAL, self.work.keys)
        self.record, export_key = opaque.registration_finish(
            state, response, self.client_opaque, rng
        )
        self.signer = account_auth.AccountSigner.from_private_key(Ed25519PrivateKey.generate())
        self.key = BackupKey.generate(rng)
        self.wrapped = wrap_key(self.key, export_key, ACCOUNT, rng)
        self._pending: tuple[continuation.StepKeys, bytes, bytes] | None = None

    password = b"correct horse battery staple"

    def answer(self, sealed: bytes) -> bytes:
        """Step 1 or step 2 of a recovery, answered as a node would (OK outcomes)."""
        rng = os.urandom
        fleet = self.work.fleet
        if envelope.is_continued(sealed):
            assert self._pending is not None
            keys, mac, session_key = self._pending
            parsed = continuation.parse_continued(sealed, fleet.fleet_id)
            request = continuation.open_continued(parsed, ACCOUNT, fleet.fleet_id, keys.request2)
            opaque.server_login_finish(mac, request.recover_finish.ke3)
            reply = envelope_pb2.VaultResponse(
                outcome=envelope_pb2.OUTCOME_OK,
                recover_finish=envelope_pb2.RecoverFinishReply(
                    transported_key=seal_transport(session_key, self.wrapped, rng)
                ),
            )
            return envelope.seal_response(keys.answer2, reply, rng)
        request = envelope.open_request(
            sealed, ACCOUNT, fleet.fleet_id, self.work.ecdh, fleet.public_key_bytes
        )
        keys = continuation.StepKeys.derive(request.response_key)
        ke2, state = opaque.server_login_start(
            self.record, CREDENTIAL, request.recover_start.ke1, self.work.keys,
            self.work.config, rng,
        )  # fmt: skip
        self._pending = (keys, state.expected_client_mac, state.session_key)
        reply = envelope_pb2.VaultResponse(
            outcome=envelope_pb2.OUTCOME_OK,
            guesses_left=10,
            recover_start=envelope_pb2.RecoverStartReply(ke2=ke2, ksf=to_params(self.ksf)),
            ticket=rng(TICKET_BYTES),
        )
        return envelope.seal_response(keys.answer1, reply, rng)

    def client_recovery(self) -> tuple[float, int]:
        """One recovery by `client.protocol`'s flow: CPU µs of the client's steps alone (the
        vault's answers are made between them, untimed) and its ristretto255 multiplications."""
        ctx = FlowContext(
            fleet=self.work.fleet,
            account_id=ACCOUNT,
            signer=self.signer,
            opaque=self.client_opaque,
            rng=os.urandom,
        )
        flow = recover_flow(ctx, self.password)
        spent = 0.0
        answer: bytes | None = None
        mults = MultCounter()
        while True:
            t0 = time.process_time()
            try:
                with mults:
                    outbound = _advance(flow, answer)
            except StopIteration as done:
                spent += time.process_time() - t0
                if done.value != self.key:
                    raise RuntimeError("the client recovered another key") from None
                return spent * 1e6, mults.count
            spent += time.process_time() - t0
            answer = self.answer(outbound.envelope)


def client_costs(seconds: float, ksf_name: str = "fast") -> tuple[float, int]:
    """The client's CPU µs per recovery (median of the recoveries run in `seconds`) and its
    ristretto255 multiplications."""
    vault = SoftwareVault(ksf_name)
    vault.client_recovery()  # warm up
    spent: list[float] = []
    mults = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(spent) < 5:
        us, mults = vault.client_recovery()
        spent.append(us)
    return statistics.median(spent), mults


def server_costs(seconds: float) -> dict[str, float]:
    """CPU µs of the envelope open's software part (the DH output taken as given), of one
    ristretto255 multiplication, and the server's multiplications per recovery."""
    rng = os.urandom
    work = server_work.prepare(rng)
    fleet = work.fleet
    shared: dict[bytes, bytes] = {}

    def given_dh(enc: bytes) -> bytes:  # the token's part, measured apart
        if enc not in shared:
            shared[enc] = work.ecdh(enc)
        return shared[enc]

    scalar = ristretto.random_scalar(rng)
    point = ristretto.base_mult(ristretto.random_scalar(rng))
    with MultCounter() as counter:
        opaque.server_login_start(work.record, CREDENTIAL, work.ke1, work.keys, work.config, rng)
    mults = counter.count
    return {
        "hpke_open_software": cpu_us(
            lambda: envelope.open_request(
                work.envelope_start, ACCOUNT, fleet.fleet_id, given_dh, fleet.public_key_bytes
            ),
            seconds,
        ),
        "ristretto255_mult": cpu_us(lambda: ristretto.scalar_mult(scalar, point), seconds),
        "account_verify": cpu_us(
            lambda: account_auth.verify_request(work.start_request, fleet.fleet_id, ACCOUNT),
            seconds,
        ),
        "server_mults": float(mults),
    }


def measure_floor(seconds: float, etcd_ms_per_txn: float | None, ksf: str = "fast") -> Floor:
    """Every part of the floor, measured now (`seconds` per measurement), the client's with the
    run's KSF; the etcd part from the CAS ceiling's CPU per transaction when known, else listed
    as missing."""
    token = token_costs(seconds)
    server = server_costs(seconds)
    client_us, client_mults = client_costs(seconds, ksf)
    parts = [
        FloorPart("token_ecdh", 1, token["ecdh"], "the envelope open's ECDH in a SoftHSM token"),
        FloorPart(
            "hpke_open_software", 1, server["hpke_open_software"],
            "the rest of that open: RFC 9180 key schedule, AES-GCM, parsing",
        ),
        FloorPart(
            "ristretto255_server", server["server_mults"], server["ristretto255_mult"],
            "OPAQUE's multiplications on the server (OPRF evaluation, 3DH)",
        ),
        FloorPart(
            "token_aes_gcm", TOKEN_AES_GCM_PER_RECOVERY, token["aes_gcm"],
            "record seal x2, group-head seal x2, ticket seal and open, in the token",
        ),
        FloorPart("token_hmac_oprf", 1, token["hmac_sha512"], "the OPRF key, HMAC in the token"),
        FloorPart(
            "account_verify", 1, server["account_verify"],
            "the account key's Ed25519 signature on step 1, checked by the node",
        ),
        FloorPart(
            "client_crypto", 1, client_us,
            f"the client's side with the {ksf} KSF ({client_mults} ristretto255 "
            "multiplications, Argon2id, Ed25519 signature, HPKE seal, step-2 seal, opens, "
            "key unwrap)",
        ),
    ]  # fmt: skip
    missing: list[str] = []
    if etcd_ms_per_txn:
        parts.append(
            FloorPart(
                "etcd_txn",
                ETCD_TXN_PER_RECOVERY,
                etcd_ms_per_txn * 1000,
                "etcd members' CPU per transaction, from the CAS ceiling of this run",
            )
        )
    else:
        missing.append("etcd_txn")
    return Floor(tuple(parts), tuple(missing))


def floor_text(floor: Floor, cpu_efficiency: float | None) -> str:
    """Two lines: the floor with its parts, and the CPU efficiency when the CPU is known."""
    parts = ", ".join(f"{p.name} {p.ms:.2f}" for p in floor.parts)
    line = f"floor (unavoidable work per recovery): {floor.ms_per_recovery:.2f} ms ({parts})"
    if floor.missing:
        line += f"; not measured: {', '.join(floor.missing)}"
    if cpu_efficiency is not None:
        line += f"\nCPU efficiency (floor / CPU per operation): {cpu_efficiency:.1%}"
    return line


def main(argv: list[str] | None = None) -> int:
    """`python -m bkv_bench.floor token --seconds S`: the token's costs as one JSON line (the
    child process of `token_costs`); `python -m bkv_bench.floor all`: the floor without etcd."""
    p = argparse.ArgumentParser(prog="python -m bkv_bench.floor", description=__doc__)
    p.add_argument("what", choices=("token", "all"))
    p.add_argument("--seconds", type=float, default=0.5)
    args = p.parse_args(argv)
    if args.what == "token":
        print(json.dumps(_measure_token(args.seconds)))
    else:
        print(json.dumps(measure_floor(args.seconds, None).to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
