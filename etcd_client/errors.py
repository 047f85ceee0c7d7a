"""The etcd client's errors, and the one mapping from a gRPC status (or transport failure) to them.

Every error says what the caller may do, in the spirit of etcd's own client: a *definite*
rejection (the server refused the request before applying it) gets a precise type; anything the
client cannot classify is `EtcdUnavailable`, whose write outcome is unknown (Jepsen's
"indefinite"), so that no caller ever mistakes "maybe applied" for "not applied".

The texts matched below are etcd 3.4's `rpctypes` error descriptions
(etcdserver/api/v3rpc/rpctypes/error.go); etcd never puts keys or values in them, so an error's
message is safe to log.
"""

from __future__ import annotations

import grpc
import grpc.aio


class EtcdError(Exception):
    """Base of every error the client raises. `code` is the gRPC status name, if there was one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        """`message` is safe to log (etcd's error text, never a key's value)."""
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """Transient: no quorum, member down or unreachable, leader changed, deadline passed.

    A read may be retried. A write's outcome is unknown: it may have been applied.
    """


class EtcdAuthOldRevision(EtcdUnavailable):
    """The auth store changed between the request's permission check and its apply: etcd refused
    it before applying anything. The client retries such a request once by itself."""


class EtcdCompacted(EtcdError):
    """The revision asked for has been compacted. `compact_revision` is the oldest revision still
    kept (0 if etcd did not say); a watcher must list again and watch from the new revision."""

    def __init__(self, message: str, *, compact_revision: int = 0, code: str | None = None) -> None:
        """`compact_revision`: the oldest revision still kept, 0 if unknown."""
        super().__init__(message, code=code)
        self.compact_revision = compact_revision


class EtcdPermissionDenied(EtcdError):
    """The authenticated identity (the client certificate's CN) may not do this: a deployment
    error, not transient. Nothing was applied."""


class EtcdAuthError(EtcdError):
    """Authentication failed: no user name (no usable client certificate), user missing, invalid
    token. A deployment error; nothing was applied."""


class EtcdRequestError(EtcdError):
    """The request is wrong (invalid argument, future revision, too many operations in a txn,
    unknown lease ...): a bug, not transient; nothing was applied. Do not retry."""


class EtcdAlreadyExists(EtcdRequestError):
    """The user or role to add already exists."""


class EtcdNotFound(EtcdRequestError):
    """The user, role or lease named does not exist."""


# etcd 3.4's error descriptions (rpctypes) that the status code alone does not classify.
_BY_DETAILS: dict[str, type[EtcdError]] = {
    "etcdserver: mvcc: required revision has been compacted": EtcdCompacted,
    "etcdserver: mvcc: required revision is a future revision": EtcdRequestError,
    "etcdserver: permission denied": EtcdPermissionDenied,
    "etcdserver: user name already exists": EtcdAlreadyExists,
    "etcdserver: role name already exists": EtcdAlreadyExists,
    "etcdserver: user name not found": EtcdNotFound,
    "etcdserver: role name not found": EtcdNotFound,
    "etcdserver: requested lease not found": EtcdNotFound,
    "etcdserver: user name is empty": EtcdAuthError,
    "etcdserver: invalid auth token": EtcdAuthError,
    "etcdserver: authentication failed, invalid user ID or password": EtcdAuthError,
    "etcdserver: authentication is not enabled": EtcdRequestError,
    "etcdserver: root user does not exist": EtcdRequestError,
    "etcdserver: root user does not have root role": EtcdRequestError,
    "etcdserver: revision of auth store is old": EtcdAuthOldRevision,
    # FAILED_PRECONDITION, but transient: the member lost leadership while forwarding.
    "etcdserver: not leader": EtcdUnavailable,
    # RESOURCE_EXHAUSTED: etcd sheds load, or its space quota alarm is on (writes refused until
    # an operator acts); either way the cluster does not serve us now.
    "etcdserver: too many requests": EtcdUnavailable,
    "etcdserver: mvcc: database space exceeded": EtcdUnavailable,
}

_C = grpc.StatusCode
# Codes that mean "definitely not applied, and retrying will not help".
_REQUEST_CODES = frozenset(
    {
        _C.INVALID_ARGUMENT,
        _C.OUT_OF_RANGE,
        _C.FAILED_PRECONDITION,
        _C.NOT_FOUND,
        _C.ALREADY_EXISTS,
        _C.UNIMPLEMENTED,
    }
)


def error_from_rpc(exc: grpc.aio.AioRpcError | grpc.RpcError) -> EtcdError:
    """The one mapping from a failed etcd RPC to the client's error.

    UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, ABORTED, INTERNAL, DATA_LOSS and UNKNOWN (unless
    it says "permission denied") become `EtcdUnavailable`: the request may have been applied.
    """
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = (details_fn() if callable(details_fn) else None) or ""
    if not isinstance(code, grpc.StatusCode):
        return EtcdUnavailable(f"etcd call failed: {type(exc).__name__}")
    name = code.name
    message = f"etcd {name}: {details}" if details else f"etcd {name}"
    known = _BY_DETAILS.get(details)
    if known is EtcdCompacted:
        return EtcdCompacted(message, code=name)
    if known is not None:
        return known(message, code=name)
    if code == _C.PERMISSION_DENIED or "permission denied" in details.lower():
        # etcd 3.4 answers some denials (e.g. inside a txn) as UNKNOWN "auth: permission denied".
        return EtcdPermissionDenied(message, code=name)
    if code == _C.UNAUTHENTICATED:
        return EtcdAuthError(message, code=name)
    if code in _REQUEST_CODES:
        return EtcdRequestError(message, code=name)
    return EtcdUnavailable(message, code=name)


def error_from_exception(exc: BaseException) -> EtcdError:
    """Any failure of a call (gRPC error, our asyncio bound, a socket error) as an EtcdError."""
    if isinstance(exc, EtcdError):
        return exc
    if isinstance(exc, grpc.RpcError):
        return error_from_rpc(exc)
    if isinstance(exc, TimeoutError):
        return EtcdUnavailable("etcd call timed out")
    if isinstance(exc, ConnectionError | OSError):
        return EtcdUnavailable(f"etcd connection failed: {type(exc).__name__}")
    if isinstance(exc, grpc.aio.UsageError):
        return EtcdUnavailable("etcd client is closed")
    return EtcdUnavailable(f"etcd call failed: {type(exc).__name__}")


def error_from_watch_cancel(reason: str, compact_revision: int) -> EtcdError:
    """The error for a watch that etcd cancelled (WatchResponse.canceled, cancel_reason)."""
    if compact_revision:
        return EtcdCompacted(
            f"etcd watch: revision compacted (oldest kept: {compact_revision})",
            compact_revision=compact_revision,
        )
    message = f"etcd cancelled the watch: {reason}" if reason else "etcd cancelled the watch"
    known = _BY_DETAILS.get(reason)
    if known is not None and known is not EtcdCompacted:
        return known(message)
    if "permission denied" in reason.lower():
        return EtcdPermissionDenied(message)
    return EtcdUnavailable(message)
