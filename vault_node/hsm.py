"""The vault node's PKCS#11 token: fleet-key operations that run inside the HSM.

Two process-wide rules, both forced by python-pkcs11 on SoftHSM2 (see shared/PLATFORM.md):

* **One thread.** python-pkcs11 calls `C_Initialize(NULL)`, which leaves SoftHSM without any
  locking; concurrent calls corrupted its heap. Every PKCS#11 call of this process therefore
  runs on one dedicated thread (`_PKCS11`, a single-worker executor shared by every `Token`);
  each method submits to it and waits. A process whose event loop
  makes every token call itself (the vault node) may instead `adopt_calling_thread()` before
  its first call: calls then run inline on that one thread, without two thread switches each,
  and a call from any other thread raises instead of starting a second PKCS#11 thread.
* **One SOFTHSM2_CONF.** SoftHSM reads `SOFTHSM2_CONF` when the library is loaded, and
  python-pkcs11 loads each module once per process. One process can therefore open tokens of
  one softhsm2.conf only; opening a token of another conf raises `HsmLibraryConflict`. Use one
  process per token directory (the key ceremony drives each token in its own subprocess).
  Load the library after any fork (never fork a process that has opened a `Token`).

The labels, the errors, the input checks and the `NodeToken` interface live in
`vault_node.token_api`, shared with the software token (`vault_node.soft_token`); they are
re-exported here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar, cast

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import (
    AttributeSensitive,
    AttributeTypeInvalid,
    MultipleTokensReturned,
    NoSuchToken,
    ObjectHandleInvalid,
    PKCS11Error,
    UserAlreadyLoggedIn,
)
from pkcs11.util.ec import encode_named_curve_parameters

from vault_node.softhsm import SoftHsmError, TokenSpec, softhsm_env
from vault_node.token_api import (
    AES_LABELS,
    DATA_LABELS,
    ECDH_SECRET_LEN,
    FLEET_LABELS,
    GCM_TAG_LEN,
    HMAC_SHA256_LABELS,
    HMAC_SHA512_LABELS,
    KEM_LABEL,
    P256_POINT_LEN,
    HsmDecryptError,
    HsmError,
    HsmInputError,
    HsmKeyMissing,
    HsmLibraryConflict,
    HsmLoginError,
    NodeToken,
    check_data_label,
    check_fleet_label,
    check_gcm,
    check_kem_label,
    check_label,
    label_epoch,
    validate_p256_point,
)

__all__ = [
    "AES_LABELS",
    "DATA_LABELS",
    "FLEET_LABELS",
    "HMAC_SHA256_LABELS",
    "HMAC_SHA512_LABELS",
    "KEM_LABEL",
    "P256_EC_PARAMS",
    "HsmDecryptError",
    "HsmError",
    "HsmInputError",
    "HsmKeyMissing",
    "HsmLibraryConflict",
    "HsmLoginError",
    "Token",
    "TokenSpec",
    "adopt_calling_thread",
    "decode_ec_point",
    "encode_ec_point",
    "softhsm_env",
    "validate_p256_point",
]

T = TypeVar("T")

DATA_APPLICATION: Final = "bkv"
SEARCH_ATTEMPTS: Final = 5  # searches made again when another process destroyed what one found
P256_EC_PARAMS: Final = encode_named_curve_parameters("secp256r1")
_ATTRIBUTE_NAMES: Final = (
    "SENSITIVE",
    "EXTRACTABLE",
    "NEVER_EXTRACTABLE",
    "ALWAYS_SENSITIVE",
    "MODIFIABLE",
    "COPYABLE",
    "DERIVE",
)


# --- the one PKCS#11 thread of this process -------------------------------------------------

_PKCS11_THREAD: list[threading.Thread] = []  # filled when the worker thread starts
_ADOPTED: list[threading.Thread] = []  # the thread `adopt_calling_thread` chose, if any
_LOADED: dict[str, Any] = {}  # "conf" -> Path, "lib" -> pkcs11 lib, set on the PKCS#11 thread


def _mark_thread() -> None:
    _PKCS11_THREAD.append(threading.current_thread())


# max_workers=1 is the whole point: SoftHSM runs unlocked, so calls must never overlap.
_PKCS11: Final = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="pkcs11", initializer=_mark_thread
)


def adopt_calling_thread() -> None:
    """Make the calling thread this process's one PKCS#11 thread; call before any token call.

    Every later PKCS#11 call must come from this thread (others raise `HsmError`). Idempotent on
    the adopted thread; `HsmError` if the worker thread already made a call.
    """
    current = threading.current_thread()
    if _PKCS11_THREAD:
        if _ADOPTED == [current]:
            return
        raise HsmError("this process already chose its PKCS#11 thread")
    _ADOPTED.append(current)
    _PKCS11_THREAD.append(current)


def _not_adopted() -> None:
    # SoftHSM runs unlocked: after adoption a second thread must never make a PKCS#11 call.
    if _ADOPTED:
        raise HsmError(f"PKCS#11 calls of this process must come from thread {_ADOPTED[0].name}")


def _run(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` on the PKCS#11 thread and wait for it (re-entrant on that thread)."""
    if threading.current_thread() in _PKCS11_THREAD:
        return fn(*args)
    _not_adopted()
    return _PKCS11.submit(fn, *args).result()


def _load_library(spec: TokenSpec) -> Any:
    """Load the PKCS#11 module for `spec`'s softhsm2.conf (PKCS#11 thread only)."""
    conf = spec.softhsm_conf.resolve()
    if "lib" in _LOADED:
        if _LOADED["conf"] != conf:
            raise HsmLibraryConflict(
                f"this process already loaded SoftHSM with {_LOADED['conf']}; "
                f"token {spec.token_label!r} needs {conf} (use one process per token directory)"
            )
        return _LOADED["lib"]
    # SoftHSM reads SOFTHSM2_CONF while the library initialises: set it first.
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        lib = pkcs11.lib(spec.module)
    except (PKCS11Error, RuntimeError, OSError) as exc:
        raise HsmError(f"cannot load PKCS#11 module {spec.module}: {type(exc).__name__}") from exc
    _LOADED["conf"] = conf
    _LOADED["lib"] = lib
    return lib


# --- encodings ---------------------------------------------------------------------------------


_DER_POINT_PREFIX: Final = bytes([0x04, P256_POINT_LEN])  # OCTET STRING, length 65


def encode_ec_point(point: bytes) -> bytes:
    """DER OCTET STRING around a raw P-256 point, as CKA_EC_POINT stores it."""
    validate_p256_point(point)
    return _DER_POINT_PREFIX + point


def decode_ec_point(value: bytes) -> bytes:
    """The raw uncompressed P-256 point of a CKA_EC_POINT value (DER-wrapped or raw)."""
    raw = value
    if len(value) == len(_DER_POINT_PREFIX) + P256_POINT_LEN and value.startswith(
        _DER_POINT_PREFIX
    ):
        raw = value[len(_DER_POINT_PREFIX) :]
    try:
        validate_p256_point(raw)
    except HsmInputError:
        raise HsmError("token returned a malformed EC point") from None
    return raw


# --- the token ---------------------------------------------------------------------------------


class Token:
    """One logged-in session on a vault node's token, holding the fleet keys.

    Open with `Token.open(spec)`; use as a context manager or call `close()`.
    """

    def __init__(self, spec: TokenSpec, session: Any) -> None:
        """Internal: use `Token.open`."""
        self._spec = spec
        self._session: Any = session
        self._keys: dict[tuple[str, ObjectClass], Any] = {}
        self._kem_public: dict[str, bytes] = {}

    def __repr__(self) -> str:
        return f"Token(label={self._spec.token_label!r}, open={self._session is not None})"

    @property
    def label(self) -> str:
        """The token's label."""
        return self._spec.token_label

    @classmethod
    def open(cls, spec: TokenSpec, *, read_write: bool = False) -> Token:
        """Load the library for `spec`, find the token by label and log in once.

        `read_write` is for the key ceremony and for a serving node's data objects (its store
        checkpoint); no key object is ever written by a serving node.
        """
        spec.validate()
        try:
            pin = spec.read_pin()
        except (OSError, SoftHsmError) as exc:
            raise HsmLoginError(f"cannot read the PIN of token {spec.token_label!r}") from exc
        return cls(spec, _run(_open_session, spec, pin, read_write))

    def close(self) -> None:
        """Close the session (idempotent). The library stays loaded for this process."""
        session, self._session = self._session, None
        self._keys.clear()
        if session is not None:
            _run(session.close)

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- raw access (key ceremony, tests) --

    def run_in_session(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(session)` on the PKCS#11 thread (for the key ceremony and tests only)."""
        return cast(T, _run(self._call, fn))

    def run_search(self, fn: Callable[[Any], T]) -> T:
        """`run_in_session` for a search over objects that another process may destroy
        meanwhile (the running node replaces its checkpoint objects all the time): run again,
        bounded, when a handle found was gone when read."""
        return cast(T, _run(self._search, fn))

    def _search(self, fn: Callable[[Any], T]) -> T:
        for _ in range(SEARCH_ATTEMPTS):
            try:
                return self._call(fn)
            except ObjectHandleInvalid:
                continue
        raise HsmError(f"objects in token {self.label!r} kept vanishing while searched")

    def _call(self, fn: Callable[[Any], T]) -> T:
        if self._session is None:
            raise HsmError(f"token {self.label!r} is closed")
        return fn(self._session)

    def forget_keys(self) -> None:
        """Drop every cached key handle, so the next use finds the key again. After another
        process (the key ceremony, `ceremony_cli`) added or destroyed keys in this token: a
        running session sees such changes, but a cached handle of a destroyed key is dead."""
        _run(self._forget)

    def _forget(self) -> None:
        self._keys.clear()
        self._kem_public.clear()

    def _key(self, label: str, object_class: ObjectClass) -> Any:
        """The key object called `label` (PKCS#11 thread only); handles are cached."""
        cached = self._keys.get((label, object_class))
        if cached is not None:
            return cached
        if self._session is None:
            raise HsmError(f"token {self.label!r} is closed")
        # list(): a search left suspended (as session.get_key leaves it when it finds two) holds
        # the session's operation lock and is finalised later on whatever thread collects it.
        found = list(
            self._session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: label})
        )
        if not found:
            raise HsmKeyMissing(label)
        if len(found) > 1:
            # Two keys under one label: refuse rather than pick one at random.
            raise HsmKeyMissing(label, "more than one key with this label")
        key = found[0]
        self._keys[(label, object_class)] = key
        return key

    # -- ECDH (HPKE decapsulation) --

    def ecdh(self, peer_point: bytes, label: str = KEM_LABEL) -> bytes:
        """ECDH between the `kem` private key (`label`: of another fleet epoch, "kem.2") and
        `peer_point` (65-byte uncompressed): 32 bytes."""
        check_kem_label(label)
        validate_p256_point(peer_point)
        return _run(self._ecdh, peer_point, label)

    def _ecdh(self, peer_point: bytes, label: str) -> bytes:
        private = self._key(label, ObjectClass.PRIVATE_KEY)
        try:
            # The DH output has to leave the token (RFC 9180's key schedule runs in Python),
            # so it is derived into a session-only, non-sensitive secret, read, and destroyed.
            secret = private.derive_key(
                KeyType.GENERIC_SECRET,
                ECDH_SECRET_LEN * 8,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(pkcs11.KDF.NULL, None, peer_point),
                capabilities=0,
                template={
                    Attribute.TOKEN: False,
                    Attribute.SENSITIVE: False,
                    Attribute.EXTRACTABLE: True,
                },
            )
        except PKCS11Error as exc:
            raise HsmError(f"ECDH failed in token {self.label!r}: {type(exc).__name__}") from None
        try:
            value = bytes(secret[Attribute.VALUE])
        finally:
            secret.destroy()
        if len(value) != ECDH_SECRET_LEN:
            raise HsmError("token returned an ECDH secret of the wrong length")
        return value

    def kem_public_key(self, label: str = KEM_LABEL) -> bytes:
        """The fleet's `kem` public key (`label`: of another epoch) as a 65-byte P-256 point."""
        check_kem_label(label)
        cached = self._kem_public.get(label)
        if cached is None:
            cached = self._kem_public[label] = _run(self._read_kem_public, label)
        return cached

    def _read_kem_public(self, label: str) -> bytes:
        public = self._key(label, ObjectClass.PUBLIC_KEY)
        return decode_ec_point(bytes(public[Attribute.EC_POINT]))

    # -- AES-256-GCM --

    def aes_gcm_seal(self, label: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under fleet key `label` (record/ticket): ciphertext || 16-byte tag."""
        check_gcm(label, nonce)
        return _run(self._seal, label, nonce, plaintext, aad)

    def aes_gcm_open(self, label: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Open `aes_gcm_seal`'s output; any failure raises `HsmDecryptError`."""
        check_gcm(label, nonce)
        return _run(self._open, label, nonce, ciphertext, aad)

    def _seal(self, label: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        key = self._key(label, ObjectClass.SECRET_KEY)
        try:
            return bytes(
                key.encrypt(
                    plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm(nonce, aad)
                )
            )
        except PKCS11Error as exc:
            raise HsmError(
                f"AES-GCM seal failed with key {label!r}: {type(exc).__name__}"
            ) from None

    def _open(self, label: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        key = self._key(label, ObjectClass.SECRET_KEY)
        if len(ciphertext) < GCM_TAG_LEN:
            raise HsmDecryptError(f"AES-GCM open failed with key {label!r}")
        try:
            return bytes(
                key.decrypt(
                    ciphertext, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm(nonce, aad)
                )
            )
        except PKCS11Error:
            # One error for every cause: no oracle on why an open failed.
            raise HsmDecryptError(f"AES-GCM open failed with key {label!r}") from None

    # -- HMAC --

    def hmac_sha512(self, label: str, data: bytes) -> bytes:
        """HMAC-SHA512 under `oprf_seed` or `ake_seed` (64 bytes)."""
        check_label(label, HMAC_SHA512_LABELS, "HMAC-SHA512")
        return _run(self._hmac, label, Mechanism.SHA512_HMAC, data)

    def hmac_sha256(self, label: str, data: bytes) -> bytes:
        """HMAC-SHA256 under `id_mac` or `witness` (32 bytes)."""
        check_label(label, HMAC_SHA256_LABELS, "HMAC-SHA256")
        return _run(self._hmac, label, Mechanism.SHA256_HMAC, data)

    def _hmac(self, label: str, mechanism: Mechanism, data: bytes) -> bytes:
        key = self._key(label, ObjectClass.SECRET_KEY)
        try:
            return bytes(key.sign(data, mechanism=mechanism))
        except PKCS11Error as exc:
            raise HsmError(f"HMAC failed with key {label!r}: {type(exc).__name__}") from None

    # -- data objects (the store checkpoint, the etcd cluster pin) --

    def read_data(self, label: str) -> list[bytes]:
        """The values of every data object called `label` in the token."""
        check_data_label(label)
        return _run(self._read_data, label)

    def replace_data(self, label: str, value: bytes) -> None:
        """Store a new data object `label` = `value`, then destroy the older ones.

        SoftHSM refuses to modify a data object's value, so the new object is made first: a
        crash in between leaves both, and readers pick the newer by its content.
        Needs a read-write session (`Token.open(..., read_write=True)`).
        """
        check_data_label(label)
        _run(self._replace_data, label, bytes(value))

    def _data_objects(self, label: str) -> list[Any]:
        if self._session is None:
            raise HsmError(f"token {self.label!r} is closed")
        return list(
            self._session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label})
        )

    def _read_data(self, label: str) -> list[bytes]:
        # The writer makes the new object before it destroys the old, so a search made again
        # after a vanished handle finds the newer one.
        return self._search(
            lambda _session: [bytes(obj[Attribute.VALUE]) for obj in self._data_objects(label)]
        )

    def _replace_data(self, label: str, value: bytes) -> None:
        older = self._data_objects(label)
        assert self._session is not None
        try:
            self._session.create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    # Private: readable only after login, and SoftHSM encrypts it at rest.
                    Attribute.PRIVATE: True,
                    Attribute.LABEL: label,
                    Attribute.APPLICATION: DATA_APPLICATION,
                    Attribute.VALUE: value,
                    Attribute.MODIFIABLE: False,
                }
            )
            for obj in older:
                obj.destroy()
        except PKCS11Error as exc:
            raise HsmError(
                f"writing data object {label!r} failed in token {self.label!r}: "
                f"{type(exc).__name__}"
            ) from None

    # -- inspection --

    def key_attributes(self, label: str) -> dict[str, bool]:
        """SENSITIVE, EXTRACTABLE, NEVER_EXTRACTABLE, ALWAYS_SENSITIVE, MODIFIABLE, COPYABLE and
        DERIVE of fleet key `label` (those the token reports)."""
        check_fleet_label(label)
        return _run(self._attributes, label)

    def _attributes(self, label: str) -> dict[str, bool]:
        key = self._key(label, _object_class(label))
        found: dict[str, bool] = {}
        for name in _ATTRIBUTE_NAMES:
            try:
                found[name] = bool(key[Attribute[name]])
            except (AttributeTypeInvalid, AttributeSensitive):
                continue  # not every token reports every attribute
        return found

    def missing_fleet_keys(self, labels: Sequence[str] = FLEET_LABELS) -> list[str]:
        """Labels of fleet keys (of `labels`, default the first epoch's whole fleet) this token
        lacks: empty when fully provisioned. A kem key needs its public half as well."""
        for label in labels:
            check_fleet_label(label)
        return _run(self._missing, tuple(labels))

    def _missing(self, labels: tuple[str, ...]) -> list[str]:
        missing: list[str] = []
        for label in labels:
            try:
                self._key(label, _object_class(label))
                if label_epoch(label)[0] == KEM_LABEL:
                    self._key(label, ObjectClass.PUBLIC_KEY)
            except HsmKeyMissing:
                missing.append(label)
        return missing


def _open_session(spec: TokenSpec, pin: str, read_write: bool) -> Any:
    """Find the token by label and log in (PKCS#11 thread only)."""
    lib = _load_library(spec)
    try:
        token = lib.get_token(token_label=spec.token_label)
    except NoSuchToken:
        raise HsmLoginError(
            f"no token labelled {spec.token_label!r} in {spec.softhsm_conf}"
        ) from None
    except MultipleTokensReturned:
        raise HsmLoginError(f"several tokens labelled {spec.token_label!r}") from None
    try:
        return token.open(rw=read_write, user_pin=pin)
    except UserAlreadyLoggedIn:
        # Login is per process: a second session of this process is already authenticated.
        return token.open(rw=read_write)
    except PKCS11Error as exc:
        raise HsmLoginError(
            f"login to token {spec.token_label!r} failed: {type(exc).__name__}"
        ) from None


def _object_class(label: str) -> ObjectClass:
    """The object class of fleet key `label`: the kem keys are EC private keys."""
    return ObjectClass.PRIVATE_KEY if label_epoch(label)[0] == KEM_LABEL else ObjectClass.SECRET_KEY


def _gcm(nonce: bytes, aad: bytes) -> pkcs11.GCMParams:
    return pkcs11.GCMParams(nonce, aad if aad else None, GCM_TAG_LEN * 8)


def _satisfies_node_token(token: Token) -> NodeToken:
    return token  # mypy checks that the PKCS#11 token has every operation a node uses
