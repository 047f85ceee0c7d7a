"""deploy/rotation.py's bookkeeping: steps in order, resumable, logged; and the client's fleet
settings (client.toml) and the node's refusal of an unknown fleet key as the client sees it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_client_errors import FakeRpcError

from client.config import ClientConfig
from client.errors import StaleRequest, UnknownFleetKey, error_from_status
from deploy.configs import Layout
from deploy.rotation import STEPS, Rotation, RotationError, RotationState
from vault_common.wire import UNKNOWN_FLEET_DETAILS

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class FakeCluster:
    def __init__(self, root: Path) -> None:
        self.layout = Layout(root)


class Recorded(Rotation):
    """The real bookkeeping around steps that only record their call (or fail once)."""

    calls: list[str]
    fail_once: set[str]

    def _do(self, name: str) -> dict[str, Any]:
        self.calls.append(name)
        if name in self.fail_once:
            self.fail_once.discard(name)
            raise RotationError(f"{name} interrupted")
        return {}

    def _install(self, _force: bool) -> dict[str, Any]:
        return self._do("install")

    def _reload(self, _force: bool) -> dict[str, Any]:
        return self._do("reload")

    def _announce(self, _force: bool) -> dict[str, Any]:
        return self._do("announce")

    def _switch(self, _force: bool) -> dict[str, Any]:
        return self._do("switch")

    def _reseal(self, _force: bool) -> dict[str, Any]:
        return self._do("reseal")

    def _retire(self, _force: bool) -> dict[str, Any]:
        return self._do("retire")


def rotation(root: Path, fail_once: set[str] | None = None) -> Recorded:
    r = Recorded(FakeCluster(root), echo=lambda _m: None)  # type: ignore[arg-type]
    r.calls, r.fail_once = [], set(fail_once or ())
    return r


def test_a_rotation_runs_its_steps_in_order_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    first = rotation(tmp_path, fail_once={"switch"})
    with pytest.raises(RotationError, match="switch interrupted"):
        first.run()
    assert first.calls == ["install", "reload", "announce", "switch"]
    state = RotationState.load(tmp_path / "rotation" / "state.json")
    assert (state.epoch, state.target, state.done) == (1, 2, ("install", "reload", "announce"))
    # Another invocation (the command run again) picks up at the interrupted step.
    again = rotation(tmp_path)
    assert again.state.pending == ("switch", "reseal", "retire")
    finished = again.run()
    assert again.calls == ["switch", "reseal", "retire"]
    assert finished == RotationState(epoch=2)
    log = (tmp_path / "rotation" / "log.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in log]
    assert [e["step"] for e in events if e["event"] == "done"] == list(STEPS)
    assert events[-1] == {**events[-1], "event": "finished", "epoch": 2}
    # The next run starts the next rotation.
    third = rotation(tmp_path)
    third.run(step="install")
    assert third.state.target == 3 and third.state.done == ("install",)


def test_one_step_at_a_time_only_in_order(tmp_path: Path) -> None:
    r = rotation(tmp_path)
    with pytest.raises(RotationError, match="start with install"):
        r.run(step="switch")
    r.run(step="install")
    with pytest.raises(RotationError, match="comes after reload"):
        r.run(step="announce")
    r.run(step="reload")
    r.run(step="reload")  # a finished step may run again (it is idempotent)
    with pytest.raises(RotationError, match="unknown step"):
        r.run(step="explode")
    assert r.calls == ["install", "reload", "reload"]


def _config(tmp_path: Path, **changes: Any) -> ClientConfig:
    fleet = tmp_path / "fleet.pub"
    fleet.write_text("x")
    values: dict[str, Any] = dict(
        frontends=("127.0.0.1:1",), ca="", server_name="localhost",
        fleet_public_key=str(fleet), fleet_id="00" * 16, insecure=True,
    )  # fmt: skip
    return ClientConfig(**{**values, **changes})


def test_client_fleet_settings_are_validated(tmp_path: Path) -> None:
    assert _config(tmp_path).problems() == []
    assert _config(tmp_path, fleet_epoch=3, opaque_context="").problems() == []
    problems = _config(
        tmp_path, fleet_epoch=0, fleet_root_key=str(tmp_path / "missing.pub"),
        opaque_context="x" * 1025,
    ).problems()  # fmt: skip
    assert len(problems) == 3
    assert any("fleet_epoch" in p for p in problems)
    assert any("fleet_root_key" in p for p in problems)
    assert any("opaque_context" in p for p in problems)
    assert _config(tmp_path, fleet_epoch=True).problems()  # a TOML boolean is no epoch


def test_an_unknown_fleet_refusal_is_told_apart_from_a_stale_step() -> None:
    unknown = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, details=UNKNOWN_FLEET_DETAILS)
    assert isinstance(error_from_status(unknown), UnknownFleetKey)
    stale = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, details="stale request")
    error = error_from_status(stale)
    assert isinstance(error, StaleRequest) and not isinstance(error, UnknownFleetKey)


def test_node_and_topology_take_the_fleets_opaque_context_validated() -> None:
    import tomllib

    from test_node_config import EXAMPLE

    from deploy.topology import Options
    from vault_node.config import ConfigError, NodeConfig

    data = tomllib.loads(EXAMPLE)
    assert NodeConfig.from_mapping(data).node.opaque_context == "BKV-v1"  # the default
    data["node"]["opaque_context"] = ""
    assert NodeConfig.from_mapping(data).node.opaque_context == ""  # allowed: "" is a context
    data["node"]["opaque_context"] = "é" * 600  # 1200 bytes of UTF-8
    data["node"]["reseal_rate_per_s"] = 0
    with pytest.raises(ConfigError) as raised:
        NodeConfig.from_mapping(data)
    assert {"node.opaque_context", "node.reseal_rate_per_s"} <= {
        p.split(" ")[0] for p in raised.value.problems
    }
    assert Options(opaque_context="").problems() == []
    assert any("opaque_context" in p for p in Options(opaque_context="x" * 1025).problems())
