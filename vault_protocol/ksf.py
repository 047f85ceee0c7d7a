"""OPAQUE's key stretching function (KSF), RFC 9807 sections 4.3 and 7.

The client computes randomized_password = Extract("", oprf_output || Stretch(oprf_output))
(RFC 9807 section 5.2.3). `Argon2idKsf` follows RFC 9807 section 7: Argon2id with a salt of 16
zero bytes and an output of Nh = 64 bytes; its default cost is RFC 9106 section 4's second
recommended setting (t=3, p=4, m=64 MiB). `IdentityKsf` is for test vectors and benchmarks only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from bkv.v1 import envelope_pb2
from vault_protocol.errors import InvalidInput

KSF_OUTPUT_BYTES = 64  # Nh for ristretto255-SHA512
_ZERO_SALT = bytes(16)
# Bounds on parameters that come from elsewhere (a stored registration): a record must not make a
# client spend unbounded time or memory.
MAX_TIME_COST = 64
MAX_LANES = 64
MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB


class Ksf(Protocol):
    """A key stretching function: `stretch(oprf_output) -> bytes`."""

    def stretch(self, data: bytes) -> bytes:
        """Return the stretched form of `data` (deterministic)."""
        ...


@dataclass(frozen=True)
class IdentityKsf:
    """Stretch(x) = x. No offline-attack hardening: for RFC test vectors and load tests only."""

    def stretch(self, data: bytes) -> bytes:
        """Return `data` unchanged."""
        return data


@dataclass(frozen=True)
class Argon2idKsf:
    """Argon2id (RFC 9106) as OPAQUE's KSF.

    time_cost: passes over memory (t), at least 1.
    lanes: degree of parallelism (p), 1..2^24-1.
    memory_kib: memory in KiB (m), at least 8 * lanes.
    """

    time_cost: int = 3
    lanes: int = 4
    memory_kib: int = 65536

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InvalidInput naming every out-of-range parameter at once."""
        problems: list[str] = []
        if self.time_cost < 1:
            problems.append("time_cost must be at least 1")
        if not 1 <= self.lanes < 2**24:
            problems.append("lanes must be between 1 and 2^24-1")
        if self.memory_kib < 8 * max(self.lanes, 1):
            problems.append("memory_kib must be at least 8 * lanes")
        if problems:
            raise InvalidInput("Argon2idKsf: " + "; ".join(problems))

    def stretch(self, data: bytes) -> bytes:
        """Argon2id(data, salt = 16 zero bytes, length = 64)."""
        # Security: the salt is fixed by RFC 9807; per-user uniqueness comes from the OPRF key.
        kdf = Argon2id(
            salt=_ZERO_SALT,
            length=KSF_OUTPUT_BYTES,
            iterations=self.time_cost,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(data)


def stored_argon2id(time_cost: int, lanes: int, memory_kib: int) -> Argon2idKsf:
    """An `Argon2idKsf` from stored parameters, within the bounds above; InvalidInput if not."""
    if not (time_cost <= MAX_TIME_COST and lanes <= MAX_LANES and memory_kib <= MAX_MEMORY_KIB):
        raise InvalidInput(
            f"Argon2id parameters above the bounds (t <= {MAX_TIME_COST}, p <= {MAX_LANES}, "
            f"m <= {MAX_MEMORY_KIB} KiB)"
        )
    return Argon2idKsf(time_cost=time_cost, lanes=lanes, memory_kib=memory_kib)


def to_params(ksf: Ksf) -> envelope_pb2.KsfParams | None:
    """The wire form of `ksf`, stored with a registration; None for a KSF that has none."""
    if not isinstance(ksf, Argon2idKsf):
        return None
    return envelope_pb2.KsfParams(
        argon2id_time_cost=ksf.time_cost,
        argon2id_lanes=ksf.lanes,
        argon2id_memory_kib=ksf.memory_kib,
    )


def from_params(params: envelope_pb2.KsfParams) -> Argon2idKsf:
    """The KSF of stored wire parameters, within the bounds above; InvalidInput if not.

    >>> from_params(to_params(Argon2idKsf(1, 1, 8)))
    Argon2idKsf(time_cost=1, lanes=1, memory_kib=8)
    """
    return stored_argon2id(
        params.argon2id_time_cost, params.argon2id_lanes, params.argon2id_memory_kib
    )
