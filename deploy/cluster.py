"""A local multi-data-centre cluster in one directory: the Python API behind `bkv-cluster`.

    cluster = Cluster(Path("cluster"))
    cluster.up(load_topology(path), fsync=False)   # PKI, tokens, ceremony, configs, processes
    cluster.status(); cluster.kill_dc("dc-b"); cluster.start_dc("dc-b"); cluster.down()

Every mutating call holds the directory's lock and records process groups in DIR/cluster.json,
so that another invocation (another `bkv-cluster`, a chaos tool) sees and can stop them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deploy import account_rebind, etcd, etcd_auth, etcd_maintain, processes
from deploy import fleet as fleet_root
from deploy.ceremony import Fleet, create_node_token, load_fleet, run_fleet_ceremony
from deploy.configs import (
    Layout,
    ScrapeTarget,
    client_toml,
    frontend_toml,
    node_toml,
    prometheus_yml,
)
from deploy.errors import (
    ClusterRunningError,
    ClusterStateError,
    StartError,
    UnknownProcessError,
)
from deploy.health import TlsFiles, grpc_serving
from deploy.pki import create_pki, write_private
from deploy.rotation import Rotation, RotationState
from deploy.state import (
    OUTDATED,
    STATE_VERSION,
    ClusterState,
    ProcessState,
    locked,
    read_state,
    write_state,
)
from deploy.topology import Role, Topology, default_topology_path, load_topology
from vault_node.softhsm import TokenSpec

ROLE_ORDER: tuple[Role, ...] = ("etcd", "node", "frontend")
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def crash_looping(run_state: dict[str, Any]) -> bool:
    """Whether a supervisor's state file shows a process that cannot start: it gave up, or it is
    waiting to restart a second time in a row. One restart pending is the supervisor doing its
    job after a crash of a running process (chaos, `crash`), not a failed start: waiting then
    reported a healthy restart as "crashed while starting" when the wait began inside that
    backoff."""
    state = run_state.get("state")
    restarts = run_state.get("restarts")
    return state == "failed" or (state == "backoff" and isinstance(restarts, int) and restarts >= 2)


ETCD_NOTE = (
    "etcd is locked down (TLS, client certificates, a role per process); an etcd admin (root) "
    "can still deny service and erase records."
)


@dataclass(frozen=True)
class ProcessStatus:
    """A live view of one process, as `status` shows it."""

    name: str
    role: Role
    dc: str
    address: str
    pgid: int | None  # the supervisor's process group, None when not running
    pid: int | None  # the supervised child
    supervisor: str  # supervisor state: running, backoff, failed, stopped, down
    healthy: bool
    leader: bool = False
    witness: str = ""  # host:port of its witness server (witness nodes only)
    metrics: str = ""  # host:port of its Prometheus metrics endpoint (nodes and frontends)


@dataclass(frozen=True)
class UpReport:
    phases: tuple[tuple[str, float], ...]  # (phase, seconds) in order
    resumed: bool
    fsync: bool

    @property
    def total_s(self) -> float:
        return sum(s for _, s in self.phases)


LOWEST_FREE_PORT = 10_000
_EPHEMERAL_DEFAULT = (32_768, 60_999)  # Linux's default net.ipv4.ip_local_port_range


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for ports it picks itself (bind to 0, the local end of a connect)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def free_ports(host: str, count: int, *, rng: random.Random | None = None) -> list[int]:
    """`count` distinct free TCP ports on `host`, all bound at once so that none repeats.

    The ports are released before the processes that will listen on them start, so they are
    chosen below the kernel's ephemeral range when it leaves room: there, no connection's
    local end and no other bind to port 0 can take one in the meantime (both draw from the
    ephemeral range; a chaos run once saw a port given twice). Otherwise the kernel chooses.
    """
    rng = rng or random.Random()  # not a secret: only spreads the choice
    low, _high = ephemeral_range()
    socks: list[socket.socket] = []
    try:
        if low - LOWEST_FREE_PORT >= 8 * count:
            for _ in range(50 * count):
                if len(socks) == count:
                    break
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.bind((host, rng.randrange(LOWEST_FREE_PORT, low)))
                except OSError:  # in use (or held by this loop already): try another
                    s.close()
                    continue
                socks.append(s)
        while len(socks) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _assign_ports(topology: Topology) -> tuple[Topology, dict[str, int]]:
    """`topology` with every unassigned port chosen, and a metrics port per node and frontend.

    Ports are picked free on the loopback host (a namespace's ports are all free), all in one
    call so that none repeats: the topology's, then one metrics port per process, none of them
    a port the topology fixed already (free now, but not for long)."""
    served = [n.name for n in topology.nodes] + [f.name for f in topology.frontends]
    fixed = _fixed_ports(topology)
    unassigned = topology.unassigned_ports()
    pool = free_ports(topology.host, unassigned + len(served) + len(fixed))
    spare = [p for p in pool[unassigned:] if p not in fixed]
    return topology.with_ports(lambda n: pool[:n]), dict(zip(served, spare, strict=False))


def _fixed_ports(topology: Topology) -> set[int]:
    """Every port `topology` already names (0, "choose one", left out)."""
    ports = [p for m in topology.etcd for p in (m.client_port, m.peer_port, m.advertise_peer_port)]
    ports += [p for n in topology.nodes for p in (n.port, n.witness_port)]
    ports += [f.port for f in topology.frontends]
    return {p for p in ports if p}


def _silent(_message: str) -> None:
    pass


class Cluster:
    """One cluster directory. Cheap to construct; state is read from disk on every call."""

    def __init__(self, directory: Path, *, echo: Callable[[str], None] = _silent) -> None:
        self.layout = Layout(directory.resolve())
        self.echo = echo
        self._tls_cache: tuple[tuple[tuple[int, int], ...], ssl.SSLContext] | None = None

    # ---- read-only views -------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self.layout.root

    @property
    def client_config_path(self) -> Path:
        return self.layout.client_config

    def exists(self) -> bool:
        return self.layout.state_file.exists()

    def state(self) -> ClusterState:
        return read_state(self.layout.state_file)

    @property
    def topology(self) -> Topology:
        return self.state().topology

    def witness_nodes(self) -> list[str]:
        """Names of the vault nodes that witness the record log's heads, in topology order."""
        return [n.name for n in self.topology.witness_nodes()]

    def etcd_endpoints(self) -> list[str]:
        """`host:port` of every etcd member (as in node.toml)."""
        return etcd.topology_endpoints(self.topology)

    def etcd_client_urls(self) -> dict[str, str]:
        """Member name -> client URL (https)."""
        t = self.topology
        return {m.name: etcd.client_url(t.host_of(m.dc), m) for m in t.etcd}

    def etcd_leader(self) -> str | None:
        """Name of the etcd member that is leader now, or None."""
        tls = self._etcd_tls()
        if tls is None:
            return None
        urls = self.etcd_client_urls()
        leader = etcd.find_leader(list(urls.values()), tls)
        return next((name for name, url in urls.items() if url == leader), None)

    def etcd_as_root(self) -> fleet_root.EtcdAsRoot:
        """Small etcd calls as root (the fleet announcement, membership, key names)."""
        return fleet_root.EtcdAsRoot(self.etcd_endpoints(), self.etcd_identity())

    def etcd_identity(self, user: str = etcd.ROOT_USER) -> etcd.EtcdIdentity:
        """The etcd CA and the client certificate of etcd user `user` (root: the admin)."""
        return etcd.EtcdIdentity.of(self.layout.pki, user)

    def etcdctl_argv(
        self,
        *args: str,
        user: str = etcd.ROOT_USER,
        identity: etcd.EtcdIdentity | None = None,
        members: Sequence[str] | None = None,
    ) -> list[str]:
        """The etcdctl command line running `args` against every member (or the named
        `members`) over https, as etcd user `user` (or as `identity`)."""
        urls = self.etcd_client_urls()
        unknown = [m for m in members or () if m not in urls]
        if unknown:
            raise UnknownProcessError(f"no etcd member {unknown[0]!r} (have {sorted(urls)})")
        chosen = [urls[m] for m in members] if members else list(urls.values())
        return etcd.etcdctl_argv(chosen, identity or self.etcd_identity(user), args)

    def etcdctl(
        self,
        *args: str,
        user: str = etcd.ROOT_USER,
        identity: etcd.EtcdIdentity | None = None,
        members: Sequence[str] | None = None,
        capture: bool = True,
        timeout: float | None = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the system `etcdctl` with `args` (see `etcdctl_argv`); ETCDCTL_API=3 and no
        ETCDCTL_* setting of the caller's. `capture` False leaves stdout/stderr to the caller's
        terminal (`bkv-cluster etcdctl`). Never raises for etcdctl's own exit status."""
        argv = self.etcdctl_argv(*args, user=user, identity=identity, members=members)
        return etcd.run_etcdctl(argv, capture=capture, timeout=timeout)

    def rebind_account(
        self, account_id: str, public_key: bytes, *, replace: bool = False
    ) -> account_rebind.Rebound:
        """Key loss, the operator's half (deploy/account_rebind.py): let `public_key` log in
        as `account_id` at the frontends, as etcd's root."""
        return account_rebind.rebind_account(
            self.etcd_endpoints(), self.etcd_identity(), account_id, public_key, replace=replace
        )

    def maintain(self, *, defrag: bool) -> etcd_maintain.MaintainReport:
        """Compact etcd to its current revision and, with `defrag`, defragment each member in
        turn as root (see deploy/etcd_maintain.py)."""
        run = etcd_maintain.etcdctl_runner(self.etcd_identity())
        urls = list(self.etcd_client_urls().values())
        return etcd_maintain.maintain(run, urls, defrag=defrag, echo=self.echo)

    def _etcd_tls(self) -> ssl.SSLContext | None:
        """The probes' SSL context (etcd CA, name `bkv-etcd`, root's certificate), built once
        per set of certificate files; None when there are none (a cluster made before etcd
        was locked down)."""
        identity = self.etcd_identity()
        try:
            stamp = tuple(
                (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in (identity.ca, identity.cert, identity.key)
            )
        except OSError:
            return None
        if self._tls_cache is None or self._tls_cache[0] != stamp:
            try:
                self._tls_cache = (stamp, etcd.probe_context(identity))
            except (OSError, ssl.SSLError):
                return None
        return self._tls_cache[1]

    def names_in_dc(self, dc: str) -> list[str]:
        state = self.state()
        if dc not in state.topology.datacenters:
            raise UnknownProcessError(f"no data centre {dc!r} (have {state.topology.datacenters})")
        return [p.name for p in state.processes if p.dc == dc]

    def process(self, name: str) -> ProcessState:
        found = self.state().process(name)
        if found is None:
            raise UnknownProcessError(f"no process {name!r} in {self.directory}")
        return found

    def child_pid(self, name: str) -> int | None:
        """PID of the supervised program (not its supervisor), from the supervisor's state."""
        return self._run_state(name).get("child_pid")

    def status(self) -> list[ProcessStatus]:
        """Live status of every process (health checks run in parallel, ~1 s at worst)."""
        state = self.state()
        checker = self._checker(state)
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda p: self._status_of(p, checker), state.processes))

    def _status_of(
        self, proc: ProcessState, checker: Callable[[ProcessState], bool]
    ) -> ProcessStatus:
        running = proc.running
        alive = running is not None and processes.is_alive(running)
        run = self._run_state(proc.name) if alive else {}
        leader = False
        tls = self._etcd_tls() if alive and proc.role == "etcd" else None
        if tls is not None:
            member = etcd.member_status(f"https://{proc.address}", tls)
            leader = member is not None and member.is_leader
        return ProcessStatus(
            name=proc.name, role=proc.role, dc=proc.dc, address=proc.address,
            pgid=proc.pgid if alive else None, pid=run.get("child_pid"),
            supervisor=str(run.get("state", "?")) if alive else "down",
            healthy=alive and checker(proc), leader=leader, witness=self._witness_of(proc),
            metrics=self._metrics_of(proc),
        )  # fmt: skip

    @staticmethod
    def _witness_of(proc: ProcessState) -> str:
        port = proc.ports.get("witness", 0) if proc.role == "node" else 0
        return f"{proc.address.rsplit(':', 1)[0]}:{port}" if port else ""

    @staticmethod
    def _metrics_of(proc: ProcessState) -> str:
        """host:port of its metrics endpoint, on the host it serves on ("" if it has none)."""
        port = proc.ports.get("metrics", 0)
        return f"{proc.address.rsplit(':', 1)[0]}:{port}" if port else ""

    def metrics_addresses(self) -> dict[str, str]:
        """Process name -> host:port of its Prometheus metrics (every node and frontend)."""
        out = {p.name: self._metrics_of(p) for p in self.state().processes}
        return {name: address for name, address in out.items() if address}

    def _write_scrape_config(self, state: ClusterState) -> None:
        """DIR/prometheus.yml: every process's metrics endpoint, for Prometheus to scrape."""
        targets = [
            ScrapeTarget(p.name, p.role, p.dc, self._metrics_of(p))
            for p in state.processes
            if p.role != "etcd" and self._metrics_of(p)
        ]
        self.layout.prometheus_config.write_text(prometheus_yml(state.topology.name, targets))

    def _run_state(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads(self.layout.run_state(name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _checker(self, state: ClusterState) -> Callable[[ProcessState], bool]:
        pki = self.layout.pki
        node_tls = TlsFiles.for_nodes(pki, state.topology.frontends[0].name)
        fe_tls = TlsFiles.for_frontends(pki)
        etcd_tls = self._etcd_tls()

        def check(proc: ProcessState) -> bool:
            if proc.role == "etcd":
                return etcd_tls is not None and etcd.is_healthy(f"https://{proc.address}", etcd_tls)
            return grpc_serving(proc.address, node_tls if proc.role == "node" else fe_tls)

        return check

    # ---- up ----------------------------------------------------------------------------------

    def up(self, topology: Topology | None = None, *, fsync: bool | None = None) -> UpReport:
        """Create and start a cluster, or restart a stopped one in this directory.

        Raises `ClusterRunningError` if a process of this directory's cluster still runs.
        """
        root = self.layout.root
        root.mkdir(parents=True, exist_ok=True)
        with locked(self.layout.lock_file):
            if self.exists():
                return self._resume()
            leftovers = [p for p in root.iterdir() if p != self.layout.lock_file]
            if leftovers:
                raise ClusterStateError(
                    f"{root} is not empty and holds no cluster: remove it or choose another --dir"
                )
            return self._create(topology, fsync)

    def _resume(self) -> UpReport:
        state = self.state()
        live = [p.name for p in state.processes if p.running and processes.is_alive(p.running)]
        if live:
            raise ClusterRunningError(
                f"a cluster is running in {self.directory} ({', '.join(live)}): "
                "`bkv-cluster down` first"
            )
        self._warn(state.fsync)
        self.echo(f"resuming the stopped cluster in {self.directory}")
        self._write_scrape_config(state)
        # etcd keeps its users, roles and auth on its data: nothing to bootstrap again.
        phases = self._start_names(state, [p.name for p in state.processes])
        return UpReport(tuple(phases), resumed=True, fsync=state.fsync)

    def _create(self, topology: Topology | None, fsync: bool | None) -> UpReport:
        if topology is None:
            topology = load_topology(default_topology_path())
        if fsync is not None:
            topology = replace(topology, options=replace(topology.options, etcd_fsync=fsync))
        topology.validate()
        topology, metrics_ports = _assign_ports(topology)
        fsync_on = topology.options.etcd_fsync
        self._warn(fsync_on)
        phases: list[tuple[str, float]] = []
        with self._phase(phases, "certificates"):
            self._create_pki(topology)
            self.layout.session_secret.parent.mkdir(mode=0o700, exist_ok=True)
            write_private(self.layout.session_secret, os.urandom(32))
        with self._phase(phases, "tokens"):
            tokens = [
                create_node_token(self.layout.hsm_dir(n.name), n.name) for n in topology.nodes
            ]
        state = self._initial_state(topology, metrics_ports)
        complete = False
        try:
            state, fleet = self._configure(state, tokens, metrics_ports, phases)
            complete = True
            others = [p.name for p in state.processes if p.role != "etcd"]
            phases += self._start_names(state, others)
        except BaseException:
            self.echo("start failed: stopping what was started (logs stay in the directory)")
            self._stop(self.state(), [p.name for p in state.processes])
            if not complete:
                # Not resumable (no fleet or no configuration yet): the directory then holds
                # no cluster, and `up` refuses it until it is removed, as for any leftover.
                self.layout.state_file.unlink(missing_ok=True)
            raise
        self.layout.client_config.write_text(
            client_toml(topology, self.layout, fleet.public_key_file, fleet.fleet_id)
        )
        return UpReport(tuple(phases), resumed=False, fsync=fsync_on)

    def _configure(
        self,
        state: ClusterState,
        tokens: list[TokenSpec],
        metrics_ports: dict[str, int],
        phases: list[tuple[str, float]],
    ) -> tuple[ClusterState, Fleet]:
        """etcd, its auth, the key ceremony and the configuration files: from then on the
        cluster is resumable (its state names the fleet)."""
        topology = state.topology
        phases += self._start_names(state, [p.name for p in state.processes if p.role == "etcd"])
        with self._phase(phases, "etcd auth"):
            # Before any vault node or frontend runs: they only ever see etcd locked down.
            cluster_id = etcd_auth.bootstrap(
                etcd.topology_endpoints(topology), self.etcd_identity(),
                etcd_auth.cluster_auth_plan(topology),
            )  # fmt: skip
        with self._phase(phases, "key ceremony"):
            fleet = run_fleet_ceremony(tokens, self.layout.fleet_dir, etcd_cluster_id=cluster_id)
        with self._phase(phases, "fleet root"):
            # The root key that signs this fleet's key announcements (a token of its own,
            # operators only); epoch 1's announcement goes where the frontends read it.
            fleet_root.create_root(self.layout)
            first = fleet_root.new_announcement(
                1, fleet.public_key, topology.options.opaque_context
            )
            self.etcd_as_root().publish(fleet_root.sign(self.layout, first))
        with self._phase(phases, "configuration"):
            self._write_configs(topology, tokens, metrics_ports)
            state = replace(
                self.state(), fleet_id=fleet.fleet_id.hex(), etcd_cluster_id=f"{cluster_id:x}"
            )
            write_state(self.layout.state_file, state)
            self._write_scrape_config(state)
        return state, fleet

    def _create_pki(self, topology: Topology) -> None:
        create_pki(
            self.layout.pki.dir,
            [n.name for n in topology.nodes],
            [f.name for f in topology.frontends],
            server_ips={
                **{n.name: [topology.host_of(n.dc)] for n in topology.nodes},
                **{f.name: [topology.host_of(f.dc)] for f in topology.frontends},
            },
            etcd_members={m.name: [topology.host_of(m.dc)] for m in topology.etcd},
            etcd_users=etcd_auth.cluster_users(topology),
            nodes=[n.name for n in topology.nodes],
        )

    def _warn(self, fsync: bool) -> None:
        self.echo(ETCD_NOTE)
        if fsync:
            self.echo("etcd fsync: ON")
        else:
            self.echo("WARNING: etcd fsync: OFF (--unsafe-no-fsync): a power loss can lose writes")

    @contextmanager
    def _phase(self, phases: list[tuple[str, float]], name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        phases.append((name, time.monotonic() - started))
        self.echo(f"  {name:<14} {phases[-1][1]:6.2f} s")

    def _initial_state(
        self, topology: Topology, metrics_ports: dict[str, int] | None = None
    ) -> ClusterState:
        """Every process of `topology`, none running yet, written to cluster.json (so that a
        failed `up`, or another invocation, can stop the etcd members it starts first).
        `metrics_ports`: each node's and frontend's metrics port (kept in its `ports`)."""
        metrics_ports = metrics_ports or {}
        layout = self.layout
        for d in ("conf", "logs", "run", "etcd"):
            (layout.root / d).mkdir(exist_ok=True)
        procs: list[ProcessState] = []
        for m in topology.etcd:
            procs.append(ProcessState(
                m.name, "etcd", m.dc, f"{topology.host_of(m.dc)}:{m.client_port}",
                {"client": m.client_port, "peer": m.peer_port}, str(layout.etcd_log(m.name)),
                command_prefix=topology.prefix_of(m.dc),
            ))  # fmt: skip

        def served(role: Role, name: str, dc: str, ports: dict[str, int]) -> ProcessState:
            """A node or frontend: its gRPC port is its address, its metrics port kept."""
            if name in metrics_ports:
                ports["metrics"] = metrics_ports[name]
            return ProcessState(
                name, role, dc, f"{topology.host_of(dc)}:{ports['grpc']}", ports,
                str(layout.log(name)), command_prefix=topology.prefix_of(dc),
            )  # fmt: skip

        for node in topology.nodes:
            ports = {"grpc": node.port}
            if topology.is_witness(node.name):
                ports["witness"] = node.witness_port
            procs.append(served("node", node.name, node.dc, ports))
        for fe in topology.frontends:
            procs.append(served("frontend", fe.name, fe.dc, {"grpc": fe.port}))
        state = ClusterState(str(layout.root), topology, topology.options.etcd_fsync, "",
                             tuple(procs))  # fmt: skip
        write_state(layout.state_file, state)
        return state

    def _write_configs(
        self, topology: Topology, tokens: Sequence[Any], metrics_ports: dict[str, int]
    ) -> None:
        layout = self.layout
        eps = etcd.topology_endpoints(topology)
        for node, token in zip(topology.nodes, tokens, strict=True):
            layout.config(node.name).write_text(node_toml(
                topology, node, layout, eps, token.token_label, token.softhsm_conf,
                token.pin_file, token.module, metrics_ports.get(node.name, 0),
            ))  # fmt: skip
        for fe in topology.frontends:
            layout.config(fe.name).write_text(
                frontend_toml(topology, fe, layout, eps, metrics_ports.get(fe.name, 0))
            )

    # ---- starting and stopping ---------------------------------------------------------------

    def _spec(self, state: ClusterState, proc: ProcessState) -> processes.ServiceSpec:
        t, layout = state.topology, self.layout
        env = {"PYTHONUNBUFFERED": "1"}
        if proc.role == "etcd":
            member = next(m for m in t.etcd if m.name == proc.name)
            argv = etcd.etcd_argv(
                member, t.etcd, host=t.host, options=t.options, pki=layout.pki,
                data_dir=layout.etcd_data(member.name), log_file=layout.etcd_log(member.name),
                fsync=state.fsync, hosts=etcd.member_hosts(t),
            )  # fmt: skip
            log = layout.log(proc.name)  # etcd's own log goes to --log-outputs
            if t.options.etcd_gomaxprocs:
                env["GOMAXPROCS"] = str(t.options.etcd_gomaxprocs)
        else:
            module = "vault_node" if proc.role == "node" else "frontend_chatd"
            argv = [
                sys.executable, "-m", module, "--config", str(layout.config(proc.name)),
                "--event-loop", t.options.event_loop,
            ]  # fmt: skip
            log = Path(proc.log)
            if proc.role == "node":
                env["SOFTHSM2_CONF"] = str(layout.hsm_dir(proc.name) / "softhsm2.conf")
        return processes.ServiceSpec(
            name=proc.name, argv=tuple(argv), log=log, state=layout.run_state(proc.name),
            env=env, cwd=layout.root, max_restarts=t.options.max_restarts,
            command_prefix=proc.command_prefix,
        )  # fmt: skip

    def _start_names(
        self, state: ClusterState, names: Iterable[str], *, wait: bool = True
    ) -> list[tuple[str, float]]:
        """Start the named processes role by role (etcd, nodes, frontends), each role waited
        healthy before the next (unless `wait` is False: then only spawned). Already-running
        ones are left alone."""
        if state.version != STATE_VERSION:
            why = OUTDATED.get(state.version, "of another version")
            raise ClusterStateError(
                f"{self.directory} holds a cluster {why} (state version {state.version}), "
                "which this version cannot start: `bkv-cluster down`, remove the directory, "
                "`up` again"
            )
        wanted = set(names)
        phases: list[tuple[str, float]] = []
        labels = {"etcd": "etcd", "node": "vault nodes", "frontend": "frontends"}
        checker = self._checker(state)
        for role in ROLE_ORDER:
            procs = [p for p in state.processes if p.role == role and p.name in wanted]
            if not procs:
                continue
            with self._phase(phases, labels[role]):
                for proc in procs:
                    if proc.running and processes.is_alive(proc.running):
                        continue
                    # A state file left by an earlier run must not be read as this run's.
                    self.layout.run_state(proc.name).unlink(missing_ok=True)
                    running = processes.spawn(self._spec(state, proc))
                    state = state.with_process(proc.with_running(running))
                    write_state(self.layout.state_file, state)
                started = [p.name for p in procs]
                if not wait:
                    continue
                if role == "etcd":
                    # Without quorum a member answers nothing (3.4 serves clients only once it
                    # has published itself through raft), but it listens: wait for that, then
                    # for /health only if a majority of the members run.
                    self._wait_healthy(state, started, self._etcd_listening)
                    if not self._etcd_quorum_possible(state):
                        self.echo("WARNING: fewer than a majority of etcd members run: no quorum")
                        continue
                self._wait_healthy(state, started, checker)
        return phases

    @staticmethod
    def _etcd_listening(proc: ProcessState) -> bool:
        host, port = proc.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=0.2).close()
        except OSError:
            return False
        return True

    def _etcd_quorum_possible(self, state: ClusterState) -> bool:
        members = [p for p in state.processes if p.role == "etcd"]
        live = [p for p in members if p.running and processes.is_alive(p.running)]
        return 2 * len(live) > len(members)

    def _wait_healthy(
        self, state: ClusterState, names: Sequence[str], checker: Callable[[ProcessState], bool]
    ) -> None:
        deadline = time.monotonic() + state.topology.options.start_timeout_s
        pending = [p for p in state.processes if p.name in names]
        while pending:
            still: list[ProcessState] = []
            for proc in pending:
                running = proc.running
                if running is None or not processes.is_alive(running):
                    raise StartError(self._failure(proc, "exited"))
                if crash_looping(self._run_state(proc.name)):
                    raise StartError(self._failure(proc, "crashed while starting"))
                if not checker(proc):
                    still.append(proc)
            pending = still
            if pending and time.monotonic() >= deadline:
                raise StartError(self._failure(pending[0], "did not become healthy in time"))
            if pending:
                time.sleep(0.05)

    def _failure(self, proc: ProcessState, what: str) -> str:
        logs = [self.layout.log(proc.name), Path(proc.log)]
        text = "\n".join(processes.tail(p) for p in dict.fromkeys(logs))
        return f"{proc.name} {what}; last log lines:\n{text}"

    def _stop(self, state: ClusterState, names: Iterable[str], *, hard: bool = False) -> None:
        """Stop the named processes: SIGKILL when `hard`, else SIGTERM with a grace period.
        Frontends and nodes go before etcd so that nodes can still release their leases."""
        wanted = set(names)
        for batch in (("frontend", "node"), ("etcd",)):
            procs = [p for p in state.processes if p.name in wanted and p.role in batch]
            groups = [p.running for p in procs if p.running is not None]
            for group in groups:
                if hard:
                    processes.signal_group(group, signal.SIGKILL)
                else:
                    processes.signal_group(group, signal.SIGCONT)
                    processes.signal_group(group, signal.SIGTERM)
            # etcd stopping together spends seconds on leadership transfers to peers that are
            # stopping too; SIGKILL after 2 s loses nothing acknowledged (the WAL is written).
            grace = 5.0 if hard else (2.0 if batch == ("etcd",) else 10.0)
            deadline = time.monotonic() + grace
            for group in groups:
                if not processes.wait_gone(group, deadline):
                    processes.kill(group)
            for proc in procs:
                state = state.with_process(proc.with_running(None))
            write_state(self.layout.state_file, state)

    def down(self) -> None:
        """Stop every process of the cluster and wait until none is left. Keeps the data."""
        with locked(self.layout.lock_file):
            state = self.state()
            self._stop(state, [p.name for p in state.processes])

    def kill_dc(self, dc: str) -> None:
        """SIGKILL every process group of data centre `dc` at once (a data-centre loss)."""
        names = self.names_in_dc(dc)
        with locked(self.layout.lock_file):
            self._stop(self.state(), names, hard=True)

    def start_dc(self, dc: str) -> list[tuple[str, float]]:
        """Restart data centre `dc` on its data (same ports, dirs, tokens); wait for health."""
        names = self.names_in_dc(dc)
        with locked(self.layout.lock_file):
            return self._start_names(self.state(), names)

    def start_all(self) -> list[tuple[str, float]]:
        """Resume every process stopped by `stop_process`, start every one that is not running
        (e.g. after a chaos test), and wait for the health of all of them."""
        with locked(self.layout.lock_file):
            state = self.state()
            for proc in state.processes:
                if proc.running is not None:
                    processes.signal_group(proc.running, signal.SIGCONT)
            return self._start_names(state, [p.name for p in state.processes])

    def kill(self, name: str) -> None:
        """SIGKILL one process with its supervisor (no restart)."""
        self.process(name)
        with locked(self.layout.lock_file):
            self._stop(self.state(), [name], hard=True)

    def stop(self, name: str) -> None:
        """Stop one process gracefully (SIGTERM, then SIGKILL after a grace period)."""
        self.process(name)
        with locked(self.layout.lock_file):
            self._stop(self.state(), [name])

    def start(self, name: str, *, wait: bool = True) -> list[tuple[str, float]]:
        """Start one stopped process on its data and wait for its health (`wait` False: do not
        wait, e.g. for a vault node expected to refuse to serve)."""
        self.process(name)
        with locked(self.layout.lock_file):
            return self._start_names(self.state(), [name], wait=wait)

    def crash(self, name: str) -> int:
        """SIGKILL only the supervised program, so that its supervisor restarts it.
        Returns the PID killed."""
        proc = self.process(name)
        pid = self.child_pid(name)
        if proc.running is None or pid is None or pid not in processes.group_pids(proc.running):
            raise ClusterStateError(f"{name} is not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def reload(self, name: str) -> None:
        """SIGHUP to a vault node's program (not its supervisor): it takes its token's fleet
        state again. Only a live program of the recorded group is signalled."""
        proc = self.process(name)
        if proc.role != "node":
            raise UnknownProcessError(f"{name} is not a vault node")
        pid = self.child_pid(name)
        if proc.running is None or pid is None or pid not in processes.group_pids(proc.running):
            raise ClusterStateError(
                f"vault node {name} is not running: start it (it takes its token's fleet state "
                "as it starts)"
            )
        os.kill(pid, signal.SIGHUP)

    def stop_process(self, name: str) -> None:
        """SIGSTOP the process and its supervisor (a hung process: it holds its sockets)."""
        self._signal(name, signal.SIGSTOP)

    def cont_process(self, name: str) -> None:
        """SIGCONT a process stopped by `stop_process`."""
        self._signal(name, signal.SIGCONT)

    def _signal(self, name: str, sig: signal.Signals) -> None:
        running = self.process(name).running
        if running is None or not processes.signal_group(running, sig):
            raise ClusterStateError(f"{name} is not running")

    def wait_healthy(self, names: Sequence[str], timeout: float = 30.0) -> None:
        """Wait until every named process passes its health check (already started)."""
        state = self.state()
        state = replace(state, topology=replace(
            state.topology, options=replace(state.topology.options, start_timeout_s=timeout)
        ))  # fmt: skip
        self._wait_healthy(state, names, self._checker(state))

    def fleet_id(self) -> bytes:
        return load_fleet(self.layout.fleet_dir).fleet_id

    def rotate_fleet(
        self, step: str | None = None, *, force: bool = False, timeout_s: float = 120.0
    ) -> RotationState:
        """`bkv-cluster rotate-fleet`: every pending step of a fleet key rotation (a new one
        when none is under way), or only `step` (deploy/rotation.py). Holds a lock of its own,
        not the directory's: processes may be started and stopped meanwhile."""
        with locked(self.layout.rotation_dir / ".lock"):
            return Rotation(self, echo=self.echo, timeout_s=timeout_s).run(step, force=force)
