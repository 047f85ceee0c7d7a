"""Hypothesis recipes of bad envelopes for one account, each with the statuses it may get.

Every case is built around a *safe* genuine request (status, a stateless register_start, or a
recover_finish with a forged ticket): were a mutation ever to come through intact, it still could
not count a guess or change a record. Sealed plaintexts are checked locally before they are sent:
anything the node would take for a state-changing operation is never sent (`Case.skip`).

Genuine first steps are signed by the account key (issue 17) the record is bound to; a
plaintext the node decrypts and parses as a first step but that carries no valid signature is
refused with UNAUTHENTICATED (nothing applied).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from bad_input_wire import (
    FAILED_PRECONDITION,
    INVALID_ARGUMENT,
    OK,
    UNAUTHENTICATED,
    seal_plaintext,
)
from google.protobuf.message import DecodeError
from hypothesis import strategies as st

from bkv.v1 import envelope_pb2
from client.session import AUTH_CLOCK
from vault_protocol import opaque
from vault_protocol.account_auth import AccountSigner, sign_request
from vault_protocol.continuation import seal_continued
from vault_protocol.envelope import BUCKETS, PROTOCOL_VERSION, FleetKey, pad, seal_request, unpad
from vault_protocol.errors import ProtocolError

Draw = Callable[..., object]
ONLY_INVALID = frozenset({INVALID_ARGUMENT})
STATUS_BEGIN = envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_STATUS)
OK_OR_INVALID = frozenset({OK, INVALID_ARGUMENT})
# A random plaintext may parse as a first step that carries no valid signature.
OK_INVALID_OR_UNSIGNED = frozenset({OK, INVALID_ARGUMENT, UNAUTHENTICATED})
Sign = Callable[[envelope_pb2.VaultRequest], None]
SAFE_OPS = frozenset({"status", "register_start", "recover_finish"})
ACCOUNT_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-"


@dataclass(frozen=True)
class Case:
    """One envelope to send, what the node may answer, and how to open an OK answer."""

    label: str
    envelope: bytes
    expect: frozenset[grpc.StatusCode]
    response_key: bytes | None = None  # an OK answer must open under it (when known)
    skip: bool = False  # the local check found a state-changing operation: never sent

    def __repr__(self) -> str:
        expect = sorted(c.name for c in self.expect)
        return f"Case({self.label}, {len(self.envelope)} bytes, expect={expect})"


# -- genuine, safe requests ------------------------------------------------------------------------


def _base_request(
    kind: str, rnd: random.Random
) -> tuple[envelope_pb2.VaultRequest, frozenset[grpc.StatusCode]]:
    if kind == "status":
        # Protocol 3: a status question's first step (answered with a ticket, nothing written).
        return envelope_pb2.VaultRequest(begin=STATUS_BEGIN), frozenset({OK})
    if kind == "register_start":
        # Stateless on the node: a registration request is answered, never stored.
        _, request = opaque.registration_start(rnd.randbytes(16), os.urandom)
        return (
            envelope_pb2.VaultRequest(
                register_start=envelope_pb2.RegisterStart(registration_request=request)
            ),
            frozenset({OK}),
        )
    # A step 2 under a ticket nobody sealed (see _genuine): never opens, nothing is redeemed.
    return (
        envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=rnd.randbytes(64))),
        ONLY_INVALID,
    )


BASE_KINDS = st.sampled_from(["status", "register_start", "recover_finish"])


def signing(fleet: FleetKey, account_id: str, signer: AccountSigner) -> Sign:
    """Signs a first step for `account_id` as its client would (a fresh ts_ms each time)."""

    def sign(request: envelope_pb2.VaultRequest) -> None:
        sign_request(request, fleet.fleet_id, account_id, signer, AUTH_CLOCK.next())

    return sign


def _genuine(
    fleet: FleetKey, account_id: str, kind: str, rnd: random.Random, sign: Sign
) -> tuple[bytes, bytes, frozenset[grpc.StatusCode]]:
    request, expect = _base_request(kind, rnd)
    response_key = os.urandom(32)
    if kind == "recover_finish":
        ticket = rnd.randbytes(rnd.randrange(1, 420))
        sealed = seal_continued(
            fleet.fleet_id, account_id, ticket, response_key, request, os.urandom
        )
        return sealed, response_key, expect
    request.response_key = response_key
    sign(request)
    return seal_request(fleet, account_id, request), response_key, expect


def _changed(
    result: bytes, base: bytes, expect: frozenset[grpc.StatusCode]
) -> frozenset[grpc.StatusCode]:
    """Any byte changed in a canonical, authenticated envelope must fail to open; one whose
    (16-byte) fleet id changed names a fleet key the vault does not hold, refused by name
    (FAILED_PRECONDITION, nothing applied either)."""
    if result == base:
        return expect
    return ONLY_INVALID | {FAILED_PRECONDITION} if _other_fleet(result, base) else ONLY_INVALID


def _other_fleet(result: bytes, base: bytes) -> bool:
    """Whether `result` parses with a fleet id of a fleet id's length other than `base`'s."""
    try:
        got = envelope_pb2.SealedEnvelope.FromString(result).fleet_id
    except DecodeError:  # unparsable: no fleet id at all
        return False
    return len(got) == 16 and got != envelope_pb2.SealedEnvelope.FromString(base).fleet_id


# -- byte mutations --------------------------------------------------------------------------------


@st.composite
def mutate(draw: st.DrawFn, base: bytes) -> tuple[str, bytes]:
    """A bit flip, truncation, extension, insertion, deletion or overwrite of `base`."""
    n = len(base)
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "overwrite"]))
    if kind == "flip":
        bits = draw(st.sets(st.integers(0, 8 * n - 1), min_size=1, max_size=8))
        out = bytearray(base)
        for bit in bits:
            out[bit // 8] ^= 1 << (bit % 8)
        return f"flip{len(bits)}", bytes(out)
    if kind == "truncate":
        return "truncate", base[: draw(st.integers(0, n - 1))]
    if kind == "extend":
        return "extend", base + draw(st.binary(min_size=1, max_size=64))
    at = draw(st.integers(0, n - 1))
    if kind == "insert":
        return "insert", base[:at] + draw(st.binary(min_size=1, max_size=32)) + base[at:]
    if kind == "delete":
        return "delete", base[:at] + base[at + draw(st.integers(1, 64)) :]
    chunk = draw(st.binary(min_size=1, max_size=32))
    return "overwrite", base[:at] + chunk + base[at + len(chunk) :]


# -- the recipes -----------------------------------------------------------------------------------


def _would_change_state(plaintext: bytes) -> bool:
    """What the node would do with this plaintext, decided locally: True if it could write."""
    try:
        request = envelope_pb2.VaultRequest.FromString(unpad(plaintext))
    except (ProtocolError, DecodeError):
        return False
    op = request.WhichOneof("op")
    return op is not None and op not in SAFE_OPS


@st.composite
def envelope_case(draw: st.DrawFn, fleet: FleetKey, account_id: str, signer: AccountSigner) -> Case:
    """One bad (or, rarely, untouched) envelope for `account_id`, whose first steps `signer`
    (the account key its record is bound to, or any key for an unregistered id) signs."""
    rnd = draw(st.randoms(use_true_random=False))
    sign = signing(fleet, account_id, signer)
    recipe = draw(
        st.sampled_from(["random", "mutated", "fields", "plaintext", "wrong-info", "genuine"])
    )
    if recipe == "random":
        return Case("random", draw(st.binary(max_size=2048)), ONLY_INVALID)
    kind = draw(BASE_KINDS)
    base, response_key, expect = _genuine(fleet, account_id, kind, rnd, sign)
    if recipe == "genuine":
        return Case(f"genuine/{kind}", base, expect, response_key)
    if recipe == "mutated":
        how, out = draw(mutate(base))
        return Case(f"mutated/{kind}/{how}", out, _changed(out, base, expect), response_key)
    if recipe == "fields" and kind == "recover_finish":
        return _continued_fields_case(draw, rnd, base, expect, response_key)
    if recipe == "fields":
        return _fields_case(draw, rnd, base, kind, expect, response_key)
    if recipe == "wrong-info":
        request, _ = _base_request(kind, rnd)
        request.response_key = os.urandom(32)
        plaintext = pad(request.SerializeToString(deterministic=True))
        if draw(st.booleans()):
            other = account_id + "-" + draw(st.text(ACCOUNT_ALPHABET, max_size=40))
            return Case("wrong-info/account", seal_plaintext(fleet, other, plaintext), ONLY_INVALID)
        fleet_id = rnd.randbytes(16)
        envelope = seal_plaintext(fleet, account_id, plaintext, info_fleet_id=fleet_id)
        return Case("wrong-info/fleet", envelope, ONLY_INVALID)
    return _plaintext_case(draw, rnd, fleet, account_id, sign)


def _fields_case(
    draw: st.DrawFn,
    rnd: random.Random,
    base: bytes,
    kind: str,
    expect: frozenset[grpc.StatusCode],
    response_key: bytes,
) -> Case:
    """A SealedEnvelope rebuilt with some fields replaced: version, fleet id, enc, ciphertext."""
    valid = envelope_pb2.SealedEnvelope.FromString(base)
    enc, ct = bytes(valid.enc), bytes(valid.ciphertext)
    version = draw(st.one_of(st.just(PROTOCOL_VERSION), st.integers(0, 2**32 - 1)))
    fleet_id = draw(st.one_of(st.just(bytes(valid.fleet_id)), st.binary(max_size=40)))
    enc = draw(
        st.sampled_from(
            [
                enc,
                b"",
                enc[:33],  # compressed-point length
                enc[:64],
                enc + b"\x00",
                b"\x04" + rnd.randbytes(64),  # almost surely not on the curve
                b"\x04" + bytes(64),
                bytes([enc[0]]) + bytes([enc[1] ^ 1]) + enc[2:],
            ]
        )
    )
    ct = _draw_ciphertext(draw, rnd, ct)
    envelope = envelope_pb2.SealedEnvelope(
        version=version, fleet_id=fleet_id, enc=enc, ciphertext=ct
    ).SerializeToString(deterministic=True)
    if draw(st.booleans()):
        envelope += b"\x2a\x03abc"  # unknown field 5: not canonical
    return Case(f"fields/{kind}", envelope, _changed(envelope, base, expect), response_key)


def _draw_ciphertext(draw: st.DrawFn, rnd: random.Random, ct: bytes) -> bytes:
    """`ct` as it is, random bytes of a telling size (a bucket's, one off, empty, 32 KiB), or
    truncated."""
    sizes = [0, 1, 16, len(ct) - 1, len(ct) + 1, *(b + 16 for b in BUCKETS), 32 * 1024]
    drawn: bytes = draw(
        st.one_of(
            st.just(ct),
            st.sampled_from(sizes).map(rnd.randbytes),
            st.integers(1, len(ct) - 1).map(lambda cut: ct[:cut]),
        )
    )
    return drawn


def _continued_fields_case(
    draw: st.DrawFn,
    rnd: random.Random,
    base: bytes,
    expect: frozenset[grpc.StatusCode],
    response_key: bytes,
) -> Case:
    """A step-2 `ContinuedEnvelope` rebuilt with some fields replaced: version, fleet id, an
    HPKE enc it must not carry, ticket, nonce, ciphertext."""
    valid = envelope_pb2.ContinuedEnvelope.FromString(base)
    ticket, nonce, ct = bytes(valid.ticket), bytes(valid.nonce), bytes(valid.ciphertext)
    version = draw(st.one_of(st.just(PROTOCOL_VERSION), st.integers(0, 2**32 - 1)))
    fleet_id = draw(st.one_of(st.just(bytes(valid.fleet_id)), st.binary(max_size=40)))
    ticket = draw(
        st.sampled_from([ticket, b"", ticket[:-1], ticket + b"\x00", rnd.randbytes(len(ticket))])
    )
    nonce = draw(st.sampled_from([nonce, b"", nonce[:11], nonce + b"\x00", bytes(12)]))
    ct = _draw_ciphertext(draw, rnd, ct)
    envelope = envelope_pb2.ContinuedEnvelope(
        version=version, fleet_id=fleet_id, ticket=ticket, nonce=nonce, ciphertext=ct
    ).SerializeToString(deterministic=True)
    if draw(st.booleans()):
        envelope += b"\x1a\x41" + b"\x04" + rnd.randbytes(64)  # field 3 (a step-1 enc)
    return Case("fields/recover_finish", envelope, _changed(envelope, base, expect), response_key)


@st.composite
def _inner_request(
    draw: st.DrawFn, rnd: random.Random, sign: Sign
) -> tuple[str, bytes, bytes | None, frozenset[grpc.StatusCode]]:
    """A plaintext the node will decrypt fine: (label, plaintext, response key, expect)."""
    key = os.urandom(32)
    shape = draw(
        st.sampled_from(
            ["raw", "padded-random", "bad-key", "no-op", "register-random", "finish-random",
             "dirty-padding", "unknown-fields"]
        )
    )  # fmt: skip
    if shape == "raw":  # not padded at all (or a random bucket-sized blob)
        size = draw(st.sampled_from([0, 1, 100, 511, 512, 513, 1024, 2000]))
        return shape, rnd.randbytes(size), None, ONLY_INVALID
    if shape == "padded-random":
        return shape, pad(draw(st.binary(max_size=300))), None, OK_INVALID_OR_UNSIGNED
    if shape == "bad-key":
        size = draw(st.sampled_from([0, 1, 16, 31, 33, 64]))
        request = envelope_pb2.VaultRequest(
            response_key=rnd.randbytes(size), status=envelope_pb2.StatusRequest()
        )
        return shape, pad(request.SerializeToString()), None, ONLY_INVALID
    if shape == "no-op":
        request = envelope_pb2.VaultRequest(response_key=key)
        return shape, pad(request.SerializeToString()), None, ONLY_INVALID
    if shape == "register-random":
        request = envelope_pb2.VaultRequest(
            response_key=key,
            register_start=envelope_pb2.RegisterStart(
                registration_request=draw(st.binary(max_size=64))
            ),
        )
        sign(request)
        return shape, pad(request.SerializeToString()), key, OK_OR_INVALID
    if shape == "finish-random":
        request = envelope_pb2.VaultRequest(
            response_key=key,
            recover_finish=envelope_pb2.RecoverFinish(ke3=draw(st.binary(max_size=80))),
        )
        return shape, pad(request.SerializeToString()), None, ONLY_INVALID
    status = envelope_pb2.VaultRequest(response_key=key, begin=STATUS_BEGIN).SerializeToString()
    if shape == "dirty-padding":
        padded = bytearray(pad(status))
        padded[draw(st.integers(4 + len(status), len(padded) - 1))] ^= draw(st.integers(1, 255))
        return shape, bytes(padded), None, ONLY_INVALID
    # Unknown fields inside a genuine request: protobuf keeps them, and the signature covers
    # them as they are (signed with them: the request stands; added after: refused).
    unknown = envelope_pb2.VaultRequest.FromString(status + b"\xfa\x01\x02hi")
    sign(unknown)
    if draw(st.booleans()):
        return shape, pad(unknown.SerializeToString(deterministic=True)), key, frozenset({OK})
    signed_alone = envelope_pb2.VaultRequest(response_key=key, begin=STATUS_BEGIN)
    sign(signed_alone)
    added = signed_alone.SerializeToString(deterministic=True) + b"\xfa\x01\x02hi"
    return "unknown-fields-unsigned", pad(added), None, frozenset({UNAUTHENTICATED})


def _plaintext_case(
    draw: st.DrawFn, rnd: random.Random, fleet: FleetKey, account_id: str, sign: Sign
) -> Case:
    label, plaintext, key, expect = draw(_inner_request(rnd, sign))
    envelope = seal_plaintext(fleet, account_id, plaintext)
    return Case(f"plaintext/{label}", envelope, expect, key, skip=_would_change_state(plaintext))
