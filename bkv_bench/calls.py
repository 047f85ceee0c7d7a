"""What each operation made the vault nodes call: token operations and etcd calls, counted.

CPU per operation moves with the machine (a shared box gives 11 or 18 ms for one command on one
day); the number of PKCS#11 calls and etcd transactions an operation makes does not. `CallMeter`
reads every vault node's Prometheus endpoint when the measured phase starts and when it ends and
keeps the differences of the nodes' own counters:

* `bkv_node_token_op_duration_seconds_count{op, key}`: token operations (`ecdh kem`,
  `aes_gcm_seal record`, ...). Token HMACs under `witness` are the witness's unary answers (one
  by the witness, one by the writer's check; a capture stream's answers are MAC'd in software);
* `bkv_node_etcd_call_duration_seconds_count{call}`: the store's etcd calls (`write`,
  `write_many` for a group commit, `probe`, ...);
* `bkv_node_cas_conflicts_total` and `bkv_node_cas_retries_total`;
* `bkv_node_witness_captures_total{kind}`: how each committed write's head was witnessed
  (`majority`, `lazy`, `local`, `confirm`), and `bkv_node_witness_asks_total{how}`: the capture
  requests sent to peer witnesses (`stream`, `unary`), each answered by one peer;
* `bkv_node_witness_verdicts_total{verdict, source}`: what the witnesses answered (`captured
  asked`, `behind asked`: a peer whose chain lacked the capture's base, so the writer asked
  another; `captured told`, ...).

Divided by the operations the load generator completed in the phase, this is bench.json's
`calls_per_op`. Phase boundaries cut a few operations in two, so read it to two digits.

>>> before = 'bkv_node_token_op_duration_seconds_count{key="kem",op="ecdh"} 10.0\\n'
>>> after = 'bkv_node_token_op_duration_seconds_count{key="kem",op="ecdh"} 110.0\\n'
>>> pages = iter([before, after])
>>> meter = CallMeter({"node-1": "127.0.0.1:1"}, fetch=lambda address: next(pages))
>>> meter.start()
>>> counted = meter.stop()
>>> calls_json(counted, ops=100)["token"]
{'ecdh kem': 1.0}
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

Fetch = Callable[[str], str]
Counts = dict[tuple[str, str], float]

SCRAPE_TIMEOUT_S: Final = 3.0
# (sample name, bench.json section, the labels that name the call)
COUNTED: Final = (
    ("bkv_node_token_op_duration_seconds_count", "token", ("op", "key")),
    ("bkv_node_etcd_call_duration_seconds_count", "etcd", ("call",)),
    ("bkv_node_cas_conflicts_total", "cas", ()),
    ("bkv_node_cas_retries_total", "cas", ()),
    ("bkv_node_witness_captures_total", "captures", ("kind",)),
    ("bkv_node_witness_asks_total", "peer_asks", ("how",)),
    ("bkv_node_witness_verdicts_total", "verdicts", ("verdict", "source")),
)


def fetch_metrics(address: str) -> str:
    """The text page of `http://address/metrics` (loopback on the local cluster)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT_S) as page:
        text: str = page.read().decode("utf-8")
        return text


def counts(page: str) -> Counts:
    """(section, call) -> count, from one node's metrics page."""
    wanted = {sample: (section, labels) for sample, section, labels in COUNTED}
    out: Counts = defaultdict(float)
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            section, labels = wanted[sample.name]
            call = " ".join(sample.labels.get(label, "") for label in labels)
            name = call or sample.name.removeprefix("bkv_node_").removesuffix("_total")
            out[section, name] += sample.value
    return out


@dataclass(frozen=True)
class CallsCounted:
    """The nodes' counts over one phase, summed; `missing`: nodes whose page could not be read
    at the start or the end (left out of every count)."""

    counts: Mapping[tuple[str, str], float]
    missing: tuple[str, ...] = field(default=())


class CallMeter:
    """Counts of the vault nodes' calls between `start` and `stop` (their metrics pages)."""

    def __init__(self, addresses: Mapping[str, str], *, fetch: Fetch = fetch_metrics) -> None:
        """`addresses`: vault node name -> host:port of its metrics endpoint."""
        self._addresses = dict(addresses)
        self._fetch = fetch
        self._before: dict[str, Counts | None] = {}

    def _read(self, address: str) -> Counts | None:
        try:
            return counts(self._fetch(address))
        except (OSError, ValueError):
            return None  # a node down or restarted meanwhile: named under `missing`

    def start(self) -> None:
        self._before = {name: self._read(a) for name, a in self._addresses.items()}

    def stop(self) -> CallsCounted:
        total: Counts = defaultdict(float)
        missing: list[str] = []
        for name, address in self._addresses.items():
            before, after = self._before.get(name), self._read(address)
            if before is None or after is None:
                missing.append(name)
                continue
            for key, value in after.items():
                total[key] += value - before.get(key, 0.0)
        return CallsCounted(dict(total), tuple(missing))


def calls_json(counted: CallsCounted, *, ops: int) -> dict[str, Any]:
    """bench.json's `calls_per_op`: each section's calls per operation, and each one's total."""
    out: dict[str, Any] = {}
    for (section, call), value in sorted(counted.counts.items()):
        if value and ops:
            out.setdefault(section, {})[call] = round(value / ops, 3)
    for section in ("token", "etcd", "peer_asks"):
        out[f"{section}_total"] = round(sum(out.get(section, {}).values()), 3)
    out["missing_nodes"] = list(counted.missing)
    return out


def calls_text(calls: Mapping[str, Any]) -> str:
    """One line: token operations and etcd calls per operation, the largest first."""
    token = sorted(calls.get("token", {}).items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{name} {n:.2f}" for name, n in token[:4])
    captures = ", ".join(f"{k} {n:.2f}" for k, n in sorted(calls.get("captures", {}).items()))
    refused = sum(n for k, n in calls.get("verdicts", {}).items() if not k.startswith("captured"))
    return (
        f"calls per operation (vault nodes' own counters): token {calls['token_total']:.2f} "
        f"({shown}), etcd {calls['etcd_total']:.2f}, witness captures ({captures or 'none'}) "
        f"with {calls.get('peer_asks_total', 0.0):.2f} peer asks, {refused:.2f} not captured"
    )
