"""A locked-down etcd for tests: one member with TLS and client-certificate auth, auth on.

    with SecureEtcd.running(roles={"reader": (Permission(b"/p/", prefix_end(b"/p/"), "read"),)},
                            users={"alice": ("reader",)}) as etcd:
        client = EtcdClient(etcd.config_for("alice"))   # inside the event loop
        etcd.ctl("root", "get", "/p/x")
        etcd.kill(); etcd.start()                         # SIGKILL, restart on its data

or the `secure_etcd_factory` fixture (import it into the test module), which stops every member
it made at the end of the test. The member listens on free loopback ports, in a temp dir of its
own, with `https://` client and peer URLs, `--client-cert-auth` and `--peer-client-cert-auth`
against a test CA, `--unsafe-no-fsync` and a zap log file; `bootstrap_auth` runs with the root
identity before the helper is handed out, so auth is ON. `config_for(user)` issues a client
certificate with CN `user` for any name (one that etcd does not know is how a test gets an
unknown identity). etcd is always stopped by its PID and the directory removed, also when a
test fails. Health is waited for by polling with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.cluster import free_ports
from deploy.pki import Issued, issue_client, issue_server, make_ca, write_private
from etcd_client import AuthPlan, EtcdClient, EtcdClientConfig, EtcdTls, bootstrap_auth
from etcd_client.admin import ROOT
from etcd_client.types import Permission

SERVER_NAME = "bkv-etcd"  # the SAN of the member certificate, checked by EtcdClient
ETCDCTL_TIMEOUTS = ("--dial-timeout=1s", "--command-timeout=2s")  # PLATFORM: defaults hang
HEALTH_TIMEOUT_S = 20.0


class SecureEtcd:
    """One etcd 3.4 member with TLS on both ports, client-certificate auth and auth enabled."""

    def __init__(
        self,
        roles: Mapping[str, tuple[Permission, ...]] | None = None,
        users: Mapping[str, tuple[str, ...]] | None = None,
        *,
        name: str = "bkv-test",
    ) -> None:
        """Prepare (not start) a member; `users` (besides root) and `roles` form the auth plan."""
        self.plan = AuthPlan(roles=dict(roles or {}), users={ROOT: (ROOT,), **(users or {})})
        self.plan.validate()
        self.name = name
        self.client_port, self.peer_port = free_ports("127.0.0.1", 2)
        self.proc: subprocess.Popen[bytes] | None = None
        self._now = dt.datetime.now(dt.UTC)
        self._ca: Issued = make_ca("BKV etcd test CA", now=self._now)
        self.dir = Path(tempfile.mkdtemp(prefix="bkv-etcd-"))
        self.pki = self.dir / "pki"
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.ca_path = self.pki / "etcd-ca.pem"
        try:
            self.pki.mkdir(mode=0o700)
            self.ca_path.write_bytes(_pem(self._ca))
            # As in production: one CA signs the member and the users, and the member
            # certificate carries the one TLS name clients check (SAN "bkv-etcd").
            member = issue_server(self._ca, SERVER_NAME, now=self._now)
            self._member = self._write("member", member)
            # One member never dials a peer: a serverAuth certificate is enough on that port.
            self._peer = self._write("peer", issue_server(self._ca, f"{name}-peer", now=self._now))
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    # --- certificates --------------------------------------------------------------------

    def _write(self, stem: str, issued: Issued) -> tuple[Path, Path]:
        """Write `issued` as pki/<stem>.pem and pki/<stem>.key (0600), once."""
        cert, key = self.pki / f"{stem}.pem", self.pki / f"{stem}.key"
        if not cert.exists():
            cert.write_bytes(_pem(issued))
            write_private(key, _key_pem(issued))
        return cert, key

    def user_cert(self, user: str) -> tuple[Path, Path]:
        """(certificate, key) of a client certificate with CN `user` (made on first use)."""
        cert, key = self.pki / f"user-{user}.pem", self.pki / f"user-{user}.key"
        if not cert.exists():
            self._write(f"user-{user}", issue_client(self._ca, user, now=self._now))
        return cert, key

    # --- what tests use ------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """host:port of the member's client URL."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The member's client URL (https)."""
        return f"https://{self.endpoint}"

    def tls_for(self, user: str) -> EtcdTls:
        """The TLS identity of etcd user `user`."""
        cert, key = self.user_cert(user)
        return EtcdTls(ca=str(self.ca_path), cert=str(cert), key=str(key), server_name=SERVER_NAME)

    def config_for(self, user: str, *, call_timeout_s: float = 2.0) -> EtcdClientConfig:
        """An EtcdClientConfig that connects as `user`."""
        return EtcdClientConfig(
            endpoints=(self.endpoint,), tls=self.tls_for(user), call_timeout_s=call_timeout_s
        )

    def ctl(
        self, user: str, *args: str, timeout_s: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the system etcdctl (v3 API) as `user`; never raises on a non-zero exit."""
        cert, key = self.user_cert(user)
        return subprocess.run(
            [
                "etcdctl",
                f"--endpoints={self.url}",
                f"--cacert={self.ca_path}",
                f"--cert={cert}",
                f"--key={key}",
                *ETCDCTL_TIMEOUTS,
                *args,
            ],
            env=dict(os.environ, ETCDCTL_API="3"),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the member (on its data dir if it ran before) and wait until it answers."""
        if self.proc is not None and self.proc.poll() is None:
            raise AssertionError("etcd is already running")
        member_cert, member_key = self._member
        peer_cert, peer_key = self._peer
        peer_url = f"https://127.0.0.1:{self.peer_port}"
        fresh = not self.data_dir.exists()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.time():.3f}\n".encode())
        self.proc = subprocess.Popen(
            [
                "etcd",
                f"--name={self.name}",
                f"--data-dir={self.data_dir}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster={self.name}={peer_url}",
                "--initial-cluster-state=new",
                f"--cert-file={member_cert}",
                f"--key-file={member_key}",
                f"--trusted-ca-file={self.ca_path}",
                "--client-cert-auth",
                f"--peer-cert-file={peer_cert}",
                f"--peer-key-file={peer_key}",
                f"--peer-trusted-ca-file={self.ca_path}",
                "--peer-client-cert-auth",
                "--unsafe-no-fsync",
                "--logger=zap",
                f"--log-outputs={self.log_path}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self.wait_healthy()
            if fresh:
                asyncio.run(self._bootstrap())
        except BaseException:
            self.kill()
            raise

    async def _bootstrap(self) -> None:
        """Apply the auth plan as root (and enable auth)."""
        async with EtcdClient(self.config_for(ROOT)) as client:
            await bootstrap_auth(client, self.plan)

    def bootstrap_again(self) -> None:
        """Run `bootstrap_auth` with the plan once more (auth is on by now)."""
        asyncio.run(self._bootstrap())

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        """Poll `etcdctl endpoint health` (as root) until it succeeds; fail if etcd exits."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"etcd exited; log tail:\n{self.log_tail()}")
            if self.ctl(ROOT, "endpoint", "health").returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd not healthy in {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the member and wait until its PID is gone (PLATFORM: restarting at once on
        the same data dir sometimes left it silently dead)."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the member and wait for it (SIGKILL after 10 s)."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        """Send `sig` to our etcd child (by its PID) and reap it."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, sig)  # our own child, by its PID
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.proc = None

    def close(self) -> None:
        """Stop the member and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of etcd's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        roles: Mapping[str, tuple[Permission, ...]] | None = None,
        users: Mapping[str, tuple[str, ...]] | None = None,
    ) -> Iterator[SecureEtcd]:
        """A started, bootstrapped member, closed (stopped, directory removed) on exit."""
        etcd = cls(roles, users)
        try:
            etcd.start()
            yield etcd
        finally:
            etcd.close()


def _pem(issued: Issued) -> bytes:
    """The certificate, PEM."""
    return issued.cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(issued: Issued) -> bytes:
    """The private key, PEM (PKCS#8, unencrypted)."""
    return issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def secure_etcd_factory() -> Iterator[Callable[..., SecureEtcd]]:
    """`make(roles=..., users=...)` -> a started SecureEtcd; every one is closed afterwards."""
    made: list[SecureEtcd] = []

    def make(
        roles: Mapping[str, tuple[Permission, ...]] | None = None,
        users: Mapping[str, tuple[str, ...]] | None = None,
    ) -> SecureEtcd:
        """A started member whose plan has root, `roles` and `users`."""
        etcd = SecureEtcd(roles, users)
        made.append(etcd)
        etcd.start()
        return etcd

    try:
        yield make
    finally:
        for etcd in made:
            etcd.close()
