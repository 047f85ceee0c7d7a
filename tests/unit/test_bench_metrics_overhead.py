"""bkv_bench.metrics_overhead's node: the real service over the software token, driven by the
client's own protocol flows (so the tool follows the protocol instead of re-enacting it)."""

from __future__ import annotations

import asyncio

import pytest

from bkv_bench.metrics_overhead import Node, counts

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def test_a_recovery_through_the_real_service_is_counted_by_its_hooks() -> None:
    async def go() -> tuple[dict[str, float], dict[str, float], float]:
        node = Node()
        await node.register()
        before = counts(node.metrics)
        cpu = await node.recover()
        return before, counts(node.metrics), cpu

    before, after, cpu = asyncio.run(go())
    delta = {k: after[k] - before[k] for k in after}
    assert delta["request"] == 2  # two relays per operation (protocol 3)
    assert delta["audit"] == 2  # evaluate, then success
    assert delta["token"] > 0 and cpu > 0
