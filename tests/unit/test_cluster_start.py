"""deploy.cluster's reading of supervisor state files while it waits for a start."""

from __future__ import annotations

import pytest

from deploy.cluster import crash_looping

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def test_one_pending_restart_is_not_a_failed_start() -> None:
    # A running process crashed once (chaos, Cluster.crash): the supervisor restarts it. A wait
    # that begins inside that backoff once reported "crashed while starting".
    assert not crash_looping({"state": "backoff", "restarts": 1})
    assert not crash_looping({"state": "running", "restarts": 1})
    assert not crash_looping({})


def test_a_second_restart_in_a_row_or_giving_up_is() -> None:
    assert crash_looping({"state": "backoff", "restarts": 2})
    assert crash_looping({"state": "failed", "restarts": 5})
    assert not crash_looping({"state": "backoff", "restarts": "2"})  # malformed: keep waiting
