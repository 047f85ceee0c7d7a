"""The vault node's Prometheus metrics: their definitions, and the small hooks the node calls.

Every metric lives in a `CollectorRegistry` of the node's own (never prometheus_client's global
one), so that tests can run several nodes in one process; `serve` exposes it over HTTP on the
configured `node.metrics_address`.

Security: no label or value is derived from a client: labels come only from fixed enums (the
operation inside the envelope, the outcome, the etcd call, the token operation and fleet key
label, the audit event), never an account id, record id, password, key or token. Counts by
outcome are still aggregate facts about users (how many guesses failed): the metrics address is
for operators only, on loopback in the local cluster (`vault_common.metrics_http`).

Evaluations and lockouts are counted by `AuditedSink`, inside the call that writes (and
flushes) the audit line, so that the metrics and the audit log cannot disagree.

Cost: the recovery path is CPU-bound, so each hook is one pre-resolved child (no label lookup
per call) and `perf_counter`; `bkv_bench/metrics_overhead.py` measures it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from bkv.v1 import envelope_pb2
from vault_common.audit_line import AuditEntry, EventName
from vault_common.metrics_http import Children, process_registry
from vault_node.audit import AuditEvent, AuditSink

# The operations a sealed request can carry (envelope.proto's `op` oneof), and "unknown" for
# a request refused before its envelope opened.
OPS = (
    "register_start",
    "register_finish",
    "recover_start",
    "recover_finish",
    "begin",
    "delete",
    "status",
    "unknown",
)
# What a request ended with: the protocol outcome inside the sealed response, or the error the
# node answered instead (vault_node.server.outcome_for maps each error to one of these).
OUTCOMES = (
    "ok",
    "invalid_password",
    "locked",
    "not_registered",
    "refused",
    "auth_refused",  # the account signature does not admit the request (issue 17)
    "auth_stale",  # a replayed (or clock-behind) signed request
    "invalid_argument",
    "failed_precondition",
    "unavailable",
    "write_unconfirmed",
    "tampered",
    "store_refused",
    "data_loss",
    "internal",
    "cancelled",
)
_PROTOCOL_OUTCOMES = {
    envelope_pb2.OUTCOME_OK: "ok",
    envelope_pb2.OUTCOME_INVALID_PASSWORD: "invalid_password",
    envelope_pb2.OUTCOME_LOCKED: "locked",
    envelope_pb2.OUTCOME_NOT_REGISTERED: "not_registered",
    envelope_pb2.OUTCOME_REFUSED: "refused",  # a registration above the node's max_attempts cap
}
AUDIT_EVENTS: tuple[AuditEvent, ...] = get_args(EventName)  # the audit line's own list
ETCD_CALLS = (
    "read",
    "write",
    "write_many",
    "read_heads",
    "probe",
    "compact",
    "lease_grant",
    "lease_keep_alive",
    "put_leased",
    "lease_revoke",
    "ping",
)
# The token operations on the request path (records.TokenOps) and the fleet key labels they
# name; anything else is "other" (labels stay a fixed, small set whatever a caller passes).
TOKEN_OPS = ("ecdh", "kem_public_key", "aes_gcm_seal", "aes_gcm_open", "hmac_sha512",
             "hmac_sha256")  # fmt: skip
TOKEN_KEYS = ("kem", "record", "ticket", "oprf_seed", "ake_seed", "id_mac", "witness", "other")
# How a node had the head of each of its committed writes witnessed (VaultService._witness), and
# how its capture requests went to peer witnesses (PeerWitness).
WITNESS_CAPTURES = ("majority", "lazy", "local", "confirm")
WITNESS_ASKS = ("stream", "unary", "told")
WITNESS_VERDICTS = ("captured", "behind", "rollback", "not_ready")

# Seconds. Requests: 0.5 ms (a status from the cache) .. 10 s (etcd elections, witness
# timeouts). Token operations: 10 µs .. 50 ms.
REQUEST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                   5.0, 10.0)  # fmt: skip
TOKEN_BUCKETS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 0.001, 0.002, 0.005, 0.01, 0.05)


class RequestMeter:
    """One `VaultNode.Open` call: the service names its operation and outcome, the servicer
    ends it (`done`) with the outcome of an error if there was one."""

    __slots__ = ("_metrics", "_started", "op", "outcome")

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics
        self._started = time.perf_counter()
        self.op = "unknown"
        self.outcome = "ok"

    def answered(self, op: str | None, outcome: int) -> None:
        """The service answered `op` with protocol `outcome` (envelope_pb2.Outcome)."""
        self.op = op if op in self._metrics.op_names else "unknown"
        self.outcome = _PROTOCOL_OUTCOMES.get(outcome, "ok")

    def opened(self, op: str | None) -> None:
        """The envelope opened and carries `op` (so an error after this names its operation)."""
        self.op = op if op in self._metrics.op_names else "unknown"

    def done(self, error_outcome: str | None = None) -> None:
        outcome = error_outcome or self.outcome
        self._metrics.finish(self.op, outcome, time.perf_counter() - self._started)


class NodeMetrics:
    """Every metric of one vault node process, in `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 process_collectors: bool = True) -> None:  # fmt: skip
        self.registry = process_registry(registry, process_collectors=process_collectors)
        r = self.registry
        self.op_names = frozenset(OPS)
        self.requests = Counter(
            "bkv_node_requests", "VaultNode.Open requests by operation and outcome",
            ("op", "outcome"), registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "bkv_node_request_duration_seconds", "VaultNode.Open latency by operation",
            ("op",), registry=r, buckets=REQUEST_BUCKETS,
        )  # fmt: skip
        self.audit_events = Counter(
            "bkv_node_audit_events", "audit lines written, by event", ("event",), registry=r
        )
        self.evaluations = Counter(
            "bkv_node_password_evaluations",
            "guesses evaluated (OPRF run after the counted attempt committed): audit 'evaluate'",
            registry=r,
        )
        self.lockouts = Counter(
            "bkv_node_lockouts", "records erased for too many wrong guesses: audit 'lock'",
            registry=r,
        )  # fmt: skip
        self.rollback_alarms = Counter(
            "bkv_node_witness_rollback_alarms",
            "writes refused because a witness showed the group's head rolled back: audit "
            "'rollback'",
            registry=r,
        )
        self.cas_conflicts = Counter(
            "bkv_node_cas_conflicts", "compare-and-swap writes that lost to another write",
            registry=r,
        )  # fmt: skip
        self.cas_retries = Counter(
            "bkv_node_cas_retries", "compare-and-swap decisions taken again (after a conflict "
            "or a confirmation of the group's head)", registry=r,
        )  # fmt: skip
        self.cas_exhausted = Counter(
            "bkv_node_cas_exhausted", "requests refused UNAVAILABLE after too many conflicts",
            registry=r,
        )  # fmt: skip
        self.etcd_seconds = Histogram(
            "bkv_node_etcd_call_duration_seconds", "etcd calls of the node's store, by call",
            ("call",), registry=r, buckets=REQUEST_BUCKETS,
        )  # fmt: skip
        self.etcd_errors = Counter(
            "bkv_node_etcd_call_errors", "etcd calls that failed (unavailable, refused, timed "
            "out), by call", ("call",), registry=r,
        )  # fmt: skip
        self.token_seconds = Histogram(
            "bkv_node_token_op_duration_seconds", "PKCS#11 token operations, by operation and "
            "fleet key label", ("op", "key"), registry=r, buckets=TOKEN_BUCKETS,
        )  # fmt: skip
        self.witness_captures = Counter(
            "bkv_node_witness_captures", "heads this node had witnessed, by kind: majority "
            "(awaited: a guess, lock, delete or registration), lazy (sent, not awaited), local "
            "(a finish on a head this node saw witnessed: its own witness only, no message), "
            "confirm (a head read from etcd, before writing on it)", ("kind",), registry=r,
        )  # fmt: skip
        self.witness_asks = Counter(
            "bkv_node_witness_asks", "capture requests this node sent to peer witnesses, by "
            "transport (stream: a pooled Captures stream; unary: a Capture call; told: a frame "
            "that only tells a peer the captures a majority took without it)", ("how",),
            registry=r,
        )  # fmt: skip
        self.witness_verdicts = Counter(
            "bkv_node_witness_verdicts", "captures this node's witness judged, by verdict "
            "(captured, behind: its chain lacks the base, rollback, not_ready) and source "
            "(asked: answered to the writer; told: taken by a majority without it, answered to "
            "no one)", ("verdict", "source"), registry=r,
        )  # fmt: skip
        self.serving = Gauge(
            "bkv_node_serving", "1 while the node serves (registered, etcd fresh, no alarm)",
            registry=r,
        )  # fmt: skip
        self.lease_age = Gauge(
            "bkv_node_lease_age_seconds", "seconds since the membership lease's last "
            "successful etcd round trip (the node stops serving at lease_ttl_s; NaN before "
            "the first)", registry=r,
        )  # fmt: skip
        self.store_alarm = Gauge(
            "bkv_node_store_alarm", "1 while the store guard's rollback alarm is latched",
            registry=r,
        )  # fmt: skip
        self.group_alarms = Gauge(
            "bkv_node_group_alarms", "record groups refused after a witness showed them rolled "
            "back (latched until an operator clears them)", registry=r,
        )  # fmt: skip
        # Each child resolved once, on first use (a series appears when it first counts):
        # a hook then costs a dict read and the child's locked add.
        self._requests = Children(self.requests)
        self._request_seconds = Children(self.request_seconds)
        self._audit = Children(self.audit_events)
        self._etcd = Children(self.etcd_seconds)
        self._etcd_errors = Children(self.etcd_errors)
        self._token = Children(self.token_seconds)
        self._audit_events = frozenset(AUDIT_EVENTS)
        self._etcd_calls = frozenset(ETCD_CALLS)
        self._token_ops = frozenset(TOKEN_OPS)
        self._token_keys = frozenset(TOKEN_KEYS)
        self._outcomes = frozenset(OUTCOMES)

    # -- requests --

    def request(self) -> RequestMeter:
        """Start metering one Open call (see `RequestMeter`)."""
        return RequestMeter(self)

    def finish(self, op: str, outcome: str, seconds: float) -> None:
        key = (op, outcome if outcome in self._outcomes else "internal")
        self._requests.get(key).inc()
        self._request_seconds.get((op,)).observe(seconds)

    # -- audit --

    def audited(self, sink: AuditSink) -> AuditedSink:
        """`sink` with every line it writes counted (see `AuditedSink`)."""
        return AuditedSink(sink, self)

    def audit_written(self, event: AuditEvent) -> None:
        if event in self._audit_events:
            self._audit.get((event,)).inc()
        if event == "evaluate":
            self.evaluations.inc()
        elif event == "lock":
            self.lockouts.inc()
        elif event == "rollback":
            self.rollback_alarms.inc()

    # -- compare-and-swap --

    def cas_conflict(self) -> None:
        self.cas_conflicts.inc()

    def cas_retry(self) -> None:
        self.cas_retries.inc()

    def cas_gave_up(self) -> None:
        self.cas_exhausted.inc()

    # -- witnesses --

    def witness_capture(self, kind: str) -> None:
        if kind in WITNESS_CAPTURES:
            self.witness_captures.labels(kind).inc()

    def witness_ask(self, how: str) -> None:
        if how in WITNESS_ASKS:
            self.witness_asks.labels(how).inc()

    def witness_verdict(self, verdict: str, told: bool) -> None:
        if verdict in WITNESS_VERDICTS:
            self.witness_verdicts.labels(verdict, "told" if told else "asked").inc()

    # -- etcd and the token --

    def etcd_call(self, call: str, seconds: float, ok: bool) -> None:
        if call not in self._etcd_calls:
            return
        self._etcd.get((call,)).observe(seconds)
        if not ok:
            self._etcd_errors.get((call,)).inc()

    def token_op(self, op: str, key: str, seconds: float) -> None:
        if op in self._token_ops:
            key = key.partition(".")[0]  # one label per key, whatever its fleet epoch
            key = key if key in self._token_keys else "other"
            self._token.get((op, key)).observe(seconds)

    def metered_token(self, token: Any) -> MeteredToken:
        """`token` with its request-path operations timed (every other attribute as is)."""
        return MeteredToken(token, self)

    # -- state, read when scraped (on the HTTP server's thread: Python state only, never
    # the token, whose calls must all come from the event loop's thread) --

    def watch_state(
        self,
        *,
        serving: Callable[[], bool],
        lease_age_s: Callable[[], float],
        store_alarm: Callable[[], str],
        alarmed_groups: Callable[[], int],
    ) -> None:
        self.serving.set_function(lambda: 1.0 if serving() else 0.0)
        self.lease_age.set_function(lease_age_s)
        self.store_alarm.set_function(lambda: 1.0 if store_alarm() else 0.0)
        self.group_alarms.set_function(lambda: float(alarmed_groups()))


class AuditedSink(AuditSink):
    """An `AuditSink` that counts each line after the wrapped sink wrote it: the one place
    evaluations, lockouts and rollback alarms are counted, so they agree with the audit log."""

    def __init__(self, sink: AuditSink, metrics: NodeMetrics) -> None:
        self._sink = sink
        self._metrics = metrics

    def record(self, entry: AuditEntry) -> None:
        self._sink.record(entry)
        self._metrics.audit_written(entry.event)


class MeteredToken:
    """The node's token with `records.TokenOps`' operations timed; everything else (sessions,
    data objects, close) passes through untouched. Key labels are fleet key labels, a fixed
    set (`TOKEN_KEYS`): never data."""

    def __init__(self, token: Any, metrics: NodeMetrics) -> None:
        self._token = token
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._token, name)

    def _timed(self, op: str, key: str, call: Callable[..., Any], *args: Any) -> bytes:
        started = time.perf_counter()
        try:
            return bytes(call(*args))
        finally:
            self._metrics.token_op(op, key, time.perf_counter() - started)

    def ecdh(self, peer_point: bytes, label: str = "kem") -> bytes:
        return self._timed("ecdh", "kem", self._token.ecdh, peer_point, label)

    def kem_public_key(self, label: str = "kem") -> bytes:
        return self._timed("kem_public_key", "kem", self._token.kem_public_key, label)

    def aes_gcm_seal(self, label: str, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._timed(
            "aes_gcm_seal", label, self._token.aes_gcm_seal, label, nonce, plaintext, aad
        )

    def aes_gcm_open(self, label: str, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return self._timed(
            "aes_gcm_open", label, self._token.aes_gcm_open, label, nonce, ciphertext, aad
        )

    def hmac_sha512(self, label: str, data: bytes) -> bytes:
        return self._timed("hmac_sha512", label, self._token.hmac_sha512, label, data)

    def hmac_sha256(self, label: str, data: bytes) -> bytes:
        return self._timed("hmac_sha256", label, self._token.hmac_sha256, label, data)
