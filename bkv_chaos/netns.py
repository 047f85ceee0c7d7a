"""Network namespaces for `partition-dc`: one namespace per data centre, made and removed per run.

    with NetnsLab.create(("dc-a", "dc-b", "dc-c")) as lab:
        cluster.up(lab.apply(topology))     # every DC's processes run in its namespace
        lab.partition("dc-a")              # dc-a's links to the other DCs go down
        lab.heal("dc-a")                   # up again, routes restored
    # namespaces and veths are gone (also when the block raised)

Layout, all inside one link-local /24 `169.254.X.0/24` chosen per run (X not used by any address
or route of the host namespace):

* namespace `bkv-<run>-<dc>` per data centre, loopback up;
* a host link per DC: veth `bkv<run>h<i>` in the host namespace (169.254.X.4i+1/30) to `host0`
  in the DC's namespace (169.254.X.4i+2/30). The DC end's address is the DC's host: every
  process of the DC binds and advertises it, and the host namespace (the tool, its clients,
  health checks) reaches it on-link;
* a mesh link per pair of DCs i<j: `dc<j>` in i's namespace (169.254.X.128+4p+1/30) to `dc<i>`
  in j's (…+2), and in each a /32 route to the other DC's host through it.

Nothing routes between the host namespace and the mesh, so traffic between DCs crosses only the
mesh links: `partition(dc)` sets that DC's mesh links down on both ends (the kernel also drops
their routes) while its host link stays up — clients still reach its frontend, the "minority
side". `heal(dc)` sets them up and puts the routes back. The kernel has no netem and there is no
iptables (PLATFORM.md): a link that is down is the only network fault made here.

Only what this object created is removed; names carry a random per-run id, so parallel runs
never collide and nothing else is touched. Stop the processes in the namespaces first.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path

from deploy.cluster import Cluster
from deploy.topology import DcNetwork, Topology

IP_TIMEOUT_S = 10.0
GONE_TIMEOUT_S = 10.0
MAX_DCS = 8  # host links use 169.254.X.0-31, mesh links 169.254.X.128-239
_RUN_ID = re.compile(r"^[a-z0-9]{4,6}$")


def missing_privileges() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "partition-dc needs root (network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "partition-dc needs the `ip` command (iproute2)"
    return None


NO_LAB = (
    "partition-dc needs a cluster whose data centres run in network namespaces made by this run:"
    " use `bkv-chaos --cluster-up` (which makes them when it runs as root)"
)


def _ip(*args: str) -> str:
    done = subprocess.run(
        ["ip", *args], check=False, capture_output=True, text=True, timeout=IP_TIMEOUT_S
    )
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _used_subnets() -> set[int]:
    """Third octets of 169.254.X.* already in the host namespace's addresses or routes."""
    text = _ip("-4", "addr", "show") + _ip("-4", "route", "show", "table", "all")
    return {int(x) for x in re.findall(r"169\.254\.(\d+)\.", text)}


def choose_subnet(used: set[int], rng: random.Random) -> int:
    """A free X for 169.254.X.0/24 (never 0, 255, or 169: cloud metadata lives there)."""
    free = [x for x in range(1, 255) if x != 169 and x not in used]
    if not free:
        raise OSError("no free 169.254.X.0/24 left in the host namespace")
    return rng.choice(free)


@dataclass
class NetnsLab:
    """The namespaces and links of one run (see the module docstring)."""

    run_id: str
    dcs: tuple[str, ...]
    subnet: int
    namespaces: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)
    partitioned: set[str] = field(default_factory=set)

    def problems(self) -> list[str]:
        out = []
        if not _RUN_ID.match(self.run_id):
            out.append("run_id must be 4..6 lowercase letters or digits (interface names)")
        if not 2 <= len(self.dcs) <= MAX_DCS:
            out.append(f"between 2 and {MAX_DCS} data centres are needed")
        if len(set(self.dcs)) != len(self.dcs):
            out.append("data centre names repeat")
        if not 1 <= self.subnet <= 254 or self.subnet == 169:
            out.append("subnet must be in 1..254 and not 169")
        return out

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("netns lab: " + "; ".join(problems))

    @classmethod
    def create(cls, dcs: Sequence[str], rng: random.Random | None = None) -> NetnsLab:
        """Make the namespaces and links for `dcs` now (removed again if that fails)."""
        rng = rng or random.Random(os.urandom(8))
        run_id = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(6))
        lab = cls(run_id, tuple(dcs), choose_subnet(_used_subnets(), rng))
        lab.validate()
        try:
            lab._build()
        except BaseException:
            lab.close()
            raise
        return lab

    # -- names and addresses ------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """What every namespace of this run starts with."""
        return f"bkv-{self.run_id}-"

    def namespace(self, dc: str) -> str:
        return f"{self.prefix}{dc}"

    def host_link(self, i: int) -> str:
        return f"bkv{self.run_id}h{i}"

    def _addr(self, last: int) -> str:
        return f"169.254.{self.subnet}.{last}"

    def dc_host(self, dc: str) -> str:
        """The address the processes of `dc` bind (its end of the host link)."""
        return self._addr(4 * self.dcs.index(dc) + 2)

    def _pairs(self) -> list[tuple[int, int]]:
        return list(combinations(range(len(self.dcs)), 2))

    def _mesh_addr(self, i: int, j: int, side: int) -> str:
        p = self._pairs().index((min(i, j), max(i, j)))
        return self._addr(128 + 4 * p + side)

    # -- building ----------------------------------------------------------------------------

    def _build(self) -> None:
        for dc in self.dcs:
            ns = self.namespace(dc)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for i, dc in enumerate(self.dcs):
            ns, dev = self.namespace(dc), self.host_link(i)
            _ip("link", "add", dev, "type", "veth", "peer", "name", "host0", "netns", ns)
            self.host_links.append(dev)
            _ip("addr", "add", f"{self._addr(4 * i + 1)}/30", "dev", dev)
            _ip("link", "set", dev, "up")
            _ip("-n", ns, "addr", "add", f"{self.dc_host(dc)}/30", "dev", "host0")
            _ip("-n", ns, "link", "set", "host0", "up")
        for i, j in self._pairs():
            ns_i, ns_j = self.namespace(self.dcs[i]), self.namespace(self.dcs[j])
            _ip("-n", ns_i, "link", "add", f"dc{j}", "type", "veth",
                "peer", "name", f"dc{i}", "netns", ns_j)  # fmt: skip
            _ip("-n", ns_i, "addr", "add", f"{self._mesh_addr(i, j, 1)}/30", "dev", f"dc{j}")
            _ip("-n", ns_j, "addr", "add", f"{self._mesh_addr(i, j, 2)}/30", "dev", f"dc{i}")
            self._set_pair(i, j, up=True)

    def _set_pair(self, i: int, j: int, *, up: bool) -> None:
        """Both ends of the mesh link i-j up (with each side's route to the other) or down."""
        ends = ((i, j, 2), (j, i, 1))  # (this DC, the other DC, the other end's side)
        for this, other, _ in ends:
            _ip("-n", self.namespace(self.dcs[this]), "link", "set", f"dc{other}",
                "up" if up else "down")  # fmt: skip
        if up:
            # Setting a link down drops its routes: put them back at every heal.
            for this, other, side in ends:
                # `src` = this DC's host: etcd checks a peer's address against its
                # certificate (IP SANs of the DC host), not the mesh link's address.
                _ip("-n", self.namespace(self.dcs[this]), "route", "replace",
                    f"{self.dc_host(self.dcs[other])}/32",
                    "via", self._mesh_addr(i, j, side), "dev", f"dc{other}",
                    "src", self.dc_host(self.dcs[this]))  # fmt: skip

    # -- use ---------------------------------------------------------------------------------

    def apply(self, topology: Topology) -> Topology:
        """`topology` with every DC on its namespace's host, its processes run inside it."""
        missing = [dc for dc in topology.datacenters if dc not in self.dcs]
        if missing:
            raise ValueError(f"netns lab has no namespace for {', '.join(missing)}")
        networks = tuple(
            DcNetwork(dc, self.dc_host(dc), ("ip", "netns", "exec", self.namespace(dc)))
            for dc in topology.datacenters
        )
        return replace(topology, networks=networks)

    def partition(self, dc: str) -> None:
        """Cut `dc` off from every other DC (its host link stays up)."""
        i = self.dcs.index(dc)
        self.partitioned.add(dc)
        for j in range(len(self.dcs)):
            if j != i:
                self._set_pair(i, j, up=False)

    def heal(self, dc: str) -> None:
        """Undo `partition(dc)`: the links up and their routes back."""
        i = self.dcs.index(dc)
        for j in range(len(self.dcs)):
            if j != i:
                self._set_pair(i, j, up=True)
        self.partitioned.discard(dc)

    def leftovers(self) -> list[str]:
        """Namespaces and host-namespace links of this run that still exist."""
        names = _ip("netns", "list")
        links = _ip("-o", "link", "show")
        found = re.findall(rf"^({re.escape(self.prefix)}\S+)", names, re.MULTILINE)
        found += re.findall(rf"\d+: (bkv{self.run_id}h\d+)[@:]", links)
        return found

    def close(self) -> None:
        """Remove every link and namespace this lab made; wait until they are gone."""
        for dev in reversed(self.host_links):  # deleting one end deletes its peer too
            subprocess.run(["ip", "link", "del", dev], capture_output=True,
                           timeout=IP_TIMEOUT_S, check=False)  # fmt: skip
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                           timeout=IP_TIMEOUT_S, check=False)  # fmt: skip
        self.host_links.clear()
        self.namespaces.clear()
        # The kernel tears a namespace down asynchronously: wait for it (bounded).
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def netns_cluster(
    directory: Path,
    topology: Topology,
    *,
    fsync: bool = False,
    echo: Callable[[str], None] = lambda _m: None,
) -> Iterator[tuple[Cluster, NetnsLab]]:
    """A cluster in `directory` whose data centres run in a fresh `NetnsLab`; on exit the
    cluster is stopped (`down`, which waits for every process) and then the lab removed."""
    cluster = Cluster(directory, echo=echo)
    lab = NetnsLab.create(topology.datacenters)
    echo(f"network namespaces {lab.prefix}* on 169.254.{lab.subnet}.0/24")
    try:
        cluster.up(lab.apply(topology), fsync=fsync)
        yield cluster, lab
    finally:
        try:
            if cluster.exists():
                cluster.down()
        finally:
            lab.close()
