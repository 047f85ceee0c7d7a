"""Accounts: challenge/login with an Ed25519 key bound to the account in etcd on first login."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Protocol

import aetcd.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from frontend_chatd.sessions import (
    Challenges,
    InvalidArgument,
    Session,
    SessionTokens,
    Unauthenticated,
    check_account_id,
)

LOGIN_CONTEXT = b"bkv-v1 login"
ACCOUNTS_PREFIX = "/bkv/v1/accounts/"
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_ENROLLMENT_TOKEN_CHARS = 128


class AccountStoreUnavailable(Exception):
    """etcd could not be reached to read or bind an account key (UNAVAILABLE, safe to retry)."""


class KeyStore(Protocol):
    async def get(self, account_id: str) -> bytes | None:
        """The public key bound to the account, or None."""

    async def bind(self, account_id: str, public_key: bytes) -> bytes:
        """Bind `public_key` unless a key is already bound; return the key bound afterwards."""


class EtcdKeyStore:
    """Account keys at /bkv/v1/accounts/<account_id> (raw 32-byte Ed25519 public key)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @staticmethod
    def key_for(account_id: str) -> bytes:
        return (ACCOUNTS_PREFIX + check_account_id(account_id)).encode()

    async def get(self, account_id: str) -> bytes | None:
        try:
            result = await self._client.get(self.key_for(account_id))
        except (aetcd.exceptions.ClientError, TimeoutError) as e:
            raise AccountStoreUnavailable("account store unavailable") from e
        return None if result is None else bytes(result.value)

    async def bind(self, account_id: str, public_key: bytes) -> bytes:
        key = self.key_for(account_id)
        tx = self._client.transactions
        try:
            # Security: put-if-absent (create_revision == 0), so two racing first logins with
            # different keys cannot both win; the loser sees the winner's key.
            succeeded, responses = await self._client.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, public_key)],
                failure=[tx.get(key)],
            )
        except (aetcd.exceptions.ClientError, TimeoutError) as e:
            raise AccountStoreUnavailable("account store unavailable") from e
        if succeeded:
            return public_key
        ranges = responses[0] if responses else []
        if not ranges:  # deleted between compare and read: treat as not bound, caller retries
            raise AccountStoreUnavailable("account key changed concurrently, retry")
        return bytes(ranges[0][0])


def enrollment_token(enrollment_secret: bytes, account_id: str) -> str:
    """hex HMAC-SHA256(enrollment secret, account id): what an operator hands to a new account."""
    return hmac.new(enrollment_secret, account_id.encode(), sha256).hexdigest()


class Enrollment:
    """Gate on first logins: open when no secret is configured."""

    def __init__(self, secret: bytes | None) -> None:
        self._secret = secret or None

    @property
    def required(self) -> bool:
        return self._secret is not None

    def check(self, account_id: str, token: str) -> None:
        if self._secret is None:
            return
        expected = enrollment_token(self._secret, account_id)
        given = token.strip().lower()[:MAX_ENROLLMENT_TOKEN_CHARS]
        # Security: constant-time compare so the token cannot be learnt byte by byte.
        if not given.isascii() or not hmac.compare_digest(given, expected):
            raise Unauthenticated("enrollment token missing or wrong for this account")

    def __repr__(self) -> str:
        return f"Enrollment(required={self.required})"


@dataclass(frozen=True)
class LoginResult:
    token: str
    session: Session
    enrolled: bool  # True when this login bound the key (first login)


class Accounts:
    """GetChallenge and Login."""

    def __init__(
        self,
        challenges: Challenges,
        tokens: SessionTokens,
        store: KeyStore,
        enrollment: Enrollment,
    ) -> None:
        self._challenges = challenges
        self._tokens = tokens
        self._store = store
        self._enrollment = enrollment

    def challenge(self, account_id: str) -> bytes:
        return self._challenges.issue(check_account_id(account_id))

    async def login(
        self,
        account_id: str,
        public_key: bytes,
        challenge: bytes,
        signature: bytes,
        enrollment_token: str,
    ) -> LoginResult:
        check_account_id(account_id)
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise InvalidArgument("public_key must be a raw 32-byte Ed25519 key")
        if len(signature) != SIGNATURE_BYTES:
            raise Unauthenticated("bad login signature")
        self._challenges.verify(account_id, challenge)
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                signature, LOGIN_CONTEXT + challenge
            )
        except (InvalidSignature, ValueError):
            raise Unauthenticated("bad login signature") from None
        # Security: the signature above proves possession of the key before it is bound or used.
        bound = await self._store.get(account_id)
        enrolled = False
        if bound is None:
            self._enrollment.check(account_id, enrollment_token)
            bound = await self._store.bind(account_id, public_key)
            enrolled = hmac.compare_digest(bound, public_key)
        if not hmac.compare_digest(bound, public_key):
            raise Unauthenticated("this account is bound to another key")
        token, session = self._tokens.mint(account_id)
        return LoginResult(token, session, enrolled)
