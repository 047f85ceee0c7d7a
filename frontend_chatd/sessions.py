"""Stateless login challenges and session tokens, MAC'd under the frontends' shared secret.

Nothing here is stored: any frontend that holds the session secret can check a challenge or a
token issued by any other. Pure: the clock and the randomness are passed in.
"""

from __future__ import annotations

import base64
import binascii
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
_CHALLENGE_VERSION = 1
_CHALLENGE_HEAD = struct.Struct(">BQ")  # version, expiry in ms
CHALLENGE_BYTES = _CHALLENGE_HEAD.size + CHALLENGE_NONCE_BYTES + 32
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


class Challenges:
    """Login challenges: version || expiry_ms || nonce || HMAC(account, version, expiry, nonce)."""

    def __init__(self, keys: SessionKeys, clock: Clock, rng: Rng) -> None:
        self._key = keys.challenge_key
        self._clock = clock
        self._rng = rng

    def issue(self, account_id: str) -> bytes:
        check_account_id(account_id)
        expires_ms = _now_ms(self._clock) + CHALLENGE_TTL_S * 1000
        body = _CHALLENGE_HEAD.pack(_CHALLENGE_VERSION, expires_ms) + self._rng(
            CHALLENGE_NONCE_BYTES
        )
        return body + self._mac(account_id, body)

    def verify(self, account_id: str, challenge: bytes) -> None:
        """Raise Unauthenticated unless `challenge` was issued for `account_id` and is unexpired."""
        if len(challenge) != CHALLENGE_BYTES:
            raise Unauthenticated("invalid login challenge")
        body, mac = challenge[:-32], challenge[-32:]
        # Security: the MAC binds the account id, so a challenge for one account fails for another.
        if not hmac.compare_digest(mac, self._mac(account_id, body)):
            raise Unauthenticated("invalid login challenge")
        version, expires_ms = _CHALLENGE_HEAD.unpack_from(body)
        if version != _CHALLENGE_VERSION:
            raise Unauthenticated("invalid login challenge")
        # Security: stateless challenges can be replayed only until they expire (60 s), and a
        # replay still needs the account key's signature over this exact challenge.
        if _now_ms(self._clock) >= expires_ms:
            raise Unauthenticated("login challenge expired: ask for a new one")

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
