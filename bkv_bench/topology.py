"""The topology `bkv-bench --cluster-up` starts: the bundled one, resized and with load-test limits.

The bundled frontends allow 200 calls/s per peer address; every bench client shares one address
(127.0.0.1), so that limit, not the cluster, would cap a run at ~100 recoveries/s per frontend.
`bench_topology` raises the frontend limits by default (`keep_limits=True` keeps them) and says so
in bench.json.
"""

from __future__ import annotations

from dataclasses import replace

from deploy.topology import FrontendLimits, Topology, VaultNode

# Vault nodes per data centre when the bundled topology is used and no size is given: one node
# per data centre cost 0.68x the CPU per recovery of two, with 1.69x the throughput and half the
# p99, in three alternating pairs (docs/performance.md, tenth session). The bundled topology keeps
# two (the tests' failover inside a data centre); `--nodes-per-dc 2` measures that layout.
BENCH_NODES_PER_DC = 1

BENCH_LIMITS = FrontendLimits(
    account_rate_per_s=1000.0,
    account_burst=2000,
    peer_rate_per_s=1_000_000.0,
    peer_burst=1_000_000,
)


def bench_topology(
    base: Topology,
    *,
    nodes_per_dc: int | None = None,
    nodes: int | None = None,
    keep_limits: bool = False,
    event_loop: str | None = None,
    etcd_gomaxprocs: int | None = None,
) -> Topology:
    """`base` with `nodes_per_dc` nodes in every data centre, or `nodes` spread round-robin,
    the bench's raised frontend limits unless `keep_limits`, and `event_loop` and
    `etcd_gomaxprocs` if given.

    >>> from deploy.topology import default_topology_path, load_topology
    >>> t = bench_topology(load_topology(default_topology_path()), nodes=4)
    >>> [n.name for n in t.nodes]
    ['dc-a-node-1', 'dc-b-node-1', 'dc-c-node-1', 'dc-a-node-2']
    """
    if nodes_per_dc is not None and nodes is not None:
        raise ValueError("give nodes_per_dc or nodes, not both")
    topology = base
    if nodes_per_dc is not None or nodes is not None:
        dcs = base.datacenters
        total = nodes if nodes is not None else len(dcs) * (nodes_per_dc or 0)
        if total < 1:
            raise ValueError("at least one vault node is needed")
        made = tuple(
            VaultNode(name=f"{dcs[i % len(dcs)]}-node-{i // len(dcs) + 1}", dc=dcs[i % len(dcs)])
            for i in range(total)
        )
        topology = replace(topology, nodes=made)
    if not keep_limits:
        topology = replace(
            topology,
            limits=replace(
                BENCH_LIMITS,
                max_request_bytes=base.limits.max_request_bytes,
                node_deadline_s=base.limits.node_deadline_s,
            ),
        )
    if event_loop is not None:
        topology = replace(topology, options=replace(topology.options, event_loop=event_loop))
    if etcd_gomaxprocs is not None:
        options = replace(topology.options, etcd_gomaxprocs=etcd_gomaxprocs)
        topology = replace(topology, options=options)
    topology.validate()
    return topology
