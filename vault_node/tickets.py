"""Protocol 3's ticket: what every step-1 answer carries and every step 2 brings back.

One message (`sealed_pb2.Ticket`) for every operation: a recovery's login ticket, a void one
after a closed step 1, a registration's, a status's or a delete's. It holds the step-2 request
and answer keys (vault_protocol.continuation), so the node opens step 2 with one AES-GCM
operation in its token (this ticket) and one in software (the request): no second ECDH.

Sealed under the fleet's `ticket` key with its own AAD ("bkv-v3 ticket"), so a ticket of
protocol 2 (other AADs) never opens, and padded to one fixed size (`PADDED_LEN`) whatever it
carries: the frontend relays it in step 2 and must not tell the operation, or a right step 1
from a closed one, by its size. Every failure to open is one `DecryptError`.

>>> padded = _pad(b"abc")
>>> len(padded) == PADDED_LEN and _unpad(padded) == b"abc"
True
"""

from __future__ import annotations

from bkv.store.v1 import sealed_pb2
from vault_node.records import FIRST_KEYS, Rng, SealKeys, TokenOps, open_sealed, seal_sealed
from vault_protocol.errors import DecryptError

TICKET_AAD = b"bkv-v3 ticket"
# The largest ticket (a login ticket with its MAC, session key and both step keys) serializes
# to about 260 bytes; every ticket is padded to this one size before it is sealed.
PADDED_LEN = 384
_LENGTH_PREFIX = 2

Op = sealed_pb2.Ticket.Op


def _pad(plaintext: bytes) -> bytes:
    if len(plaintext) + _LENGTH_PREFIX > PADDED_LEN:
        raise ValueError("ticket too large to pad")
    return (
        len(plaintext).to_bytes(_LENGTH_PREFIX, "big")
        + plaintext
        + bytes(PADDED_LEN - _LENGTH_PREFIX - len(plaintext))
    )


def _unpad(padded: bytes) -> bytes:
    if len(padded) != PADDED_LEN:
        raise DecryptError("sealed data failed to open")
    length = int.from_bytes(padded[:_LENGTH_PREFIX], "big")
    end = _LENGTH_PREFIX + length
    if end > PADDED_LEN or any(padded[end:]):
        raise DecryptError("sealed data failed to open")
    return padded[_LENGTH_PREFIX:end]


def seal(
    token: TokenOps, ticket: sealed_pb2.Ticket, rng: Rng, keys: SealKeys = FIRST_KEYS
) -> bytes:
    """Serialized `Sealed` of `ticket`, padded to `PADDED_LEN`, under the fleet's (current
    epoch's) `ticket` key (any node of the fleet can open it)."""
    plaintext = _pad(ticket.SerializeToString(deterministic=True))
    return seal_sealed(token, keys.ticket, plaintext, TICKET_AAD, rng)


def open_(token: TokenOps, blob: bytes, keys: SealKeys = FIRST_KEYS) -> sealed_pb2.Ticket:
    """Open a ticket a step 2 brought back (with the accepted `ticket` key it names);
    `DecryptError` for any failure (a protocol-2 ticket, a forged, altered or truncated one
    included)."""
    padded = open_sealed(token, keys.ticket_opens, blob, TICKET_AAD)
    try:
        return sealed_pb2.Ticket.FromString(_unpad(padded))
    except DecryptError:
        raise
    except Exception:  # noqa: BLE001 - one error for every cause (no oracle)
        raise DecryptError("sealed data failed to open") from None
