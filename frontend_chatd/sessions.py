"""Login challenges and session tokens, MAC'd under the frontends' shared secret.

Session tokens are stateless: any frontend that holds the session secret checks a token issued
by any other. A login challenge is bound to the frontend that issued it and is spent there by
the first login that signs it (a replay within its lifetime is refused); the spent set lives in
that frontend's memory for the challenge's lifetime only. Pure: the clock and the randomness are
passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vault_common.wire import AUTHORIZATION_KEY

Clock = Callable[[], float]  # seconds since the epoch
Rng = Callable[[int], bytes]

CHALLENGE_TTL_S = 60
CHALLENGE_NONCE_BYTES = 16
ISSUER_BYTES = 8
# 2: the issuing frontend is bound into the challenge, which is single-use (2026-12-03).
_CHALLENGE_VERSION = 2
_CHALLENGE_HEAD = struct.Struct(">BQ")  # version, expiry in ms
CHALLENGE_BYTES = _CHALLENGE_HEAD.size + ISSUER_BYTES + CHALLENGE_NONCE_BYTES + 32
# Spent challenges kept at once; they leave the set when they expire (60 s). Above this the
# frontend refuses logins rather than forget a spent challenge (fail closed).
MAX_SPENT_CHALLENGES = 200_000
TOKEN_VERSION = "v1"  # noqa: S105 - a format tag, not a secret
MAX_TOKEN_CHARS = 512

_ACCOUNT_RE = re.compile(r"[A-Za-z0-9._@+-]{1,128}")


class InvalidArgument(Exception):
    """A request field is malformed (INVALID_ARGUMENT); the message says which."""


class InvalidAccountId(InvalidArgument):
    """The account id is not 1..128 characters of [A-Za-z0-9._@+-] (INVALID_ARGUMENT)."""


class Unauthenticated(Exception):
    """A challenge, signature, enrollment token or session token did not check (UNAUTHENTICATED).

    The message is safe to show to the caller: it never says which byte failed.
    """


def check_account_id(account_id: str) -> str:
    # Security: a strict alphabet keeps ids unambiguous inside MACs, etcd keys and log lines.
    if not _ACCOUNT_RE.fullmatch(account_id):
        raise InvalidAccountId("account id must be 1-128 characters of A-Z a-z 0-9 . _ @ + -")
    return account_id


@dataclass(frozen=True)
class SessionKeys:
    """Purpose-bound keys derived from the shared session secret."""

    challenge_key: bytes
    token_key: bytes
    log_tag_key: bytes

    @classmethod
    def derive(cls, session_secret: bytes) -> SessionKeys:
        # Security: one HKDF label per purpose, so a challenge MAC can never pass as a token MAC.
        return cls(
            challenge_key=_hkdf(session_secret, b"bkv-v1 frontend login-challenge"),
            token_key=_hkdf(session_secret, b"bkv-v1 frontend session-token"),
            log_tag_key=_hkdf(session_secret, b"bkv-v1 frontend log-tag"),
        )

    def __repr__(self) -> str:
        return "SessionKeys(<redacted>)"


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def _now_ms(clock: Clock) -> int:
    return int(clock() * 1000)


class ChallengeSpent(Unauthenticated):
    """The challenge was already used for a login, or another frontend issued it: the client
    asks this frontend for a new challenge and signs that one."""


def issuer_id(frontend_name: str) -> bytes:
    """The 8-byte id a frontend binds into the challenges it issues."""
    return hashlib.sha256(b"bkv-v1 frontend issuer " + frontend_name.encode()).digest()[
        :ISSUER_BYTES
    ]


class Challenges:
    """Login challenges: version || expiry_ms || issuer || nonce || HMAC(account, all before).

    `verify` checks a challenge; `spend` marks it used, once (see `Accounts.login`).
    """

    def __init__(
        self,
        keys: SessionKeys,
        clock: Clock,
        rng: Rng,
        issuer: bytes,
        max_spent: int = MAX_SPENT_CHALLENGES,
    ) -> None:
        if len(issuer) != ISSUER_BYTES:
            raise ValueError(f"issuer id must be {ISSUER_BYTES} bytes")
        self._key = keys.challenge_key
        self._clock = clock
        self._rng = rng
        self._issuer = issuer
        self._max_spent = max_spent
        self._spent: set[bytes] = set()
        self._expiries: list[tuple[int, bytes]] = []  # heap of (expiry ms, challenge body)

    def issue(self, account_id: str) -> bytes:
        check_account_id(account_id)
        expires_ms = _now_ms(self._clock) + CHALLENGE_TTL_S * 1000
        body = (
            _CHALLENGE_HEAD.pack(_CHALLENGE_VERSION, expires_ms)
            + self._issuer
            + self._rng(CHALLENGE_NONCE_BYTES)
        )
        return body + self._mac(account_id, body)

    def verify(self, account_id: str, challenge: bytes) -> None:
        """Raise Unauthenticated unless `challenge` was issued here for `account_id`, is
        unexpired and unspent."""
        if len(challenge) != CHALLENGE_BYTES:
            raise Unauthenticated("invalid login challenge")
        body, mac = challenge[:-32], challenge[-32:]
        # Security: the MAC binds the account id, so a challenge for one account fails for another.
        if not hmac.compare_digest(mac, self._mac(account_id, body)):
            raise Unauthenticated("invalid login challenge")
        version, expires_ms = _CHALLENGE_HEAD.unpack_from(body)
        if version != _CHALLENGE_VERSION:
            raise Unauthenticated("invalid login challenge")
        if _now_ms(self._clock) >= expires_ms:
            raise Unauthenticated("login challenge expired: ask for a new one")
        # Security: only the issuer keeps the spent set of its challenges, so only the issuer
        # may accept one; another frontend accepting it could not tell a replay.
        issuer = body[_CHALLENGE_HEAD.size : _CHALLENGE_HEAD.size + ISSUER_BYTES]
        if not hmac.compare_digest(issuer, self._issuer):
            raise ChallengeSpent("login challenge was issued by another frontend: ask again")
        if body in self._spent:
            raise ChallengeSpent("login challenge was already used: ask for a new one")

    def spend(self, challenge: bytes) -> None:
        """Mark a verified challenge used; `ChallengeSpent` if it already was.

        Call it after the signature checked (so nobody can burn another's challenge) and with no
        await between `verify` and here (so two concurrent logins cannot both pass)."""
        body = challenge[:-32]
        self._forget_expired()
        if body in self._spent:
            raise ChallengeSpent("login challenge was already used: ask for a new one")
        if len(self._spent) >= self._max_spent:
            # Fail closed: forgetting a spent challenge before it expires would allow a replay.
            raise Unauthenticated("too many logins at once: retry shortly")
        _, expires_ms = _CHALLENGE_HEAD.unpack_from(body)
        self._spent.add(body)
        heapq.heappush(self._expiries, (expires_ms, body))

    @property
    def spent_count(self) -> int:
        return len(self._spent)

    def _forget_expired(self) -> None:
        now_ms = _now_ms(self._clock)
        # An expired challenge is refused by `verify` anyway: it need not be remembered.
        while self._expiries and self._expiries[0][0] <= now_ms:
            _, body = heapq.heappop(self._expiries)
            self._spent.discard(body)

    def _mac(self, account_id: str, body: bytes) -> bytes:
        account = account_id.encode()
        msg = b"bkv-v1 challenge" + struct.pack(">H", len(account)) + account + body
        return hmac.digest(self._key, msg, sha256)


@dataclass(frozen=True)
class Session:
    account_id: str
    expires_at_ms: int


class SessionTokens:
    """Bearer tokens "v1.<b64url account>.<expiry ms>.<b64url HMAC>", valid on every frontend."""

    def __init__(self, keys: SessionKeys, ttl_s: int, clock: Clock) -> None:
        self._key = keys.token_key
        self._ttl_ms = ttl_s * 1000
        self._clock = clock

    def mint(self, account_id: str) -> tuple[str, Session]:
        """A new token for `account_id` and the session it stands for."""
        check_account_id(account_id)
        expires_ms = _now_ms(self._clock) + self._ttl_ms
        signed = f"{TOKEN_VERSION}.{_b64(account_id.encode())}.{expires_ms}"
        token = f"{signed}.{_b64(self._mac(signed))}"
        return token, Session(account_id, expires_ms)

    def verify(self, token: str) -> Session:
        """The session a token stands for; Unauthenticated if forged, malformed or expired."""
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise Unauthenticated("invalid session token")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != TOKEN_VERSION:
            raise Unauthenticated("invalid session token")
        signed = ".".join(parts[:3])
        mac = _unb64(parts[3])
        # Security: constant-time MAC check before anything in the token is trusted.
        if mac is None or not hmac.compare_digest(mac, self._mac(signed)):
            raise Unauthenticated("invalid session token")
        account = _unb64(parts[1])
        if account is None or not parts[2].isdigit():
            raise Unauthenticated("invalid session token")
        try:
            account_id = check_account_id(account.decode())
        except (UnicodeDecodeError, InvalidAccountId):
            raise Unauthenticated("invalid session token") from None
        expires_ms = int(parts[2])
        if _now_ms(self._clock) >= expires_ms:
            raise Unauthenticated("session expired: log in again")
        return Session(account_id, expires_ms)

    def _mac(self, signed: str) -> bytes:
        return hmac.digest(self._key, b"bkv-v1 session " + signed.encode(), sha256)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes | None:
    """Strict unpadded base64url: None for anything that does not round-trip exactly."""
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return data if _b64(data) == text else None


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    """The token of an `authorization: Bearer <token>` header; Unauthenticated when absent."""
    for key, value in metadata or ():
        if key.lower() == AUTHORIZATION_KEY and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    raise Unauthenticated("missing session: send 'authorization: Bearer <token>'")
