"""etcd locked down: TLS only, a client certificate required, auth on with roles per user; and
`bootstrap_auth` run again on a cluster where auth is already on."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
from etcd_fixtures import ETCDCTL_TIMEOUTS, SecureEtcd, secure_etcd_factory  # noqa: F401 - the fixture

from bkv.etcd import rpc_pb2, rpc_pb2_grpc
from etcd_client import (
    AuthPlan,
    EtcdClient,
    EtcdPermissionDenied,
    EtcdUnavailable,
    Get,
    Permission,
    Put,
    bootstrap_auth,
    error_from_rpc,
    prefix_end,
)
from etcd_client.types import Compare

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

T = TypeVar("T")
ROLES = {
    "writer": (Permission(b"/w/", prefix_end(b"/w/"), "readwrite"),),
    "reader": (
        Permission(b"/w/", prefix_end(b"/w/"), "read"),
        Permission(b"/one-key", b"", "read"),
    ),
}
USERS = {"alice": ("writer",), "bob": ("reader",)}


@pytest.fixture(scope="module")
def etcd() -> Iterator[SecureEtcd]:
    with SecureEtcd.running(ROLES, USERS) as member:
        yield member


def run(etcd: SecureEtcd, user: str, body: Callable[[EtcdClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with EtcdClient(etcd.config_for(user)) as client:
            return await body(client)

    return asyncio.run(main())


def test_auth_is_on_and_roles_apply(etcd: SecureEtcd) -> None:
    async def alice(c: EtcdClient) -> None:
        await c.put(b"/w/x", b"v")
        assert (await c.txn([Compare.version_is(b"/w/y", 0)], [Put(b"/w/y", b"v")])).succeeded

    run(etcd, "alice", alice)

    async def bob(c: EtcdClient) -> None:
        kv = await c.get(b"/w/x")
        assert kv is not None and kv.value == b"v"
        with pytest.raises(EtcdPermissionDenied):
            await c.put(b"/w/x", b"bob was here")  # read-only role
        with pytest.raises(EtcdPermissionDenied):
            await c.get(b"/elsewhere")  # outside every permission
        with pytest.raises(EtcdPermissionDenied):
            await c.range(b"/one-key", range_end=b"/one-kez")  # only that one key
        assert await c.get(b"/one-key") is None
        with pytest.raises(EtcdPermissionDenied):
            await c.txn([Compare.version_is(b"/w/x", 1)], [Put(b"/w/x", b"no")], [Get(b"/w/x")])
        with pytest.raises(EtcdPermissionDenied):
            await c.delete(b"/w/x")
        with pytest.raises(EtcdPermissionDenied):
            await c.user_add("mallory")  # only root administers auth
        with pytest.raises(EtcdPermissionDenied):
            async with aclosing(c.watch(b"/elsewhere")) as events:
                async for _ in events:
                    raise AssertionError("a denied watch yields nothing")

    run(etcd, "bob", bob)
    assert run(etcd, "alice", lambda c: c.get(b"/w/x")).value == b"v"  # type: ignore[union-attr]


def test_a_certificate_of_an_unknown_user_may_do_nothing(etcd: SecureEtcd) -> None:
    async def body(c: EtcdClient) -> None:
        with pytest.raises(EtcdPermissionDenied):
            await c.get(b"/w/x")
        with pytest.raises(EtcdPermissionDenied):
            await c.put(b"/w/x", b"v")

    run(etcd, "nobody", body)
    result = etcd.ctl("nobody", "get", "/w/x")
    assert result.returncode != 0 and "permission denied" in result.stderr


def raw_range(target: str, credentials: grpc.ChannelCredentials | None) -> Any:
    """A Range through the generated stub on a channel of our choosing; the error, mapped."""

    async def main() -> Any:
        if credentials is None:
            channel = grpc.aio.insecure_channel(target)
        else:
            options = (("grpc.ssl_target_name_override", "bkv-etcd"),)
            channel = grpc.aio.secure_channel(target, credentials, options)
        async with channel:
            try:
                return await rpc_pb2_grpc.KVStub(channel).Range(
                    rpc_pb2.RangeRequest(key=b"/w/x"), timeout=2
                )
            except grpc.aio.AioRpcError as e:
                return error_from_rpc(e)

    return asyncio.run(main())


def test_a_connection_without_a_client_certificate_fails(etcd: SecureEtcd) -> None:
    ca = etcd.ca_path.read_bytes()
    error = raw_range(etcd.endpoint, grpc.ssl_channel_credentials(root_certificates=ca))
    assert isinstance(error, EtcdUnavailable)  # the TLS handshake is refused
    cert, key = etcd.user_cert("alice")
    good = grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())
    assert raw_range(etcd.endpoint, good).count == 1  # the same channel with alice's certificate


def test_a_plaintext_connection_fails(etcd: SecureEtcd) -> None:
    assert isinstance(raw_range(etcd.endpoint, None), EtcdUnavailable)
    # etcdctl without any TLS option speaks plaintext: refused too.
    result = subprocess.run(
        ["etcdctl", f"--endpoints=http://{etcd.endpoint}", *ETCDCTL_TIMEOUTS, "get", "/w/x"],
        env=dict(os.environ, ETCDCTL_API="3"),
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode != 0 and "/w/x" not in result.stdout


def test_a_server_certificate_without_the_tls_name_is_refused(etcd: SecureEtcd) -> None:
    cert, key = etcd.user_cert("alice")
    creds = grpc.ssl_channel_credentials(
        etcd.ca_path.read_bytes(), key.read_bytes(), cert.read_bytes()
    )

    async def main() -> Any:
        options = (("grpc.ssl_target_name_override", "not-bkv-etcd"),)
        async with grpc.aio.secure_channel(etcd.endpoint, creds, options) as channel:
            try:
                await rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"k"), timeout=2)
            except grpc.aio.AioRpcError as e:
                return error_from_rpc(e)
        return None

    assert isinstance(asyncio.run(main()), EtcdUnavailable)


def test_bootstrap_auth_twice_changes_nothing(etcd: SecureEtcd) -> None:
    before = {role: etcd.ctl("root", "role", "get", role).stdout for role in ROLES}
    etcd.bootstrap_again()
    etcd.bootstrap_again()
    assert {role: etcd.ctl("root", "role", "get", role).stdout for role in ROLES} == before
    users = etcd.ctl("root", "user", "list").stdout.split()
    assert sorted(users) == ["alice", "bob", "root"]
    assert "reader" in etcd.ctl("root", "user", "get", "bob").stdout


def test_bootstrap_adds_only_what_is_missing(secure_etcd_factory: Any) -> None:  # noqa: F811
    member = secure_etcd_factory(ROLES, USERS)
    wider = AuthPlan(
        roles={**ROLES, "ops": (Permission(b"/ops/", prefix_end(b"/ops/"), "read"),)},
        users={
            "root": ("root",),
            "alice": ("writer", "ops"),
            "bob": ("reader",),
            "carol": ("ops",),
        },
    )

    async def body(c: EtcdClient) -> None:
        await bootstrap_auth(c, wider)
        assert set(await c.user_get("alice")) == {"writer", "ops"}
        assert await c.user_get("carol") == ("ops",)
        assert await c.role_get("ops") == (Permission(b"/ops/", b"/ops0", "read"),)
        assert set(await c.role_get("reader")) == set(ROLES["reader"])

    run(member, "root", body)

    async def carol(c: EtcdClient) -> None:
        assert await c.get(b"/ops/x") is None
        with pytest.raises(EtcdPermissionDenied):
            await c.put(b"/ops/x", b"v")

    run(member, "carol", carol)
