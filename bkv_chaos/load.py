"""The chaos load: client workers that register, recover, guess, delete and probe isolation.

Each account is driven by one `Actor`, which owns its own `VaultClient` (the sync client is not
thread-safe) and performs one operation per `step()`. Workers are threads, each stepping through
its actors in turn until told to stop or out of operations; every operation is recorded by the
`Recorder`. The roles:

* good — registers once, then recovers with the right password (and asks `status`);
* churn — register, recover, delete, register again (a new key each time);
* guessing — registers with a small guess limit, sends wrong passwords until locked, then the
  right one, which must be `Locked`; then registers again for the next round;
* cross — an account that never registers: it recovers with the password of a good account
  through its own session, recorded as a call for that account by this actor. Through the
  client library one account cannot address another's record, so the strongest check from
  outside is that it gets `NotRegistered` while the other's record exists; a frontend that lies
  about the account is probed at the gRPC level by `bkv_chaos.probes` (sealed for A, relayed
  with B's session) — a lying frontend itself cannot be simulated from outside the cluster.
"""

from __future__ import annotations

import os
import random
import string
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bkv_chaos.history import HistoryOp
from bkv_chaos.recorder import Recorder
from client.config import ClientConfig
from client.errors import VaultError
from client.retry import RetryPolicy
from client.vault import VaultClient
from vault_protocol.backup_key import BackupKey


@dataclass(frozen=True)
class LoadConfig:
    """The shape of the load.

    workers: client threads. good/churn/guessing/cross: accounts of each role.
    guess_limit: max_attempts the guessing accounts register with (small, to lock often).
    max_ops: operations per worker at most (the time limit is the run's; this bounds count).
    think_s: pause between two operations of a worker (leaves CPU to the cluster).
    call_timeout_s / overall_deadline_s: the clients' RPC deadline and retry deadline, short so
        that an operation caught in a fault returns (as indefinite) within a few seconds.
    """

    workers: int = 4
    good: int = 6
    churn: int = 2
    guessing: int = 3
    cross: int = 1
    guess_limit: int = 3
    max_ops: int = 20_000
    think_s: float = 0.02
    call_timeout_s: float = 4.0
    overall_deadline_s: float = 6.0

    def validate(self) -> None:
        problems = []
        if not 1 <= self.workers <= 64:
            problems.append("workers must be in 1..64")
        if self.good < 1:
            problems.append("at least one good account is needed")
        for name in ("churn", "guessing", "cross"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.cross and not self.good:
            problems.append("cross accounts need a good account to aim at")
        if not 1 <= self.guess_limit <= 1000:
            problems.append("guess_limit must be in 1..1000")
        if self.max_ops < 1:
            problems.append("max_ops must be >= 1")
        if not 0 <= self.think_s <= 10:
            problems.append("think_s must be in 0..10")
        if self.call_timeout_s <= 0 or self.overall_deadline_s <= 0:
            problems.append("timeouts must be positive")
        if problems:
            raise ValueError("load config: " + "; ".join(problems))


def make_password(rng: random.Random) -> str:
    """A 24-character password: long enough that finding it in a log is never a coincidence."""
    alphabet = string.ascii_letters + string.digits
    return "".join(rng.choice(alphabet) for _ in range(24))


def load_client_config(
    base: ClientConfig, load: LoadConfig, frontends: Sequence[str]
) -> ClientConfig:
    """The client.toml settings with the load's KSF, deadlines and (proxied) frontends."""
    return base.with_overrides(
        frontends=tuple(frontends),
        ksf="fast",
        call_timeout_s=load.call_timeout_s,
        connect_timeout_s=min(0.5, load.call_timeout_s),
        overall_deadline_s=load.overall_deadline_s,
    )


class Actor:
    """One account and its client; `step()` performs and records one operation."""

    role = "actor"

    def __init__(
        self,
        recorder: Recorder,
        client: VaultClient,
        account: str,
        password: str,
        rng: random.Random,
    ) -> None:
        self.recorder = recorder
        self.client = client
        self.account = account
        self.password = recorder.password(password)
        self.rng = rng
        self.name = "w?"

    def setup(self, attempts: int, stop: threading.Event) -> None:
        """Create the account key and log in (a few tries: the cluster may still settle),
        before the run's clock starts."""
        self.client.create_account(self.account, login=False)
        for attempt in range(attempts):
            try:
                self.client.login()
                return
            except VaultError:
                if attempt == attempts - 1 or stop.wait(0.5):
                    raise

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.client.close()

    # -- recorded operations --

    def register(self, max_attempts: int | None = None) -> bool:
        key = BackupKey.generate(os.urandom)
        with self.recorder.op(self.name, "register", self.account) as r:
            # Known before the call: an indefinite registration still names the key it may
            # have stored, so that the checker can accept it as the surviving one.
            r.key = bytes(key)
            self.client.register(self.password, key=key, max_attempts=max_attempts)
            return True
        return False  # the recorder swallowed the failure after recording it

    def recover(self, op: str = "recover") -> HistoryOp | None:
        with self.recorder.op(self.name, op, self.account) as r:
            r.key = bytes(self.client.recover(self.password))
        return r.recorded

    def wrong_recover(self) -> HistoryOp | None:
        with self.recorder.op(self.name, "wrong_recover", self.account) as r:
            self.client.recover(self.recorder.password(make_password(self.rng)))
        return r.recorded

    def delete(self) -> None:
        with self.recorder.op(self.name, "delete", self.account):
            self.client.delete()

    def status(self) -> None:
        with self.recorder.op(self.name, "status", self.account):
            self.client.status()


class GoodActor(Actor):
    role = "good"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.registered = False

    def step(self) -> None:
        if not self.registered:
            self.registered = self.register()
        elif self.rng.random() < 0.1:
            self.status()
        else:
            self.recover()


class ChurnActor(Actor):
    role = "churn"
    CYCLE = ("register", "recover", "recover", "delete")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.index = 0

    def step(self) -> None:
        action = self.CYCLE[self.index % len(self.CYCLE)]
        self.index += 1
        if action == "register":
            self.register()
        elif action == "recover":
            self.recover()
        else:
            self.delete()


class GuessingActor(Actor):
    role = "guessing"

    def __init__(self, *args: object, guess_limit: int = 3, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.guess_limit = guess_limit
        self.phase = "register"

    def step(self) -> None:
        if self.phase == "register":
            if self.register(self.guess_limit):
                self.phase = "guess"
            return
        if self.phase == "guess":
            done = self.wrong_recover()
            if done is not None and done.outcome in ("locked", "not_registered"):
                self.phase = "right"
            return
        # Locked: the right password must be refused too (permanent lockout).
        self.recover()
        self.phase = "register"


class CrossActor(Actor):
    """Never registers; recovers with a good account's password through its own session."""

    role = "cross"

    def __init__(self, *args: object, victims: Sequence[Actor] = (), **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.victims = list(victims)

    def step(self) -> None:
        victim = self.rng.choice(self.victims)
        with self.recorder.op(self.name, "recover", victim.account, actor=self.account) as r:
            # The client acts for its own account only: the victim's record is out of reach.
            r.key = bytes(self.client.recover(victim.password))


@dataclass(frozen=True)
class Cast:
    """Every actor of a run, by role."""

    good: tuple[Actor, ...]
    churn: tuple[Actor, ...]
    guessing: tuple[Actor, ...]
    cross: tuple[Actor, ...]

    @property
    def all(self) -> tuple[Actor, ...]:
        return self.good + self.churn + self.guessing + self.cross

    @property
    def final_accounts(self) -> tuple[Actor, ...]:
        """Accounts whose last acknowledged registration must survive (final_recover)."""
        return self.good + self.churn


def make_cast(
    load: LoadConfig,
    recorder: Recorder,
    client_factory: Callable[[], VaultClient],
    rng: random.Random,
    run_tag: str,
) -> Cast:
    def account(role: str, i: int) -> str:
        return f"chaos-{run_tag}-{role}-{i}"

    def args(role: str, i: int) -> tuple[Recorder, VaultClient, str, str, random.Random]:
        seed = rng.getrandbits(64)
        return recorder, client_factory(), account(role, i), make_password(rng), random.Random(seed)

    good = tuple(GoodActor(*args("good", i)) for i in range(load.good))
    churn = tuple(ChurnActor(*args("churn", i)) for i in range(load.churn))
    guessing = tuple(
        GuessingActor(*args("guess", i), guess_limit=load.guess_limit) for i in range(load.guessing)
    )
    cross = tuple(CrossActor(*args("cross", i), victims=good) for i in range(load.cross))
    return Cast(good, churn, guessing, cross)


def setup_cast(cast: Cast, stop: threading.Event, attempts: int = 5) -> None:
    """Create every account and log it in."""
    for actor in cast.all:
        actor.setup(attempts, stop)


class LoadWorkers:
    """Worker threads stepping through their share of the actors until `stop()`."""

    def __init__(self, cast: Cast, load: LoadConfig) -> None:
        self._load = load
        self._stop = threading.Event()
        actors = list(cast.all)
        self._shares = [actors[i :: load.workers] for i in range(load.workers)]
        self._threads: list[threading.Thread] = []
        for index, share in enumerate(self._shares):
            for actor in share:
                actor.name = f"w{index}"

    def start(self) -> None:
        for index, share in enumerate(self._shares):
            if not share:
                continue
            thread = threading.Thread(
                target=self._work, args=(share,), name=f"chaos-w{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _work(self, share: list[Actor]) -> None:
        for n in range(self._load.max_ops):
            if self._stop.is_set():
                return
            share[n % len(share)].step()
            if self._load.think_s and self._stop.wait(self._load.think_s):
                return

    def stop(self, timeout: float) -> bool:
        """Stop and join; False when a worker is still inside a call after `timeout`."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)


def default_retry(load: LoadConfig) -> RetryPolicy:
    return RetryPolicy(overall_deadline_s=load.overall_deadline_s, max_delay_s=0.5)


def client_factory(
    config: ClientConfig, key_dir: Path, load: LoadConfig
) -> Callable[[], VaultClient]:
    def make() -> VaultClient:
        return VaultClient(config, key_dir=key_dir, ksf="fast", retry=default_retry(load))

    return make


def final_recover(cast: Cast, tries: int = 3) -> None:
    """After every fault is healed: one `final_recover` per account that must keep its key
    (retried, each try recorded, only while the answer is indefinite)."""
    for actor in cast.final_accounts:
        actor.name = "final"
        for _ in range(tries):
            done = actor.recover("final_recover")
            if done is not None and done.definite:
                break
