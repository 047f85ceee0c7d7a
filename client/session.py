"""The account key (Ed25519, in a 0600 file) and the frontend session it logs in to.

Login, as the frontend expects it: `GetChallenge(account)` → sign `b"bkv-v1 login" || challenge`
→ `Login(account, public key, challenge, signature)` → a session token, sent as
`authorization: Bearer <token>` until it expires. This module builds the messages and keeps the
token; `client.vault` / `client.aio` make the calls.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:  # removed after, key file included
...     key = AccountKey.create(d, "alice")
...     oct(os.stat(key.path).st_mode & 0o777)
'0o600'
>>> repr(key).startswith("AccountKey(account_id='alice'")
True

Security: the private key is read only to sign; it never appears in a repr, log line or error.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkv.v1 import frontend_pb2
from client.errors import BadInput
from vault_common.wire import AUTHORIZATION_KEY, BEARER_PREFIX
from vault_protocol.account_auth import AccountSigner

LOGIN_CONTEXT = b"bkv-v1 login"
CHANGE_KEY_CONTEXT = b"bkv-v1 change key"
KEY_SUFFIX = ".account.key"
PENDING_SUFFIX = ".new"  # the key a key change moves to, until both sides bind it
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
REFRESH_MARGIN_MS = 30_000  # refresh a token this long before it expires


def check_account_id(account_id: str) -> str:
    """Return `account_id` or raise BadInput: 1-128 of letters, digits, `._@-`, no leading symbol.

    The id names a file, so path characters are refused.

    >>> check_account_id("alice@example")
    'alice@example'
    """
    if not isinstance(account_id, str) or not _ACCOUNT_ID.match(account_id):
        raise BadInput("account id must be 1-128 letters, digits or ._@- (starting alphanumeric)")
    return account_id


def new_account_id(token_hex: Callable[[int], str] = secrets.token_hex) -> str:
    """A fresh random account id, e.g. `acct-1f0c...` (16 random bytes)."""
    return "acct-" + token_hex(16)


def key_file_path(key_dir: str | os.PathLike[str], account_id: str) -> Path:
    """Where the account's private key lives: `<key_dir>/<account_id>.account.key`."""
    return Path(key_dir) / (check_account_id(account_id) + KEY_SUFFIX)


class AccountKey:
    """An account id and its Ed25519 private key, loaded from or created in a 0600 file."""

    def __init__(self, account_id: str, private_key: Ed25519PrivateKey, path: Path) -> None:
        self.account_id = check_account_id(account_id)
        self._private = private_key
        self.path = path
        # Derived once: every step-1 request carries it (`signer`).
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def __repr__(self) -> str:
        return f"AccountKey(account_id={self.account_id!r}, path={str(self.path)!r})"

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key (safe to show)."""
        return self._public

    def sign_challenge(self, challenge: bytes) -> bytes:
        """Ed25519 signature over `b"bkv-v1 login" || challenge`."""
        # Security: the fixed prefix keeps this signature from being valid for any other use.
        return self._private.sign(LOGIN_CONTEXT + challenge)

    def sign_key_change(self, challenge: bytes, new_public_key: bytes) -> bytes:
        """Ed25519 signature over `b"bkv-v1 change key" || challenge || new public key` (both
        the bound and the new key sign it: `frontend.proto` ChangeKey)."""
        return self._private.sign(CHANGE_KEY_CONTEXT + challenge + new_public_key)

    @property
    def signer(self) -> AccountSigner:
        """What signs every step-1 request to the vault (vault_protocol.account_auth); its
        transcript has a label of its own, so no signature serves both there and at login."""
        return AccountSigner(self.public_key, self._private.sign)

    @classmethod
    def create(
        cls,
        key_dir: str | os.PathLike[str],
        account_id: str,
        *,
        private_key: Ed25519PrivateKey | None = None,
    ) -> AccountKey:
        """Make a new key in `<key_dir>/<account_id>.account.key`, mode 0600; never overwrites."""
        return cls._create_at(key_file_path(key_dir, account_id), account_id, private_key)

    @classmethod
    def pending(cls, key_dir: str | os.PathLike[str], account_id: str) -> AccountKey:
        """The key a key change moves to, `<account>.account.key.new` (0600): made by the
        first try, loaded again by a resumed one, so that an interrupted change finishes
        with the key the vault may already have bound."""
        path = pending_key_file_path(key_dir, account_id)
        if path.exists():
            return cls._load_at(path, account_id)
        return cls._create_at(path, account_id, None)

    def adopt(self, key_dir: str | os.PathLike[str]) -> AccountKey:
        """This pending key becomes the account's key file (an atomic rename over the old
        one, whose private key is then gone)."""
        target = key_file_path(key_dir, self.account_id)
        os.replace(self.path, target)
        return AccountKey(self.account_id, self._private, target)

    @classmethod
    def _create_at(
        cls, path: Path, account_id: str, private_key: Ed25519PrivateKey | None
    ) -> AccountKey:
        key_dir = path.parent
        key = private_key or Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        Path(key_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # Security: O_EXCL + mode 0600 at creation: no window where others can read the key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise BadInput(f"an account key already exists at {path}") from None
        except OSError as err:
            raise BadInput(f"cannot create {path}: {err.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(path, 0o600)  # in case the umask or the filesystem widened it
        return cls(account_id, key, path)

    @classmethod
    def load(cls, key_dir: str | os.PathLike[str], account_id: str) -> AccountKey:
        """Load the account's key; BadInput when missing, unreadable or readable by others."""
        return cls._load_at(key_file_path(key_dir, account_id), account_id)

    @classmethod
    def _load_at(cls, path: Path, account_id: str) -> AccountKey:
        try:
            mode = os.stat(path).st_mode
            data = path.read_bytes()
        except FileNotFoundError:
            raise BadInput(f"no account key at {path} (run `bkv account create`)") from None
        except OSError as err:
            raise BadInput(f"cannot read {path}: {err.strerror}") from None
        if mode & 0o077:
            # Like ssh: a private key others can read may already be someone else's too.
            raise BadInput(f"{path} is readable by others; chmod 600 it")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise BadInput(f"{path} is not an account key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise BadInput(f"{path} is not an Ed25519 account key")
        return cls(account_id, key, path)


def pending_key_file_path(key_dir: str | os.PathLike[str], account_id: str) -> Path:
    """Where a key change keeps the new key until it is bound: `<key file>.new`."""
    path = key_file_path(key_dir, account_id)
    return path.with_name(path.name + PENDING_SUFFIX)


def change_key_request(
    account: AccountKey, new: AccountKey, challenge: bytes
) -> frontend_pb2.ChangeKeyRequest:
    """The `ChangeKey` message moving `account`'s frontend binding to `new` (both sign)."""
    return frontend_pb2.ChangeKeyRequest(
        account_id=account.account_id,
        public_key=account.public_key,
        new_public_key=new.public_key,
        challenge=challenge,
        signature=account.sign_key_change(challenge, new.public_key),
        new_signature=new.sign_key_change(challenge, new.public_key),
    )


def login_request(
    account: AccountKey, challenge: bytes, enrollment_token: str = ""
) -> frontend_pb2.LoginRequest:
    """The `Login` message answering `challenge`."""
    return frontend_pb2.LoginRequest(
        account_id=account.account_id,
        public_key=account.public_key,
        challenge=challenge,
        signature=account.sign_challenge(challenge),
        enrollment_token=enrollment_token,
    )


def wall_clock_ms() -> int:
    """Milliseconds since the epoch (the frontend's `expires_at_ms` unit)."""
    return time.time_ns() // 1_000_000


class AuthClock:
    """The `ts_ms` of signed requests: the wall clock, but strictly increasing in this process
    (`max(now, last + 1)`), and past a floor the vault named (a refused stale request).

    The vault refuses a signed request whose ts_ms is not above the last one that wrote the
    record (a replay), so two requests of one process must never share a ts_ms.

    >>> clock = AuthClock(lambda: 1_000)
    >>> [clock.next(), clock.next(), clock.next(floor_ms=5_000), clock.next()]
    [1000, 1001, 5001, 5002]
    """

    def __init__(self, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self._clock_ms = clock_ms
        self._last = 0
        self._lock = threading.Lock()  # the blocking client may run on several threads

    def next(self, floor_ms: int = 0) -> int:
        with self._lock:
            self._last = max(self._clock_ms(), self._last + 1, floor_ms + 1)
            return self._last


AUTH_CLOCK = AuthClock()  # one per process: every client of this process signs past the others


@dataclass(repr=False)
class Session:
    """The current session token, refreshed when it is about to expire.

    >>> s = Session(clock_ms=lambda: 1_000)
    >>> s.token() is None
    True
    >>> s.store(frontend_pb2.LoginReply(session_token="t", expires_at_ms=1_000_000))
    >>> s.token()
    't'
    >>> s.invalidate(); s.token() is None
    True
    """

    clock_ms: Callable[[], int] = wall_clock_ms
    _token: str | None = None
    _expires_at_ms: int = 0
    _margin_ms: int = 0

    def __repr__(self) -> str:
        return f"Session(active={self._token is not None})"  # never the token itself

    def token(self) -> str | None:
        """The token, or None when there is none or it expires within the refresh margin."""
        if self._token is None or self.clock_ms() >= self._expires_at_ms - self._margin_ms:
            return None
        return self._token

    def store(self, reply: frontend_pb2.LoginReply) -> None:
        """Keep the token of a `LoginReply`."""
        self._token = reply.session_token
        self._expires_at_ms = int(reply.expires_at_ms)
        # Refresh early, but never so early that a short-lived token is always "expired".
        lifetime = self._expires_at_ms - self.clock_ms()
        self._margin_ms = max(0, min(REFRESH_MARGIN_MS, lifetime // 10))

    def invalidate(self) -> None:
        """Forget the token (after UNAUTHENTICATED): the next call logs in again."""
        self._token = None
        self._expires_at_ms = 0

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC metadata carrying the token; call only when `token()` is not None."""
        if self._token is None:
            raise RuntimeError("no session")
        return ((AUTHORIZATION_KEY, f"{BEARER_PREFIX}{self._token}"),)
