"""Every error the client library raises, and the one place gRPC statuses become them.

An application catches `VaultError` (or one of its subclasses) and nothing else: no raw
`grpc.RpcError` ever leaves the library. Each class says whether a retry is safe, so that a caller
knows what to do without reading the code:

>>> try:
...     raise InvalidPassword(guesses_left=3)
... except VaultError as err:
...     (type(err).__name__, err.guesses_left, err.retry_safe)
('InvalidPassword', 3, False)

Security: messages carry counts, codes and addresses only, never a password, a key, a session
token or a server's free-text details that could echo request bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Protocol

import grpc

from vault_common.wire import (
    NEVER_CONNECTED_PREFIX,
    NEW_CHALLENGE_KEY,
    NOT_APPLIED_KEY,
    RETRY_AFTER_MS_KEY,
    UNKNOWN_FLEET_DETAILS,
    parse_account_refusal,
    trailer,
)


class VaultError(Exception):
    """Base of every client error.

    `retry_safe` tells the caller whether repeating the same call may succeed without a change
    on its side. `code` is the short machine name the command line prints with `--json`.
    """

    retry_safe: bool = False
    code: str = "protocol"


class InvalidPassword(VaultError):
    """The password is wrong; `guesses_left` more wrong ones erase the key for good.

    Retry: only with a different password (the same one fails again and spends a guess).
    """

    code = "invalid_password"

    def __init__(self, guesses_left: int) -> None:
        super().__init__(f"wrong password: {guesses_left} guesses left")
        self.guesses_left = guesses_left


class Locked(VaultError):
    """Too many wrong passwords: the vault erased the key for good. Retry: never (permanent)."""

    code = "locked"

    def __init__(self, message: str = "the key is locked: too many wrong passwords") -> None:
        super().__init__(message)
        self.guesses_left = 0


class NotRegistered(VaultError):
    """The account has no key in the vault. Retry: never; register first."""

    code = "not_registered"

    def __init__(self, message: str = "no key is registered for this account") -> None:
        super().__init__(message)


class RecordTampered(VaultError):
    """The vault refused the account's stored record: storage holds a value no vault node wrote
    there (written back from an old copy, moved, restored or damaged), or the whole store was
    rolled back below what the vault had seen — DATA_LOSS. No password was evaluated and no
    guess was counted or given back.

    Retry: not as is; the vault's operators see it in the nodes' logs and audit lines. The key
    escrowed before is unreachable until the record is repaired; registering again replaces it.
    """

    code = "tampered"

    def __init__(self, message: str = "the vault refused the stored record (tampered)") -> None:
        super().__init__(message)


class Unauthenticated(VaultError):
    """The frontend refused the account's session (bad signature, mismatched account key).

    Retry: not as is. The client already re-logs in once on its own before raising this; check the
    account id and its key file.
    """

    code = "unauthenticated"


class AccountKeyRefused(VaultError):
    """The vault record is bound to another account key than the one this client signs with
    (the vault checked the signature itself; nothing was changed and no guess was counted).

    Retry: never; a retry cannot help. The record was registered from another device or key
    (or this account's key changed there): use that key, or, if it is lost for good, ask the
    operator to rebind the account and run `bkv account rebind-request` (client/README.md).
    """

    code = "account_key"

    def __init__(
        self, message: str = "the vault record is bound to another account key; a retry cannot help"
    ) -> None:
        super().__init__(message)


class StaleSignature(VaultError):
    """The vault refused a signed first step whose timestamp is not after the last one it
    accepted for the account (`floor_ms`): a replay, or this device's clock is behind another's.
    Nothing was applied.

    Retry: safe; the library already signed it once more past `floor_ms` by itself.
    """

    retry_safe = True
    code = "stale_signature"

    def __init__(self, floor_ms: int, message: str = "") -> None:
        super().__init__(message or "the vault refused an out-of-date signed request")
        self.floor_ms = floor_ms


class ClockAhead(VaultError):
    """The vault refused a signed request whose timestamp is too far ahead of its clock (more
    than its `account_auth_max_future_s`, 10 minutes by default). Nothing was applied.

    Retry: only once this device's clock is right.
    """

    code = "clock"

    def __init__(
        self, message: str = "this device's clock is too far ahead of the vault's; fix it"
    ) -> None:
        super().__init__(message)


class ChallengeRefused(Unauthenticated):
    """Login refused because its challenge was spent already (a retried Login whose first try
    got through) or came from another frontend. Nothing was granted: the client logs in again
    at once with a fresh challenge (it does so itself before raising this)."""


class RateLimited(VaultError):
    """The frontend throttled this account or peer.

    Retry: safe after `retry_after` seconds (None when the frontend did not say).
    """

    retry_safe = True
    code = "rate_limited"

    def __init__(self, retry_after: float | None, message: str = "") -> None:
        if not message:
            wait = "" if retry_after is None else f"; retry after {retry_after:.3f} s"
            message = f"rate limited{wait}"
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(VaultError):
    """No frontend or vault node could serve the call in time (down, no quorum, deadline).

    Retry: safe (transient). The library has already retried as `client.retry` describes.
    `sent` is False when the request cannot have counted a guess: it never left this process
    (no frontend connection), or the vault said that it wrote nothing (a vault node that was not
    serving, or no node reached); so a retry cannot count a guess twice.
    """

    retry_safe = True
    code = "unavailable"

    def __init__(self, message: str = "the vault is unavailable", *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class ProtocolError(VaultError):
    """A bug, an attack or an incompatible peer: a malformed, stale or undecryptable message.

    Retry: not safe to retry blindly; report it.
    """

    code = "protocol"


class StaleRequest(ProtocolError):
    """A second step came too late: its ticket expired or was used, or the account's record
    changed since the first step (FAILED_PRECONDITION). The vault changed nothing.

    Retry: run the whole operation again. `register` does so once by itself; a new `recover`
    counts a new guess.
    """

    code = "stale"


class UnknownFleetKey(ProtocolError):
    """The vault no longer holds the fleet key this client sealed to (the operator rotated the
    fleet and retired it), and no newer key could be learnt from a signed announcement. Nothing
    was applied. Retry: not as is; the client already fetched the announcement and resent the
    step once. Pin the fleet's current key (client.toml) or its root key (`fleet_root_key`)."""

    code = "fleet_key"


class FleetAnnouncementRefused(ProtocolError):
    """A fleet key announcement the client refused: unsigned, signed by another key than the
    pinned fleet root key, malformed, older than the epoch it holds, or another key for that
    epoch. The client keeps the key it had. Retry: not as is; the frontend may be lying."""

    code = "fleet_announcement"


class ConfigError(VaultError):
    """client.toml or an argument is invalid; the message lists every problem. Retry: never."""

    code = "bad_input"


class BadInput(VaultError):
    """Input the caller gave is unusable (key format, missing file). Retry: never as is."""

    code = "bad_input"


class _StatusCarrier(Protocol):
    """What both `grpc.RpcError` (sync) and `grpc.aio.AioRpcError` offer."""

    def code(self) -> grpc.StatusCode: ...

    def trailing_metadata(self) -> Any: ...


def _retry_after_seconds(metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    text = trailer(metadata, RETRY_AFTER_MS_KEY)
    if text is None:
        return None
    try:
        ms = float(text)
    except ValueError:
        return None
    return max(ms, 0.0) / 1000.0


def _not_applied(err: _StatusCarrier) -> bool:
    """The frontend's `bkv-not-applied: 1` trailer: no vault node wrote anything for this call.

    Trusting it is safe for the same reason as `_never_connected`: it only buys a retry, and the
    vault nodes count every evaluation themselves.
    """
    try:
        metadata = err.trailing_metadata()
    except Exception:  # noqa: BLE001 - no metadata: assume it may have applied (the safe side)
        return False
    return trailer(metadata, NOT_APPLIED_KEY) == "1"


def _new_challenge(err: _StatusCarrier) -> bool:
    """The frontend's `bkv-new-challenge: 1` trailer on a refused Login. Trusting it only buys
    one more login with a fresh challenge, which any caller could ask for anyway."""
    try:
        metadata = err.trailing_metadata()
    except Exception:  # noqa: BLE001 - no metadata: a plain refusal
        return False
    return trailer(metadata, NEW_CHALLENGE_KEY) == "1"


def _never_connected(err: _StatusCarrier) -> bool:
    """gRPC's own words for a call that found no connection to the frontend: nothing was sent.

    The text comes from the local channel. A lying frontend could send it too, but it would gain
    one more retry of a step, which it can cause anyway by replaying the envelope; the vault
    counts every evaluation itself.
    """
    # No details: assume it was sent (the safe side).
    return _details(err).startswith(NEVER_CONNECTED_PREFIX)


# The vault node's INVALID_ARGUMENT for an envelope of another protocol version
# (vault_protocol.envelope.UnsupportedVersion). Only the two numbers are taken from it.
_VERSION_DETAILS = re.compile(
    r"unsupported protocol version: this vault speaks protocol (\d{1,5}); "
    r"envelope is version (\d{1,10})"
)


def _details(err: _StatusCarrier) -> str:
    """The call's details text ("" when there is none); untrusted: only ever compared."""
    details = getattr(err, "details", None)
    try:
        text = details() if callable(details) else ""
    except Exception:  # noqa: BLE001 - no details
        return ""
    return text if isinstance(text, str) else ""


def _version_mismatch(err: _StatusCarrier) -> VaultError | None:
    """A ProtocolError naming both versions, or None. The message is composed here from two
    parsed integers: no free text of the server's reaches the caller."""
    match = _VERSION_DETAILS.match(_details(err))
    if match is None:
        return None
    vault, ours = int(match.group(1)), int(match.group(2))
    advice = "upgrade the client" if ours < vault else "the vault is older than this client"
    return ProtocolError(
        f"this vault speaks protocol {vault}; this client sent version {ours} - {advice}"
    )


def _account_refusal(err: _StatusCarrier) -> VaultError | None:
    """A vault node's refusal of the account signature (vault_common.wire), or None. Only the
    reason and one integer are read from the untrusted details; the messages are ours."""
    details = getattr(err, "details", None)
    try:
        text = details() if callable(details) else ""
    except Exception:  # noqa: BLE001 - no details: not an account refusal
        return None
    parsed = parse_account_refusal(text) if isinstance(text, str) else None
    if parsed is None:
        return None
    reason, floor_ms = parsed
    if reason == "key":
        return AccountKeyRefused()
    if reason == "stale":
        return StaleSignature(floor_ms)
    if reason == "clock":
        return ClockAhead()
    return ProtocolError("the vault refused the request's account signature (invalid)")


def error_from_status(err: _StatusCarrier, *, where: str = "") -> VaultError:
    """Map a failed gRPC call to a client error: the library's only gRPC status → error mapping.

    `where` names the frontend for the message (an address, never a secret). The server's
    `details()` are deliberately not copied: they are untrusted text.

    >>> class Fake:
    ...     def code(self): return grpc.StatusCode.RESOURCE_EXHAUSTED
    ...     def trailing_metadata(self): return (("retry-after-ms", "1500"),)
    >>> error_from_status(Fake()).retry_after
    1.5
    """
    try:
        code = err.code()
    except Exception:  # noqa: BLE001 - a broken call object is itself a protocol failure
        code = grpc.StatusCode.UNKNOWN
    suffix = f" ({where})" if where else ""
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        refusal = _account_refusal(err)
        if refusal is not None:
            return refusal
        if _new_challenge(err):
            return ChallengeRefused(f"the frontend refused a spent login challenge{suffix}")
        return Unauthenticated(f"the frontend refused the account session{suffix}")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        try:
            retry_after = _retry_after_seconds(err.trailing_metadata())
        except Exception:  # noqa: BLE001 - missing metadata just means "no hint"
            retry_after = None
        if retry_after is not None:
            return RateLimited(retry_after)
        return ProtocolError(f"request refused as too large (RESOURCE_EXHAUSTED){suffix}")
    if code is grpc.StatusCode.DATA_LOSS:
        return RecordTampered(f"the vault refused the stored record (DATA_LOSS){suffix}")
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        if _details(err) == UNKNOWN_FLEET_DETAILS:
            # The fixed text of a node that does not hold the envelope's fleet key; trusting it
            # buys only a fetch of the signed announcement, which the client verifies.
            return UnknownFleetKey(f"the vault does not hold this client's fleet key{suffix}")
        return StaleRequest(f"the vault refused a stale step (FAILED_PRECONDITION){suffix}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        sent = not (
            code is grpc.StatusCode.UNAVAILABLE and (_never_connected(err) or _not_applied(err))
        )
        return Unavailable(f"vault unavailable: {name}{suffix}", sent=sent)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        mismatch = _version_mismatch(err)
        if mismatch is not None:
            return mismatch
    return ProtocolError(f"the vault rejected the request: {name}{suffix}")


def error_from_outcome(outcome: int, guesses_left: int) -> VaultError | None:
    """Map a sealed `VaultResponse.outcome` to a client error; None for `OUTCOME_OK`.

    The only place outcomes become errors (the vault says wrong password / locked / not
    registered inside the sealed answer, so the frontend cannot forge or read them).

    >>> from bkv.v1 import envelope_pb2
    >>> error_from_outcome(envelope_pb2.OUTCOME_INVALID_PASSWORD, 4).guesses_left
    4
    >>> error_from_outcome(envelope_pb2.OUTCOME_OK, 10) is None
    True
    """
    from bkv.v1 import envelope_pb2  # local: keeps `import client.errors` light

    if outcome == envelope_pb2.OUTCOME_OK:
        return None
    if outcome == envelope_pb2.OUTCOME_INVALID_PASSWORD:
        return InvalidPassword(guesses_left)
    if outcome == envelope_pb2.OUTCOME_LOCKED:
        return Locked()
    if outcome == envelope_pb2.OUTCOME_NOT_REGISTERED:
        return NotRegistered()
    return ProtocolError(f"the vault answered an unknown outcome ({int(outcome)})")
