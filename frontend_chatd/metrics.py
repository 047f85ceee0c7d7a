"""The frontend's Prometheus metrics: their definitions, and the small hooks the frontend calls.

Every metric lives in a `CollectorRegistry` of the frontend's own (never prometheus_client's
global one), so that tests can run several frontends in one process; `MetricsServer` exposes it
over HTTP on the configured `frontend.metrics_address`.

Security: labels come only from fixed enums (the RPC, its gRPC outcome, the rate limit's scope)
and from the vault nodes' names (at most `MAX_NODE_LABELS` of them; names come from the nodes'
membership keys, which only vault nodes may write). Never an account id, session, peer address,
envelope or any other client-derived value. The frontend cannot see a recovery's protocol
outcome (it is sealed): the nodes' metrics count those.

Cost: each hook is one child looked up in a dict and `perf_counter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from bkv.v1 import node_pb2
from frontend_chatd.ratelimit import RateLimited
from frontend_chatd.relay import OpenCall
from frontend_chatd.routing import NodeInfo
from vault_common.metrics_http import Children, process_registry

RPCS = ("GetChallenge", "Login", "ChangeKey", "Relay", "GetFleet")
# The gRPC status the frontend answered, lower case, and "rate_limited" for its own refusals
# (RESOURCE_EXHAUSTED from a rate limit; "resource_exhausted" is then an oversized request).
OUTCOMES = (
    "ok",
    "rate_limited",
    "unauthenticated",
    "invalid_argument",
    "resource_exhausted",
    "failed_precondition",
    "unavailable",
    "data_loss",
    "deadline_exceeded",
    "cancelled",
    "permission_denied",
    "internal",
)
SCOPES = ("account", "peer")
MAX_NODE_LABELS = 64  # distinct node names labelled; any further one is counted as "other"
# Seconds: a relay is one vault-node call (1-2 ms on loopback, up to the node deadline).
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class FrontendMetrics:
    """Every metric of one frontend process, in `registry`."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_collectors: bool = True
    ) -> None:
        self.registry = process_registry(registry, process_collectors=process_collectors)
        r = self.registry
        self.requests = Counter(
            "bkv_frontend_requests", "Frontend RPCs by RPC and outcome", ("rpc", "outcome"),
            registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "bkv_frontend_request_duration_seconds", "Frontend RPC latency by RPC", ("rpc",),
            registry=r, buckets=BUCKETS,
        )  # fmt: skip
        self.rate_limited = Counter(
            "bkv_frontend_rate_limited", "requests refused by a rate limit, by its scope",
            ("scope",), registry=r,
        )  # fmt: skip
        self.relays = Counter(
            "bkv_frontend_relays", "calls to vault nodes by node and gRPC outcome",
            ("node", "outcome"), registry=r,
        )  # fmt: skip
        self.relay_seconds = Histogram(
            "bkv_frontend_relay_duration_seconds", "latency of calls to vault nodes, by node",
            ("node",), registry=r, buckets=BUCKETS,
        )  # fmt: skip
        self.serving = Gauge(
            "bkv_frontend_serving", "1 while the frontend serves (it knows a vault node)",
            registry=r,
        )  # fmt: skip
        self.nodes = Gauge(
            "bkv_frontend_nodes", "vault nodes the frontend knows from etcd", registry=r
        )
        # Each child resolved once, on first use.
        self._requests = Children(self.requests)
        self._request_seconds = Children(self.request_seconds)
        self._rate_limited = Children(self.rate_limited)
        self._relays = Children(self.relays)
        self._relay_seconds = Children(self.relay_seconds)
        self._outcomes = frozenset(OUTCOMES)
        self._rpcs = frozenset(RPCS)
        self._node_names: set[str] = set()

    def _outcome(self, code: str) -> str:
        """The outcome label of gRPC status `code`: its name in lower case, from `OUTCOMES`."""
        outcome = code.lower()
        return outcome if outcome in self._outcomes else "internal"

    def request(self, rpc: str, code: str, error: BaseException | None, seconds: float) -> None:
        """One RPC answered with gRPC status `code` (its name: "OK", "UNAVAILABLE", ...)."""
        rpc = rpc if rpc in self._rpcs else "other"
        if isinstance(error, RateLimited):
            outcome = "rate_limited"
            scope = error.scope if error.scope in SCOPES else "other"
            self._rate_limited.get((scope,)).inc()
        else:
            outcome = self._outcome(code)
        self._requests.get((rpc, outcome)).inc()
        self._request_seconds.get((rpc,)).observe(seconds)

    def relayed(self, node: str, code: str, seconds: float) -> None:
        """One call to vault node `node` that ended with gRPC status `code` after `seconds`."""
        if node not in self._node_names:
            if len(self._node_names) >= MAX_NODE_LABELS:
                node = "other"
            else:
                self._node_names.add(node)
        self._relays.get((node, self._outcome(code))).inc()
        self._relay_seconds.get((node,)).observe(seconds)

    def timed_open(self, open_call: OpenCall) -> OpenCall:
        """`open_call` with each call to a node timed and counted by node and outcome."""
        import grpc

        async def call(
            node: NodeInfo, request: node_pb2.OpenRequest, timeout: float
        ) -> node_pb2.OpenReply:
            started = time.perf_counter()
            code = "INTERNAL"
            try:
                reply = await open_call(node, request, timeout)
                code = "OK"
                return reply
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                raise
            finally:
                self.relayed(node.name, code, time.perf_counter() - started)

        return call

    def watch_state(self, *, serving: Callable[[], bool], nodes: Callable[[], int]) -> None:
        """Gauges read when scraped (Python state only, on the HTTP server's thread)."""
        self.serving.set_function(lambda: 1.0 if serving() else 0.0)
        self.nodes.set_function(lambda: float(nodes()))
