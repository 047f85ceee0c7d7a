"""The offline invariant checker: recorded histories and audit lines in, violations out.

One pure function per invariant of DESIGN.md, each returning an `InvariantResult`. The model is
Jepsen's: an operation took effect at one instant between its invoke and its return; an
indefinite one (`definite=false`) may have taken effect at any instant after its invoke (up to
`indefinite_horizon_s` later, unbounded by default) or never. A check counts what it could
decide as `checked` and what the model cannot decide as `unchecked`, never as a pass.

Guess limit and the audit half of permanent lockout use the nodes' audit lines only: a client
cannot see evaluations that a retry or another client caused.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.chaos.audit_format import DECIDED_EVENTS, AuditEvent, by_record
from deploy.chaos.history import LOSE_QUORUM, Fault, HistoryOp
from deploy.chaos.insider import AttackResult

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
ALLOWED_CROSS_ACCOUNT_OUTCOMES = frozenset(
    {"unauthenticated", "protocol", "not_registered", "rate_limited"}
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
    if not op.definite:
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


# -- 1. guess limit ----------------------------------------------------------------------------


def guess_limit(
    audit: Sequence[AuditEvent], default_max_attempts: int | None = None
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
    """
    checked = unchecked = 0
    violations: list[Violation] = []
    for record_id, events in by_record(audit).items():
        count = 0
        limit = default_max_attempts
        last_attempts: int | None = None
        cut = "start of the audit"
        revisions: set[int] = set()
        last_commit: int | None = None
        for event in events:
            gap = (
                event.read_revision is not None
                and last_commit is not None
                and event.read_revision > last_commit
            )
            if event.revision is not None:
                last_commit = max(last_commit or 0, event.revision)
            if event.max_attempts is not None:
                limit = event.max_attempts
            if event.event in ("success", "register", "delete"):
                # A success forgives only the guesses up to its ticket: evaluations after it
                # stay counted (its `attempts`), and the new window starts from them.
                carried = (event.attempts or 0) if event.event == "success" else 0
                count = carried
                last_attempts = None if event.event == "delete" else carried
                cut = _show_event(event)
                continue
            if event.event != "evaluate":
                continue
            count += 1
            if gap and event.attempts is not None:
                # Unaudited commit(s) before this one: trust the record's counter from here.
                count = event.attempts
                last_attempts = None
                cut = f"an unaudited commit before rev={event.revision}"
                unchecked += 1
            where = f"record {record_id}: {_show_event(event)}"
            if event.revision is not None:
                if event.revision in revisions:
                    violations.append(
                        Violation("two evaluations were committed as one attempt", where)
                    )
                revisions.add(event.revision)
            if event.attempts is not None:
                if last_attempts is not None and event.attempts <= last_attempts:
                    violations.append(
                        Violation(
                            f"attempts did not grow ({last_attempts} then {event.attempts}):"
                            " an evaluation was not counted",
                            where,
                        )
                    )
                last_attempts = event.attempts
            if limit is None:
                unchecked += 1
                continue
            checked += 1
            if event.attempts is not None and event.attempts > limit:
                violations.append(
                    Violation(f"evaluation with attempts {event.attempts} > max {limit}", where)
                )
            if count == limit + 1:
                violations.append(
                    Violation(
                        f"more than {limit} evaluations between two successes",
                        f"{where}; since {cut}",
                    )
                )
    return InvariantResult("guess_limit", checked, tuple(violations), unchecked)


# -- 2. permanent lockout ----------------------------------------------------------------------


def permanent_lockout(audit: Sequence[AuditEvent], history: Sequence[HistoryOp]) -> InvariantResult:
    """No success after a lock until a new registration: in the audit, and as clients saw it."""
    checked = 0
    violations: list[Violation] = []
    for record_id, events in by_record(audit).items():
        locked_by: AuditEvent | None = None
        seen_lock = False
        for event in events:
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

    for ops in _per_account(history).values():
        locks = [op for op in ops if op.definite and op.outcome == "locked"]
        if not locks:
            continue
        checked += 1
        registers = [op for op in ops if op.op == "register" and _may_have_applied(op)]
        for ok in (op for op in ops if op.op in RECOVER_OPS and op.is_definite_ok):
            for lock in (lk for lk in locks if lk.complete < ok.invoke):
                # A registration that may lie between the lock seen and the success excuses it.
                if not any(
                    r.invoke < ok.complete and (not r.definite or r.complete > lock.invoke)
                    for r in registers
                ):
                    violations.append(
                        Violation(
                            "a recovery succeeded after the account was locked",
                            f"{_show(lock)} then {_show(ok)}",
                        )
                    )
                    break
    return InvariantResult("permanent_lockout", checked, tuple(violations))


# -- 3. no lost acknowledged registration ------------------------------------------------------


def no_lost_registration(
    history: Sequence[HistoryOp], indefinite_horizon_s: float = math.inf
) -> InvariantResult:
    """Each account's last acknowledged registration is what its final recovery returns."""
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


def bad_input(history: Sequence[HistoryOp], processes_alive: bool) -> InvariantResult:
    """Bad input gets a documented status, never INTERNAL or a crash; every process survives."""
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
        elif not op.definite:
            unchecked += 1
        else:
            checked += 1
            violations.append(
                Violation(f"bad input got status {op.status_code}, not a documented one", _show(op))
            )
    return InvariantResult("bad_input", checked, tuple(violations), unchecked)


# -- 8. storage cannot cheat -------------------------------------------------------------------


def storage_replay(audit: Sequence[AuditEvent], attacks: Sequence[AttackResult]) -> InvariantResult:
    """No evaluation, lock or release was ever decided on a value an etcd insider wrote, and no
    recovery after an attacker's write returned the key (DESIGN invariant 8).

    Each attack (`deploy.chaos.insider`) names the revisions of its writes; a node that decides
    on a value logs that value's mod_revision as `read_revision`, so a decided event on one of
    them is a guess storage granted. `unchecked` counts attacker writes no node ever looked at
    (the owner stopped calling before a node read them), which prove nothing either way.
    """
    checked = unchecked = 0
    violations: list[Violation] = []
    events = by_record(audit)
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
