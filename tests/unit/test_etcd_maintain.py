"""`bkv-cluster maintain`'s logic against a scripted etcdctl: compact to the newest revision,
then defragment one member at a time, each healthy before the next."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence

import pytest

from deploy.etcd_maintain import MaintenanceError, maintain, report_lines

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]

URLS = ["https://127.0.0.1:1", "https://127.0.0.1:2", "https://127.0.0.1:3"]


class FakeEtcdctl:
    """Records every call; answers `endpoint status` with the given revisions and sizes."""

    def __init__(self, revisions: Sequence[int], *, compacted: bool = False) -> None:
        self.calls: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        self.revisions = list(revisions)
        self.sizes = [1_000_000] * len(revisions)
        self.compacted = compacted
        self.fail: str | None = None

    def __call__(
        self, args: Sequence[str], urls: Sequence[str]
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append((tuple(args), tuple(urls)))
        if self.fail and args[0] == self.fail:
            return subprocess.CompletedProcess(args, 1, "", "Error: context deadline exceeded")
        if list(args[:2]) == ["endpoint", "status"]:
            rows = [
                {"Endpoint": u, "Status": {"dbSize": s, "header": {"revision": r}}}
                for u, r, s in zip(urls, self.revisions, self.sizes, strict=True)
            ]
            return subprocess.CompletedProcess(args, 0, json.dumps(rows), "")
        if args[0] == "compaction" and self.compacted:
            return subprocess.CompletedProcess(
                args, 1, "", "Error: etcdserver: mvcc: required revision has been compacted"
            )
        if args[0] == "defrag":
            self.sizes[URLS.index(urls[0])] = 20_000
        return subprocess.CompletedProcess(args, 0, "", "")


def test_compacts_to_the_newest_revision_then_defragments_member_by_member() -> None:
    run = FakeEtcdctl([40, 42, 41])
    report = maintain(run, URLS, defrag=True)
    assert report.compacted_to == 42
    commands = [(args, urls) for args, urls in run.calls]
    assert commands[0] == (("endpoint", "status", "-w", "json"), tuple(URLS))
    assert commands[1] == (("compaction", "--physical", "42"), tuple(URLS))
    # Then, per member and alone: defrag, then its health, before the next member.
    per_member = commands[2:-1]
    assert per_member == [
        c for u in URLS
        for c in ((("defrag", "--command-timeout=120s"), (u,)), (("endpoint", "health"), (u,)))
    ]  # fmt: skip
    assert commands[-1][0][:2] == ("endpoint", "status")
    assert [m.db_size for m in report.after] == [20_000] * 3
    assert report_lines(report)[0] == "https://127.0.0.1:1: database 1000000 -> 20000 bytes"


def test_without_defrag_only_compacts() -> None:
    run = FakeEtcdctl([7, 7, 7])
    report = maintain(run, URLS, defrag=False)
    assert report.compacted_to == 7
    assert [c[0][0] for c in run.calls] == ["endpoint", "compaction"]
    assert report.after == report.before


def test_history_already_compacted_is_no_error() -> None:
    run = FakeEtcdctl([9, 9, 9], compacted=True)
    assert maintain(run, URLS, defrag=False).compacted_to == 0


def test_a_fresh_cluster_has_nothing_to_compact() -> None:
    run = FakeEtcdctl([1, 1, 1])
    assert maintain(run, URLS, defrag=False).compacted_to == 0
    assert [c[0][0] for c in run.calls] == ["endpoint"]


def test_a_failed_defrag_stops_before_the_next_member() -> None:
    run = FakeEtcdctl([5, 5, 5])
    run.fail = "defrag"
    with pytest.raises(MaintenanceError, match=re.escape("defrag of https://127.0.0.1:1 failed")):
        maintain(run, URLS, defrag=True)
    assert [c for c in run.calls if c[0][0] == "defrag"] == [
        (("defrag", "--command-timeout=120s"), (URLS[0],))
    ]
