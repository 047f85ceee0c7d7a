"""The offline invariant checker: recorded histories and audit lines in, violations out.

One pure function per invariant of DESIGN.md, each returning an `InvariantResult`. The model is
Jepsen's: an operation took effect at one instant between its invoke and its return; an
indefinite one (`definite=false`) may have taken effect at any instant after its invoke (up to
`indefinite_horizon_s` later, unbounded by default) or never. A check counts what it could
decide as `checked` and what the model cannot decide as `unchecked`, never as a pass.

Guess limit and the audit half of permanent lockout use the nodes' audit lines only: a client
cannot see evaluations that a retry or another client caused.

Storage rollbacks (`rollback` faults, `RollbackWindow`). etcd may deny service, never grant a
guess (invariant 8); the model of a restore that the operator later accepts is:

* [snapshot, restore): what was written here is on a branch the restore throws away;
* [restore, accepted): the store is the snapshot's (bumped past every node's mark). A record
  written on the lost branch must get no evaluation, lock or release decided on a value of the
  restored branch (`storage_replay`); refusals (`tampered`, DATA_LOSS) are storage's denial
  of service, not violations of any invariant;
* from `accepted` on: the operator accepted the store as it is (`insider.accept_store`), and
  with it every counter it holds. What that gives back (the guesses spent on the lost branch,
  a lock made there, a registration acknowledged there) is the operator's decision, not a
  violation: the guess limit counts each record afresh from its counter in the accepted store,
  a lock from the lost branch no longer binds, and a registration acknowledged on the lost
  branch is exempt (unchecked) from `no_lost_registration`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bkv_chaos.history import LOSE_QUORUM, ROLLBACK, Fault, HistoryOp
from bkv_chaos.insider import AttackResult
from vault_common.audit_line import COMMITTING_EVENTS, DECIDED_EVENTS, AuditEvent, by_record

# Invariant 7: the statuses a malformed, oversized, replayed or expired message may get.
ALLOWED_BAD_INPUT_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
    }
)
# Invariant 6: what a call for another account's record may get; anything else touched it.
# `tampered`: a node refused the caller's own record id (its group is alarmed after a rollback),
# the one the frontend's account names: a refusal that evaluated nothing.
ALLOWED_CROSS_ACCOUNT_OUTCOMES = frozenset(
    {"unauthenticated", "protocol", "not_registered", "rate_limited", "tampered"}
)
# Definite outcomes after which the operation certainly changed no record.
NO_EFFECT_OUTCOMES = frozenset(
    {"not_registered", "unavailable", "rate_limited", "unauthenticated", "bad_input_rejected"}
)
RECOVER_OPS = frozenset({"recover", "final_recover"})


@dataclass(frozen=True)
class Violation:
    explanation: str  # what went wrong, in a sentence
    evidence: str  # the records that show it (files, lines, times, revisions; never a secret)


@dataclass(frozen=True)
class InvariantResult:
    name: str
    checked: int  # records, operations or places the check could decide
    violations: tuple[Violation, ...]
    unchecked: int = 0  # ones the model could not decide (counted, never passed)

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass(frozen=True)
class Secrets:
    """The run's passwords and keys, to be looked for; `repr` never shows them."""

    passwords: tuple[str, ...] = field(default=(), repr=False)
    keys: tuple[bytes, ...] = field(default=(), repr=False)


# -- helpers over the history ------------------------------------------------------------------


def _per_account(history: Iterable[HistoryOp]) -> dict[str, list[HistoryOp]]:
    """Each account's own operations (cross-account probes excluded), by invoke time."""
    groups: dict[str, list[HistoryOp]] = {}
    for op in history:
        if not op.cross_account and op.op != "bad_input":
            groups.setdefault(op.account, []).append(op)
    for ops in groups.values():
        ops.sort(key=lambda o: (o.invoke, o.complete))
    return dict(sorted(groups.items()))


def _latest_effect(op: HistoryOp, horizon_s: float) -> float:
    """The latest instant at which `op` may have taken effect."""
    return op.complete if op.definite else op.invoke + horizon_s


def _may_have_applied(op: HistoryOp) -> bool:
    # `tampered` is definite about evaluations (none), not about writes: a node commits a write
    # to etcd before the witnesses refuse its head, and the operator may accept that store.
    if not op.definite or op.outcome == "tampered":
        return True
    if op.op in ("register", "delete"):
        return op.outcome == "ok"
    return op.outcome not in NO_EFFECT_OUTCOMES


def _show(op: HistoryOp) -> str:
    mark = "" if op.definite else "?"
    return (
        f"{op.client} {op.op} {op.account} [{op.invoke:.3f}, {op.complete:.3f}] {op.outcome}{mark}"
    )


def _show_event(event: AuditEvent) -> str:
    return (
        f"{event.node} {event.event} rev={event.revision} ts={event.ts:.3f}"
        f" attempts={event.attempts}/{event.max_attempts}"
    )


def first_success_after(history: Iterable[HistoryOp], t: float) -> HistoryOp | None:
    """The first definite success (of an account's own operation) that returned after `t`."""
    candidates = [
        op
        for op in history
        if op.is_definite_ok and op.complete > t and op.op != "bad_input" and not op.cross_account
    ]
    return min(candidates, key=lambda op: op.complete, default=None)


# -- storage rollbacks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RollbackWindow:
    """A store rolled back to a snapshot, later accepted by the operator: a `rollback` fault's
    facts (bkv_chaos/scenarios.py `Rollback`), times in the history's clock.

    snapshot_start: just before the snapshot was taken: a write that returned before it is in
        the snapshot, one that returned after it may not be.
    start: the restore began (the fault's start); writes invoked from here on land on the
        restored store.
    accepted: the operator's accept-store took effect: every vault node stopped and cleared,
        none started yet (`math.inf`: never healed in the run).
    snapshot_revision: the revision the snapshot holds.
    bumped_revision: the restored store's revision once bumped, before any node could reach it
        (every commit on the restored store lies above it); None when unknown.
    """

    snapshot_start: float
    start: float
    accepted: float
    snapshot_revision: int
    bumped_revision: int | None = None

    @classmethod
    def of(cls, fault: Fault) -> RollbackWindow | None:
        """The window of a `rollback` fault, None when its facts lack what the model needs."""
        facts = fault.facts
        if fault.kind != ROLLBACK or not {"snapshot_start", "snapshot_revision"} <= set(facts):
            return None
        bumped = facts.get("bumped_revision")
        return cls(
            snapshot_start=facts["snapshot_start"],
            start=fault.start,
            accepted=facts.get("accepted_at", math.inf),
            snapshot_revision=int(facts["snapshot_revision"]),
            bumped_revision=None if bumped is None else int(bumped),
        )

    def restored_branch(self, revision: int) -> bool:
        """Whether a value at `revision` is of the restored branch: at or below the snapshot,
        or written on the restored store (above the bump). Values in between were written on
        the branch the restore threw away."""
        bumped = self.bumped_revision
        return revision <= self.snapshot_revision or (bumped is not None and revision > bumped)

    def survives(self, event: AuditEvent, start_unix: float) -> bool:
        """Whether the commit (or read) `event` stands for is in the store the operator
        accepted: by revision when it has one, else by time (before the snapshot or on the
        restored store)."""
        if event.revision is not None:
            return self.restored_branch(event.revision)
        t = event.ts - start_unix
        return t < self.snapshot_start or t >= self.start


def rollback_windows(faults: Sequence[Fault]) -> tuple[tuple[RollbackWindow, ...], int]:
    """The rollback windows of `faults`, and how many `rollback` faults had no usable facts."""
    rollbacks = [f for f in faults if f.kind == ROLLBACK]
    windows = tuple(w for w in map(RollbackWindow.of, rollbacks) if w is not None)
    return tuple(sorted(windows, key=lambda w: w.start)), len(rollbacks) - len(windows)


def _accept_cuts(rollbacks: Sequence[RollbackWindow], start_unix: float) -> list[float]:
    return sorted(start_unix + w.accepted for w in rollbacks if math.isfinite(w.accepted))


# -- 1. guess limit ----------------------------------------------------------------------------


def guess_limit(
    audit: Sequence[AuditEvent],
    default_max_attempts: int | None = None,
    rollbacks: Sequence[RollbackWindow] = (),
    start_unix: float = 0.0,
) -> InvariantResult:
    """At most max_attempts evaluations per record between successes, and none uncounted.

    Windows are cut by `success`, `register` and `delete` in commit (revision) order; a success
    carries over the evaluations its ticket did not cover (its `attempts`). Also a
    violation: an evaluate reporting attempts > max, two evaluates on one commit, or an evaluate
    whose attempts did not grow within a window (an evaluation that was not counted).

    A node that saw etcd time out writes no line, yet its write may commit later (a success
    that reset the counter, say). An evaluate whose `read_revision` lies above the record's last
    audited commit proves such a gap: the window then restarts from the record's own counter
    (`attempts` after this evaluate), and the place is counted as unchecked for growth.

    An accepted rollback (`rollbacks`) cuts every record's window where the operator accepted
    the store: the first evaluation after it counts from the record's counter in that store
    (its `attempts`), as the operator's decision gave back whatever the store had lost.
    """
    cuts = _accept_cuts(rollbacks, start_unix)
    windows: list[_GuessWindow] = []
    for record_id, events in by_record(audit).items():
        window = _GuessWindow(record_id, default_max_attempts)
        next_cut = 0
        for event in events:
            while next_cut < len(cuts) and event.ts >= cuts[next_cut]:
                window.accept_store(cuts[next_cut])
                next_cut += 1
            window.step(event)
        windows.append(window)
    return InvariantResult(
        "guess_limit",
        sum(w.checked for w in windows),
        tuple(v for w in windows for v in w.violations),
        sum(w.unchecked for w in windows),
    )


@dataclass
class _GuessWindow:
    """One record's guesses since the last cut, as its audit events are replayed in order."""

    record_id: str
    limit: int | None
    count: int = 0
    last_attempts: int | None = None
    cut: str = "start of the audit"
    revisions: set[int] = field(default_factory=set)
    last_commit: int | None = None
    rebase: bool = False
    checked: int = 0
    unchecked: int = 0
    violations: list[Violation] = field(default_factory=list)

    def accept_store(self, at: float) -> None:
        # The operator accepted the store: its counters are the baseline from here.
        self.cut = f"the operator's accept-store at ts={at:.3f}"
        self.count, self.last_attempts, self.rebase = 0, None, True

    def step(self, event: AuditEvent) -> None:
        gap = (
            event.read_revision is not None
            and self.last_commit is not None
            and event.read_revision > self.last_commit
        )
        if event.revision is not None:
            self.last_commit = max(self.last_commit or 0, event.revision)
        if event.max_attempts is not None:
            self.limit = event.max_attempts
        if event.event in ("success", "register", "delete"):
            # A success forgives only the guesses up to its ticket: evaluations after it
            # stay counted (its `attempts`), and the new window starts from them.
            carried = (event.attempts or 0) if event.event == "success" else 0
            self.count = carried
            self.last_attempts = None if event.event == "delete" else carried
            self.cut = _show_event(event)
            self.rebase = False
        elif event.event == "evaluate":
            self._evaluate(event, gap)

    def _evaluate(self, event: AuditEvent, gap: bool) -> None:
        self.count += 1
        if self.rebase and event.attempts is not None:
            self.count, self.rebase = event.attempts, False
        if gap and event.attempts is not None:
            # Unaudited commit(s) before this one: trust the record's counter from here.
            self.count = event.attempts
            self.last_attempts = None
            self.cut = f"an unaudited commit before rev={event.revision}"
            self.unchecked += 1
        where = f"record {self.record_id}: {_show_event(event)}"
        self._check_counted(event, where)
        limit = self.limit
        if limit is None:
            self.unchecked += 1
            return
        self.checked += 1
        if event.attempts is not None and event.attempts > limit:
            self.violations.append(
                Violation(f"evaluation with attempts {event.attempts} > max {limit}", where)
            )
        if self.count == limit + 1:
            self.violations.append(
                Violation(
                    f"more than {limit} evaluations between two successes",
                    f"{where}; since {self.cut}",
                )
            )

    def _check_counted(self, event: AuditEvent, where: str) -> None:
        """One commit per evaluation, and a counter that grew with each."""
        if event.revision is not None:
            if event.revision in self.revisions:
                self.violations.append(
                    Violation("two evaluations were committed as one attempt", where)
                )
            self.revisions.add(event.revision)
        if event.attempts is not None:
            if self.last_attempts is not None and event.attempts <= self.last_attempts:
                self.violations.append(
                    Violation(
                        f"attempts did not grow ({self.last_attempts} then {event.attempts}):"
                        " an evaluation was not counted",
                        where,
                    )
                )
            self.last_attempts = event.attempts


# -- 2. permanent lockout ----------------------------------------------------------------------


def _locked_by(events: Iterable[AuditEvent]) -> AuditEvent | None:
    """The lock that binds after `events` (the first since the last registration), if any."""
    locked_by: AuditEvent | None = None
    for event in events:
        if event.event in ("lock", "locked"):
            locked_by = locked_by or event
        elif event.event == "register":
            locked_by = None
    return locked_by


def permanent_lockout(
    audit: Sequence[AuditEvent],
    history: Sequence[HistoryOp],
    rollbacks: Sequence[RollbackWindow] = (),
    start_unix: float = 0.0,
) -> InvariantResult:
    """No success after a lock until a new registration: in the audit, and as clients saw it.

    Where the operator accepted a rolled-back store (`rollbacks`), what binds from then on is
    what that store kept: the audit's locks and registrations are replayed without the ones
    made on the lost branch (`RollbackWindow.survives`). A client-seen lock that may lie on the
    lost branch does not forbid a success after the accept: counted as unchecked.
    """
    checked, violations = _audit_lockouts(audit, rollbacks, start_unix)
    client_checked, unchecked, client_violations = _client_lockouts(history, rollbacks)
    return InvariantResult(
        "permanent_lockout",
        checked + client_checked,
        (*violations, *client_violations),
        unchecked,
    )


def _audit_lockouts(
    audit: Sequence[AuditEvent], rollbacks: Sequence[RollbackWindow], start_unix: float
) -> tuple[int, list[Violation]]:
    """Records that were locked (checked), and every success the audit shows after a lock."""
    checked = 0
    violations: list[Violation] = []
    ordered = sorted(rollbacks, key=lambda w: w.accepted)
    for record_id, events in by_record(audit).items():
        locked_by: AuditEvent | None = None
        seen_lock = False
        kept: list[AuditEvent] = []  # the events whose effect the store still holds
        next_cut = 0
        for event in events:
            while next_cut < len(ordered) and event.ts - start_unix >= ordered[next_cut].accepted:
                window = ordered[next_cut]
                kept = [e for e in kept if window.survives(e, start_unix)]
                locked_by = _locked_by(kept)
                next_cut += 1
            if event.event in ("lock", "locked", "register"):
                kept.append(event)
            if event.event in ("lock", "locked"):
                seen_lock = True
                locked_by = locked_by or event
            elif event.event == "register":
                locked_by = None
            elif event.event == "success" and locked_by is not None:
                violations.append(
                    Violation(
                        "a locked record was recovered",
                        f"record {record_id}: {_show_event(locked_by)} then {_show_event(event)}",
                    )
                )
        checked += seen_lock
    return checked, violations


def _client_lockouts(
    history: Sequence[HistoryOp], rollbacks: Sequence[RollbackWindow]
) -> tuple[int, int, list[Violation]]:
    """(checked, unchecked, violations): recoveries clients saw succeed after a lock they saw."""
    checked = unchecked = 0
    violations: list[Violation] = []
    for ops in _per_account(history).values():
        locks = [op for op in ops if op.definite and op.outcome == "locked"]
        if not locks:
            continue
        checked += 1
        registers = [op for op in ops if op.op == "register" and _may_have_applied(op)]
        for ok in (op for op in ops if op.op in RECOVER_OPS and op.is_definite_ok):
            for lock in (lk for lk in locks if lk.complete < ok.invoke):
                # A registration that may lie between the lock seen and the success excuses it.
                if any(
                    r.invoke < ok.complete and (not r.definite or r.complete > lock.invoke)
                    for r in registers
                ):
                    continue
                # So does an accepted rollback that may have thrown the lock away.
                if any(
                    lock.complete >= w.snapshot_start
                    and lock.invoke < w.start
                    and ok.invoke >= w.accepted
                    for w in rollbacks
                ):
                    unchecked += 1
                    continue
                violations.append(
                    Violation(
                        "a recovery succeeded after the account was locked",
                        f"{_show(lock)} then {_show(ok)}",
                    )
                )
                break
    return checked, unchecked, violations


# -- 3. no lost acknowledged registration ------------------------------------------------------


def no_lost_registration(
    history: Sequence[HistoryOp],
    indefinite_horizon_s: float = math.inf,
    rollbacks: Sequence[RollbackWindow] = (),
) -> InvariantResult:
    """Each account's last acknowledged registration is what its final recovery returns.

    A registration that may have been acknowledged on the branch a rollback threw away
    (returned after the snapshot began, invoked before the restore) is exempt: unchecked.
    """
    checked = unchecked = 0
    violations: list[Violation] = []
    for account, ops in _per_account(history).items():
        acked = [op for op in ops if op.op == "register" and op.is_definite_ok]
        finals = [op for op in ops if op.op == "final_recover"]
        if not acked:
            continue
        last = acked[-1]
        if not finals or finals[-1].invoke < last.complete:
            unchecked += 1
            continue
        if any(last.complete >= w.snapshot_start and last.invoke < w.start for w in rollbacks):
            unchecked += 1  # storage's denial of service: the restore may have taken it back
            continue
        final = finals[-1]

        def between(op: HistoryOp, last: HistoryOp = last, final: HistoryOp = final) -> bool:
            """`op` may have taken effect after `last` and before `final`."""
            return (
                op is not last
                and _may_have_applied(op)
                and _latest_effect(op, indefinite_horizon_s) > last.invoke
                and op.invoke < final.complete
            )

        interfering = [op for op in ops if op.op in ("delete", "wrong_recover") and between(op)]
        others = [op for op in ops if op.op == "register" and between(op)]
        accepted = {last.key_fp} | {op.key_fp for op in others}
        if interfering or not final.definite:
            unchecked += 1
            continue
        evidence = f"account {account}: {_show(last)} then {_show(final)}"
        if final.outcome == "ok":
            if final.key_fp is not None and final.key_fp in accepted:
                checked += 1
            elif final.key_fp is None or None in accepted:
                unchecked += 1
            else:
                checked += 1
                violations.append(
                    Violation("the final recovery returned another key than registered", evidence)
                )
        elif final.outcome in ("not_registered", "locked", "invalid_password"):
            checked += 1
            violations.append(
                Violation(f"an acknowledged registration was lost ({final.outcome})", evidence)
            )
        else:
            unchecked += 1
    return InvariantResult("no_lost_registration", checked, tuple(violations), unchecked)


# -- 4. fail closed ----------------------------------------------------------------------------


def fail_closed(
    audit: Sequence[AuditEvent],
    history: Sequence[HistoryOp],
    faults: Sequence[Fault],
    start_unix: float,
    grace_s: float = 0.5,
) -> InvariantResult:
    """No evaluation and no successful recovery without quorum; serving again once it is back.

    A window is (start + grace_s, end) of a `lose-quorum` fault (to the run's end if not healed):
    requests already in flight at `start` may still finish during the grace.
    """
    windows = [f for f in faults if f.kind == LOSE_QUORUM]
    run_end = max((op.complete for op in history), default=math.inf)
    violations: list[Violation] = []
    for fault in windows:
        low = fault.start + grace_s
        high = fault.end if fault.end is not None else run_end
        name = f"{fault.kind} {fault.target} [{fault.start:.3f}, {fault.end}]"
        for event in audit:
            if event.event == "evaluate" and low < event.ts - start_unix < high:
                violations.append(
                    Violation(
                        "a password was evaluated without quorum",
                        f"{name}: record {event.record_id} {_show_event(event)}"
                        f" at t={event.ts - start_unix:.3f}",
                    )
                )
        for op in history:
            if op.op in RECOVER_OPS and op.is_definite_ok and low < op.complete < high:
                violations.append(
                    Violation("a recovery succeeded without quorum", f"{name}: {_show(op)}")
                )
        if fault.end is not None and first_success_after(history, fault.end) is None:
            violations.append(Violation("the cluster did not serve again by itself", name))
    return InvariantResult("fail_closed", len(windows), tuple(violations))


# -- 5. confidentiality ------------------------------------------------------------------------


def secret_needles(secrets: Secrets) -> tuple[tuple[str, bytes], ...]:
    """(label, bytes to look for): each password in UTF-8; each key raw, hex, displayed, base64.

    Labels name the secret by its index only, so that a report never repeats it.
    """
    needles: dict[bytes, str] = {}
    for i, password in enumerate(secrets.passwords):
        if password:
            needles.setdefault(password.encode("utf-8"), f"password #{i} (utf-8)")
    for i, key in enumerate(secrets.keys):
        if not key:
            continue
        hexed = key.hex()
        groups = [hexed[j : j + 4] for j in range(0, len(hexed), 4)]
        forms = {
            "raw": key,
            "hex": hexed.encode(),
            "HEX": hexed.upper().encode(),
            "display": " ".join(groups).encode(),
            "dashed": "-".join(groups).encode(),
            "base64": base64.b64encode(key),
            "base64url": base64.urlsafe_b64encode(key),
        }
        for form, needle in forms.items():
            needles.setdefault(needle, f"key #{i} ({form})")
            needles.setdefault(needle.rstrip(b"="), f"key #{i} ({form} unpadded)")
    return tuple((label, needle) for needle, label in needles.items())


def _find_all(haystack: bytes, needle: bytes) -> Iterator[int]:
    start = haystack.find(needle)
    while start >= 0:
        yield start
        start = haystack.find(needle, start + 1)


def find_secrets(
    haystack: bytes, needles: Sequence[tuple[str, bytes]]
) -> tuple[tuple[str, int], ...]:
    """(label, offset) of every occurrence, leaving out a form found inside a longer one
    (the unpadded base64 inside the padded one) so that one occurrence is reported once."""
    hits = [
        (offset, offset + len(needle), label)
        for label, needle in needles
        for offset in _find_all(haystack, needle)
    ]
    kept = [
        (label, start)
        for start, end, label in hits
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in hits)
    ]
    return tuple(sorted(kept, key=lambda hit: (hit[1], hit[0])))


def confidentiality(
    secrets: Secrets, log_files: Sequence[Path], etcd_values: Sequence[bytes]
) -> InvariantResult:
    """Every occurrence of a secret in a log line (file:line) or an etcd value (index, offset)."""
    needles = secret_needles(secrets)
    if not needles:
        return InvariantResult("confidentiality", 0, (), len(log_files) + len(etcd_values))
    checked = unchecked = 0
    violations: list[Violation] = []
    for path in log_files:
        try:
            data = path.read_bytes()
        except OSError:
            unchecked += 1
            continue
        checked += 1
        for number, line in enumerate(data.split(b"\n"), start=1):
            for label, _ in find_secrets(line, needles):
                violations.append(Violation(f"{label} appears in a log", f"{path}:{number}"))
    for index, value in enumerate(etcd_values):
        checked += 1
        for label, offset in find_secrets(value, needles):
            violations.append(
                Violation(f"{label} appears in etcd", f"etcd value #{index} at byte {offset}")
            )
    return InvariantResult("confidentiality", checked, tuple(violations), unchecked)


# -- 6. isolation ------------------------------------------------------------------------------


def isolation(history: Sequence[HistoryOp]) -> InvariantResult:
    """A call made with one account's session for another account never reaches its record."""
    checked = unchecked = 0
    violations: list[Violation] = []
    for op in history:
        if not op.cross_account:
            continue
        if not op.definite:
            unchecked += 1
            continue
        checked += 1
        if op.outcome not in ALLOWED_CROSS_ACCOUNT_OUTCOMES:
            violations.append(
                Violation(f"a call by {op.actor} for another account got {op.outcome}", _show(op))
            )
    return InvariantResult("isolation", checked, tuple(violations), unchecked)


# -- 7. bad input ------------------------------------------------------------------------------


def bad_input(
    history: Sequence[HistoryOp],
    processes_alive: bool,
    rollbacks: Sequence[RollbackWindow] = (),
) -> InvariantResult:
    """Bad input gets a documented status, never INTERNAL or a crash; every process survives.

    Inside a rollback window DATA_LOSS is documented too: a node refuses a whole group of
    records after a rollback, whatever the request (storage's denial of service)."""
    checked = 1
    unchecked = 0
    violations: list[Violation] = []
    if not processes_alive:
        violations.append(Violation("a cluster process died during the run", "run.json"))
    for op in history:
        if op.op != "bad_input":
            continue
        if op.outcome in ("internal", "crash"):
            checked += 1
            violations.append(Violation(f"bad input caused {op.outcome}", _show(op)))
        elif op.status_code in ALLOWED_BAD_INPUT_CODES:
            checked += 1
        elif op.status_code == "DATA_LOSS" and any(
            w.start <= op.invoke < w.accepted for w in rollbacks
        ):
            checked += 1
        elif not op.definite:
            unchecked += 1
        else:
            checked += 1
            violations.append(
                Violation(f"bad input got status {op.status_code}, not a documented one", _show(op))
            )
    return InvariantResult("bad_input", checked, tuple(violations), unchecked)


# -- 8. storage cannot cheat -------------------------------------------------------------------


def storage_replay(
    audit: Sequence[AuditEvent],
    attacks: Sequence[AttackResult],
    rollbacks: Sequence[RollbackWindow] = (),
    start_unix: float = 0.0,
    unreadable_rollbacks: int = 0,
) -> InvariantResult:
    """No evaluation, lock or release was ever decided on a value an etcd insider wrote, and no
    recovery after an attacker's write returned the key (DESIGN invariant 8).

    Each attack (`bkv_chaos.insider`) names the revisions of its writes; a node that decides
    on a value logs that value's mod_revision as `read_revision`, so a decided event on one of
    them is a guess storage granted. `unchecked` counts attacker writes no node ever looked at
    (the owner stopped calling before a node read them), which prove nothing either way.

    Rollbacks (`RollbackWindow`): a record with an audited commit above the snapshot's revision
    before the restore was rolled back. Within [restore, accepted) no evaluate, lock or success
    may be decided on it on a value of the restored branch (`read_revision` at or below the
    snapshot's, or above the bump: written on the restored store, so descended from the
    snapshot); one decided on a value of the lost branch was in flight at the restore. Each
    rolled-back record some node handled in the window is checked; one no node touched there
    is unchecked, and so is a rollback fault whose facts are missing (`unreadable_rollbacks`).
    """
    checked = unchecked = 0
    violations: list[Violation] = []
    events = by_record(audit)
    for window in rollbacks:
        c, u, found = _rolled_back(events, window, start_unix)
        checked, unchecked = checked + c, unchecked + u
        violations += found
    unchecked += unreadable_rollbacks
    for attack in attacks:
        written = set(attack.written)
        record_events = events.get(attack.record_id, ())
        seen = {e.read_revision for e in record_events if e.read_revision is not None}
        checked += 1
        unchecked += len(written - seen)
        for event in record_events:
            if event.event in DECIDED_EVENTS and event.read_revision in written:
                violations.append(
                    Violation(
                        f"a node decided on a value the insider wrote ({attack.kind})",
                        f"record {attack.record_id}: {_show_event(event)} on"
                        f" rev={event.read_revision}",
                    )
                )
        if attack.key_returned or "ok" in attack.outcomes:
            violations.append(
                Violation(
                    f"a recovery succeeded after the insider's write ({attack.kind})",
                    f"record {attack.record_id}: outcomes {attack.outcomes}",
                )
            )
    return InvariantResult("storage_replay", checked, tuple(violations), unchecked)


def _rolled_back(
    events: dict[str, tuple[AuditEvent, ...]], window: RollbackWindow, start_unix: float
) -> tuple[int, int, list[Violation]]:
    """(checked, unchecked, violations) of one rollback window over every record."""
    checked = unchecked = 0
    violations: list[Violation] = []
    name = f"rollback to rev {window.snapshot_revision} [{window.start:.3f}, {window.accepted})"
    for record_id, record_events in events.items():
        lost = [
            e
            for e in record_events
            if e.event in COMMITTING_EVENTS
            and e.revision is not None
            and e.revision > window.snapshot_revision
            and e.ts - start_unix < window.start
        ]
        if not lost:
            continue  # the restore gave this record back as it was: nothing to refuse
        inside = [e for e in record_events if window.start <= e.ts - start_unix < window.accepted]
        if not inside:
            unchecked += 1
            continue
        checked += 1
        for event in inside:
            if event.event not in DECIDED_EVENTS:
                continue
            if event.read_revision is None:
                unchecked += 1
            elif window.restored_branch(event.read_revision):
                violations.append(
                    Violation(
                        "a node decided on a rolled-back record's restored value",
                        f"{name}: record {record_id} (written on the lost branch at rev "
                        f"{lost[-1].revision}): {_show_event(event)} on rev="
                        f"{event.read_revision}",
                    )
                )
    return checked, unchecked, violations
