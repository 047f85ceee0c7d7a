"""Names on the wire that more than one part speaks: trailing-metadata keys and their reading.

* `bkv-not-applied: 1` on an UNAVAILABLE: no vault node wrote anything for this call (the node
  says so itself; the frontend passes it on, or says so when no node was reached). The client may
  then retry even a step that counts a guess (node.proto, frontend.proto).
* `retry-after-ms: <int>` on a RESOURCE_EXHAUSTED: throttled before relaying; try again after.
* `authorization: Bearer <token>`: the account's session on every Relay.
* `bkv-new-challenge: 1` on an UNAUTHENTICATED Login: the challenge was already spent (or was
  issued by another frontend); nothing was granted, and the client may log in again at once with
  a fresh challenge from the frontend it calls.
* A vault node's UNAUTHENTICATED (issue 17: the request's account signature does not admit it;
  nothing applied, with `bkv-not-applied: 1`) carries details of one fixed form per reason,
  `account_refusal_details`; the frontend passes it on (it tells the node's from its own
  refusals by the prefix) and the client reads it back with `parse_account_refusal`.
* `UNKNOWN_FLEET_DETAILS`, the details of a vault node's FAILED_PRECONDITION for an envelope
  that names a fleet key the node does not hold (retired by a rotation): nothing was applied;
  the client fetches the fleet's signed announcement (`Frontend.GetFleet`) and sends its first
  step again, once. The frontend passes node details on unchanged.

>>> trailer((("Retry-After-Ms", b"1500"),), RETRY_AFTER_MS_KEY)
'1500'
>>> trailer(NOT_APPLIED, NOT_APPLIED_KEY)
'1'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

NOT_APPLIED_KEY = "bkv-not-applied"
NOT_APPLIED = ((NOT_APPLIED_KEY, "1"),)
RETRY_AFTER_MS_KEY = "retry-after-ms"
AUTHORIZATION_KEY = "authorization"
NEW_CHALLENGE_KEY = "bkv-new-challenge"
NEW_CHALLENGE = ((NEW_CHALLENGE_KEY, "1"),)
BEARER_PREFIX = "Bearer "
# The etcd key of the fleet's signed key announcement: written by the operator (root), read by
# the frontends for `Frontend.GetFleet`; its signature, not etcd, is what a client trusts.
FLEET_ANNOUNCEMENT_KEY = "/bkv/v1/fleet/announcement"
UNKNOWN_FLEET_DETAILS = "bkv-unknown-fleet: envelope sealed to a fleet key this vault does not hold"
# What gRPC's own channel says when a call found no connection at all: nothing was sent.
NEVER_CONNECTED_PREFIX = "failed to connect to all addresses"


def trailer(metadata: Iterable[tuple[str, Any]] | None, name: str) -> str | None:
    """The first value of metadata key `name` (any case), as text; None if absent.

    The value is untrusted: callers parse it strictly and treat a bad one as absent.
    """
    for key, value in metadata or ():
        if key.lower() == name:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


ACCOUNT_REFUSAL_PREFIX = "account signature refused: "
_ACCOUNT_REFUSALS = {
    "key": "the vault record is bound to another account key",
    "stale": "stale timestamp, last accepted ts_ms={floor}",
    "clock": "timestamp too far ahead of the vault's clock",
    "signature": "missing or invalid",
}
_STALE = re.compile(r"stale timestamp, last accepted ts_ms=(\d{1,19})")


def account_refusal_details(reason: str, floor_ms: int = 0) -> str:
    """The details of a node's UNAUTHENTICATED for `reason` ("key", "stale", "clock" or
    "signature"); a stale one names the record's last accepted ts_ms, so that the client can
    sign again past it (the frontend relayed that request: it learns nothing new but the
    client's clock).

    >>> account_refusal_details("stale", 42)
    'account signature refused: stale timestamp, last accepted ts_ms=42'
    >>> parse_account_refusal(account_refusal_details("stale", 42))
    ('stale', 42)
    >>> parse_account_refusal("account signature refused: anything else") is None
    True
    """
    return ACCOUNT_REFUSAL_PREFIX + _ACCOUNT_REFUSALS[reason].format(floor=int(floor_ms))


def parse_account_refusal(details: str) -> tuple[str, int] | None:
    """(reason, floor_ms) of `account_refusal_details` text, or None for any other text (the
    text is untrusted: only these fixed forms and one integer are read from it)."""
    if not isinstance(details, str) or not details.startswith(ACCOUNT_REFUSAL_PREFIX):
        return None
    rest = details[len(ACCOUNT_REFUSAL_PREFIX) :]
    for reason, text in _ACCOUNT_REFUSALS.items():
        if reason != "stale" and rest == text:
            return reason, 0
    match = _STALE.fullmatch(rest)
    return ("stale", int(match.group(1))) if match else None
