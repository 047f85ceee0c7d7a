"""The one gRPC status → client error mapping, and the sealed-outcome mapping."""

from __future__ import annotations

import grpc
import pytest

from bkv.v1 import envelope_pb2
from client.errors import (
    InvalidPassword,
    Locked,
    NotRegistered,
    ProtocolError,
    RateLimited,
    RecordTampered,
    StaleRequest,
    Unauthenticated,
    Unavailable,
    VaultError,
    error_from_outcome,
    error_from_status,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple = (), details: str = "") -> None:
        self._code, self._trailing, self._details = code, trailing, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def trailing_metadata(self) -> tuple:
        return self._trailing

    def details(self) -> str:
        return self._details


EXPECTED = {
    grpc.StatusCode.OK: ProtocolError,
    grpc.StatusCode.CANCELLED: ProtocolError,
    grpc.StatusCode.UNKNOWN: ProtocolError,
    grpc.StatusCode.INVALID_ARGUMENT: ProtocolError,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.NOT_FOUND: ProtocolError,
    grpc.StatusCode.ALREADY_EXISTS: ProtocolError,
    grpc.StatusCode.PERMISSION_DENIED: ProtocolError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ProtocolError,  # without retry-after-ms: too large
    grpc.StatusCode.FAILED_PRECONDITION: StaleRequest,
    grpc.StatusCode.ABORTED: ProtocolError,
    grpc.StatusCode.OUT_OF_RANGE: ProtocolError,
    grpc.StatusCode.UNIMPLEMENTED: ProtocolError,
    grpc.StatusCode.INTERNAL: ProtocolError,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DATA_LOSS: RecordTampered,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def test_the_table_covers_every_status_code() -> None:
    assert set(EXPECTED) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_maps_to_one_client_error(code: grpc.StatusCode) -> None:
    err = error_from_status(FakeRpcError(code), where="127.0.0.1:1")
    assert type(err) is EXPECTED[code]
    assert isinstance(err, VaultError) and not isinstance(err, grpc.RpcError)


def test_rate_limit_carries_retry_after_in_seconds() -> None:
    err = error_from_status(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after-ms", "250"),))
    )
    assert isinstance(err, RateLimited) and err.retry_after == 0.25 and err.retry_safe


def test_rate_limit_metadata_as_bytes_and_any_case() -> None:
    err = error_from_status(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, (("Retry-After-Ms", b"1000"),))
    )
    assert isinstance(err, RateLimited) and err.retry_after == 1.0


def test_unparsable_retry_after_is_still_rate_limited_without_a_hint() -> None:
    err = error_from_status(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after-ms", "soon"),))
    )
    assert isinstance(err, ProtocolError)  # no usable hint: treated as "too large"


def test_unavailable_is_sent_unless_nothing_can_have_applied() -> None:
    U = grpc.StatusCode.UNAVAILABLE
    sent = error_from_status(FakeRpcError(U, details="connection reset"))
    assert isinstance(sent, Unavailable) and sent.sent
    for trailing in [(("bkv-not-applied", "1"),), (("Bkv-Not-Applied", b"1"),)]:
        unsent = error_from_status(FakeRpcError(U, trailing))
        assert isinstance(unsent, Unavailable) and not unsent.sent
    refused = error_from_status(FakeRpcError(U, details="failed to connect to all addresses"))
    assert isinstance(refused, Unavailable) and not refused.sent
    odd = error_from_status(FakeRpcError(U, (("bkv-not-applied", "yes"),)))
    assert isinstance(odd, Unavailable) and odd.sent
    late = error_from_status(
        FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, (("bkv-not-applied", "1"),))
    )
    assert isinstance(late, Unavailable) and late.sent  # a deadline may always have applied


def test_server_details_are_never_copied() -> None:
    err = error_from_status(FakeRpcError(grpc.StatusCode.INTERNAL, details="secret-echo"))
    assert "secret-echo" not in str(err)


def test_a_broken_call_object_is_a_protocol_error() -> None:
    class Broken:
        def code(self) -> grpc.StatusCode:
            raise RuntimeError

        def trailing_metadata(self) -> tuple:
            return ()

    assert isinstance(error_from_status(Broken()), ProtocolError)


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (envelope_pb2.OUTCOME_OK, None),
        (envelope_pb2.OUTCOME_INVALID_PASSWORD, InvalidPassword),
        (envelope_pb2.OUTCOME_LOCKED, Locked),
        (envelope_pb2.OUTCOME_NOT_REGISTERED, NotRegistered),
        (envelope_pb2.OUTCOME_UNSPECIFIED, ProtocolError),
        (99, ProtocolError),
    ],
)
def test_outcomes(outcome: int, expected: type | None) -> None:
    err = error_from_outcome(outcome, 7)
    assert (err is None) if expected is None else type(err) is expected


def test_invalid_password_carries_guesses_left() -> None:
    err = error_from_outcome(envelope_pb2.OUTCOME_INVALID_PASSWORD, 7)
    assert isinstance(err, InvalidPassword) and err.guesses_left == 7 and not err.retry_safe


def test_retry_safety_is_documented_on_every_class() -> None:
    for cls in (
        InvalidPassword,
        Locked,
        NotRegistered,
        Unauthenticated,
        RateLimited,
        Unavailable,
        ProtocolError,
    ):
        assert "Retry" in (cls.__doc__ or ""), cls
    assert Unavailable.retry_safe and RateLimited.retry_safe
    assert not ProtocolError.retry_safe and not Locked.retry_safe


class _Unavailable:
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def details(self) -> str:
        return self._details


def test_a_call_that_found_no_connection_was_not_sent() -> None:
    refused = _Unavailable(
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Failed to connect to remote host: Connection refused"
    )
    error = error_from_status(refused)
    assert isinstance(error, Unavailable) and error.sent is False


def test_other_unavailable_answers_may_have_been_applied() -> None:
    for details in ("Socket closed", "no vault node available", ""):
        error = error_from_status(_Unavailable(details))
        assert isinstance(error, Unavailable) and error.sent is True


def test_a_vaults_account_refusal_becomes_its_typed_error() -> None:
    """Only the fixed forms of vault_common.wire are read (issue 17); a frontend's own
    UNAUTHENTICATED stays a session refusal."""
    from client.errors import AccountKeyRefused, ClockAhead, StaleSignature
    from vault_common.wire import account_refusal_details

    def mapped(details: str) -> VaultError:
        return error_from_status(
            FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, (("bkv-not-applied", "1"),), details)
        )

    key = mapped(account_refusal_details("key"))
    assert isinstance(key, AccountKeyRefused) and not key.retry_safe
    assert "bound to another account key" in str(key) and "cannot help" in str(key)
    stale = mapped(account_refusal_details("stale", 1_700_000_000_123))
    assert isinstance(stale, StaleSignature) and stale.floor_ms == 1_700_000_000_123
    assert stale.retry_safe
    assert isinstance(mapped(account_refusal_details("clock")), ClockAhead)
    signature = mapped(account_refusal_details("signature"))
    assert type(signature) is ProtocolError
    for other in ("", "bad session", "account signature refused: stale timestamp, last accepted "
                  "ts_ms=12x", account_refusal_details("key") + " and more"):  # fmt: skip
        assert type(mapped(other)) is Unauthenticated
