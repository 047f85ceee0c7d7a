"""Pure parts of bkv-chaos: outcome mapping, the checker's audit-gap rule, the proxy, the plot
binning, scenario parsing, the timeline and config validation (no cluster)."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bkv_chaos.checker import guess_limit
from bkv_chaos.faults import FaultContext, SkipScenario, Timeline, run_timeline
from bkv_chaos.history import Fault, HistoryOp, JsonlWriter, read_faults, read_history
from bkv_chaos.load import LoadConfig, make_password
from bkv_chaos.plot import per_second, plot_run
from bkv_chaos.proxy import LinkFault, LinkProxy
from bkv_chaos.recorder import Recorder, RunClock, classify
from bkv_chaos.scenarios import SCENARIOS, parse_scenarios
from client.errors import InvalidPassword, Locked, ProtocolError, Unavailable
from vault_common.audit_line import AuditEvent

pytestmark = pytest.mark.unit


def test_classify_marks_unavailable_indefinite() -> None:
    assert classify(None).outcome == "ok"
    assert classify(InvalidPassword(3)) == classify(InvalidPassword(3))
    assert (classify(InvalidPassword(3)).guesses_left, classify(Locked()).outcome) == (3, "locked")
    assert classify(Unavailable("x")).definite is False
    assert classify(ProtocolError("x")).definite is True
    assert classify(RuntimeError("x")).definite is False


def _evaluate(rev: int, read: int | None, attempts: int) -> AuditEvent:
    return AuditEvent(
        ts=float(rev), node="n", record_id="aa", event="evaluate", attempts=attempts,
        max_attempts=3, revision=rev, generation="01", evaluation=rev, read_revision=read,
    )  # fmt: skip


def test_guess_limit_resyncs_after_an_unaudited_commit_but_not_without_one() -> None:
    register = AuditEvent(1.0, "n", "aa", "register", 0, 3, revision=1, generation="01")
    # rev 2 evaluated; a success committed at rev 3 without a line (its answer was lost);
    # rev 4 read rev 3: attempts 1 again is right, not an uncounted evaluation.
    gap = [register, _evaluate(2, 1, 1), _evaluate(4, 3, 1)]
    result = guess_limit(gap)
    assert result.ok and result.unchecked == 1
    # The same attempts without a gap (rev 4 read rev 2): an evaluation was not counted.
    no_gap = [register, _evaluate(2, 1, 1), _evaluate(4, 2, 1)]
    assert not guess_limit(no_gap).ok
    # Too many evaluations are still caught after a resync.
    many = [register, _evaluate(2, 1, 1), _evaluate(4, 3, 3), _evaluate(5, 4, 4)]
    assert not guess_limit(many).ok


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        server.close()
        thread.join(10)


def _roundtrip(address: str, payload: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while data := conn.recv(4096):
            chunks.append(data)
        return b"".join(chunks)


def test_proxy_forwards_delays_and_resets(echo_server: tuple[str, int]) -> None:
    with LinkProxy(echo_server, rng=random.Random(1)) as proxy:
        assert _roundtrip(proxy.address, b"hello") == b"hello"
        proxy.set_fault(LinkFault(delay_s=0.01))
        assert _roundtrip(proxy.address, b"slow") == b"slow"
        proxy.set_fault(LinkFault(reset_probability=1.0))
        assert _roundtrip(proxy.address, b"lost") == b""
        assert proxy.resets >= 1
        proxy.set_fault(LinkFault())
        assert _roundtrip(proxy.address, b"again") == b"again"
    with pytest.raises(ValueError, match="reset_probability"):
        LinkFault(reset_probability=2).validate()


def test_peer_proxy_holds_its_port_before_the_clusters_ports_are_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the cluster's ports used to be chosen (bound, then released) before the proxy
    # bound port 0, and the OS once handed the proxy a vault node's port. Now, while the ports
    # are chosen, the proxy's port must already be taken, and the member's link goes through it.
    from bkv_chaos import proxy as proxy_module
    from deploy.cluster import free_ports
    from deploy.topology import default_topology_path, load_topology

    seen: dict[str, Any] = {}

    def checked_free_ports(host: str, count: int) -> list[int]:
        (proxy,) = seen["proxies"]
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            with pytest.raises(OSError):
                probe.bind((host, proxy.port))
        finally:
            probe.close()
        ports = free_ports(host, count)
        seen["ports"] = ports
        return ports

    class Started(LinkProxy):
        def start(self) -> None:
            seen.setdefault("proxies", []).append(self)
            super().start()

    class FakeCluster:
        def __init__(self, directory: Path, echo: object = None) -> None:
            self.topology = None

        def up(self, topology: object, fsync: bool = False) -> None:
            seen["topology"] = topology

        def exists(self) -> bool:
            return False

    monkeypatch.setattr(proxy_module, "free_ports", checked_free_ports)
    monkeypatch.setattr(proxy_module, "LinkProxy", Started)
    monkeypatch.setattr(proxy_module, "Cluster", FakeCluster)
    topology = load_topology(default_topology_path())
    with proxy_module.peer_proxy_cluster(tmp_path, topology, rng=random.Random(1)) as (_, link):
        member = seen["topology"].etcd[-1]
        assert member.advertise_peer_port == link.port not in seen["ports"]
        assert link.upstream == (topology.host_of(member.dc), member.peer_port)


def _op(complete: float, outcome: str, definite: bool = True) -> HistoryOp:
    return HistoryOp("c", "recover", "a", complete - 0.1, complete, outcome, definite)


def test_per_second_bins_answers_and_errors(tmp_path: Path) -> None:
    history = [_op(0.5, "ok"), _op(0.7, "invalid_password"), _op(1.5, "unavailable", False)]
    starts, ok, errors = per_second(history)
    assert (starts, ok, errors) == ([0.0, 1.0], [2, 0], [0, 1])
    png = plot_run(history, [Fault("kill-dc", "dc-a", 0.2, 1.2)], tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_parse_scenarios() -> None:
    assert [s.name for s in parse_scenarios("all")] == list(SCENARIOS)
    assert [s.name for s in parse_scenarios("kill-dc, slow-link")] == ["kill-dc", "slow-link"]
    with pytest.raises(ValueError, match="nope"):
        parse_scenarios("kill-dc,nope")


class _FakeScenario:
    def __init__(self, name: str, skip: bool = False) -> None:
        self.name = name
        self.skip = skip

    def run(self, ctx: FaultContext, hold_s: float) -> list[Fault]:
        if self.skip:
            raise SkipScenario("not here")
        start = ctx.now()
        ctx.recorder.append(_op(start + 0.01, "ok"))
        return [Fault(self.name, "t", start, start)]


def test_timeline_writes_faults_and_records_skips(tmp_path: Path) -> None:
    writer = JsonlWriter(tmp_path / "history.jsonl")
    recorder = Recorder(writer, RunClock())
    ctx = FaultContext(
        cluster=None,  # type: ignore[arg-type]  # the fake scenarios do not touch it
        recorder=recorder, rng=random.Random(0), proxies=[], stop=threading.Event(),
        echo=lambda _m: None,
    )  # fmt: skip
    with JsonlWriter(tmp_path / "faults.jsonl") as faults:
        timeline = Timeline(slot_s=0.2, warmup_s=0.0, min_recovery_s=0.0)
        written = run_timeline(
            [_FakeScenario("a"), _FakeScenario("b", True)], timeline, ctx, faults
        )
    writer.close()
    assert [f.kind for f in written] == ["a"]
    assert read_faults(tmp_path / "faults.jsonl")[0].recovered_at is not None
    assert ctx.skipped == ["b: not here"] and len(read_history(tmp_path / "history.jsonl")) == 1


def test_load_config_reports_every_problem_and_passwords_are_long() -> None:
    with pytest.raises(ValueError) as err:
        LoadConfig(workers=0, good=0, guess_limit=0).validate()
    assert all(w in str(err.value) for w in ("workers", "good account", "guess_limit"))
    password = make_password(random.Random(1))
    assert len(password) == 24 and password.isalnum()
