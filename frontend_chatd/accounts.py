"""Accounts: challenge/login with an Ed25519 key bound to the account in etcd on first login,
and the key change that moves the binding when the bound key consents (issue 17).

The binding is also the operator's lever after a key loss: `bkv-cluster rebind-account` (etcd
root) rebinds the login key; the vault then still requires its own delayed rebind
(docs/architecture.md, "Account keys")."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from hashlib import sha256
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from etcd_client import (
    Compare,
    EtcdAuthError,
    EtcdClient,
    EtcdError,
    EtcdPermissionDenied,
    Get,
    Put,
    RangeResult,
)
from frontend_chatd.sessions import (
    Challenges,
    InvalidArgument,
    Session,
    SessionTokens,
    Unauthenticated,
    check_account_id,
)
from vault_common.account_binding import (
    PUBLIC_KEY_BYTES,
    binding_key,
    decode_binding,
)

LOGIN_CONTEXT = b"bkv-v1 login"
CHANGE_KEY_CONTEXT = b"bkv-v1 change key"
SIGNATURE_BYTES = 64
MAX_ENROLLMENT_TOKEN_CHARS = 128

log = logging.getLogger(__name__)


class AccountStoreUnavailable(Exception):
    """etcd could not be reached to read or bind an account key (UNAVAILABLE, safe to retry)."""


class KeyStore(Protocol):
    """The account bindings (vault_common.account_binding): values are one key, or two."""

    async def get(self, account_id: str) -> bytes | None:
        """The binding stored for the account, or None."""

    async def bind(self, account_id: str, public_key: bytes) -> bytes:
        """Bind `public_key` unless a binding exists; return the binding stored afterwards."""

    async def replace(self, account_id: str, old: bytes, new: bytes) -> bytes | None:
        """Store `new` if the binding is `old` now; return the binding afterwards (None: none)."""


class EtcdKeyStore:
    """Account keys at /bkv/v1/accounts/<account_id> (raw 32-byte Ed25519 public key)."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    @staticmethod
    def key_for(account_id: str) -> bytes:
        return binding_key(check_account_id(account_id))

    async def get(self, account_id: str) -> bytes | None:
        try:
            kv = await self._client.get(self.key_for(account_id))
        except EtcdError as e:
            raise _unavailable(e) from e
        return None if kv is None else kv.value

    async def bind(self, account_id: str, public_key: bytes) -> bytes:
        key = self.key_for(account_id)
        # Security: put-if-absent (create_revision == 0), so two racing first logins with
        # different keys cannot both win; the loser sees the winner's key.
        bound = await self._swap(key, Compare.create_is(key, 0), public_key)
        if bound is None:
            # deleted between compare and read: treat as not bound, caller retries
            raise AccountStoreUnavailable("account key changed concurrently, retry")
        return bound

    async def replace(self, account_id: str, old: bytes, new: bytes) -> bytes | None:
        key = self.key_for(account_id)
        # Security: compare-and-swap on the value, so the binding moves only from the key
        # whose consent was checked, never from one bound meanwhile.
        return await self._swap(key, Compare.value_is(key, old), new)

    async def _swap(self, key: bytes, compare: Compare, value: bytes) -> bytes | None:
        """Put `value` if `compare` holds; the value stored afterwards (None: the key is gone)."""
        try:
            result = await self._client.txn([compare], [Put(key, value)], [Get(key)])
        except EtcdError as e:
            raise _unavailable(e) from e
        if result.succeeded:
            return value
        ranges = result.responses[0] if result.responses else None
        if not isinstance(ranges, RangeResult) or not ranges.kvs:
            return None
        return ranges.kvs[0].value


def _unavailable(error: EtcdError) -> AccountStoreUnavailable:
    """Every etcd failure is UNAVAILABLE to the client; a refusal is also a deployment error."""
    if isinstance(error, EtcdPermissionDenied | EtcdAuthError):
        log.error("etcd refused the account store (%s): check the frontend's etcd role", error)
    return AccountStoreUnavailable("account store unavailable")


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
        # Security: spent only once the signature checked (nobody can burn another's challenge),
        # and before any await, so two concurrent logins with one challenge cannot both pass.
        self._challenges.spend(challenge)
        # Security: the signature above proves possession of the key before it is bound or used.
        bound = await self._store.get(account_id)
        enrolled = False
        if bound is None:
            self._enrollment.check(account_id, enrollment_token)
            bound = await self._store.bind(account_id, public_key)
            enrolled = hmac.compare_digest(bound, public_key)
        if not _holds(bound, public_key):
            raise Unauthenticated("this account is bound to another key")
        token, session = self._tokens.mint(account_id)
        return LoginResult(token, session, enrolled)

    async def change_key(
        self,
        account_id: str,
        public_key: bytes,
        new_public_key: bytes,
        challenge: bytes,
        signature: bytes,
        new_signature: bytes,
    ) -> LoginResult:
        """Move the account's binding from `public_key` to `new_public_key`: both keys sign
        `CHANGE_KEY_CONTEXT || challenge || new_public_key`; a session for the new key.

        Security: the bound key's signature is its consent (a frontend binding never moves
        without it, but by the operator after a key loss), the new key's proves it is held.
        Already bound to the new key (a retry whose answer was lost): the new key's signature
        suffices. The vault checks its own binding (the record's account key) besides.
        """
        check_account_id(account_id)
        for key in (public_key, new_public_key):
            if len(key) != PUBLIC_KEY_BYTES:
                raise InvalidArgument("public keys must be raw 32-byte Ed25519 keys")
        bound = await self._store.get(account_id)
        # No await from the challenge's check to its spending (as in `login`).
        self._challenges.verify(account_id, challenge)
        message = CHANGE_KEY_CONTEXT + challenge + new_public_key
        _verify(new_public_key, new_signature, message)
        if bound is not None and hmac.compare_digest(bound, new_public_key):
            self._challenges.spend(challenge)
        else:
            _verify(public_key, signature, message)
            keys = decode_binding(bound or b"")
            # Only the bound key, never a key an operator added after a key loss: that one
            # must not lock the old device out of the vault while its rebind waits there.
            if not keys or not hmac.compare_digest(keys[0], public_key):
                raise Unauthenticated("this account is bound to another key")
            # Spent once both signatures checked (nobody can burn another's challenge).
            self._challenges.spend(challenge)
            assert bound is not None
            bound = await self._store.replace(account_id, bound, new_public_key)
            if bound is None or not hmac.compare_digest(bound, new_public_key):
                raise Unauthenticated("this account is bound to another key")
            log.info("account key changed (signed by the bound key)")
        token, session = self._tokens.mint(account_id)
        return LoginResult(token, session, enrolled=False)


def _holds(binding: bytes, public_key: bytes) -> bool:
    """`public_key` is one of the binding's keys (constant time per key)."""
    found = False
    for key in decode_binding(binding):
        found |= hmac.compare_digest(key, public_key)
    return found


def _verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise Unauthenticated("bad key change signature")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise Unauthenticated("bad key change signature") from None
