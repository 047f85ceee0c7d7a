"""etcd on the session cluster is locked down: nobody without a credential gets anything on any
port, the key files are unreadable to other users, and each process's etcd identity can do only
what its role allows (deploy/etcd_auth.py).

The "nobody" tests run commands as uid `nobody` (runuser), so they need root.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from deploy.cluster import Cluster
from deploy.etcd_auth import frontend_user, membership_key, node_user

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"
NOBODY = [RUNUSER, "-u", "nobody", "--"]
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot run the venv's (it lives under /root)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(RUNUSER).exists(), reason="runs commands as nobody: root"
)


def as_nobody(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "ETCDCTL_API": "3", "HOME": "/nonexistent"}
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=timeout,
                          check=False, env=env, cwd="/")  # fmt: skip


def etcd_ports(cluster: Cluster) -> list[tuple[str, str, int]]:
    """(member, kind, port) of every etcd port: each member's client and peer port."""
    out: list[tuple[str, str, int]] = []
    for proc in cluster.state().processes:
        if proc.role == "etcd":
            out += [
                (proc.name, "client", proc.ports["client"]),
                (proc.name, "peer", proc.ports["peer"]),
            ]
    return out


def count_keys(cluster: Cluster, prefix: str) -> int:
    done = cluster.etcdctl("get", prefix, "--prefix", "--keys-only", "-w", "json")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout).get("count", 0))


# ---- nobody --------------------------------------------------------------------------------


@needs_root
def test_nobody_reads_and_writes_nothing_on_any_etcd_port(healthy_cluster: Cluster) -> None:
    c = healthy_cluster
    host = c.topology.host
    ports = etcd_ports(c)
    assert len(ports) == 6  # three members, a client and a peer port each
    assert as_nobody("etcdctl", "version").returncode == 0  # the runner itself works
    prefix = f"/bkv/v1/records/nobody-{secrets.token_hex(4)}-"
    attempts: list[tuple[str, list[str]]] = []
    for member, kind, port in ports:
        for scheme in ("https", "http"):
            url = f"{scheme}://{host}:{port}"
            common = [f"--endpoints={url}", "--dial-timeout=1s", "--command-timeout=2s"]
            tls = ["--insecure-skip-tls-verify"] if scheme == "https" else []
            label = f"{member} {kind} {url}"
            attempts += [
                (f"{label} put", ["etcdctl", *common, *tls, "put", f"{prefix}{kind}-{port}", "x"]),
                (f"{label} get", ["etcdctl", *common, *tls, "get", "", "--prefix", "--keys-only"]),
                (f"{label} del", ["etcdctl", *common, *tls, "del", "/bkv/v1/", "--prefix"]),
            ]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda a: (a[0], as_nobody(*a[1])), attempts))
    assert len(results) == 6 * 2 * 3
    succeeded = [label for label, done in results if done.returncode == 0]
    leaked = [label for label, done in results if "/bkv/" in done.stdout]
    assert succeeded == [] and leaked == []
    assert count_keys(c, prefix) == 0
    # The count above can fail: a key under that prefix is seen.
    assert c.etcdctl("put", f"{prefix}control", "x").returncode == 0
    assert count_keys(c, prefix) == 1
    assert c.etcdctl("del", prefix, "--prefix").returncode == 0
    assert count_keys(c, "/bkv/v1/nodes/") == len(c.topology.nodes)  # nobody deleted nothing


PROBE = r"""
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                     urllib.request.HTTPSHandler(context=ctx))
out = {}
for url in sys.argv[1:]:
    try:
        with opener.open(url, timeout=2) as resp:
            out[url] = resp.status
    except urllib.error.HTTPError as e:
        out[url] = e.code
    except Exception as e:
        out[url] = type(e).__name__
print(json.dumps(out))
"""


@needs_root
def test_nobody_gets_no_http_answer_on_any_etcd_port(healthy_cluster: Cluster) -> None:
    # /version, /health, /metrics and the v2/peer paths answer anyone on an open etcd: here
    # every port wants a certificate of its own CA before it says a word.
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("no system python3 for nobody")
    c = healthy_cluster
    paths = ["/version", "/health", "/metrics", "/members", "/v2/keys/", "/raft/probing"]
    urls = [
        f"{scheme}://{c.topology.host}:{port}{path}"
        for _, _, port in etcd_ports(c) for scheme in ("https", "http") for path in paths
    ]  # fmt: skip
    done = as_nobody(SYSTEM_PYTHON, "-c", PROBE, *urls, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert len(answers) == 6 * 2 * len(paths)
    answered = {u: a for u, a in answers.items() if isinstance(a, int)}
    assert answered == {}


@needs_root
def test_nobody_cannot_read_any_key_or_etcd_file(healthy_cluster: Cluster) -> None:
    root = healthy_cluster.directory
    secret_files = [
        *sorted((root / "pki").glob("*.key")),
        root / "secrets" / "session.key",
        *sorted((root / "hsm").glob("*/pin")),
        *sorted((root / "etcd").glob("*/member/snap/db")),
        *sorted((root / "etcd").glob("*/member/wal/*.wal")),
    ]
    etcd_keys = [p for p in secret_files if p.name.startswith("etcd-")]
    # etcd's own: users root, 6 nodes, 2 frontends; 3 member and 3 peer keys; the 2 etcd CAs.
    assert len(etcd_keys) == 1 + 6 + 2 + 3 + 3 + 2
    assert all(p.is_file() for p in secret_files) and len(secret_files) > 30
    control = Path("/etc/hostname")
    script = 'for f; do cat "$f" > /dev/null 2>&1 && echo "READ $f"; done; true'
    done = as_nobody("sh", "-c", script, "sh", str(control), *map(str, secret_files))
    assert done.stdout.splitlines() == [f"READ {control}"]  # only the public control file


# ---- each process's own etcd identity --------------------------------------------------------


def _denied(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode != 0 and "permission denied" in done.stderr


def test_the_frontend_identity_is_refused_records_and_keeps_its_own_prefixes(
    healthy_cluster: Cluster,
) -> None:
    c = healthy_cluster
    fe = frontend_user(c.topology.frontends[0].name)
    tag = secrets.token_hex(4)
    assert _denied(c.etcdctl("put", f"/bkv/v1/records/fe-probe-{tag}", "x", user=fe))
    assert _denied(c.etcdctl("get", "/bkv/v1/records/", "--prefix", "--keys-only", user=fe))
    assert _denied(c.etcdctl("del", "/bkv/v1/records/", "--prefix", user=fe))
    assert _denied(c.etcdctl("put", f"/bkv/v1/nodes/dc-a/fake-{tag}", "{}", user=fe))
    assert count_keys(c, f"/bkv/v1/records/fe-probe-{tag}") == 0
    for prefix in ("/bkv/v1/accounts/", "/bkv/v1/sessions/"):
        key = f"{prefix}probe-{tag}"
        assert c.etcdctl("put", key, "v", user=fe).returncode == 0
        got = c.etcdctl("get", key, "--print-value-only", user=fe)
        assert (got.returncode, got.stdout) == (0, "v\n")
        assert c.etcdctl("del", key, user=fe).stdout.strip() == "1"
    nodes = c.etcdctl("get", "/bkv/v1/nodes/", "--prefix", "--keys-only", user=fe)
    assert nodes.returncode == 0
    expected = sorted(membership_key(n.dc, n.name) for n in c.topology.nodes)
    assert sorted(k for k in nodes.stdout.splitlines() if k) == expected


def test_a_node_identity_cannot_write_another_nodes_membership_nor_an_account(
    healthy_cluster: Cluster,
) -> None:
    c = healthy_cluster
    me, other = c.topology.nodes[0], c.topology.nodes[1]
    user = node_user(me.name)
    tag = secrets.token_hex(4)
    other_key = membership_key(other.dc, other.name)
    before = c.etcdctl("get", other_key, "-w", "json").stdout
    assert _denied(c.etcdctl("put", other_key, '{"address":"127.0.0.1:1"}', user=user))
    assert _denied(c.etcdctl("del", other_key, user=user))
    # Its own key is the one key, not a prefix: a longer name beside it is someone else's.
    assert _denied(c.etcdctl("put", membership_key(me.dc, me.name) + "0", "{}", user=user))
    assert _denied(c.etcdctl("put", f"/bkv/v1/accounts/node-probe-{tag}", "pk", user=user))
    assert _denied(c.etcdctl("get", "/bkv/v1/accounts/", "--prefix", user=user))
    assert _denied(c.etcdctl("put", f"/bkv/v1/sessions/node-probe-{tag}", "s", user=user))
    assert (
        json.loads(c.etcdctl("get", other_key, "-w", "json").stdout)["kvs"]
        == json.loads(before)["kvs"]
    )
    assert count_keys(c, f"/bkv/v1/accounts/node-probe-{tag}") == 0
    # What it needs it has: the records prefix.
    key = f"/bkv/v1/records/node-probe-{tag}"
    assert c.etcdctl("put", key, "sealed", user=user).returncode == 0
    assert c.etcdctl("get", key, "--print-value-only", user=user).stdout == "sealed\n"
    assert c.etcdctl("del", key, user=user).stdout.strip() == "1"


def test_only_root_may_administer_etcd(healthy_cluster: Cluster) -> None:
    c = healthy_cluster
    for user in (frontend_user(c.topology.frontends[0].name), node_user(c.topology.nodes[0].name)):
        assert _denied(c.etcdctl("user", "add", f"intruder-{secrets.token_hex(3)}",
                                 "--no-password", user=user))  # fmt: skip
        assert _denied(c.etcdctl("role", "grant-permission", "bkv-frontend", "readwrite",
                                 "/bkv/v1/records/", "--prefix=true", user=user))  # fmt: skip
        assert _denied(c.etcdctl("auth", "disable", user=user))
    roles = c.etcdctl("role", "get", "bkv-frontend").stdout
    assert "/bkv/v1/records/" not in roles


# ---- the operator's etcdctl ------------------------------------------------------------------


def bkv_cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_bkv_cluster_etcdctl_runs_as_root_against_every_member(healthy_cluster: Cluster) -> None:
    d = str(healthy_cluster.directory)
    health = bkv_cluster("etcdctl", "--dir", d, "--", "endpoint", "health")
    assert health.returncode == 0, health.stderr
    lines = (health.stdout + health.stderr).splitlines()
    assert sorted(line.split()[0] for line in lines if "is healthy" in line) == sorted(
        healthy_cluster.etcd_client_urls().values()
    )
    keys = bkv_cluster("etcdctl", "--dir", d, "--", "get", "--prefix", "/bkv/v1/nodes/",
                       "--keys-only")  # fmt: skip
    assert keys.returncode == 0
    assert len([k for k in keys.stdout.splitlines() if k]) == len(healthy_cluster.topology.nodes)
    one = bkv_cluster("etcdctl", "--dir", d, "--member", "etcd-dc-b", "--", "endpoint", "status")
    assert one.stdout.count("https://") == 1
    assert healthy_cluster.etcd_client_urls()["etcd-dc-b"] in one.stdout
    # etcdctl's own exit status comes through.
    bad = bkv_cluster("etcdctl", "--dir", d, "--", "get")
    assert bad.returncode != 0
