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

from bkv.v1 import envelope_pb2
from vault_node.audit import MemoryAudit
from vault_node.metrics import NodeMetrics
from vault_node.service import ServiceConfig, TokenServerKeys, VaultService
from vault_node.soft_token import SoftToken
from vault_node.store import MemoryRecordStore
from vault_node.witnessing import LocalWitnesses
from vault_protocol import opaque
from vault_protocol.backup_key import BackupKey, wrap_key
from vault_protocol.envelope import FleetKey, open_response, seal_request
from vault_protocol.ksf import IdentityKsf

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
    def __init__(self) -> None:
        self.metrics = NodeMetrics(process_collectors=False)
        token = SoftToken()
        config = ServiceConfig(node_name="bench", ticket_ttl_ms=60_000)
        self.fleet = FleetKey(token.kem_public_key())
        metered = self.metrics.metered_token(token)
        self.service = VaultService(
            token=metered, store=MemoryRecordStore(), keys=TokenServerKeys.derive(metered),
            config=config, clock_ms=lambda: int(time.time() * 1000), rng=os.urandom,
            audit=MemoryAudit(), witnesses=LocalWitnesses(["w1", "w2", "w3"], 256),
            metrics=self.metrics,
        )  # fmt: skip

    async def call(self, request: envelope_pb2.VaultRequest) -> envelope_pb2.VaultResponse:
        request.response_key = os.urandom(32)
        meter = self.metrics.request()
        sealed = await self.service.handle("bench", seal_request(self.fleet, "bench", request),
                                           meter)  # fmt: skip
        meter.done()
        return open_response(request.response_key, sealed)

    async def register(self) -> None:
        state, req = opaque.registration_start(b"pw", os.urandom)
        r1 = await self.call(envelope_pb2.VaultRequest(
            register_start=envelope_pb2.RegisterStart(registration_request=req)))  # fmt: skip
        record, export_key = opaque.registration_finish(
            state, r1.register_start.registration_response, CONFIG, os.urandom
        )
        wrapped = wrap_key(BackupKey.generate(os.urandom), export_key, "bench", os.urandom)
        await self.call(envelope_pb2.VaultRequest(register_finish=envelope_pb2.RegisterFinish(
            registration_record=record, wrapped_key=wrapped, ticket=r1.register_start.ticket,
        )))  # fmt: skip

    async def recover(self) -> float:
        """One recovery; the CPU seconds the two node calls took (client work excluded)."""
        state, ke1 = opaque.login_start(b"pw", os.urandom)
        request = envelope_pb2.VaultRequest(recover_start=envelope_pb2.RecoverStart(ke1=ke1))
        started = time.process_time()
        r1 = await self.call(request)
        spent = time.process_time() - started
        ke3, _, _ = opaque.login_finish(state, r1.recover_start.ke2, CONFIG)
        finish = envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(
            ke3=ke3, ticket=r1.recover_start.ticket))  # fmt: skip
        started = time.process_time()
        await self.call(finish)
        return spent + time.process_time() - started


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
