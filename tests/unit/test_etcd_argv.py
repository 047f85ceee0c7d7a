"""etcd's command line (TLS on every port, no plaintext listener), the etcdctl command line, and
the probes' TLS (the name `bkv-etcd`, the root certificate) against a loopback HTTPS server."""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import etcd
from deploy.pki import (
    ETCD_TLS_NAME,
    CertPaths,
    Pki,
    create_pki,
    issue_etcd_member,
    issue_server,
    make_ca,
)
from deploy.topology import Options, Topology, default_topology_path, load_topology

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def _topology() -> Topology:
    t = load_topology(default_topology_path())
    return t.with_ports(lambda n: list(range(51000, 51000 + n)))


def _argv(t: Topology, index: int, tmp_path: Path, **kw: object) -> list[str]:
    return etcd.etcd_argv(
        t.etcd[index], t.etcd, host=t.host, options=kw.pop("options", t.options),  # type: ignore[arg-type]
        pki=Pki(tmp_path / "pki"), data_dir=tmp_path / "data", log_file=tmp_path / "log",
        fsync=bool(kw.pop("fsync", True)), hosts=etcd.member_hosts(t),
    )  # fmt: skip


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_every_url_is_https_and_no_plaintext_listener(tmp_path: Path) -> None:
    t = _topology()
    for i in range(3):
        argv = _argv(t, i, tmp_path)
        urls = [
            _flag(argv, f)
            for f in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                      "--initial-advertise-peer-urls")
        ]  # fmt: skip
        urls += [u.split("=", 1)[1] for u in _flag(argv, "--initial-cluster").split(",")]
        assert len(urls) == 7
        assert all(u.startswith("https://") for u in urls), urls
        assert not any("http://" in a for a in argv)
        assert not any(a.startswith("--listen-metrics-urls") for a in argv)
        assert not any("auto-tls" in a for a in argv)
        # The JSON gateway would relay calls under the member's own certificate: off.
        assert "--enable-grpc-gateway=false" in argv


def test_client_and_peer_ports_require_certificates_of_their_own_cas(tmp_path: Path) -> None:
    t = _topology()
    pki = Pki(tmp_path / "pki")
    argv = _argv(t, 1, tmp_path)
    member = t.etcd[1].name
    assert _flag(argv, "--cert-file") == str(pki.etcd_member(member).cert)
    assert _flag(argv, "--key-file") == str(pki.etcd_member(member).key)
    assert _flag(argv, "--trusted-ca-file") == str(pki.etcd_ca.cert)
    assert _flag(argv, "--peer-cert-file") == str(pki.etcd_peer(member).cert)
    assert _flag(argv, "--peer-key-file") == str(pki.etcd_peer(member).key)
    assert _flag(argv, "--peer-trusted-ca-file") == str(pki.etcd_peer_ca.cert)
    assert pki.etcd_ca.cert != pki.etcd_peer_ca.cert
    assert "--client-cert-auth" in argv and "--peer-client-cert-auth" in argv


def test_compaction_flags_follow_the_options(tmp_path: Path) -> None:
    t = _topology()
    argv = _argv(t, 0, tmp_path)
    assert (_flag(argv, "--auto-compaction-mode"), _flag(argv, "--auto-compaction-retention")) == (
        "periodic", "5m",
    )  # fmt: skip
    revision = replace(t.options, etcd_compaction_mode="revision", etcd_compaction_retention="99")
    argv = _argv(t, 0, tmp_path, options=revision)
    assert _flag(argv, "--auto-compaction-mode") == "revision"
    assert _flag(argv, "--auto-compaction-retention") == "99"
    assert Options().etcd_compaction_mode == "periodic"


def test_no_fsync_only_when_asked(tmp_path: Path) -> None:
    t = _topology()
    assert "--unsafe-no-fsync" not in _argv(t, 0, tmp_path)
    assert "--unsafe-no-fsync" in _argv(t, 0, tmp_path, fsync=False)


def test_client_urls_are_https_on_each_members_host() -> None:
    t = _topology()
    urls = [etcd.client_url(t.host_of(m.dc), m) for m in t.etcd]  # Cluster.etcd_client_urls
    assert urls == [f"https://127.0.0.1:{m.client_port}" for m in t.etcd]
    assert etcd.topology_endpoints(t) == [f"127.0.0.1:{m.client_port}" for m in t.etcd]


# ---- etcdctl ---------------------------------------------------------------------------------


def test_etcdctl_argv_names_every_endpoint_and_the_identity(tmp_path: Path) -> None:
    identity = etcd.EtcdIdentity.of(Pki(tmp_path), "bkv-frontend-fe-1")
    argv = etcd.etcdctl_argv(
        ["https://127.0.0.1:1", "https://127.0.0.1:2"], identity, ["get", "--prefix", "/a/"]
    )
    assert argv == [
        "etcdctl",
        "--endpoints=https://127.0.0.1:1,https://127.0.0.1:2",
        f"--cacert={tmp_path / 'etcd-ca.pem'}",
        f"--cert={tmp_path / 'etcd-user-bkv-frontend-fe-1.pem'}",
        f"--key={tmp_path / 'etcd-user-bkv-frontend-fe-1.key'}",
        "--dial-timeout=2s",
        "--command-timeout=10s",
        "get", "--prefix", "/a/",
    ]  # fmt: skip
    assert etcd.EtcdIdentity.of(Pki(tmp_path)).cert == tmp_path / "etcd-user-root.pem"


def test_etcdctl_env_is_api_3_without_the_callers_etcdctl_settings() -> None:
    env = etcd.etcdctl_env(
        {"PATH": "/bin", "ETCDCTL_ENDPOINTS": "http://evil:2379", "ETCDCTL_USER": "root:pw",
         "ETCDCTL_API": "2"}
    )  # fmt: skip
    assert env == {"PATH": "/bin", "ETCDCTL_API": "3"}


# ---- probes ----------------------------------------------------------------------------------

METRICS = """# HELP etcd_server_is_leader Whether or not this member is a leader.
# TYPE etcd_server_is_leader gauge
etcd_server_is_leader 1
etcd_server_has_leader 1
etcd_server_id{server_id="8e9e05c52164694d"} 1
etcd_debugging_mvcc_current_revision 42
etcd_server_is_learner 0
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = {"/health": b'{"health":"true"}', "/metrics": METRICS.encode()}.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return create_pki(tmp_path_factory.mktemp("pki"), [], [], etcd_members={"etcd-a": []},
                      etcd_users=["root"])  # fmt: skip


def _serve(server_cert: CertPaths, client_ca: Path) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(server_cert.cert), str(server_cert.key))
    context.load_verify_locations(str(client_ca))
    context.verify_mode = ssl.CERT_REQUIRED  # as etcd's --client-cert-auth
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def member_url(pki: Pki) -> Iterator[str]:
    yield from _serve(pki.etcd_member("etcd-a"), pki.etcd_ca.cert)


def test_probes_verify_bkv_etcd_and_present_roots_certificate(pki: Pki, member_url: str) -> None:
    tls = etcd.probe_context(etcd.EtcdIdentity.of(pki))
    assert etcd.is_healthy(member_url, tls)
    status = etcd.member_status(member_url, tls)
    assert status == etcd.MemberStatus("8e9e05c52164694d", True, True, 42)
    assert status.is_leader
    assert etcd.find_leader(["https://127.0.0.1:1", member_url], tls, timeout=0.3) == member_url


def test_a_server_certificate_without_the_etcd_name_is_refused(pki: Pki, tmp_path: Path) -> None:
    # Two servers under one CA, both valid for 127.0.0.1 (the URL's host); only one carries
    # bkv-etcd. The probe checks that one name, whatever host it dials.
    now = dt.datetime.now(dt.UTC)
    ca = make_ca("etcd CA of this test", now=now)
    ca.write(CertPaths(tmp_path / "ca.pem", tmp_path / "ca.key"))
    named = CertPaths(tmp_path / "named.pem", tmp_path / "named.key")
    unnamed = CertPaths(tmp_path / "unnamed.pem", tmp_path / "unnamed.key")
    issue_etcd_member(ca, "etcd-a", now=now).write(named)
    issue_server(ca, "etcd-a", now=now).write(unnamed)  # localhost, 127.0.0.1, etcd-a
    root = pki.etcd_user("root")
    tls = etcd.probe_context(etcd.EtcdIdentity(tmp_path / "ca.pem", root.cert, root.key))
    for url in _serve(unnamed, pki.etcd_ca.cert):
        assert not etcd.is_healthy(url, tls)
        assert etcd.member_status(url, tls) is None
    for url in _serve(named, pki.etcd_ca.cert):
        assert etcd.is_healthy(url, tls)


def test_probes_trust_the_etcd_ca_only(pki: Pki, member_url: str, tmp_path: Path) -> None:
    other = make_ca("not etcd", now=dt.datetime.now(dt.UTC))
    other.write(CertPaths(tmp_path / "other.pem", tmp_path / "other.key"))
    root = pki.etcd_user("root")
    tls = etcd.probe_context(etcd.EtcdIdentity(tmp_path / "other.pem", root.cert, root.key))
    assert not etcd.is_healthy(member_url, tls)


def test_the_tls_name_is_bkv_etcd() -> None:
    assert ETCD_TLS_NAME == "bkv-etcd"
