"""The run's clock and its recorder: every client operation becomes one `HistoryOp` line.

`RunClock` is the history's time base (monotonic seconds since the run started) with the unix
time of its zero, so that the nodes' audit lines can be placed on it. `Recorder` times one
operation, turns the client library's result or error into an outcome (`classify`), writes the
line at once and keeps the run's secrets (passwords, keys) in memory only, for the
confidentiality check. Nothing it writes holds a secret: keys appear as fingerprints.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bkv_chaos.checker import Secrets
from bkv_chaos.history import HistoryOp, JsonlWriter, key_fingerprint
from client.errors import (
    AccountKeyRefused,
    ClockAhead,
    InvalidPassword,
    Locked,
    NotRegistered,
    RateLimited,
    RecordTampered,
    StaleSignature,
    Unauthenticated,
    Unavailable,
    VaultError,
)


class RunClock:
    """Seconds since the run's start on a monotonic clock, and the wall time of that start."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self.start_unix = wall()
        self._t0 = monotonic()

    def now(self) -> float:
        return self._monotonic() - self._t0


@dataclass(frozen=True)
class Outcome:
    """What an operation returned, as the history records it."""

    outcome: str
    definite: bool
    guesses_left: int | None = None


def classify(err: BaseException | None) -> Outcome:
    """The history outcome of a client call that returned (None) or raised `err`.

    As in Jepsen: Unavailable (which includes deadlines) is indefinite — the request may have
    been applied — and so is anything unexpected; every other answer is definite.
    """
    if err is None:
        return Outcome("ok", True)
    if isinstance(err, InvalidPassword):
        return Outcome("invalid_password", True, err.guesses_left)
    if isinstance(err, Locked):
        return Outcome("locked", True, 0)
    if isinstance(err, NotRegistered):
        return Outcome("not_registered", True)
    if isinstance(err, Unauthenticated | AccountKeyRefused | StaleSignature | ClockAhead):
        # The frontend refused the session, or the vault the request's account signature
        # (issue 17): definite, nothing applied.
        return Outcome("unauthenticated", True)
    if isinstance(err, RateLimited):
        return Outcome("rate_limited", True)
    if isinstance(err, Unavailable):
        return Outcome("unavailable", False)
    if isinstance(err, RecordTampered):
        # DATA_LOSS: refused before any evaluation (the write it made, if any, may stand).
        return Outcome("tampered", True)
    if isinstance(err, VaultError):
        return Outcome("protocol", True)
    return Outcome("protocol", False)


@dataclass
class OpResult:
    """Filled in by the code inside `Recorder.op` (the key involved, a forced outcome or status
    code); `recorded` is the history line, set when the block has ended."""

    key: bytes | None = field(default=None, repr=False)
    outcome: Outcome | None = None
    status_code: str | None = None
    recorded: HistoryOp | None = None


class Recorder:
    """Thread-safe: workers, probes and the fault timeline share one."""

    def __init__(self, writer: JsonlWriter, clock: RunClock) -> None:
        self._writer = writer
        self.clock = clock
        self._lock = threading.Lock()
        self._ops: list[HistoryOp] = []
        self._in_flight: dict[str, int] = {}
        self._passwords: list[str] = []
        self._keys: list[bytes] = []
        self.unexpected: list[str] = []  # type names of unexpected exceptions (no messages)

    # -- secrets (memory only) --

    def password(self, password: str) -> str:
        with self._lock:
            self._passwords.append(password)
        return password

    def key(self, key: bytes) -> bytes:
        """A backup key made outside the recorded load (the insider scenario's accounts)."""
        with self._lock:
            self._keys.append(key)
        return key

    def secrets(self) -> Secrets:
        with self._lock:
            return Secrets(tuple(self._passwords), tuple(self._keys))

    # -- operations --

    @contextmanager
    def op(
        self, client: str, op: str, account: str, actor: str | None = None
    ) -> Iterator[OpResult]:
        """Time the block as one operation and record it; exceptions of the block are recorded
        (classified) and not re-raised, except BaseExceptions that are not Exceptions."""
        result = OpResult()
        with self._lock:
            self._in_flight[op] = self._in_flight.get(op, 0) + 1
        invoke = self.clock.now()
        err: BaseException | None = None
        try:
            yield result
        except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded outcome
            err = exc
        finally:
            complete = self.clock.now()
            with self._lock:
                self._in_flight[op] -= 1
        outcome = result.outcome or classify(err)
        if err is not None and not isinstance(err, VaultError):
            with self._lock:
                self.unexpected.append(type(err).__name__)
        key_fp = None
        if result.key is not None:
            with self._lock:
                self._keys.append(result.key)
            key_fp = key_fingerprint(result.key)
        record = HistoryOp(
            client=client, op=op, account=account, invoke=invoke, complete=complete,
            outcome=outcome.outcome, definite=outcome.definite,
            guesses_left=outcome.guesses_left, key_fp=key_fp,
            status_code=result.status_code, actor=actor,
        )  # fmt: skip
        self.append(record)
        result.recorded = record

    def append(self, record: HistoryOp) -> None:
        with self._lock:
            self._ops.append(record)
        self._writer.append(record)

    def in_flight(self, op: str) -> int:
        with self._lock:
            return self._in_flight.get(op, 0)

    def ops(self) -> list[HistoryOp]:
        with self._lock:
            return list(self._ops)

    def first_success_after(self, t: float) -> float | None:
        """`complete` of the first definite success of an account's own operation after `t`."""
        times = [
            o.complete
            for o in self.ops()
            if o.is_definite_ok and o.complete > t and o.op != "bad_input" and not o.cross_account
        ]
        return min(times, default=None)
