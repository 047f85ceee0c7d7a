"""Network namespaces for `partition-dc`: what is possible here, and a lab that cleans up.

The partition scenario needs every data centre's processes inside a network namespace of its
own, joined by veth pairs with link-local (169.254.x.y) addresses, so that `ip link set <veth>
down` cuts one data centre off and `up` heals it (the kernel has no netem, and no iptables: see
PLATFORM.md). `NetnsLab` creates such namespaces and links and removes them again, also when the
caller fails. What is missing is a cluster that starts its processes inside them:
`deploy.cluster.Cluster` binds every process to the topology's one loopback host in the root
namespace (`Topology.problems` refuses a non-loopback host), so the scenario is skipped with
that reason until deploy/cluster.py offers a per-process command prefix and a per-DC host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

IP_TIMEOUT_S = 10.0

# What deploy/cluster.py would need for partition-dc (reported by the skip message).
CLUSTER_HOOK_NEEDED = (
    "deploy/cluster.py starts every process on the topology's loopback host in the root "
    "namespace; partition-dc needs (1) a per-DC bind/advertise host (e.g. 169.254.<dc>.1) in "
    "Topology/configs with certificate SANs for it, and (2) a per-process command prefix "
    "(['ip', 'netns', 'exec', NS]) in Cluster._spec, so that each DC runs in its own namespace"
)


def missing_privileges() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "partition-dc needs root (network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "partition-dc needs the `ip` command (iproute2)"
    return None


def unsupported_reason(cluster: Any) -> str:
    """The message `partition-dc` is skipped with on this cluster."""
    return missing_privileges() or CLUSTER_HOOK_NEEDED


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT_S)


@dataclass
class NetnsLab:
    """Namespaces `<prefix>-<i>` linked pairwise by veths with 169.254.<pair>.<1|2>/30.

    Only what this object created is removed; names carry a prefix of the caller's choosing
    (unique per run) so that nothing else is touched.
    """

    prefix: str
    count: int
    namespaces: list[str] = field(default_factory=list)
    links: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)

    def validate(self) -> None:
        problems = []
        if not 2 <= self.count <= 8:
            problems.append("count must be in 2..8")
        if not self.prefix.isalnum() or len(self.prefix) > 6:
            problems.append("prefix must be 1..6 alphanumerics (interface names are short)")
        if problems:
            raise ValueError("netns lab: " + "; ".join(problems))

    def __enter__(self) -> NetnsLab:
        self.validate()
        try:
            for i in range(self.count):
                name = f"{self.prefix}-{i}"
                _ip("netns", "add", name)
                self.namespaces.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
            pair = 0
            for i in range(self.count):
                for j in range(i + 1, self.count):
                    pair += 1
                    a, b = f"{self.prefix}{i}{j}a", f"{self.prefix}{i}{j}b"
                    _ip("link", "add", a, "netns", self.namespaces[i], "type", "veth",
                        "peer", "name", b, "netns", self.namespaces[j])  # fmt: skip
                    self.links[(i, j)] = (a, b)
                    for ns, dev, host in ((i, a, 1), (j, b, 2)):
                        addr = f"169.254.{pair}.{host}/30"
                        _ip("-n", self.namespaces[ns], "addr", "add", addr, "dev", dev)
                        _ip("-n", self.namespaces[ns], "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    def links_of(self, index: int) -> Sequence[tuple[str, str]]:
        """(namespace, device) of every veth end in namespace `index`."""
        out = []
        for (i, j), (a, b) in self.links.items():
            if i == index:
                out.append((self.namespaces[i], a))
            if j == index:
                out.append((self.namespaces[j], b))
        return out

    def set_links(self, index: int, up: bool) -> None:
        """Cut (up=False) or heal every link of namespace `index`."""
        for ns, dev in self.links_of(index):
            _ip("-n", ns, "link", "set", dev, "up" if up else "down")

    def close(self) -> None:
        # Deleting a namespace deletes its veth ends, and with them their peers.
        for name in reversed(self.namespaces):
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=IP_TIMEOUT_S,
                check=False,
            )  # fmt: skip
        self.namespaces.clear()
        self.links.clear()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
