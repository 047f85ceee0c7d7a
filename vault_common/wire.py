"""Names on the wire that more than one part speaks: trailing-metadata keys and their reading.

* `bkv-not-applied: 1` on an UNAVAILABLE: no vault node wrote anything for this call (the node
  says so itself; the frontend passes it on, or says so when no node was reached). The client may
  then retry even a step that counts a guess (node.proto, frontend.proto).
* `retry-after-ms: <int>` on a RESOURCE_EXHAUSTED: throttled before relaying; try again after.
* `authorization: Bearer <token>`: the account's session on every Relay.
* `bkv-new-challenge: 1` on an UNAUTHENTICATED Login: the challenge was already spent (or was
  issued by another frontend); nothing was granted, and the client may log in again at once with
  a fresh challenge from the frontend it calls.
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
