"""The bench's CPU meter: per-role CPU over the measured phase, from /proc and process_time."""

import os
import time

import pytest

from bkv_bench.cpu import CpuMeter, CpuUsed, cpu_json, cpu_text, read_proc

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


class FakeProc:
    """/proc as a dict the test edits between start and stop."""

    def __init__(self, table: dict[int, tuple[int, float]]) -> None:
        self.table = table

    def read(self, pid: int) -> tuple[int, float] | None:
        return self.table.get(pid)


def test_sums_each_role_and_the_own_process() -> None:
    proc = FakeProc({1: (10, 1.0), 2: (20, 5.0), 3: (30, 0.5)})
    own = iter([2.0, 2.4])
    meter = CpuMeter({"node": [1, 2], "etcd": [3]}, own=lambda: next(own), read=proc.read)
    meter.start()
    proc.table = {1: (10, 1.5), 2: (20, 5.25), 3: (30, 1.5)}
    used = meter.stop()
    assert used.seconds == pytest.approx({"node": 0.75, "etcd": 1.0, "bench": 0.4})
    assert used.missing == ()


def test_ended_or_restarted_processes_are_left_out_and_named() -> None:
    proc = FakeProc({1: (10, 1.0), 2: (20, 5.0)})
    meter = CpuMeter({"node": [1, 2, 3]}, own=lambda: 0.0, read=proc.read)
    meter.start()
    # 1 was restarted under the same PID (a new start time), 2 ended, 3 never existed.
    proc.table = {1: (99, 0.1)}
    used = meter.stop()
    assert used.seconds == {"node": 0.0, "bench": 0.0}
    assert sorted(used.missing) == [1, 2, 3]
    assert "not counted" in cpu_text(cpu_json(used, ops=10, elapsed_s=1.0))


def test_json_per_op_and_cores_busy() -> None:
    doc = cpu_json(CpuUsed({"node": 1.0, "bench": 0.5}), ops=100, elapsed_s=0.5)
    assert doc["ms_per_op"] == {"node": 10.0, "bench": 5.0, "total": 15.0}
    assert doc["cores_busy"] == 3.0
    assert "15.00 ms (node 10.00, bench 5.00)" in cpu_text(doc)
    empty = cpu_json(CpuUsed({"node": 1.0}), ops=0, elapsed_s=0.0)
    assert empty["ms_per_op"]["total"] is None and empty["cores_busy"] is None
    assert cpu_text(empty) == ""


def test_reads_this_process_from_proc() -> None:
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn a little CPU so the counters are not zero
        pass
    first = read_proc(os.getpid())
    times = os.times()
    assert first is not None
    # utime + stime of the whole process, as times(2) reports them (both in clock ticks).
    assert abs(first[1] - (times.user + times.system)) <= 0.03
    second = read_proc(os.getpid())
    assert second is not None and second[0] == first[0] and second[1] >= first[1]
    assert read_proc(2**22 + 12345) is None  # above pid_max: never a process
