"""The chaos tool's record formats and offline invariant checker, on recorded histories.

`chaos_fixtures/clean_run` is a small recorded run (four accounts, a quorum loss, a node kill,
a lockout, an indefinite re-registration) that must pass every invariant; each planted violation
below must be flagged by the invariant it breaks, and only by it.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bkv_chaos import checker
from bkv_chaos.checker import InvariantResult, Secrets
from bkv_chaos.history import (
    Fault,
    HistoryOp,
    JsonlWriter,
    RecordFormatError,
    RunInfo,
    key_fingerprint,
    read_faults,
    read_history,
    read_run_info,
    write_run_info,
)
from bkv_chaos.insider import AttackResult
from bkv_chaos.verdict import (
    INVARIANTS,
    build_verdict,
    check_run,
    exit_code,
    format_table,
    percentile,
    print_verdict,
    write_verdict,
)
from vault_common.audit_line import AuditEvent, order_events, read_audit, read_audits

pytestmark = pytest.mark.unit

CLEAN_RUN = Path(__file__).parent / "chaos_fixtures" / "clean_run"
START = 1700000000.0
RID = "ab" * 16
PASSWORD = "correct horse battery staple"
KEY = bytes(range(32))
FP_A = key_fingerprint(b"A" * 32)
FP_B = key_fingerprint(b"B" * 32)
FP_C = key_fingerprint(b"C" * 32)


def op(
    kind: str,
    account: str,
    invoke: float,
    complete: float,
    outcome: str = "ok",
    *,
    definite: bool = True,
    key_fp: str | None = None,
    status_code: str | None = None,
    actor: str | None = None,
) -> HistoryOp:
    return HistoryOp(
        client="c1",
        op=kind,
        account=account,
        invoke=invoke,
        complete=complete,
        outcome=outcome,
        definite=definite,
        key_fp=key_fp,
        status_code=status_code,
        actor=actor,
    )


def ev(
    event: str,
    revision: int | None,
    attempts: int | None = None,
    *,
    t: float = 0.0,
    max_attempts: int | None = 3,
    record_id: str = RID,
) -> AuditEvent:
    ts = START + (t if t else float(revision or 0))
    return AuditEvent(ts, "n1", record_id, event, attempts, max_attempts, revision, "01", None)


def only(result: InvariantResult, *fragments: str) -> None:
    """The result has violations, each explanation holding one of `fragments`."""
    assert result.violations, f"{result.name}: expected a violation"
    for violation in result.violations:
        assert any(f in violation.explanation for f in fragments), violation


def clean() -> tuple[tuple[HistoryOp, ...], tuple[AuditEvent, ...], tuple[Fault, ...]]:
    return (
        read_history(CLEAN_RUN / "history.jsonl"),
        read_audits(CLEAN_RUN.glob("*.audit.jsonl")),
        read_faults(CLEAN_RUN / "faults.jsonl"),
    )


def copy_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(CLEAN_RUN, run)
    return run


def append(path: Path, *records: HistoryOp | AuditEvent | Fault) -> None:
    with JsonlWriter(path) as writer:
        for record in records:
            writer.append(record)


def run_secrets() -> Secrets:
    return Secrets(passwords=(PASSWORD,), keys=(KEY,))


# -- the clean recorded run --------------------------------------------------------------------


def test_clean_run_passes_every_invariant() -> None:
    verdict = check_run(CLEAN_RUN, run_secrets(), [b"\x0a\x06record sealed"], [])
    assert exit_code(verdict) == 0, format_table(verdict)
    for name in INVARIANTS:
        assert verdict.to_json()["invariants"][name]["checked"] > 0, name
        assert verdict.to_json()["invariants"][name]["unchecked"] == 0, name
    assert verdict.to_json()["invariants"]["no_lost_registration"]["checked"] == 4


def test_clean_run_figures() -> None:
    verdict = check_run(CLEAN_RUN, run_secrets(), [], [])
    assert verdict.to_json()["operations"]["wrong_recover"] == {"invalid_password": 3}
    assert verdict.to_json()["operations"]["recover"]["unavailable"] == 1
    quorum, kill = verdict.to_json()["faults"]
    assert (quorum["kind"], quorum["recovered_at"], quorum["time_to_recover_s"]) == (
        "lose-quorum",
        15.0,
        1.0,
    )
    assert kill["time_to_recover_s"] == pytest.approx(3.5)
    assert verdict.to_json()["time_to_recover_s"] == {"p50": 1.0, "p99": pytest.approx(3.5)}
    # 19 operations invoked outside the quorum loss, one of them indefinite.
    assert verdict.to_json()["availability"] == pytest.approx(18 / 19)


def test_verdict_has_exactly_the_documented_keys() -> None:
    verdict = check_run(CLEAN_RUN, run_secrets(), [], [])
    assert set(verdict.to_json()) == {
        "invariants",
        "operations",
        "faults",
        "time_to_recover_s",
        "availability",
    }
    assert tuple(verdict.to_json()["invariants"]) == INVARIANTS
    for entry in verdict.to_json()["invariants"].values():
        assert set(entry) == {"checked", "unchecked", "violations", "details"}
    assert set(verdict.to_json()["faults"][0]) == {
        "kind",
        "target",
        "start",
        "end",
        "recovered_at",
        "time_to_recover_s",
    }
    json.dumps(verdict.to_json(), allow_nan=False)


# -- 1. guess limit ----------------------------------------------------------------------------


def test_one_evaluation_too_many_between_successes() -> None:
    # The node logged no attempts: only the count of evaluations can tell.
    events = [ev("success", 1, 0)] + [ev("evaluate", r) for r in (2, 3, 4, 5)] + [ev("success", 6)]
    only(checker.guess_limit(events), "more than 3 evaluations")
    assert checker.guess_limit(events[:4] + events[5:]).ok


def test_windows_follow_revisions_not_timestamps() -> None:
    # Three evaluations, a success, three more: fine, although the node clocks disagree.
    events = [ev("evaluate", r, a, t=10 - r) for r, a in ((1, 1), (2, 2), (3, 3))]
    events += [ev("success", 4, 0, t=0.5)]
    events += [ev("evaluate", r, r - 4, t=20 + r) for r in (5, 6, 7)]
    assert checker.guess_limit(events).ok
    moved = [replace(e, revision=8) if e.revision == 4 else e for e in events]
    only(checker.guess_limit(moved), "more than 3", "did not grow")


def test_a_success_carries_over_the_guesses_after_its_ticket() -> None:
    # A late-redeemed ticket forgives only the guesses before it: the node's success line says
    # 2 stay counted, so one more evaluation fills the window of 3 and a second is one too many.
    events = [
        ev("register", 1, 0),
        ev("evaluate", 2, 1),
        ev("evaluate", 3, 2),
        ev("evaluate", 4, 3),
    ]
    events += [ev("success", 5, 2), ev("evaluate", 6)]  # no attempts logged: only the count
    assert checker.guess_limit(events).ok
    only(checker.guess_limit([*events, ev("evaluate", 7)]), "more than 3")


def test_evaluate_with_attempts_above_max() -> None:
    events = [ev("register", 1, 0), ev("evaluate", 2, 5)]
    result = checker.guess_limit(events)
    only(result, "attempts 5 > max 3")
    assert len(result.violations) == 1


def test_an_uncounted_evaluation_is_flagged() -> None:
    same_attempts = [ev("register", 1, 0), ev("evaluate", 2, 1), ev("evaluate", 3, 1)]
    only(checker.guess_limit(same_attempts), "did not grow")
    one_commit = [ev("register", 1, 0), ev("evaluate", 2, 1), ev("evaluate", 2, 2, t=2.5)]
    only(checker.guess_limit(one_commit), "committed as one")


def test_counted_but_unanswered_attempt_is_allowed() -> None:
    # attempts jumps from 1 to 3: a committed attempt whose node died before evaluating.
    assert checker.guess_limit(
        [ev("register", 1, 0), ev("evaluate", 2, 1), ev("evaluate", 4, 3)]
    ).ok


def test_register_and_delete_start_a_new_window() -> None:
    events = [ev("evaluate", r, r) for r in (1, 2, 3)] + [ev("register", 4, 0)]
    events += [ev("evaluate", r, r - 4) for r in (5, 6, 7)] + [ev("delete", 8)]
    events += [ev("register", 9, 0)] + [ev("evaluate", r, r - 9) for r in (10, 11, 12)]
    assert checker.guess_limit(events).ok


def test_unknown_max_attempts_is_unchecked_not_passed() -> None:
    result = checker.guess_limit([ev("evaluate", 1, 1, max_attempts=None)])
    assert (result.checked, result.unchecked, result.ok) == (0, 1, True)
    assert checker.guess_limit([ev("evaluate", 1, 1, max_attempts=None)], 3).checked == 1


# -- 2. permanent lockout ----------------------------------------------------------------------


def test_success_after_lock_in_the_audit() -> None:
    events = [ev("evaluate", r, r) for r in (1, 2, 3)] + [ev("lock", 4, 3), ev("success", 5, 0)]
    only(checker.permanent_lockout(events, []), "locked record was recovered")
    relocked = [*events[:4], ev("register", 5, 0), ev("success", 6, 0)]
    assert checker.permanent_lockout(relocked, []).ok


def test_locked_answer_without_revision_orders_by_time() -> None:
    events = [ev("register", 1, 0, t=1), ev("locked", None, t=5), ev("success", 9, 0, t=6)]
    only(checker.permanent_lockout(events, []), "locked record was recovered")
    earlier = [ev("register", 1, 0, t=1), ev("success", 9, 0, t=6), ev("locked", None, t=7)]
    assert checker.permanent_lockout(earlier, []).ok


def test_client_recovers_after_a_definite_locked_answer() -> None:
    history = [
        op("register", "bob", 0, 1, key_fp=FP_A),
        op("recover", "bob", 2, 3, "locked"),
        op("recover", "bob", 4, 5, key_fp=FP_A),
    ]
    only(checker.permanent_lockout([], history), "after the account was locked")


def test_register_between_lock_and_success_excuses_it() -> None:
    history = [
        op("recover", "bob", 2, 3, "locked"),
        op("register", "bob", 3.5, 4.0, key_fp=FP_B),
        op("recover", "bob", 4.5, 5, key_fp=FP_B),
    ]
    assert checker.permanent_lockout([], history).ok
    indefinite = [
        history[0],
        replace(history[1], outcome="unavailable", definite=False),
        history[2],
    ]
    assert checker.permanent_lockout([], indefinite).ok
    refused = [history[0], replace(history[1], outcome="unauthenticated"), history[2]]
    only(checker.permanent_lockout([], refused), "after the account was locked")


def test_concurrent_or_indefinite_locked_answer_is_not_a_violation() -> None:
    concurrent = [op("recover", "bob", 2, 5, "locked"), op("recover", "bob", 3, 4, key_fp=FP_A)]
    assert checker.permanent_lockout([], concurrent).ok
    maybe = [
        op("recover", "bob", 2, 3, "locked", definite=False),
        op("recover", "bob", 4, 5, key_fp=FP_A),
    ]
    assert checker.permanent_lockout([], maybe).ok


# -- 3. no lost acknowledged registration ------------------------------------------------------


def registered(final_outcome: str = "ok", final_fp: str | None = FP_A) -> list[HistoryOp]:
    return [
        op("register", "eve", 0, 1, key_fp=FP_A),
        op("recover", "eve", 2, 3, key_fp=FP_A),
        op("final_recover", "eve", 10, 11, final_outcome, key_fp=final_fp),
    ]


def test_acknowledged_registration_recovered_at_the_end() -> None:
    result = checker.no_lost_registration(registered())
    assert (result.checked, result.unchecked, result.ok) == (1, 0, True)


def test_acknowledged_registration_missing_at_the_end() -> None:
    only(checker.no_lost_registration(registered("not_registered", None)), "was lost")


def test_acknowledged_registration_recovered_with_another_key() -> None:
    only(checker.no_lost_registration(registered(final_fp=FP_B)), "another key")


def test_indefinite_register_makes_either_key_acceptable() -> None:
    maybe = op("register", "eve", 4, 6, "unavailable", definite=False, key_fp=FP_B)
    for final_fp in (FP_A, FP_B):
        history = [*registered(final_fp=final_fp), maybe]
        result = checker.no_lost_registration(history)
        assert (result.checked, result.ok) == (1, True), final_fp
    only(checker.no_lost_registration([*registered(final_fp=FP_C), maybe]), "another key")


def test_failed_definite_register_is_ignored() -> None:
    refused = op("register", "eve", 4, 6, "unauthenticated", key_fp=FP_B)
    only(checker.no_lost_registration([*registered(final_fp=FP_B), refused]), "another key")


def test_undecidable_accounts_are_unchecked() -> None:
    cases = {
        "delete": [*registered("not_registered", None), op("delete", "eve", 4, 5)],
        "maybe delete": [
            *registered("not_registered", None),
            op("delete", "eve", 4, 5, "unavailable", definite=False),
        ],
        "wrong guesses": [
            *registered("locked", None),
            op("wrong_recover", "eve", 4, 5, "invalid_password"),
        ],
        "final unavailable": [
            *registered("unavailable", None)[:2],
            op("final_recover", "eve", 10, 11, "unavailable", definite=False),
        ],
        "no final": registered()[:2],
        "unknown key": [
            *registered(final_fp=FP_C),
            op("register", "eve", 4, 5, "unavailable", definite=False),
        ],
    }
    for name, history in cases.items():
        result = checker.no_lost_registration(history)
        assert (result.checked, result.unchecked, result.ok) == (0, 1, True), name


def test_definite_refusals_do_not_make_an_account_undecidable() -> None:
    history = [
        *registered("not_registered", None),
        op("delete", "eve", 4, 5, "unauthenticated"),
        op("wrong_recover", "eve", 4, 5, "rate_limited"),
    ]
    only(checker.no_lost_registration(history), "was lost")


def test_indefinite_horizon_bounds_old_indefinite_operations() -> None:
    history = [
        op("register", "eve", 0, 1, "unavailable", definite=False, key_fp=FP_B),
        op("register", "eve", 20, 21, key_fp=FP_A),
        op("final_recover", "eve", 30, 31, key_fp=FP_B),
    ]
    assert checker.no_lost_registration(history).ok  # unbounded: it may have applied late
    only(checker.no_lost_registration(history, indefinite_horizon_s=5), "another key")


# -- 4. fail closed ----------------------------------------------------------------------------


def test_evaluate_inside_a_quorum_loss_window(tmp_path: Path) -> None:
    history, audit, faults = clean()
    inside = ev("evaluate", 30, 1, t=12.0, record_id="c3" * 16)
    in_grace = ev("evaluate", 31, 1, t=10.4, record_id="e5" * 16)
    only(checker.fail_closed([*audit, inside], history, faults, START), "evaluated without quorum")
    assert checker.fail_closed([*audit, in_grace], history, faults, START).ok
    only(
        checker.fail_closed([*audit, in_grace], history, faults, START, grace_s=0.1),
        "without quorum",
    )
    run = copy_run(tmp_path)
    append(run / "dc-a-node-1.audit.jsonl", inside)
    verdict = check_run(run, run_secrets(), [], [])
    assert verdict.to_json()["invariants"]["fail_closed"]["violations"] == 1
    assert exit_code(verdict) == 1


def test_recovery_succeeding_inside_a_quorum_loss_window() -> None:
    history, audit, faults = clean()
    ok_inside = op("recover", "alice", 11.0, 12.0, key_fp=key_fingerprint(b"\x01" * 32))
    only(checker.fail_closed(audit, [*history, ok_inside], faults, START), "succeeded without")


def test_no_success_after_quorum_returned() -> None:
    history, audit, _ = clean()
    late = (Fault("lose-quorum", "etcd-a,etcd-b", 21.0, 22.0),)
    result = checker.fail_closed(audit, history, late, START)
    only(result, "did not serve again by itself")
    never_healed = (Fault("lose-quorum", "etcd-a,etcd-b", 21.0, None),)
    assert checker.fail_closed(audit, history, never_healed, START).ok


def test_unavailable_during_quorum_loss_is_not_a_violation() -> None:
    history, audit, faults = clean()
    assert any(o.outcome == "unavailable" and 10 < o.invoke < 14 for o in history)
    result = checker.fail_closed(audit, history, faults, START)
    assert (result.checked, result.ok) == (1, True)


# -- 5. confidentiality ------------------------------------------------------------------------


def test_secrets_in_logs_and_etcd_are_reported(tmp_path: Path) -> None:
    log = tmp_path / "dc-a-node-1.log"
    log.write_text(
        f"started\nlogin failed for password {PASSWORD}\nok\nkey={KEY.hex()}\n",
        encoding="utf-8",
    )
    values = [b"sealed-record", b"\x0a\x20" + KEY, b"k=" + base64.b64encode(KEY)]
    result = checker.confidentiality(run_secrets(), [log], values)
    found = {(v.explanation, v.evidence) for v in result.violations}
    assert found == {
        ("password #0 (utf-8) appears in a log", f"{log}:2"),
        ("key #0 (hex) appears in a log", f"{log}:4"),
        ("key #0 (raw) appears in etcd", "etcd value #1 at byte 2"),
        ("key #0 (base64) appears in etcd", "etcd value #2 at byte 2"),
    }
    assert result.checked == 4
    verdict_text = json.dumps(build_verdict([result], [], []).to_json())
    for secret in (PASSWORD, KEY.hex(), base64.b64encode(KEY).decode()):
        assert secret not in verdict_text
    assert PASSWORD not in repr(run_secrets())


def test_other_key_encodings_are_found(tmp_path: Path) -> None:
    grouped = " ".join(KEY.hex()[i : i + 4] for i in range(0, 64, 4))
    values = [
        grouped.encode(),
        KEY.hex().upper().encode(),
        base64.urlsafe_b64encode(KEY).rstrip(b"="),
        PASSWORD.encode(),
    ]
    result = checker.confidentiality(run_secrets(), [], values)
    indexes = {v.evidence.split(" at ")[0] for v in result.violations}
    assert indexes == {f"etcd value #{i}" for i in range(4)}


def test_clean_logs_pass_and_missing_ones_are_unchecked(tmp_path: Path) -> None:
    log = tmp_path / "frontend.log"
    log.write_text("request account=alice size=512 outcome=ok\n", encoding="utf-8")
    result = checker.confidentiality(run_secrets(), [log, tmp_path / "absent.log"], [b"x"])
    assert (result.checked, result.unchecked, result.ok) == (2, 1, True)


# -- 6. isolation ------------------------------------------------------------------------------


def test_cross_account_ok_is_flagged() -> None:
    history = [
        op("recover", "bob", 1, 2, "unauthenticated", actor="alice"),
        op("delete", "bob", 1, 2, "ok", actor="alice"),
        op("wrong_recover", "bob", 1, 2, "invalid_password", actor="alice"),
        op("recover", "bob", 1, 2, "unavailable", definite=False, actor="alice"),
        op("recover", "alice", 1, 2, "ok", actor="alice"),
    ]
    result = checker.isolation(history)
    assert (result.checked, result.unchecked, len(result.violations)) == (3, 1, 2)
    only(result, "got ok", "got invalid_password")


def test_cross_account_ok_does_not_count_as_the_victims_own() -> None:
    history = [*registered(), op("register", "eve", 4, 5, key_fp=FP_B, actor="mallory")]
    assert checker.no_lost_registration(history).ok


# -- 7. bad input ------------------------------------------------------------------------------


def test_bad_input_answered_internal_or_crashing() -> None:
    history = [
        op("bad_input", "a", 1, 2, "bad_input_rejected", status_code="INVALID_ARGUMENT"),
        op("bad_input", "a", 1, 2, "internal", status_code="INTERNAL"),
        op("bad_input", "a", 1, 2, "crash"),
        op("bad_input", "a", 1, 2, "bad_input_rejected", status_code="UNKNOWN"),
        op("bad_input", "a", 1, 2, "unavailable", status_code="UNAVAILABLE", definite=False),
        op("bad_input", "a", 1, 2, "unavailable", status_code="DEADLINE_EXCEEDED", definite=False),
    ]
    result = checker.bad_input(history, processes_alive=True)
    assert (result.checked, result.unchecked, len(result.violations)) == (6, 1, 3)
    only(result, "caused internal", "caused crash", "status UNKNOWN")


def test_a_dead_process_is_a_bad_input_violation(tmp_path: Path) -> None:
    only(checker.bad_input([], processes_alive=False), "process died")
    run = copy_run(tmp_path)
    write_run_info(run / "run.json", RunInfo(START, processes_alive=False))
    assert exit_code(check_run(run, run_secrets(), [], [])) == 1


# -- planted violations through the files ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "planted"),
    [
        ("guess_limit", ev("evaluate", 100, 4, t=21, record_id="a1" * 16)),
        ("permanent_lockout", ev("success", 11, 0, t=5.2, record_id="b2" * 16)),
        ("no_lost_registration", op("final_recover", "alice", 22, 23, "not_registered")),
        ("isolation", op("status", "bob", 21, 22, "ok", actor="alice")),
        ("bad_input", op("bad_input", "bob", 21, 22, "internal", status_code="INTERNAL")),
    ],
)
def test_planted_line_fails_exactly_its_invariant(
    tmp_path: Path, name: str, planted: HistoryOp | AuditEvent
) -> None:
    run = copy_run(tmp_path)
    target = "history.jsonl" if isinstance(planted, HistoryOp) else "dc-b-node-1.audit.jsonl"
    append(run / target, planted)
    verdict = check_run(run, run_secrets(), [], [])
    failing = {n for n, e in verdict.to_json()["invariants"].items() if e["violations"]}
    assert failing == {name}
    assert exit_code(verdict) == 1
    out = io.StringIO()
    print_verdict(verdict, out)
    assert f"{name:<22}" in out.getvalue() and "FAIL" in out.getvalue()


# -- formats -----------------------------------------------------------------------------------


def test_history_round_trip_and_writer_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    writer = JsonlWriter(path)

    def work(n: int) -> None:
        for i in range(50):
            writer.append(op("status", f"acct-{n}", i, i + 0.5, actor=f"acct-{n}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    ops = read_history(path)
    assert len(ops) == 400
    assert ops[0] == HistoryOp.from_json(json.loads(path.read_text().splitlines()[0]))
    assert sum(o.account == "acct-3" for o in ops) == 50


def test_each_line_is_flushed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    with JsonlWriter(path) as writer:
        writer.append(op("status", "a", 0, 1))
        assert len(read_history(path)) == 1


def good_line() -> dict[str, Any]:
    return op("register", "alice", 0, 1, key_fp=FP_A).to_json()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"op": "steal"}, "'op': unknown value"),
        ({"outcome": "maybe"}, "'outcome': unknown value"),
        ({"definite": 1}, "'definite' must be true or false"),
        ({"invoke": True}, "'invoke' must be a finite number"),
        ({"invoke": 2.0}, "complete is before invoke"),
        ({"key_fp": "zz"}, "'key_fp' must be hex"),
        ({"key_fp": "ab"}, "'key_fp' must be 64 hex digits"),
        ({"guesses_left": -1}, "'guesses_left' must be a non-negative integer"),
        ({"client": ""}, "'client' must be a non-empty string"),
        ({"colour": "red"}, "unknown field(s): colour"),
    ],
)
def test_malformed_history_line_is_reported_with_its_number(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "history.jsonl"
    bad = {**good_line(), **change}
    lines = [json.dumps(good_line()), "", json.dumps(bad), json.dumps(good_line())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RecordFormatError) as caught:
        read_history(path)
    assert (caught.value.line, caught.value.path) == (3, str(path))
    assert problem in caught.value.problem


def test_history_reader_rejects_torn_lines_and_non_objects(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(good_line()) + "\n" + json.dumps(good_line())[:30])
    with pytest.raises(RecordFormatError) as caught:
        read_history(path)
    assert caught.value.line == 2
    path.write_text("[1, 2]\n")
    with pytest.raises(RecordFormatError, match="not a JSON object"):
        read_history(path)


def test_audit_reader_is_tolerant_of_missing_and_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "n1.audit.jsonl"
    minimal = {"ts": START, "node": "n1", "record_id": RID, "event": "locked"}
    extra = {**ev("evaluate", 7, 1).to_json(), "latency_ms": 3}
    torn = json.dumps(minimal)[:20]
    path.write_text(json.dumps(minimal) + "\n" + json.dumps(extra) + "\n" + torn)
    first, second = read_audit(path)
    assert first == AuditEvent(START, "n1", RID, "locked")
    assert (second.event, second.revision, second.attempts) == ("evaluate", 7, 1)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"event": "teleport"}, "'event': unknown value"),
        ({"record_id": "not hex"}, "'record_id' must be hex"),
        ({"revision": "7"}, "'revision' must be a non-negative integer"),
        ({"ts": None}, "'ts' must be a finite number"),
    ],
)
def test_audit_reader_rejects_bad_lines(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "n1.audit.jsonl"
    good = ev("evaluate", 7, 1).to_json()
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
    with pytest.raises(RecordFormatError) as caught:
        read_audit(path)
    assert caught.value.line == 2 and problem in caught.value.problem


def test_order_events_by_revision_then_time() -> None:
    events = [
        ev("success", 9, 0, t=1.0),
        ev("locked", None, t=3.0),
        ev("evaluate", 3, 1, t=5.0),
        ev("bad_mac", None, t=0.5),
    ]
    ordered = order_events(events)
    assert [e.event for e in ordered] == ["bad_mac", "evaluate", "success", "locked"]


def test_faults_and_run_info_round_trip(tmp_path: Path) -> None:
    faults = (Fault("lose-quorum", "etcd-a", 1.0, 2.0, 2.5), Fault("kill-node", "n1", 3.0, None))
    append(tmp_path / "faults.jsonl", *faults)
    assert read_faults(tmp_path / "faults.jsonl") == faults
    write_run_info(tmp_path / "run.json", RunInfo(START, True))
    assert read_run_info(tmp_path / "run.json") == RunInfo(START, True)
    (tmp_path / "bad.jsonl").write_text(json.dumps({**faults[0].to_json(), "end": 0.5}) + "\n")
    with pytest.raises(RecordFormatError, match="end is before start"):
        read_faults(tmp_path / "bad.jsonl")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(RecordFormatError, match="start_unix"):
        read_run_info(tmp_path / "run.json")


# -- verdict -----------------------------------------------------------------------------------


def test_exit_code_needs_every_invariant_and_no_violation() -> None:
    verdict = check_run(CLEAN_RUN, run_secrets(), [], [])
    assert exit_code(verdict) == 0
    missing = replace(verdict, invariants=verdict.invariants[:-1])
    assert exit_code(missing) == 1
    violation = checker.Violation("planted", "here")
    failing = replace(verdict, invariants=tuple(
        replace(r, violations=(violation,)) if r.name == "isolation" else r
        for r in verdict.invariants
    ))  # fmt: skip
    assert exit_code(failing) == 1


def test_verdict_file_round_trips(tmp_path: Path) -> None:
    verdict = check_run(CLEAN_RUN, run_secrets(), [], [])
    write_verdict(tmp_path / "verdict.json", verdict)
    assert json.loads((tmp_path / "verdict.json").read_text()) == verdict.to_json()


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([1.0, 9.0], 99) == 9.0


# -- 8. storage cannot cheat -------------------------------------------------------------------


def attack(written: list[int], outcomes: list[str], returned: bool = False) -> AttackResult:
    return AttackResult("put_back", RID, written, outcomes, returned)


def test_an_evaluation_on_the_insiders_value_is_a_violation() -> None:
    refused = [ev("evaluate", 5, 1), replace(ev("tampered", None), read_revision=7)]
    result = checker.storage_replay(refused, [attack([7], ["tampered"])])
    assert result.ok and result.checked == 1 and result.unchecked == 0
    granted = [*refused, replace(ev("evaluate", 8, 2), read_revision=7)]
    only(checker.storage_replay(granted, [attack([7], ["invalid_password"])]), "decided on")


def test_a_recovery_after_the_insiders_write_is_a_violation() -> None:
    events = [replace(ev("tampered", None), read_revision=7)]
    only(checker.storage_replay(events, [attack([7], ["ok"], True)]), "recovery succeeded")


def test_an_insider_write_no_node_looked_at_is_unchecked() -> None:
    result = checker.storage_replay([ev("evaluate", 5, 1)], [attack([7, 9], ["tampered"])])
    assert result.ok and result.unchecked == 2


# -- 8. storage rollbacks (the `rollback` fault) -----------------------------------------------
#
# One window for all of them: the snapshot is taken at t=10 and holds revision 5; the restore
# begins at t=20 and is bumped to revision 100 before any node reaches it; the operator's
# accept-store takes effect at t=40. Audit times are START + t.

WINDOW = checker.RollbackWindow(
    snapshot_start=10.0, start=20.0, accepted=40.0, snapshot_revision=5, bumped_revision=100
)
ROLLBACK_FACTS = {
    "snapshot_start": 10.0,
    "snapshot_end": 10.5,
    "snapshot_revision": 5,
    "revision_before": 60,
    "bumped_revision": 100,
    "revision_after": 104,
    "restored_at": 27.0,
    "accepted_at": 40.0,
    "healed_at": 45.0,
}


def decided(event: str, revision: int, read: int, t: float, attempts: int | None = 1) -> AuditEvent:
    return replace(ev(event, revision, attempts, t=t), read_revision=read)


def rolled_back_record() -> list[AuditEvent]:
    """Registered and guessed on before the snapshot, guessed on again after it (lost)."""
    return [
        ev("register", 3, 0, t=1),
        decided("evaluate", 4, 3, t=2),
        decided("evaluate", 7, 4, 12, 2),
    ]


def test_a_decision_on_a_rolled_back_records_restored_value_is_a_violation() -> None:
    refused = [*rolled_back_record(), replace(ev("rollback", None, t=25), read_revision=4)]
    result = checker.storage_replay(refused, [], [WINDOW], START)
    assert (result.checked, result.unchecked, result.ok) == (1, 0, True)
    for read in (4, 103):  # the snapshot's value; a value written on the restored store
        granted = [*refused, decided("evaluate", 105, read, t=26)]
        only(checker.storage_replay(granted, [], [WINDOW], START), "restored value")
        assert checker.storage_replay(granted, []).ok  # no window, no rule
    for event in ("lock", "success"):
        only(
            checker.storage_replay([*refused, decided(event, 105, 4, t=26)], [], [WINDOW], START),
            "restored value",
        )


def test_a_decision_in_flight_at_the_restore_is_not_a_violation() -> None:
    # Decided on the lost branch's value (rev 7), committed before the members went down, its
    # audit line written just after the window began.
    late = [*rolled_back_record(), decided("evaluate", 8, 7, t=20.01, attempts=3)]
    assert checker.storage_replay(late, [], [WINDOW], START).ok


def test_records_the_restore_gave_back_as_they_were_may_be_served() -> None:
    untouched = [ev("register", 3, 0, t=1), decided("evaluate", 101, 3, t=25)]
    result = checker.storage_replay(untouched, [], [WINDOW], START)
    assert (result.checked, result.unchecked, result.ok) == (0, 0, True)


def test_decisions_after_the_accept_are_the_operators_not_violations() -> None:
    after = [*rolled_back_record(), decided("evaluate", 110, 4, t=41)]
    result = checker.storage_replay(after, [], [WINDOW], START)
    assert (result.checked, result.unchecked, result.ok) == (0, 1, True)


def test_a_rolled_back_record_no_node_handled_and_unreadable_faults_are_unchecked() -> None:
    result = checker.storage_replay(rolled_back_record(), [], [WINDOW], START)
    assert (result.checked, result.unchecked) == (0, 1)
    windows, unreadable = checker.rollback_windows([Fault("rollback", "etcd", 20.0, 30.0)])
    assert (windows, unreadable) == ((), 1)
    assert checker.storage_replay([], [], windows, START, unreadable).unchecked == 1


def test_rollback_window_from_a_faults_facts() -> None:
    fault = Fault("rollback", "etcd", 20.0, 35.0, facts=ROLLBACK_FACTS)
    assert checker.RollbackWindow.of(fault) == WINDOW
    never_healed = {k: v for k, v in ROLLBACK_FACTS.items() if k != "accepted_at"}
    window = checker.RollbackWindow.of(replace(fault, facts=never_healed))
    assert window is not None and window.accepted == float("inf")
    assert checker.RollbackWindow.of(replace(fault, kind="kill-dc")) is None
    assert WINDOW.restored_branch(5) and WINDOW.restored_branch(101)
    assert not WINDOW.restored_branch(6) and not WINDOW.restored_branch(100)


def test_the_accepted_store_restarts_each_records_count() -> None:
    # Max 3: two guesses in the snapshot, a third on the lost branch; the accepted store holds
    # attempts=2, so the first guess after the accept commits attempts=3 again.
    events = [
        ev("register", 1, 0, t=1),
        ev("evaluate", 2, 1, t=2),
        ev("evaluate", 3, 2, t=3),
        ev("evaluate", 7, 3, t=12),
        ev("evaluate", 110, 3, t=41),
    ]
    only(checker.guess_limit(events), "more than 3", "did not grow")
    assert checker.guess_limit(events, None, [WINDOW], START).ok
    # Counted afresh, not forgotten: one more is past the record's own limit.
    over = [*events, ev("evaluate", 111, 4, t=42)]
    only(checker.guess_limit(over, None, [WINDOW], START), "attempts 4 > max 3", "more than 3")


def test_a_lock_on_the_lost_branch_no_longer_binds_after_the_accept() -> None:
    lost_lock = [ev("register", 1, 0, t=1), ev("lock", 7, 3, t=12), ev("success", 110, 0, t=41)]
    only(checker.permanent_lockout(lost_lock, []), "locked record was recovered")
    assert checker.permanent_lockout(lost_lock, [], [WINDOW], START).ok
    kept_lock = [ev("register", 1, 0, t=1), ev("lock", 4, 3, t=5), ev("success", 110, 0, t=41)]
    only(checker.permanent_lockout(kept_lock, [], [WINDOW], START), "locked record")
    # A registration on the lost branch is thrown away too: the kept lock binds again.
    lost_register = [*kept_lock[:2], ev("register", 8, 0, t=13), kept_lock[2]]
    assert checker.permanent_lockout(lost_register, []).ok
    only(checker.permanent_lockout(lost_register, [], [WINDOW], START), "locked record")


def test_a_client_seen_lock_the_restore_may_have_undone_is_unchecked() -> None:
    history = [
        op("register", "bob", 0, 1, key_fp=FP_A),
        op("wrong_recover", "bob", 12, 13, "locked"),
        op("final_recover", "bob", 41, 42, key_fp=FP_A),
    ]
    only(checker.permanent_lockout([], history), "after the account was locked")
    result = checker.permanent_lockout([], history, [WINDOW], START)
    assert (result.ok, result.unchecked) == (True, 1)
    before_snapshot = [history[0], replace(history[1], invoke=5, complete=6), history[2]]
    only(checker.permanent_lockout([], before_snapshot, [WINDOW], START), "after the account")


def test_a_registration_acknowledged_on_the_lost_branch_is_exempt() -> None:
    def history(invoke: float, complete: float) -> list[HistoryOp]:
        return [
            op("register", "eve", invoke, complete, key_fp=FP_A),
            op("final_recover", "eve", 50, 51, "not_registered"),
        ]

    only(checker.no_lost_registration(history(12, 13)), "was lost")
    result = checker.no_lost_registration(history(12, 13), rollbacks=[WINDOW])
    assert (result.checked, result.unchecked, result.ok) == (0, 1, True)
    for before_or_after in ((5, 6), (25, 26)):  # in the snapshot; on the restored store
        only(checker.no_lost_registration(history(*before_or_after), rollbacks=[WINDOW]), "lost")


def test_a_tampered_answer_refuses_evaluations_not_writes() -> None:
    # A registration answered DATA_LOSS may have been committed (the witnesses refused it
    # after the commit) and the operator may accept that store: its key is acceptable.
    maybe = op("register", "eve", 4, 6, "tampered", key_fp=FP_B)
    assert checker.no_lost_registration([*registered(final_fp=FP_B), maybe]).ok
    assert checker._may_have_applied(op("wrong_recover", "eve", 4, 6, "tampered"))
    cross = [op("recover", "bob", 1, 2, "tampered", actor="alice")]
    assert checker.isolation(cross).ok and checker.isolation(cross).checked == 1


def test_data_loss_to_bad_input_only_inside_a_rollback_window() -> None:
    probe = op("bad_input", "p", 25, 26, "bad_input_rejected", status_code="DATA_LOSS")
    only(checker.bad_input([probe], True), "status DATA_LOSS")
    assert checker.bad_input([probe], True, [WINDOW]).ok
    outside = replace(probe, invoke=41, complete=42)
    only(checker.bad_input([outside], True, [WINDOW]), "status DATA_LOSS")


def test_tampered_is_a_definite_outcome_of_its_own() -> None:
    from bkv_chaos.recorder import classify
    from client.errors import RecordTampered

    assert classify(RecordTampered()) == classify(RecordTampered())
    assert (classify(RecordTampered()).outcome, classify(RecordTampered()).definite) == (
        "tampered",
        True,
    )
    line = op("recover", "eve", 1, 2, "tampered").to_json()
    assert HistoryOp.from_json(line).outcome == "tampered"


def test_fault_facts_round_trip_and_are_validated(tmp_path: Path) -> None:
    fault = Fault("rollback", "etcd", 20.0, 35.0, 36.0, facts=ROLLBACK_FACTS)
    append(tmp_path / "faults.jsonl", fault, Fault("kill-dc", "dc-a", 1.0, 2.0))
    assert read_faults(tmp_path / "faults.jsonl") == (fault, Fault("kill-dc", "dc-a", 1.0, 2.0))
    assert "facts" not in Fault("kill-dc", "dc-a", 1.0, 2.0).to_json()
    bad = {**fault.to_json(), "facts": {"snapshot_revision": "five"}}
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(RecordFormatError, match="snapshot_revision"):
        read_faults(tmp_path / "bad.jsonl")


def test_a_rollback_run_is_judged_through_its_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_run_info(run / "run.json", RunInfo(START, True))
    append(
        run / "history.jsonl",
        op("register", "eve", 0, 1, key_fp=FP_A),
        op("register", "eve", 12, 13, key_fp=FP_B),  # acknowledged on the lost branch
        op("wrong_recover", "eve", 25, 26, "tampered"),
        op("final_recover", "eve", 50, 51, key_fp=FP_A),
    )
    append(run / "faults.jsonl", Fault("rollback", "etcd", 20.0, 35.0, facts=ROLLBACK_FACTS))
    audit = [*rolled_back_record(), replace(ev("rollback", None, t=25), read_revision=4)]
    append(run / "n1.audit.jsonl", *audit)
    verdict = check_run(run, run_secrets(), [], [])
    assert exit_code(verdict) == 0, format_table(verdict)
    replay = verdict.to_json()["invariants"]["storage_replay"]
    assert (replay["checked"], replay["violations"]) == (1, 0)
    assert verdict.to_json()["invariants"]["no_lost_registration"]["unchecked"] == 1
    append(run / "n1.audit.jsonl", decided("evaluate", 105, 4, t=26))
    verdict = check_run(run, run_secrets(), [], [])
    failing = {n for n, e in verdict.to_json()["invariants"].items() if e["violations"]}
    assert failing == {"storage_replay", "guess_limit"}, format_table(verdict)
