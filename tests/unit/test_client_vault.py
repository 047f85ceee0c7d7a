"""VaultClient / AsyncVaultClient over fake frontends (no sockets): sessions, failover, retries."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from inproc_cluster import InProcessVault
from test_client_errors import FakeRpcError
from test_client_protocol import PASSWORD

from bkv.v1 import frontend_pb2
from client import AsyncVaultClient, VaultClient
from client.config import ClientConfig, load_config
from client.errors import (
    ChallengeRefused,
    ConfigError,
    InvalidPassword,
    ProtocolError,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from client.retry import RetryPolicy
from client.session import AccountKey, Session
from vault_node.server import status_for, trailers_for
from vault_node.service import ServiceError
from vault_protocol.ksf import IdentityKsf

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

FE = ("127.0.0.1:40001", "127.0.0.1:40002")


class FakeFrontends:
    """Frontends in memory: TOFU account keys, session tokens, Relay into an InProcessVault."""

    def __init__(self, vault: InProcessVault) -> None:
        self.vault = vault
        self.down: set[str] = set()  # no connection: ready() is False
        self.unavailable: dict[str, int] = {}  # address -> how many calls answer UNAVAILABLE
        self.rate_limited = False
        self.limited_relays: set[int] = set()  # numbers (from 1) of Relay calls to throttle
        self.relays = 0
        self.accounts: dict[str, bytes] = {}
        self.tokens: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.next_token = 0
        self.spent_logins = 0  # how many Logins to refuse as a spent challenge
        self.closed = False

    # Connector protocol
    def ready(self, address: str, timeout: float) -> bool:
        return address not in self.down

    def stub(self, address: str) -> Any:
        fe = self

        class Stub:
            def __getattr__(self, method: str) -> Any:
                def call(request: Any, timeout: float, metadata: Any) -> Any:
                    assert timeout > 0
                    return fe.handle(address, method, request, metadata)

                return call

        return Stub()

    def close(self) -> None:
        self.closed = True

    def handle(self, address: str, method: str, request: Any, metadata: Any) -> Any:
        self.calls.append((address, method))
        if self.unavailable.get(address, 0) > 0:
            self.unavailable[address] -= 1
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE)
        if method == "Relay":
            self.relays += 1
        if self.rate_limited or (method == "Relay" and self.relays in self.limited_relays):
            raise FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after-ms", "500"),))
        if method == "GetChallenge":
            return frontend_pb2.ChallengeReply(challenge=b"c" * 32)
        if method == "Login" and self.spent_logins > 0:
            self.spent_logins -= 1
            raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, (("bkv-new-challenge", "1"),))
        if method == "Login":
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            known = self.accounts.setdefault(request.account_id, request.public_key)
            if known != request.public_key:
                raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)
            Ed25519PublicKey.from_public_bytes(known).verify(
                request.signature, b"bkv-v1 login" + request.challenge
            )
            self.next_token += 1
            token = f"tok-{self.next_token}"
            self.tokens[token] = request.account_id
            return frontend_pb2.LoginReply(session_token=token, expires_at_ms=2**62)
        if method == "ChangeKey":
            return self._change_key(request)
        if method == "Relay":
            header = dict(metadata or ()).get("authorization", "")
            account = self.tokens.get(header.removeprefix("Bearer "))
            if account is None:
                raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)
            try:
                sealed = self.vault.handle(account, request.envelope)
            except ServiceError as exc:  # passed on as a frontend passes a node's status on
                code, details = status_for(exc)
                raise FakeRpcError(code, trailers_for(exc), details) from None
            return frontend_pb2.RelayReply(sealed_response=sealed)
        raise AssertionError(method)

    def _change_key(self, request: Any) -> frontend_pb2.LoginReply:
        """As frontend_chatd.accounts.Accounts.change_key: both keys sign; CAS on the binding."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        message = b"bkv-v1 change key" + request.challenge + request.new_public_key
        Ed25519PublicKey.from_public_bytes(request.new_public_key).verify(
            request.new_signature, message
        )
        bound = self.accounts.get(request.account_id)
        if bound != request.new_public_key:
            if bound != request.public_key:
                raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)
            Ed25519PublicKey.from_public_bytes(bound).verify(request.signature, message)
            self.accounts[request.account_id] = request.new_public_key
        self.next_token += 1
        token = f"tok-{self.next_token}"
        self.tokens[token] = request.account_id
        return frontend_pb2.LoginReply(session_token=token, expires_at_ms=2**62)


class AsyncFakeFrontends:
    def __init__(self, sync: FakeFrontends) -> None:
        self.sync = sync

    async def ready(self, address: str, timeout: float) -> bool:
        return self.sync.ready(address, timeout)

    def stub(self, address: str) -> Any:
        inner = self.sync.stub(address)

        class Stub:
            def __getattr__(self, method: str) -> Any:
                async def call(request: Any, timeout: float, metadata: Any) -> Any:
                    return getattr(inner, method)(request, timeout, metadata)

                return call

        return Stub()

    async def close(self) -> None:
        self.sync.close()


@pytest.fixture
def vault() -> InProcessVault:
    return InProcessVault()


@pytest.fixture
def config(tmp_path: Path, vault: InProcessVault) -> ClientConfig:
    pub = tmp_path / "fleet.pub"
    pub.write_bytes(vault.fleet.to_pem())
    path = tmp_path / "client.toml"
    path.write_text(
        f'[cluster]\nfrontends = ["{FE[0]}", "{FE[1]}"]\ninsecure = true\n'
        f'fleet_public_key = "fleet.pub"\nfleet_id = "{vault.fleet.fleet_id.hex()}"\n'
        '[client]\nksf = "fast"\n'
    )
    return load_config(path)


@pytest.fixture
def frontends(vault: InProcessVault) -> FakeFrontends:
    return FakeFrontends(vault)


class Sleeps:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s

    async def asleep(self, s: float) -> None:
        self.sleep(s)


def _client(config: ClientConfig, frontends: FakeFrontends, **kw: Any) -> VaultClient:
    t = kw.pop("time", Sleeps())
    return VaultClient(
        config,
        account_id=kw.pop("account_id", "alice"),
        ksf=IdentityKsf(),
        connector=frontends,
        clock=t.clock,
        sleep=t.sleep,
        uniform=lambda: 0.5,
        **kw,
    )


def test_account_register_recover_status_delete(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    with _client(config, frontends) as client:
        assert client.create_account() == "alice"
        key = client.register(PASSWORD, max_attempts=4)
        assert client.status().guesses_left == 4
        assert client.recover(PASSWORD) == key
        with pytest.raises(InvalidPassword) as info:
            client.recover("not-it")
        assert info.value.guesses_left == 3
        assert client.delete() is True
        assert client.status().registered is False
    assert frontends.closed
    assert [m for _, m in frontends.calls].count("Login") == 1  # one session, reused


def test_key_file_is_0600_and_the_key_never_shows(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    with _client(config, frontends) as client:
        client.create_account()
        path = client.account.path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path.parent == Path(config.source).parent
        assert "PRIVATE" not in repr(client.account) and "PRIVATE" not in repr(client)


def test_a_fresh_account_id_is_made_when_none_is_given(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    with _client(config, frontends, account_id=None) as client:
        made = client.create_account()
        assert made.startswith("acct-") and client.account_id == made


def test_failover_to_the_next_frontend_on_unavailable(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    frontends.unavailable[FE[0]] = 100
    with _client(config, frontends) as client:
        client.create_account()
        client.status()
        # After the failover the second frontend is preferred: no more calls to the first.
        before = len([a for a, _ in frontends.calls if a == FE[0]])
        client.status()
        assert len([a for a, _ in frontends.calls if a == FE[0]]) == before


def test_a_frontend_that_cannot_connect_is_skipped_without_sending(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    frontends.down.add(FE[0])
    with _client(config, frontends) as client:
        client.create_account()
        client.register(PASSWORD)
        assert {a for a, _ in frontends.calls} == {FE[1]}


def test_all_frontends_down_is_unavailable_and_no_raw_rpc_error(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    frontends.down.update(FE)
    with _client(config, frontends) as client:
        with pytest.raises(Unavailable) as info:
            client.create_account()
        assert not isinstance(info.value, grpc.RpcError)


def test_recover_start_is_sent_at_most_twice(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    with _client(config, frontends) as client:
        client.create_account()
        client.register(PASSWORD)
        frontends.calls.clear()
        frontends.unavailable = {FE[0]: 100, FE[1]: 100}
        with pytest.raises(Unavailable):
            client.recover(PASSWORD)
        assert [m for _, m in frontends.calls] == ["Relay", "Relay"]


def test_other_steps_are_retried_a_few_times(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    t = Sleeps()
    with _client(
        config, frontends, time=t, retry=RetryPolicy(max_attempts=4, base_delay_s=0.05)
    ) as client:
        client.create_account()
        frontends.calls.clear()
        frontends.unavailable = {FE[0]: 100, FE[1]: 100}
        with pytest.raises(Unavailable):
            client.status()
        assert [m for _, m in frontends.calls] == ["Relay"] * 4
        assert t.slept == [0.025, 0.05, 0.1]


def test_unauthenticated_relay_logs_in_once_more(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    with _client(config, frontends) as client:
        client.create_account()
        frontends.tokens.clear()  # every session expires on the frontend's side
        client.status()
        assert [m for _, m in frontends.calls].count("Login") == 2


@pytest.mark.parametrize("refused", [1, 2, 3])
def test_a_spent_login_challenge_logs_in_again_with_a_fresh_one(
    config: ClientConfig, frontends: FakeFrontends, refused: int
) -> None:
    frontends.spent_logins = refused
    with _client(config, frontends) as client:
        if refused < 3:
            client.create_account()
            client.status()
        else:  # every pair refused: the caller sees it, as a refused challenge
            with pytest.raises(ChallengeRefused):
                client.create_account()
    methods = [m for _, m in frontends.calls]
    pairs = min(refused + 1, 3)
    assert methods.count("GetChallenge") == pairs and methods.count("Login") == pairs


def test_a_mismatched_account_key_is_unauthenticated(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    with _client(config, frontends) as client:
        client.create_account()
    Path(client.key_dir, "alice.account.key").unlink()
    with _client(config, frontends) as other:
        with pytest.raises(Unauthenticated):
            other.create_account("alice")


def test_rate_limited_is_not_retried(config: ClientConfig, frontends: FakeFrontends) -> None:
    with _client(config, frontends) as client:
        client.create_account()
        frontends.rate_limited = True
        frontends.calls.clear()
        with pytest.raises(RateLimited) as info:
            client.status()
        assert info.value.retry_after == 0.5 and len(frontends.calls) == 1


def test_a_throttled_recovery_finish_is_waited_out_so_no_guess_is_wasted(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    t = Sleeps()
    with _client(config, frontends, time=t) as client:
        client.create_account()
        key = client.register(PASSWORD, max_attempts=4)
        frontends.relays = 0
        frontends.limited_relays = {2, 3}  # the finish of the recovery, twice
        assert client.recover(PASSWORD) == key
        assert frontends.relays == 4 and t.slept == [0.55, 0.55]  # retry_after + jitter
        assert client.status().guesses_left == 4  # the counted attempt was redeemed


def test_a_throttled_recovery_start_goes_back_to_the_caller(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    t = Sleeps()
    with _client(config, frontends, time=t) as client:
        client.create_account()
        client.register(PASSWORD)
        frontends.relays = 0
        frontends.limited_relays = {1}
        with pytest.raises(RateLimited):
            client.recover(PASSWORD)
        assert frontends.relays == 1 and t.slept == []


def test_session_refreshes_before_expiry() -> None:
    now = [0]
    s = Session(clock_ms=lambda: now[0])
    s.store(frontend_pb2.LoginReply(session_token="secret-token", expires_at_ms=100_000))
    assert s.token() == "secret-token"
    assert "secret-token" not in repr(s)
    now[0] = 95_000  # within 10 % of the lifetime
    assert s.token() is None


def test_wrong_fleet_pin_is_a_config_error(config: ClientConfig, frontends: FakeFrontends) -> None:
    bad = config.with_overrides(fleet_id="00" * 16)
    with _client(bad, frontends) as client:
        client.create_account()
        with pytest.raises(ConfigError):
            client.status()


def test_closed_client_refuses_calls(config: ClientConfig, frontends: FakeFrontends) -> None:
    client = _client(config, frontends)
    client.create_account(login=False)
    client.close()
    with pytest.raises(ProtocolError):
        client.login()


def test_password_never_logged_or_shown(
    config: ClientConfig,
    frontends: FakeFrontends,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    with _client(config, frontends) as client:
        client.create_account()
        key = client.register(PASSWORD)
        with pytest.raises(InvalidPassword) as wrong:
            client.recover(PASSWORD + "x")
    out = capsys.readouterr()
    blob = caplog.text + out.out + out.err + repr(wrong.value) + str(wrong.value) + repr(key)
    assert PASSWORD not in blob and bytes(key).hex() not in blob


def _async_client(config: ClientConfig, frontends: FakeFrontends, t: Sleeps) -> AsyncVaultClient:
    return AsyncVaultClient(
        config,
        account_id="bob",
        ksf=IdentityKsf(),
        connector=AsyncFakeFrontends(frontends),
        clock=t.clock,
        sleep=t.asleep,
        uniform=lambda: 0.5,
    )


def test_async_client_round_trip(config: ClientConfig, frontends: FakeFrontends) -> None:
    t = Sleeps()

    async def go() -> None:
        async with _async_client(config, frontends, t) as client:
            await client.create_account()
            key = await client.register(PASSWORD, max_attempts=3)
            assert await client.recover(PASSWORD) == key
            with pytest.raises(InvalidPassword):
                await client.recover("nope")
            s = await client.status()
            assert (s.registered, s.guesses_left, s.locked) == (True, 2, False)
            frontends.unavailable = {FE[0]: 100, FE[1]: 100}
            frontends.calls.clear()
            with pytest.raises(Unavailable):
                await client.recover(PASSWORD)
            assert len(frontends.calls) == 2  # at most one retry of the guess-counting step
            frontends.unavailable = {}
            frontends.relays = 0
            frontends.limited_relays = {2}  # the recovery's finish is throttled once
            assert await client.recover(PASSWORD) == key
            assert frontends.relays == 3 and t.slept[-1] == 0.55
            assert await asyncio.to_thread(lambda: True)

    asyncio.run(go())
    assert frontends.closed


class ThreadRecordingKsf(IdentityKsf):
    def __init__(self) -> None:
        self.threads: list[int] = []

    def stretch(self, data: bytes) -> bytes:
        self.threads.append(threading.get_ident())
        return super().stretch(data)


def test_async_client_never_runs_the_ksf_on_the_event_loop(
    config: ClientConfig, frontends: FakeFrontends
) -> None:
    ksf = ThreadRecordingKsf()

    async def go() -> int:
        async with AsyncVaultClient(
            config, account_id="carol", ksf=ksf, connector=AsyncFakeFrontends(frontends)
        ) as client:
            await client.create_account()
            key = await client.register(PASSWORD)
            assert await client.recover(PASSWORD) == key
            with pytest.raises(InvalidPassword):
                await client.recover("nope")
        return threading.get_ident()

    loop_thread = asyncio.run(go())
    assert len(ksf.threads) == 3 and loop_thread not in ksf.threads


def test_account_key_load_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    from client.errors import BadInput

    key = AccountKey.create(tmp_path, "carol")
    os.chmod(key.path, 0o644)
    with pytest.raises(BadInput, match="readable by others"):
        AccountKey.load(tmp_path, "carol")
    with pytest.raises(BadInput):
        AccountKey.create(tmp_path, "carol")  # never overwrites
    with pytest.raises(BadInput):
        AccountKey.create(tmp_path, "../escape")


class LossyFrontends(FakeFrontends):
    """Relays follow `script`: "lost" = relayed (the vault counts it), the answer lost;
    "unauth" = the session expired, refused before relaying. Then behaves normally."""

    def __init__(self, vault: InProcessVault) -> None:
        super().__init__(vault)
        self.script: list[str] = []
        self.reached = 0

    def handle(self, address: str, method: str, request: Any, metadata: Any) -> Any:
        if method == "Relay" and self.script:
            action = self.script.pop(0)
            if action == "unauth":
                self.tokens.clear()
                raise FakeRpcError(grpc.StatusCode.UNAUTHENTICATED)
            super().handle(address, method, request, metadata)
            self.reached += 1
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, (), "connection reset")
        return super().handle(address, method, request, metadata)


def test_a_fresh_login_gives_the_guess_step_no_new_retry(
    config: ClientConfig, vault: InProcessVault
) -> None:
    """The re-review's sequence: counted and lost, session refused, re-login: the step had its one
    retry already, so one user attempt reaches the vault at most twice (sync and asyncio)."""
    frontends = LossyFrontends(vault)
    with _client(config, frontends) as client:
        client.create_account()
        client.register(PASSWORD, max_attempts=10)
        frontends.script = ["lost", "unauth", "lost", "lost"]
        with pytest.raises(Unavailable):
            client.recover(PASSWORD)
        assert frontends.reached == 2 and client.status().guesses_left == 8
    t = Sleeps()

    async def go() -> None:
        async with _async_client(config, frontends, t) as aclient:
            await aclient.create_account()
            await aclient.register(PASSWORD, max_attempts=10)
            frontends.reached = 0
            frontends.script = ["lost", "unauth", "lost", "lost"]
            with pytest.raises(Unavailable):
                await aclient.recover(PASSWORD)
            assert frontends.reached == 2 and (await aclient.status()).guesses_left == 8

    asyncio.run(go())
