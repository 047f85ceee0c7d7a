"""Fuzz the frontends: Relay with a valid session and bad envelopes, GetChallenge/Login with bad
fields, Relay with bad session tokens, and undecodable request bytes.

Every answer must be a documented status ({OK for a genuine envelope, INVALID_ARGUMENT,
UNAUTHENTICATED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED}); afterwards every process still runs
(same pid, healthy), no log holds a traceback, and the fuzzed account still has all its guesses and
recovers: no case counted a guess or touched its record.
"""

from __future__ import annotations

import re

import pytest
from bad_input_wire import (
    INVALID_ARGUMENT,
    OK,
    RESOURCE_EXHAUSTED,
    UNAUTHENTICATED,
    Account,
    Pacer,
    Watch,
    Wire,
    assert_account_intact,
    bearer,
    call_raw,
    frontend_method,
    get_challenge,
    login_with,
    relay,
    seal,
    status_request,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_cases import ACCOUNT_ALPHABET, Case, envelope_case, mutate
from fuzz_tally import Tally, check_sealed_ok, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from bkv.v1 import frontend_pb2

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]

# local-3dc: 20 relays/s per account and frontend (burst 40), 200 calls/s per peer (burst 400).
# Two frontends in turn at 36/s stay under both, so the cases reach the vault nodes.
RELAY_RATE_PER_S = 36.0
LOGIN_RATE_PER_S = 150.0
MIN_REACHED = 0.9  # of the cases sent, at least this share must get past the rate limiter
FRONTEND_ACCOUNT_ID = re.compile(r"[A-Za-z0-9._@+-]{1,128}")  # docs: what GetChallenge accepts
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)


def test_relay_envelopes(wire: Wire, account: Account) -> None:
    watch = Watch(wire)
    tally = Tally()
    pacer = Pacer(RELAY_RATE_PER_S)
    turn = [0]

    @fuzz_settings(300)
    @given(case=envelope_case(wire.fleet, account.id, account.key.signer))
    def run(case: Case) -> None:
        if case.skip:
            return
        pacer.wait()
        turn[0] += 1
        answer = relay(wire.frontend(turn[0] % 2), account.token, case.envelope)
        tally.record(case.label, answer, case.expect | {RESOURCE_EXHAUSTED})
        check_sealed_ok(tally, case, answer)

    run()
    watch.assert_unharmed()
    assert_account_intact(account)
    assert tally.violation_count == 0, tally.report()
    assert tally.sent >= 200, tally.report()
    assert tally.reached >= MIN_REACHED * tally.sent, tally.report()
    assert tally.codes[OK.name] > 0 and tally.codes[INVALID_ARGUMENT.name] > 100, tally.report()


@st.composite
def login_recipe(draw: st.DrawFn) -> dict[str, object]:
    return {
        "account": draw(st.sampled_from(["self", "other", "invalid"])),
        "other": draw(st.text(ACCOUNT_ALPHABET, min_size=1, max_size=128)),
        "invalid": draw(TEXT.filter(lambda t: not FRONTEND_ACCOUNT_ID.fullmatch(t))),
        "public_key": draw(
            st.one_of(
                st.just(b"self"),
                st.binary(min_size=32, max_size=32),
                st.binary(max_size=80).filter(lambda b: len(b) != 32),
            )
        ),
        "challenge": draw(st.sampled_from(["genuine", "mutated", "random", "third-account"])),
        "challenge_edit": draw(
            st.tuples(
                st.sampled_from(["flip", "truncate", "extend"]),
                st.integers(0, 10_000),
                st.binary(min_size=1, max_size=16),
            )
        ),
        "random_challenge": draw(st.binary(max_size=120)),
        "signature": draw(st.sampled_from(["genuine", "random", "wrong-size", "mutated"])),
        "sig_bytes": draw(st.binary(max_size=100)),
        "enrollment": draw(st.text(max_size=40).filter(lambda t: "\x00" not in t)),
        "challenge_for": draw(TEXT),
    }


def _edit(edit: tuple[str, int, bytes], genuine: bytes) -> bytes:
    """A changed copy of the genuine challenge: one bit flipped, cut short, or extended."""
    kind, n, extra = edit
    if kind == "flip":
        out = bytearray(genuine)
        bit = n % (8 * len(out))
        out[bit // 8] ^= 1 << (bit % 8)
        return bytes(out)
    if kind == "truncate":
        return genuine[: n % len(genuine)]
    return genuine + extra


def test_get_challenge_and_login_fields(wire: Wire, account: Account) -> None:
    watch = Watch(wire)
    tally = Tally()
    pacer = Pacer(LOGIN_RATE_PER_S)
    own = account.key
    stranger = Ed25519PrivateKey.generate()

    @fuzz_settings(200)
    @given(recipe=login_recipe())
    def run(recipe: dict[str, object]) -> None:
        channel = wire.frontend(tally.sent % 2)
        # GetChallenge with an arbitrary account id: the documented alphabet or INVALID_ARGUMENT.
        probe_id = str(recipe["challenge_for"])
        pacer.wait()
        probe = get_challenge(channel, probe_id)
        expected = OK if FRONTEND_ACCOUNT_ID.fullmatch(probe_id) else INVALID_ARGUMENT
        tally.record("challenge", probe, frozenset({expected, RESOURCE_EXHAUSTED}), repr(probe_id))

        pacer.wait()
        issued = get_challenge(channel, own.account_id)
        if issued.code != OK:
            tally.record("challenge/own", issued, frozenset({OK, RESOURCE_EXHAUSTED}))
            return
        genuine = frontend_pb2.ChallengeReply.FromString(issued.body).challenge
        account_id = {
            "self": own.account_id,
            "other": str(recipe["other"]),
            "invalid": str(recipe["invalid"]),
        }[str(recipe["account"])]
        public_key = own.public_key if recipe["public_key"] == b"self" else recipe["public_key"]
        assert isinstance(public_key, bytes)
        kind = str(recipe["challenge"])
        if kind == "genuine":
            challenge = genuine
        elif kind == "mutated":
            challenge = _edit(recipe["challenge_edit"], genuine)  # type: ignore[arg-type]
        elif kind == "random":
            challenge = bytes(recipe["random_challenge"])  # type: ignore[arg-type]
        else:  # a genuine challenge, but issued for someone else
            pacer.wait()
            third = get_challenge(channel, own.account_id + "x")
            challenge = frontend_pb2.ChallengeReply.FromString(third.body).challenge
        sig_kind = str(recipe["signature"])
        signature = {
            "genuine": own.sign_challenge(challenge),
            "random": stranger.sign(b"bkv-v1 login" + challenge),
            "wrong-size": bytes(recipe["sig_bytes"])[:63],  # type: ignore[arg-type]
            "mutated": bytes([own.sign_challenge(challenge)[0] ^ 1])
            + own.sign_challenge(challenge)[1:],
        }[sig_kind]
        request = frontend_pb2.LoginRequest(
            account_id=account_id,
            public_key=public_key,
            challenge=challenge,
            signature=signature,
            enrollment_token=str(recipe["enrollment"]),
        )
        if not FRONTEND_ACCOUNT_ID.fullmatch(account_id) or len(public_key) != 32:
            expect = INVALID_ARGUMENT
        elif (
            account_id == own.account_id
            and public_key == own.public_key
            and challenge == genuine
            and sig_kind == "genuine"
        ):
            expect = OK
        else:
            expect = UNAUTHENTICATED
        pacer.wait()
        label = f"login/{recipe['account']}/{kind}/{sig_kind}"
        tally.record(label, login_with(channel, request), frozenset({expect, RESOURCE_EXHAUSTED}))

    run()
    watch.assert_unharmed()
    # The account is still bound to its own key (no Login rebound it) and keeps its guesses.
    assert_account_intact(account)
    assert tally.violation_count == 0, tally.report()
    assert tally.reached >= MIN_REACHED * tally.sent, tally.report()


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@st.composite
def token_variant(draw: st.DrawFn, token: str) -> str:
    kind = draw(st.sampled_from(["random", "flip", "truncate", "extend", "swap-part"]))
    if kind == "random":
        return draw(st.text(PRINTABLE, max_size=600))
    if kind == "truncate":
        return token[: draw(st.integers(0, len(token) - 1))]
    if kind == "extend":
        return token + draw(st.text(PRINTABLE, min_size=1, max_size=20))
    at = draw(st.integers(0, len(token) - 1))
    if kind == "flip":
        return token[:at] + draw(PRINTABLE) + token[at + 1 :]
    return token[at:] + token[:at]


def test_relay_with_bad_session_tokens(wire: Wire, account: Account) -> None:
    watch = Watch(wire)
    tally = Tally()
    pacer = Pacer(RELAY_RATE_PER_S)

    @fuzz_settings(150)
    @given(token=token_variant(account.token))
    def run(token: str) -> None:
        # A genuine status request: the token alone decides.
        sealed = seal(wire.fleet, account.id, status_request())
        expect = OK if token.strip() == account.token else UNAUTHENTICATED
        pacer.wait()
        answer = relay(wire.frontend(tally.sent % 2), token, sealed.envelope)
        tally.record("token", answer, frozenset({expect, RESOURCE_EXHAUSTED}), repr(token[:40]))

    run()
    watch.assert_unharmed()
    assert_account_intact(account)
    assert tally.violation_count == 0, tally.report()
    assert tally.codes[UNAUTHENTICATED.name] >= 100, tally.report()


@st.composite
def raw_request(draw: st.DrawFn, account: Account) -> tuple[str, bytes]:
    method = draw(st.sampled_from(["GetChallenge", "Login", "Relay"]))
    genuine = {
        "GetChallenge": frontend_pb2.ChallengeRequest(account_id=account.id),
        "Login": frontend_pb2.LoginRequest(
            account_id=account.id, public_key=account.key.public_key, challenge=bytes(80),
            signature=bytes(64),
        ),
        "Relay": frontend_pb2.RelayRequest(envelope=bytes(600)),
    }[method].SerializeToString()  # fmt: skip
    if draw(st.booleans()):
        return method, draw(st.binary(max_size=300))
    return method, draw(mutate(genuine))[1]


def test_undecodable_request_bytes(wire: Wire, account: Account) -> None:
    """Mutated serialized requests: those that parse get their field statuses, those that don't
    parse must get INVALID_ARGUMENT (currently UNKNOWN: the known grpc.aio bug, see the report)."""
    watch = Watch(wire)
    tally = Tally()
    pacer = Pacer(RELAY_RATE_PER_S)
    documented = frozenset({INVALID_ARGUMENT, UNAUTHENTICATED, RESOURCE_EXHAUSTED, OK})

    @fuzz_settings(150)
    @given(case=raw_request(account))
    def run(case: tuple[str, bytes]) -> None:
        method, payload = case
        pacer.wait()
        answer = call_raw(
            wire.frontend(tally.sent % 2), frontend_method(method), payload, bearer(account.token)
        )
        tally.record(method, answer, documented)

    run()
    watch.assert_processes_unharmed()
    assert_account_intact(account)
    assert tally.violation_count == 0, tally.report()
    assert not watch.alarms()
