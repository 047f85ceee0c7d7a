"""Everything `VaultClient` and `AsyncVaultClient` share; they add only how they call.

The flows themselves are I/O-free in `client.protocol`; this is the rest, I/O-free as well: the
configuration, the account key, the session, and the calls as plans (`client.driver`) that
decide failover (which frontend a try goes to), readiness (which frontend must be probed first),
re-login and retries (`client.retry.retrying`). A plan yields effects:

* `Probe(address, timeout)`: is this frontend serving? (`Connector.ready`) -> bool
* `Call(address, method, request, timeout, metadata)`: one RPC -> its reply; a failure is
  thrown back into the plan as the `grpc.RpcError` it was, and mapped there, once
* `Pause(seconds)`: wait before the next try
* `NeedSession()`: there is no valid session; log in (`login_plan`) -> None

The blocking client carries them out with `client.driver.drive`, the awaiting one with `adrive`:
their decisions are the same by construction.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

import grpc

from bkv.v1 import frontend_pb2
from client import protocol
from client.config import (
    ClientConfig,
    default_config_path,
    ksf_named,
    load_config,
    load_fleet_key,
    load_root_key,
)
from client.errors import (
    AccountKeyRefused,
    BadInput,
    ChallengeRefused,
    FleetAnnouncementRefused,
    ProtocolError,
    Unauthenticated,
    Unavailable,
    UnknownFleetKey,
    VaultError,
    error_from_status,
)
from client.fleet import FleetView
from client.protocol import FlowContext, Outbound, Step
from client.retry import Pause, RetryPolicy, RetryState, retrying
from client.session import (
    AUTH_CLOCK,
    AccountKey,
    Session,
    change_key_request,
    login_request,
    new_account_id,
    wall_clock_ms,
)
from vault_protocol.backup_key import BackupKey
from vault_protocol.envelope import addressed_fleet
from vault_protocol.ksf import Ksf
from vault_protocol.opaque import OpaqueConfig

METHODS = ("GetChallenge", "Login", "ChangeKey", "Relay", "GetFleet")
log = logging.getLogger(__name__)
LOGIN_PAIRS = 3  # GetChallenge + Login pairs per login (a spent challenge costs one)


@dataclass(frozen=True)
class Probe:
    """Effect: ask `address` whether it serves, waiting at most `timeout` s (sends nothing of
    the vault protocol) -> bool."""

    address: str
    timeout: float


@dataclass(frozen=True)
class Call:
    """Effect: one unary RPC `method` to `address` -> its reply (or a `grpc.RpcError`)."""

    address: str
    method: str
    request: Any = field(repr=False)
    timeout: float
    metadata: Any = field(default=None, repr=False)  # the session token: never shown


@dataclass(frozen=True)
class NeedSession:
    """Effect: there is no valid session token; log in before the call -> None."""


Effect = Probe | Call | Pause | NeedSession
CallPlan = Generator[Effect, Any, Any]


@dataclass(frozen=True)
class RunFlow:
    """Job of a script (an operation of several flows): run this `client.protocol` flow
    through the relay -> its result (or its error, thrown back into the script)."""

    flow: Any = field(repr=False)


@dataclass(frozen=True)
class RunPlan:
    """Job of a script: carry out this call plan (a login, a key change) -> its result."""

    plan: Any = field(repr=False)


Job = RunFlow | RunPlan
Script = Generator[Job, Any, Any]


class Failover:
    """Which frontend a try goes to, and which must be probed first (pure, not thread-safe).

    A try goes to the frontend that last answered; on `Unavailable` the next try starts at the
    next one. A frontend is probed before its first call and again after it failed with
    `Unavailable`; one that answered stays confirmed, so the common path costs no probe.

    >>> f = Failover(("a:1", "b:2"), preferred=1)
    >>> [address for _, address in f.candidates()]
    ['b:2', 'a:1']
    >>> f.needs_probe("b:2")
    True
    >>> f.answered(1, "b:2"); f.needs_probe("b:2")
    False
    >>> f.failed(1, "b:2", Unavailable()); [address for _, address in f.candidates()]
    ['a:1', 'b:2']
    """

    def __init__(self, frontends: Sequence[str], *, preferred: int) -> None:
        self._frontends = tuple(frontends)
        self._preferred = preferred
        self._confirmed: set[str] = set()

    def candidates(self) -> list[tuple[int, str]]:
        """(index, address) of every frontend, from the preferred one on."""
        n = len(self._frontends)
        order = ((self._preferred + offset) % n for offset in range(n))
        return [(index, self._frontends[index]) for index in order]

    def needs_probe(self, address: str) -> bool:
        return address not in self._confirmed

    def probed(self, address: str) -> None:
        """`address` said it serves."""
        self._confirmed.add(address)

    def answered(self, index: int, address: str) -> None:
        """A call to `address` was answered: keep sending there."""
        self._preferred = index
        self._confirmed.add(address)

    def failed(self, index: int, address: str, error: VaultError) -> None:
        """A call to `address` failed with `error`: after `Unavailable` the next try goes to the
        next frontend, and this one must prove again that it serves."""
        if isinstance(error, Unavailable):
            self._preferred = (index + 1) % len(self._frontends)
            self._confirmed.discard(address)


def resolve_ksf(config: ClientConfig, ksf: Ksf | str | None) -> Ksf:
    """The KSF to use: an explicit one, a preset name, or the config's preset."""
    if ksf is None:
        return ksf_named(config.ksf)
    if isinstance(ksf, str):
        return ksf_named(ksf)
    return ksf


ConnectorT = TypeVar("ConnectorT")  # client.channels' blocking or awaiting connector
SleepT = TypeVar("SleepT")  # time.sleep or asyncio.sleep


class ClientCore(Generic[ConnectorT, SleepT]):
    """Configuration, account and session of one client (not thread-safe); the two clients add
    only how they call: their connector and sleep (`_new_connector`, `_default_sleep`).

    Arguments (the same for `VaultClient` and `AsyncVaultClient`):
    config: the validated client.toml contents.
    account_id: the account to act as (needed by everything but the backup file functions).
    key_dir: where `<account>.account.key` lives (default: the config file's folder).
    ksf: the client KSF; None = the config's preset ("default": Argon2id t=3 p=4 64 MiB). A
        cheaper one (e.g. `"fast"` or `Argon2idKsf(time_cost=1, ...)`) only for load tests.
    retry: the retry policy (default: `RetryPolicy()` with the config's overall deadline).
    rng, clock, sleep, uniform, clock_ms, connector: injected for tests.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        account_id: str | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        ksf: Ksf | str | None = None,
        retry: RetryPolicy | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepT | None = None,
        uniform: Callable[[], float] = random.random,
        clock_ms: Callable[[], int] = wall_clock_ms,
        connector: ConnectorT | None = None,
        auth_clock: Callable[[int], int] = AUTH_CLOCK.next,
    ) -> None:
        self.config = config.validate()
        self.account_id = account_id
        base = Path(config.source).parent if config.source else Path.cwd()
        self.key_dir = Path(key_dir) if key_dir is not None else base
        self._ksf = resolve_ksf(config, ksf)
        self._retry = retry or RetryPolicy(overall_deadline_s=config.overall_deadline_s)
        self._rng = rng
        self._clock = clock
        self._uniform = uniform
        self._sleep: SleepT = sleep if sleep is not None else self._default_sleep()
        self._connector: ConnectorT = connector or self._new_connector(config)
        self._session = Session(clock_ms=clock_ms)
        self._auth_clock = auth_clock  # ts_ms of signed requests (one per process by default)
        # Start at a random frontend so that many clients spread over all of them.
        count = len(config.frontends)
        self._failover = Failover(
            config.frontends, preferred=min(int(uniform() * count), count - 1)
        )
        self._account: AccountKey | None = None
        self._view: FleetView | None = None
        # Called with the signed bytes of each announcement the client takes (the CLI keeps
        # them beside client.toml: `remember_fleet`).
        self.on_fleet_learned: Callable[[bytes], None] | None = None
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Self:
        """Build from client.toml (`path`, else `$BKV_CONFIG`, else `./client.toml`)."""
        return cls(load_config(path if path is not None else default_config_path()), **kwargs)

    def _new_connector(self, config: ClientConfig) -> ConnectorT:
        """The connector used when none is injected (one channel per frontend)."""
        raise NotImplementedError

    def _default_sleep(self) -> SleepT:
        """The pause used when none is injected."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(account_id={self.account_id!r}, "
            f"frontends={self.config.frontends!r})"
        )

    @property
    def account(self) -> AccountKey:
        """The account key, loaded from `key_dir` on first use (BadInput if there is none)."""
        if self._account is None:
            if not self.account_id:
                raise BadInput("no account: pass account_id (or --account / $BKV_ACCOUNT)")
            self._account = AccountKey.load(self.key_dir, self.account_id)
        return self._account

    def _new_account(self, account_id: str | None) -> str:
        """Make and keep a fresh account key (0600 file in `key_dir`); the session restarts."""
        account_id = account_id or self.account_id or new_account_id()
        self._account = AccountKey.create(self.key_dir, account_id)
        self.account_id = account_id
        self._session.invalidate()
        return account_id

    def _step_retry(self, step: Step | None = None) -> RetryState:
        """One retry budget for one step, shared by its tries before and after a fresh login:
        a try that may have counted a guess, then a refused session, must not give the guess
        step two more tries. None: a call outside a flow (login), which counts no guess."""
        return RetryState(
            self._retry,
            counts_guess=step is not None and step.counts_guess,
            finishes=step is not None and step.finishes,
            resignable=step is not None and step.signed,
            clock=self._clock,
            uniform=self._uniform,
        )

    @property
    def fleet(self) -> FleetView:
        """The fleet key (and epoch) this client seals to: its pin, or a newer one it learnt."""
        if self._view is None:
            configured = self.config.opaque_context
            self._view = FleetView(
                load_fleet_key(self.config),
                self.config.fleet_epoch,
                load_root_key(self.config),
                None if configured is None else configured.encode("utf-8"),
            )
        return self._view

    def remember_fleet(self, path: str | os.PathLike[str]) -> None:
        """Take the announcement kept in `path` by an earlier run (verified again, as any), and
        keep there every one learnt from now on: a client that learnt a rotated fleet key need
        not learn it again. A missing file is fine; a refused one is ignored (logged)."""
        where = Path(path)
        try:
            self.fleet.learn(where.read_bytes())  # quietly: it was said when it was learnt
        except FileNotFoundError:
            pass
        except (OSError, FleetAnnouncementRefused) as exc:
            log.warning("ignoring the fleet announcement kept in %s: %s", where, exc)

        def keep(signed: bytes) -> None:
            tmp = where.with_name(where.name + ".tmp")
            tmp.write_bytes(signed)
            os.replace(tmp, where)

        self.on_fleet_learned = keep

    def _learnt(self, signed: bytes) -> bool:
        """`FleetView.learn`, said aloud when the key changed."""
        if not self.fleet.learn(signed):
            return False
        view = self.fleet
        log.warning(
            "the fleet's key was rotated: now sealing to epoch %d (fleet id %s), learnt from "
            "its announcement signed by the pinned root key", view.epoch, view.key.fleet_id.hex()
        )  # fmt: skip
        if self.on_fleet_learned is not None:
            self.on_fleet_learned(signed)
        return True

    def _context(self, signing: AccountKey | None = None) -> FlowContext:
        """The flows' context, signed by the account's key (or `signing`: a key change's)."""
        view = self.fleet
        return FlowContext(
            fleet=view.key,
            account_id=self.account.account_id,
            signer=(signing or self.account).signer,
            opaque=OpaqueConfig(context=view.opaque_context(), ksf=self._ksf),
            rng=self._rng,
            auth_clock=self._auth_clock,
        )

    # -- the calls, as plans (no I/O: see the module docstring) -------------------------------

    def login_plan(self) -> CallPlan:
        """GetChallenge -> sign -> Login; the session keeps the token."""
        account, token = self.account, self.config.enrollment_token
        yield from self._challenged_plan(
            "Login", lambda challenge: login_request(account, challenge, token)
        )

    def change_key_plan(self, new: AccountKey) -> CallPlan:
        """GetChallenge -> both keys sign -> ChangeKey: the frontend's binding moves to `new`,
        and the session is the new key's."""
        account = self.account
        yield from self._challenged_plan(
            "ChangeKey", lambda challenge: change_key_request(account, new, challenge)
        )

    def _challenged_plan(self, method: str, signed: Callable[[bytes], Any]) -> CallPlan:
        """GetChallenge, then `method` with the request `signed(challenge)` makes; the session
        keeps the token it answers with.

        A challenge is spent by its first use and accepted only by the frontend that issued
        it: when the call's retry went to another frontend, or its first try got through but
        the answer was lost, the refusal says so and the pair runs again with a fresh one."""
        request = frontend_pb2.ChallengeRequest(account_id=self.account.account_id)
        for pair in range(LOGIN_PAIRS):
            challenge = yield from self.rpc_plan("GetChallenge", request)
            try:
                reply = yield from self.rpc_plan(method, signed(challenge.challenge))
            except ChallengeRefused:
                if pair == LOGIN_PAIRS - 1:
                    raise
                continue
            self._session.store(reply)
            # Each login also looks for a rotated fleet key, so that a client with an old pin
            # learns the new one during the overlap, before the old one is retired.
            yield from self._fleet_check()
            return
        raise AssertionError("unreachable")

    def key_change_script(self, password: str | bytes, key: BackupKey | None) -> Script:
        """Key change, the user still holding the account key (issue 17): a new key, bound in
        the vault by a re-registration the old key signs (same K and password: recovered first
        unless given) and at the frontend by `ChangeKey` (both keys sign); then the new key file
        replaces the old one.

        Resumable: the new key waits in `<account>.account.key.new` until both sides bind it;
        a run that finds the vault already bound to it goes on with the frontend."""
        new = AccountKey.pending(self.key_dir, self.account.account_id)
        try:
            status = yield RunFlow(protocol.status_flow(self._context()))
        except AccountKeyRefused:
            # An earlier run got past the vault step: the record is bound to the new key now
            # (otherwise this refuses too, and the record belongs to another key altogether).
            yield RunFlow(protocol.status_flow(self._context(new)))
        else:
            if status.locked:
                raise BadInput("the vault record is locked: register again before changing keys")
            if status.registered:
                ctx = self._context()
                if key is None:
                    key = yield RunFlow(protocol.recover_flow(ctx, password))
                yield RunFlow(
                    protocol.register_flow(
                        ctx, password, key, status.max_attempts or None, new.public_key
                    )
                )
        yield RunPlan(self.change_key_plan(new))
        self._account = new.adopt(self.key_dir)

    def fleet_plan(self) -> CallPlan:
        """GetFleet -> verify -> take it if newer; True when the fleet key changed.
        `FleetAnnouncementRefused` for a forged, unsigned or older announcement."""
        reply = yield from self.rpc_plan("GetFleet", frontend_pb2.FleetRequest())
        if not reply.announcement:
            return False  # none published (a cluster made before fleet rotation existed)
        return self._learnt(bytes(reply.announcement))

    def _fleet_check(self) -> CallPlan:
        """`fleet_plan` at login, when a root key is pinned: a refused announcement keeps the
        pinned key (logged), a fleet with another OPAQUE context fails (`ConfigError`)."""
        if not self.config.fleet_root_key:
            return  # nothing to verify an announcement with (and the pin is loaded on use)
        try:
            yield from self.fleet_plan()
        except FleetAnnouncementRefused as exc:
            log.warning("fleet announcement refused, keeping epoch %d: %s", self.fleet.epoch, exc)
        except (Unavailable, ProtocolError) as exc:
            # An older frontend without GetFleet, or none reachable: the login stands.
            log.info("no fleet announcement at login (%s)", type(exc).__name__)
        self.fleet.opaque_context()  # ConfigError at once if the fleet uses another context

    def relay_plan(self, outbound: Outbound) -> CallPlan:
        """One flow step through a frontend -> the sealed answer (bytes)."""
        state = self._step_retry(outbound.step)  # shared across the re-login below
        sending = [outbound.envelope]  # step 1 may go out resealed to a newer fleet key, once

        def request() -> frontend_pb2.RelayRequest:
            # Every retry of a first step is signed afresh (client.retry), past the vault's
            # last accepted timestamp after a stale refusal (to the key it was last sealed to).
            if outbound.resign is None or not state.tries:
                return frontend_pb2.RelayRequest(envelope=sending[0])
            return frontend_pb2.RelayRequest(envelope=outbound.resign(state.resign_floor_ms or 0))

        relogged = resealed = False
        while True:
            if self._session.token() is None:
                yield NeedSession()
            try:
                reply = yield from self.rpc_plan(
                    "Relay", request, metadata=self._session.metadata(), state=state
                )
                return bytes(reply.sealed_response)
            except Unauthenticated:
                # The frontend refused the session before relaying: no guess was counted, so
                # one fresh login and one more try are safe.
                self._session.invalidate()
                if relogged:
                    raise
                relogged = True
            except UnknownFleetKey:
                # The vault retired the key this step was sealed to, and applied nothing: learn
                # the fleet's new key from its signed announcement and send step 1 again, once.
                if resealed or outbound.reseal is None or not self.fleet.can_learn:
                    raise
                yield from self.fleet_plan()  # a login may have learnt it already
                if self.fleet.key.fleet_id == addressed_fleet(sending[0]):
                    raise  # no newer key than the refused one
                sending[0] = outbound.reseal(self.fleet.key)  # signed afresh for that fleet
                resealed = True

    def rpc_plan(
        self, method: str, request: Any, *, metadata: Any = None, state: RetryState | None = None
    ) -> CallPlan:
        """One call with its retries: under `state` (a flow step's budget), or a fresh budget
        for a call that counts no guess. `request` may be a callable making it for each try."""
        if self._closed:
            raise ProtocolError("the client is closed")
        if method not in METHODS:
            raise ValueError(method)
        try:
            return (
                yield from retrying(
                    lambda remaining: self._attempt_plan(
                        method, request() if callable(request) else request, metadata, remaining
                    ),
                    state or self._step_retry(),
                )
            )
        except VaultError:
            raise
        except grpc.RpcError:  # defensive: nothing above should let one through
            raise ProtocolError(f"unexpected gRPC failure on {method}") from None

    def _attempt_plan(self, method: str, request: Any, metadata: Any, remaining: float) -> CallPlan:
        """One try: the first frontend (from the preferred one) that serves gets the call."""
        for index, address in self._failover.candidates():
            if self._failover.needs_probe(address):
                wait = min(self.config.connect_timeout_s, max(remaining, 0.001))
                if not (yield Probe(address, wait)):
                    continue  # nothing was sent to this one: skipping it cannot count a guess
                self._failover.probed(address)
            timeout = max(0.001, min(self.config.call_timeout_s, remaining))
            try:
                reply = yield Call(address, method, request, timeout, metadata)
            except grpc.RpcError as err:
                error = error_from_status(err, where=address)
                self._failover.failed(index, address, error)
                raise error from None
            self._failover.answered(index, address)
            return reply
        raise Unavailable("no frontend could be reached", sent=False)
