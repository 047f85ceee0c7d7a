"""Session tokens, login challenges, enrollment tokens and Login (fake key store)."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from inproc_cluster import MemoryKeyStore

from frontend_chatd.accounts import (
    CHANGE_KEY_CONTEXT,
    LOGIN_CONTEXT,
    Accounts,
    Enrollment,
    enrollment_token,
)
from frontend_chatd.sessions import (
    CHALLENGE_TTL_S,
    Challenges,
    ChallengeSpent,
    InvalidAccountId,
    InvalidArgument,
    SessionKeys,
    SessionTokens,
    Unauthenticated,
    bearer_token,
    check_account_id,
    issuer_id,
)
from vault_common.account_binding import encode_binding

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counter_rng() -> object:
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return bytes([state["n"] % 256]) * n

    return rng


def tokens(clock: FakeClock, secret: bytes = SECRET, ttl: int = 3600) -> SessionTokens:
    return SessionTokens(SessionKeys.derive(secret), ttl, clock)


# --- account ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "alice@example.org", "A.b_c+d-e", "x" * 128])
def test_account_id_accepts(good: str) -> None:
    assert check_account_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 129, "a b", "a/b", "é", "a\n", "a:b", "a\x00"])
def test_account_id_rejects(bad: str) -> None:
    with pytest.raises(InvalidAccountId):
        check_account_id(bad)


def test_invalid_account_id_is_invalid_argument() -> None:
    assert issubclass(InvalidAccountId, InvalidArgument)


# --- session tokens ------------------------------------------------------------------------


def test_token_round_trip_and_format() -> None:
    clock = FakeClock()
    token, session = tokens(clock).mint("alice@example.org")
    parts = token.split(".")
    assert parts[0] == "v1" and len(parts) == 4
    assert parts[2] == str(session.expires_at_ms)
    assert session.expires_at_ms == int(clock.now * 1000) + 3600 * 1000
    assert tokens(clock).verify(token) == session


def test_token_valid_on_another_frontend_with_same_secret() -> None:
    clock = FakeClock()
    token, _ = tokens(clock).mint("bob")
    assert tokens(FakeClock(clock.now + 1)).verify(token).account_id == "bob"


def test_token_expired() -> None:
    clock = FakeClock()
    t = tokens(clock, ttl=60)
    token, _ = t.mint("bob")
    clock.now += 59.999
    t.verify(token)
    clock.now += 0.001
    with pytest.raises(Unauthenticated, match="expired"):
        t.verify(token)


def test_token_from_other_secret_rejected() -> None:
    clock = FakeClock()
    token, _ = tokens(clock, OTHER_SECRET).mint("bob")
    with pytest.raises(Unauthenticated, match="invalid"):
        tokens(clock).verify(token)


def _swap(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


def test_token_forgeries_rejected() -> None:
    clock = FakeClock()
    t = tokens(clock)
    token, _ = t.mint("bob")
    other, _ = t.mint("mallory")
    forged = [
        _swap(token, 1, other.split(".")[1]),  # account swapped, MAC kept
        _swap(token, 2, str(10**15)),  # expiry extended
        _swap(token, 3, other.split(".")[3]),  # MAC of another token
        _swap(token, 0, "v2"),
        token[:-1] + ("A" if token[-1] != "A" else "B"),
    ]
    for bad in forged:
        with pytest.raises(Unauthenticated):
            t.verify(bad)


@pytest.mark.parametrize(
    "bad",
    ["", "v1", "v1...", "v1.a.b.c", "v1.YWxpY2U.1.", "v1.YWxpY2U.-1.AAAA", "x" * 600, "v1.é.1.a"],
)
def test_token_malformed_rejected(bad: str) -> None:
    with pytest.raises(Unauthenticated):
        tokens(FakeClock()).verify(bad)


def test_token_extra_padding_rejected() -> None:
    clock = FakeClock()
    token, _ = tokens(clock).mint("bob")
    with pytest.raises(Unauthenticated):
        tokens(clock).verify(token + "=")


def test_session_keys_repr_hides_secret() -> None:
    assert "redacted" in repr(SessionKeys.derive(SECRET))


# --- bearer metadata -----------------------------------------------------------------------


def test_bearer_token_extraction() -> None:
    assert bearer_token((("x", "y"), ("authorization", "Bearer abc"))) == "abc"
    assert bearer_token((("authorization", "bearer  abc "),)) == "abc"
    for md in [None, (), (("authorization", "Basic abc"),), (("authorization", "Bearer "),)]:
        with pytest.raises(Unauthenticated, match="missing"):
            bearer_token(md)


# --- challenges ----------------------------------------------------------------------------


ISSUER = issuer_id("fe-1")


def challenges(
    clock: FakeClock, secret: bytes = SECRET, issuer: bytes = ISSUER, max_spent: int = 1000
) -> Challenges:
    return Challenges(
        SessionKeys.derive(secret),
        clock,  # type: ignore[arg-type]
        counter_rng(),  # type: ignore[arg-type]
        issuer,
        max_spent,
    )


def test_challenge_accepted_by_its_issuer_until_expiry() -> None:
    clock = FakeClock()
    c = challenges(clock).issue("alice")
    challenges(clock).verify("alice", c)  # a restarted issuer (same name) still accepts it
    clock.now += CHALLENGE_TTL_S - 0.01
    challenges(clock).verify("alice", c)


def test_challenge_from_another_frontend_refused() -> None:
    clock = FakeClock()
    c = challenges(clock).issue("alice")
    with pytest.raises(ChallengeSpent, match="another frontend"):
        challenges(clock, issuer=issuer_id("fe-2")).verify("alice", c)


def test_challenge_spent_once() -> None:
    clock = FakeClock()
    ch = challenges(clock)
    c = ch.issue("alice")
    ch.verify("alice", c)
    ch.spend(c)
    with pytest.raises(ChallengeSpent, match="already used"):
        ch.verify("alice", c)
    with pytest.raises(ChallengeSpent, match="already used"):
        ch.spend(c)
    other = ch.issue("alice")
    ch.verify("alice", other)  # a fresh challenge is unaffected


def test_spent_challenges_forgotten_only_after_expiry_and_bounded() -> None:
    clock = FakeClock()
    ch = challenges(clock, max_spent=2)
    first, second = ch.issue("alice"), ch.issue("alice")
    ch.spend(first)
    ch.spend(second)
    third = ch.issue("alice")
    with pytest.raises(Unauthenticated, match="too many logins"):
        ch.spend(third)  # full: refuse rather than forget an unexpired spent challenge
    assert ch.spent_count == 2
    clock.now += CHALLENGE_TTL_S
    ch.spend(ch.issue("alice"))  # the two expired ones are forgotten, and refused by verify
    assert ch.spent_count == 1
    with pytest.raises(Unauthenticated, match="expired"):
        ch.verify("alice", first)


def test_challenge_replay_after_expiry_rejected() -> None:
    clock = FakeClock()
    ch = challenges(clock)
    c = ch.issue("alice")
    clock.now += CHALLENGE_TTL_S
    with pytest.raises(Unauthenticated, match="expired"):
        ch.verify("alice", c)


def test_challenge_bound_to_account_and_secret() -> None:
    clock = FakeClock()
    c = challenges(clock).issue("alice")
    with pytest.raises(Unauthenticated):
        challenges(clock).verify("mallory", c)
    with pytest.raises(Unauthenticated):
        challenges(clock, OTHER_SECRET).verify("alice", c)


def test_challenge_tampering_rejected() -> None:
    clock = FakeClock()
    ch = challenges(clock)
    c = ch.issue("alice")
    for bad in [b"", c[:-1], c + b"\x00", bytes([c[0] ^ 1]) + c[1:], c[:5] + b"\xff" + c[6:]]:
        with pytest.raises(Unauthenticated):
            ch.verify("alice", bad)


def test_challenges_are_fresh() -> None:
    ch = challenges(FakeClock())
    assert ch.issue("alice") != ch.issue("alice")


# --- enrollment ----------------------------------------------------------------------------


def test_enrollment_token_checks() -> None:
    secret = b"e" * 32
    good = enrollment_token(secret, "alice")
    assert len(good) == 64
    enrollment = Enrollment(secret)
    enrollment.check("alice", good)
    enrollment.check("alice", good.upper())
    for bad in [
        "",
        good[:-1],
        enrollment_token(secret, "bob"),
        enrollment_token(b"f" * 32, "alice"),
    ]:
        with pytest.raises(Unauthenticated, match="enrollment"):
            enrollment.check("alice", bad)
    Enrollment(None).check("alice", "")  # open enrollment
    assert "e" * 8 not in repr(enrollment)


# --- login with a fake key store -----------------------------------------------------------


def _raw(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_accounts(
    clock: FakeClock, enrollment_secret: bytes | None = None
) -> tuple[Accounts, MemoryKeyStore]:
    keys = SessionKeys.derive(SECRET)
    store = MemoryKeyStore()
    accounts = Accounts(
        Challenges(keys, clock, counter_rng(), ISSUER),  # type: ignore[arg-type]
        SessionTokens(keys, 3600, clock),
        store,
        Enrollment(enrollment_secret),
    )
    return accounts, store


def login(accounts: Accounts, account: str, key: Ed25519PrivateKey, enroll: str = "") -> str:
    challenge = accounts.challenge(account)
    sig = key.sign(LOGIN_CONTEXT + challenge)
    return asyncio.run(accounts.login(account, _raw(key), challenge, sig, enroll)).token


def test_login_binds_key_then_requires_it() -> None:
    clock = FakeClock()
    accounts, store = make_accounts(clock)
    key = Ed25519PrivateKey.generate()
    token = login(accounts, "alice", key)
    assert store.keys["alice"] == _raw(key)
    assert tokens(clock).verify(token).account_id == "alice"
    login(accounts, "alice", key)  # same key again: fine
    with pytest.raises(Unauthenticated, match="another key"):
        login(accounts, "alice", Ed25519PrivateKey.generate())


def test_login_bad_signature_and_wrong_challenge() -> None:
    clock = FakeClock()
    accounts, store = make_accounts(clock)
    key = Ed25519PrivateKey.generate()
    challenge = accounts.challenge("alice")
    raw = _raw(key)
    good = key.sign(LOGIN_CONTEXT + challenge)
    bad_sigs = [key.sign(challenge), bytes([good[0] ^ 1]) + good[1:], b"x"]
    for sig in bad_sigs:
        with pytest.raises(Unauthenticated):
            asyncio.run(accounts.login("alice", raw, challenge, sig, ""))
    other = accounts.challenge("bob")
    with pytest.raises(Unauthenticated):
        asyncio.run(accounts.login("alice", raw, other, key.sign(LOGIN_CONTEXT + other), ""))
    with pytest.raises(InvalidArgument):
        asyncio.run(accounts.login("alice", raw[:31], challenge, b"s" * 64, ""))
    with pytest.raises(InvalidAccountId):
        asyncio.run(accounts.login("a b", raw, challenge, b"s" * 64, ""))
    assert store.keys == {}


def test_replayed_login_refused_and_bad_signature_burns_nothing() -> None:
    clock = FakeClock()
    accounts, _ = make_accounts(clock)
    key = Ed25519PrivateKey.generate()
    challenge = accounts.challenge("alice")
    sig = key.sign(LOGIN_CONTEXT + challenge)
    raw = _raw(key)
    with pytest.raises(Unauthenticated, match="signature"):
        asyncio.run(accounts.login("alice", raw, challenge, bytes([sig[0] ^ 1]) + sig[1:], ""))
    first = asyncio.run(accounts.login("alice", raw, challenge, sig, ""))  # still usable
    assert tokens(clock).verify(first.token).account_id == "alice"
    # The same challenge and signature within the challenge's lifetime: no second session.
    with pytest.raises(ChallengeSpent, match="already used"):
        asyncio.run(accounts.login("alice", raw, challenge, sig, ""))


def test_login_with_expired_challenge_rejected() -> None:
    clock = FakeClock()
    accounts, _ = make_accounts(clock)
    key = Ed25519PrivateKey.generate()
    challenge = accounts.challenge("alice")
    sig = key.sign(LOGIN_CONTEXT + challenge)
    clock.now += CHALLENGE_TTL_S + 1
    with pytest.raises(Unauthenticated, match="expired"):
        asyncio.run(accounts.login("alice", _raw(key), challenge, sig, ""))


def test_login_enrollment_required_on_first_login_only() -> None:
    clock = FakeClock()
    secret = b"s" * 32
    accounts, store = make_accounts(clock, secret)
    key = Ed25519PrivateKey.generate()
    with pytest.raises(Unauthenticated, match="enrollment"):
        login(accounts, "alice", key)
    with pytest.raises(Unauthenticated, match="enrollment"):
        login(accounts, "alice", key, enrollment_token(secret, "bob"))
    assert store.keys == {}
    login(accounts, "alice", key, enrollment_token(secret, "alice"))
    login(accounts, "alice", key)  # bound: no enrollment token needed any more


def test_log_account_tags_are_keyed() -> None:
    """Access logs name accounts by a keyed tag: a guessable id (a phone number) cannot be found
    by hashing candidates, as a plain SHA-256 prefix allowed."""
    import hashlib

    from frontend_chatd.server import account_tag

    keys = SessionKeys.derive(b"s" * 32)
    other = SessionKeys.derive(b"t" * 32)
    tag = account_tag(keys.log_tag_key, "+15551234567")
    assert len(tag) == 12 and tag == account_tag(keys.log_tag_key, "+15551234567")
    assert tag != hashlib.sha256(b"+15551234567").hexdigest()[:12]
    assert tag != account_tag(other.log_tag_key, "+15551234567")
    assert keys.log_tag_key not in (keys.token_key, keys.challenge_key)
    assert account_tag(keys.log_tag_key, "") == "-"


# --- key change and the operator's second key (issue 17) -----------------------------------------


def change_key(
    accounts: Accounts,
    account: str,
    old: Ed25519PrivateKey,
    new: Ed25519PrivateKey,
    *,
    old_signs: Ed25519PrivateKey | None = None,
) -> str:
    challenge = accounts.challenge(account)
    message = CHANGE_KEY_CONTEXT + challenge + _raw(new)
    signature = (old_signs or old).sign(message)
    result = asyncio.run(
        accounts.change_key(account, _raw(old), _raw(new), challenge, signature, new.sign(message))
    )
    return result.token


def test_a_key_change_needs_both_signatures_and_moves_the_binding() -> None:
    clock = FakeClock()
    accounts, store = make_accounts(clock)
    old, new, mallory = (Ed25519PrivateKey.generate() for _ in range(3))
    login(accounts, "alice", old)
    with pytest.raises(Unauthenticated):  # the bound key did not consent
        change_key(accounts, "alice", old, new, old_signs=mallory)
    with pytest.raises(Unauthenticated):  # someone else's key claims to be the bound one
        change_key(accounts, "alice", mallory, new)
    assert store.keys["alice"] == _raw(old)
    token = change_key(accounts, "alice", old, new)
    assert tokens(clock).verify(token).account_id == "alice"
    assert store.keys["alice"] == _raw(new)
    with pytest.raises(Unauthenticated, match="another key"):
        login(accounts, "alice", old)
    login(accounts, "alice", new)
    change_key(accounts, "alice", old, new)  # a retry whose answer was lost: answered again
    assert store.keys["alice"] == _raw(new)


def test_an_operator_added_key_logs_in_but_cannot_change_keys() -> None:
    """After a key loss the operator binds the new device's key beside the old one: both log
    in (the old device can still reach the vault and cancel there); only the first key may
    change keys, so the added one cannot shut the old device out."""
    clock = FakeClock()
    accounts, store = make_accounts(clock)
    old, added, third = (Ed25519PrivateKey.generate() for _ in range(3))
    login(accounts, "alice", old)
    store.keys["alice"] = encode_binding([_raw(old), _raw(added)])
    login(accounts, "alice", old)
    login(accounts, "alice", added)
    with pytest.raises(Unauthenticated):
        login(accounts, "alice", third)
    with pytest.raises(Unauthenticated):
        change_key(accounts, "alice", added, third)
    change_key(accounts, "alice", old, third)
    assert store.keys["alice"] == _raw(third)
