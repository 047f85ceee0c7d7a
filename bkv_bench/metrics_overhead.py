"""What the metrics cost a vault node per recovery (start + finish), in CPU.

    PYTHONPATH=.:protos python -m bkv_bench.metrics_overhead

Times each hook the node calls (a request meter, an audit line's counters, a token operation's
histogram, an etcd call's histogram, a CAS retry) in a loop, counts how many of each one
recovery makes (from the metrics of recoveries run through the real service over a software
token and an in-memory store), and compares their sum with the service's own CPU per recovery.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkv.v1 import envelope_pb2
from client import protocol
from vault_node.audit import MemoryAudit
from vault_node.metrics import NodeMetrics
from vault_node.service import ServiceConfig, TokenServerKeys, VaultService
from vault_node.soft_token import SoftToken
from vault_node.store import MemoryRecordStore
from vault_node.witnessing import LocalWitnesses
from vault_protocol import opaque
from vault_protocol.account_auth import AccountSigner
from vault_protocol.envelope import FleetKey
from vault_protocol.ksf import IdentityKsf

T = TypeVar("T")
N = 200_000
RECOVERIES = 200
CONFIG = opaque.OpaqueConfig(context=opaque.DEFAULT_CONTEXT, ksf=IdentityKsf())


def per_call_ns(fn: Callable[[], None], n: int = N) -> float:
    start = time.process_time_ns()  # CPU, as the service's cost below: the host may be busy
    for _ in range(n):
        fn()
    return (time.process_time_ns() - start) / n


def hook_costs() -> dict[str, float]:
    m = NodeMetrics()

    def request() -> None:
        meter = m.request()
        meter.opened("recover_start")
        meter.answered("recover_start", envelope_pb2.OUTCOME_OK)
        meter.done()

    return {
        "request": per_call_ns(request),
        "audit": per_call_ns(lambda: m.audit_written("evaluate")),
        "token": per_call_ns(lambda: m.token_op("hmac_sha256", "witness", 3e-5)),
        "etcd": per_call_ns(lambda: m.etcd_call("write", 2e-3, True)),
        "cas": per_call_ns(m.cas_retry),
    }


class Node:
    """The real node service (software token, in-memory store, local witnesses) and a client
    running the real protocol flows (`client.protocol`) against it, without gRPC."""

    def __init__(self) -> None:
        self.metrics = NodeMetrics(process_collectors=False)
        token = SoftToken()
        config = ServiceConfig(node_name="bench", ticket_ttl_ms=60_000)
        metered = self.metrics.metered_token(token)
        self.service = VaultService(
            token=metered, store=MemoryRecordStore(), keys=TokenServerKeys.derive(metered),
            config=config, clock_ms=lambda: int(time.time() * 1000), rng=os.urandom,
            audit=MemoryAudit(), witnesses=LocalWitnesses(["w1", "w2", "w3"], 256),
            metrics=self.metrics,
        )  # fmt: skip
        self.context = protocol.FlowContext(
            fleet=FleetKey(token.kem_public_key()),
            account_id="bench",
            signer=AccountSigner.from_private_key(Ed25519PrivateKey.generate()),
            opaque=CONFIG,
        )
        self.service_cpu_s = 0.0  # CPU seconds spent in the node's handler (client excluded)

    async def _relay(self, outbound: protocol.Outbound) -> bytes:
        meter = self.metrics.request()
        started = time.process_time()
        sealed = await self.service.handle("bench", outbound.envelope, meter)
        self.service_cpu_s += time.process_time() - started
        meter.done()
        return sealed

    async def _run(self, flow: protocol.Flow[T]) -> T:
        step = protocol.advance(flow)
        while not isinstance(step, protocol.Done):
            step = protocol.advance(flow, await self._relay(step))
        return step.value

    async def register(self) -> None:
        await self._run(protocol.register_flow(self.context, b"pw"))

    async def recover(self) -> float:
        """One recovery; the CPU seconds the node's calls took (client work excluded)."""
        before = self.service_cpu_s
        await self._run(protocol.recover_flow(self.context, b"pw"))
        return self.service_cpu_s - before


def hooks_per_recovery(node: Node, before: dict[str, float]) -> dict[str, float]:
    now = counts(node.metrics)
    return {k: (now[k] - before[k]) / RECOVERIES for k in now}


def counts(m: NodeMetrics) -> dict[str, float]:
    def total(sample_name: str) -> float:
        return sum(s.value for f in m.registry.collect() for s in f.samples
                   if s.name == sample_name)  # fmt: skip

    return {
        "request": total("bkv_node_requests_total"),
        "audit": total("bkv_node_audit_events_total"),
        "token": total("bkv_node_token_op_duration_seconds_count"),
        "etcd": total("bkv_node_etcd_call_duration_seconds_count"),
        "cas": total("bkv_node_cas_retries_total") + total("bkv_node_cas_conflicts_total"),
    }


async def main() -> None:
    costs = hook_costs()
    node = Node()
    await node.register()
    for _ in range(20):  # warm up
        await node.recover()
    before = counts(node.metrics)
    cpu = sum([await node.recover() for _ in range(RECOVERIES)]) / RECOVERIES
    per = hooks_per_recovery(node, before)
    overhead_ns = sum(costs[k] * per[k] for k in costs)
    print("hook          ns/call  calls/recovery")
    for k in costs:
        print(f"{k:<12} {costs[k]:8.0f}  {per[k]:6.1f}")
    print(f"metrics per recovery: {overhead_ns / 1000:.1f} µs of CPU "
          f"(the in-memory store's etcd calls are not timed here: add "
          f"{costs['etcd'] * 4 / 1000:.1f} µs for a real node's ~4)")  # fmt: skip
    print(f"service CPU per recovery (software token, in-memory store): {cpu * 1e6:.0f} µs; "
          f"metrics {100 * overhead_ns / 1e9 / cpu:.2f}% of it")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
