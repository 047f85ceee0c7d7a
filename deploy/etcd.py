"""etcd members: the command line of one member, fast health and leader probes, and `etcdctl`.

etcd is locked down on every port: clients reach it only over TLS with a client certificate of
the etcd CA (`--client-cert-auth`; with auth on, etcd takes the certificate's CN as the user),
and members talk to each other only over TLS with certificates of the separate etcd peer CA
(`--peer-client-cert-auth`). There is no plaintext listener (no `--listen-metrics-urls`).

Probes go through etcd's HTTPS endpoints (`/health`, and `/metrics` for leadership and the
revision) with short timeouts, an SSL context that trusts the etcd CA, checks the name
`bkv-etcd` and presents the root client certificate: no etcd client library in the launcher's
hot loops and no `etcdctl` there (about 30 ms of process start per call). The v3 JSON gateway is
off (see `etcd_argv`): keys are read and written with `etcdctl` (`etcdctl_argv`) or an etcd
client over gRPC.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import EtcdctlMissing
from deploy.etcd_auth import ROOT_USER as ROOT_USER  # the admin: operators, the launcher
from deploy.pki import ETCD_TLS_NAME, Pki
from deploy.topology import EtcdMember, Options, Topology


def client_url(host: str, member: EtcdMember) -> str:
    return f"https://{host}:{member.client_port}"


def peer_url(host: str, member: EtcdMember) -> str:
    return f"https://{host}:{member.peer_port}"


def advertised_peer_url(host: str, member: EtcdMember) -> str:
    """The peer URL the other members dial: a proxy's port when the member has one."""
    return f"https://{host}:{member.advertise_peer_port or member.peer_port}"


def endpoints(host: str, members: Sequence[EtcdMember]) -> list[str]:
    """`host:port` client endpoints, the form node.toml and frontend.toml take."""
    return [f"{host}:{m.client_port}" for m in members]


def topology_endpoints(topology: Topology) -> list[str]:
    """Every member's `host:port` client endpoint, each on its data centre's host."""
    return [f"{topology.host_of(m.dc)}:{m.client_port}" for m in topology.etcd]


def member_hosts(topology: Topology) -> dict[str, str]:
    """Member name -> the host it binds and advertises (its data centre's)."""
    return {m.name: topology.host_of(m.dc) for m in topology.etcd}


def etcd_argv(
    member: EtcdMember,
    members: Sequence[EtcdMember],
    *,
    host: str,
    options: Options,
    pki: Pki,
    data_dir: Path,
    log_file: Path,
    fsync: bool,
    etcd_binary: str = "etcd",
    hosts: Mapping[str, str] | None = None,
) -> list[str]:
    """The command line of `member` in a cluster of `members`, its certificates in `pki`.

    `hosts` maps member names to their own host (default: `host` for all). A member with an
    `advertise_peer_port` listens on its `peer_port` but advertises the proxy's port, and every
    member's `--initial-cluster` names that port (member ids are derived from these URLs, so
    all members must agree on them).

    `--initial-cluster-state new` is ignored by etcd once the data dir holds a member, so the
    same command restarts a member on its data.
    """

    def host_of(m: EtcdMember) -> str:
        return host if hosts is None else hosts.get(m.name, host)

    own = host_of(member)
    initial = ",".join(f"{m.name}={advertised_peer_url(host_of(m), m)}" for m in members)
    argv = [
        etcd_binary,
        "--name", member.name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_url(own, member),
        "--advertise-client-urls", client_url(own, member),
        "--listen-peer-urls", peer_url(own, member),
        "--initial-advertise-peer-urls", advertised_peer_url(own, member),
        "--initial-cluster", initial,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", "bkv-" + "-".join(m.name for m in members),
        *_tls_flags(member, pki),
        *_raft_and_history_flags(options),
        "--logger", "zap",
        "--log-outputs", str(log_file),
    ]  # fmt: skip
    if not fsync:
        # Accepted by etcd 3.4 although missing from --help (PLATFORM.md). Tests only.
        argv.append("--unsafe-no-fsync")
    return argv


def _tls_flags(member: EtcdMember, pki: Pki) -> list[str]:
    """A member's TLS: clients and peers each need a certificate of their own CA."""
    server, peer = pki.etcd_member(member.name), pki.etcd_peer(member.name)
    return [
        # Clients: TLS only, and only with a client certificate of the etcd CA, whose CN is
        # the etcd user once auth is on. No one without such a certificate gets a handshake.
        "--cert-file", str(server.cert),
        "--key-file", str(server.key),
        "--trusted-ca-file", str(pki.etcd_ca.cert),
        "--client-cert-auth",
        # Peers: a CA of their own, so that no client certificate can pose as a member.
        "--peer-cert-file", str(peer.cert),
        "--peer-key-file", str(peer.key),
        "--peer-trusted-ca-file", str(pki.etcd_peer_ca.cert),
        "--peer-client-cert-auth",
        # The JSON gateway dials the member's own gRPC port with the member's server
        # certificate as its client certificate: refused (serverAuth only; a warning every few
        # seconds in the log), and were it accepted, it would relay every caller's request
        # under the member's CN instead of the caller's. Off: clients use gRPC.
        "--enable-grpc-gateway=false",
    ]  # fmt: skip


def _raft_and_history_flags(options: Options) -> list[str]:
    """Elections (timing, pre-vote) and how long etcd keeps its history."""
    return [
        "--heartbeat-interval", str(options.etcd_heartbeat_ms),
        "--election-timeout", str(options.etcd_election_ms),
        # A member that rejoins (start-dc, a healed partition) must not depose a working
        # leader: with pre-vote it campaigns only when a quorum would vote for it (etcd 3.4
        # has it off by default; 3.5 turned it on).
        "--pre-vote",
        # Erased records must also leave etcd's history within a bounded time (DESIGN):
        # "periodic" by default, since an idle cluster in revision mode keeps history for ever.
        "--auto-compaction-mode", options.etcd_compaction_mode,
        "--auto-compaction-retention", options.etcd_compaction_retention,
    ]  # fmt: skip


# ---- identities and probes ---------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdIdentity:
    """What an etcd client trusts (the etcd CA) and presents (one etcd user's certificate)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def of(cls, pki: Pki, user: str = ROOT_USER) -> EtcdIdentity:
        paths = pki.etcd_user(user)
        return cls(pki.etcd_ca.cert, paths.cert, paths.key)


class _NamedContext(ssl.SSLContext):
    """A client context that checks the server certificate for one fixed name, whatever host
    the URL names (members live on different hosts; every member certificate has this name)."""

    server_name = ETCD_TLS_NAME

    def wrap_socket(  # type: ignore[override]
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name,
            session=session,
        )


def probe_context(identity: EtcdIdentity) -> ssl.SSLContext:
    """An SSL context for the probes: trusts the etcd CA only, checks `bkv-etcd`, presents
    `identity`'s certificate. Build it once and reuse it (it reads and parses three files)."""
    context = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(identity.ca))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


def _opener(tls: ssl.SSLContext) -> urllib.request.OpenerDirector:
    # No proxy from the environment: probes go straight to the member.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
    )


def _get(url: str, tls: ssl.SSLContext, timeout: float) -> bytes | None:
    try:
        with _opener(tls).open(url, timeout=timeout) as resp:
            return bytes(resp.read())
    except (OSError, ValueError):
        # OSError covers refused connections, timeouts, TLS failures and HTTP errors.
        return None


def is_healthy(url: str, tls: ssl.SSLContext, timeout: float = 0.5) -> bool:
    """True when the member answers `/health` with a leader elected (quorum reachable)."""
    body = _get(url + "/health", tls, timeout)
    try:
        answer = json.loads(body) if body is not None else None
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("health") == "true"


@dataclass(frozen=True)
class MemberStatus:
    """What a member's `/metrics` says about itself."""

    member_id: str  # hex, as etcdctl prints it
    leader: bool  # this member is the raft leader
    has_leader: bool  # this member knows a leader
    revision: int  # its store's current revision

    @property
    def is_leader(self) -> bool:
        return self.leader and self.has_leader


def _metrics(url: str, tls: ssl.SSLContext, timeout: float) -> dict[str, str] | None:
    """The metric lines of `url/metrics` that `member_status` reads (name{labels} -> value)."""
    body = _get(url + "/metrics", tls, timeout)
    if body is None:
        return None
    text = body.decode("utf-8", "replace")
    wanted = ("etcd_server_is_leader", "etcd_server_has_leader", "etcd_server_id{",
              "etcd_debugging_mvcc_current_revision")  # fmt: skip
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            out[name] = value
    return out


def member_status(url: str, tls: ssl.SSLContext, timeout: float = 0.5) -> MemberStatus | None:
    """The member's leadership and revision from its `/metrics`, or None when it does not
    answer (every member serves them; they need a client certificate, no etcd permission)."""
    metrics = _metrics(url, tls, timeout)
    if metrics is None or "etcd_server_is_leader" not in metrics:
        return None
    member_id = next(
        (k.split('"')[1] for k in metrics if k.startswith('etcd_server_id{server_id="')), ""
    )
    try:
        revision = int(float(metrics.get("etcd_debugging_mvcc_current_revision", "0")))
    except ValueError:
        revision = 0
    return MemberStatus(
        member_id=member_id,
        leader=metrics["etcd_server_is_leader"] == "1",
        has_leader=metrics.get("etcd_server_has_leader") == "1",
        revision=revision,
    )


def find_leader(urls: Sequence[str], tls: ssl.SSLContext, timeout: float = 0.5) -> str | None:
    """The client URL of the member that reports itself leader, or None."""
    for url in urls:
        status = member_status(url, tls, timeout)
        if status is not None and status.is_leader:
            return url
    return None


def wait_healthy(
    urls: Sequence[str], tls: ssl.SSLContext, deadline: float, need: int | None = None
) -> bool:
    """Poll until at least `need` (default: all) of `urls` are healthy, or the deadline."""
    need = len(urls) if need is None else need
    while True:
        if sum(is_healthy(u, tls) for u in urls) >= need:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


# ---- etcdctl -----------------------------------------------------------------------------------


def etcdctl_argv(
    urls: Sequence[str],
    identity: EtcdIdentity,
    args: Sequence[str],
    *,
    binary: str = "etcdctl",
    dial_timeout_s: float = 2.0,
    command_timeout_s: float = 10.0,
) -> list[str]:
    """The `etcdctl` command line that runs `args` against `urls` (https) as `identity`.

    The timeouts come before `args`, so a caller's own `--command-timeout` wins (for a
    duration flag etcdctl keeps the last value)."""
    return [
        binary,
        f"--endpoints={','.join(urls)}",
        f"--cacert={identity.ca}",
        f"--cert={identity.cert}",
        f"--key={identity.key}",
        f"--dial-timeout={dial_timeout_s:g}s",
        f"--command-timeout={command_timeout_s:g}s",
        *args,
    ]


def etcdctl_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) without any ETCDCTL_* setting of the
    caller's (which could name other endpoints or a password user), with ETCDCTL_API=3."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


def run_etcdctl(
    argv: Sequence[str], *, capture: bool = True, timeout: float | None
) -> subprocess.CompletedProcess[str]:
    """Run an `etcdctl_argv` command line with `etcdctl_env()`. Never raises for etcdctl's own
    exit status (the caller reads it); EtcdctlMissing when etcdctl is not installed,
    subprocess.TimeoutExpired after `timeout` seconds."""
    try:
        return subprocess.run(
            argv, capture_output=capture, text=True, timeout=timeout, check=False,
            env=etcdctl_env(),
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise EtcdctlMissing("etcdctl not found (Debian: apt-get install etcd-client)") from exc
