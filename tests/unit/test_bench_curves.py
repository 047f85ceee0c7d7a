"""bkv_bench.curves without a cluster: config checks, the sweep's plan, files written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench_fakes import FailingBench, FakeBench, recover_op

from bkv_bench import curves
from bkv_bench.curves import CurvesConfig, CurvesError, open_loop_rate, parse_ints

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(CurvesError) as info:
        CurvesConfig(clients=(0,), nodes=(99,), seconds=None, count=None, open_loop_fraction=2)
    text = str(info.value)
    for needle in ("--clients", "--nodes", "--seconds or --count", "--open-loop-fraction"):
        assert needle in text


@pytest.mark.parametrize(
    ("text", "expected"), [("1,2,4", (1, 2, 4)), ("none", ()), ("", ()), ("8", (8,))]
)
def test_parse_ints(text: str, expected: tuple[int, ...]) -> None:
    assert parse_ints(text, "--clients") == expected


def test_parse_ints_refuses_garbage() -> None:
    with pytest.raises(CurvesError, match="comma-separated"):
        parse_ints("1,two", "--clients")


def test_open_loop_rate_is_a_fraction_of_the_peak_and_never_zero() -> None:
    assert open_loop_rate(80.0, 0.5) == 40.0
    assert open_loop_rate(0.4, 0.5) == 1.0


class CurvesBench(FakeBench):
    """Writes a bench.json whose throughput depends on the arguments; records every call."""

    def document(self, args: list[str]) -> dict[str, Any]:
        concurrency = int(args[args.index("--concurrency") + 1]) if "--concurrency" in args else 8
        nodes = int(args[args.index("--nodes") + 1]) if "--nodes" in args else 6
        rate = float(args[args.index("--rate") + 1]) if "--rate" in args else 0.0
        throughput = rate or min(10.0 * concurrency, 80.0) + nodes
        p99 = 30.0 if rate else 20.0 * concurrency
        doc: dict[str, Any] = {
            "ops": recover_op(
                throughput,
                {"p50": p99 / 2, "p90": p99 * 0.8, "p99": p99, "p999": p99 + 1, "max": p99 + 2},
            ),
            "config": {"fsync": True, "nodes": nodes},
        }
        if concurrency > 1:  # a run that saw the cluster's processes reports CPU per operation
            doc["cpu"] = {"ms_per_op": {"total": 12.5}}
        if "--ceilings" in args:  # the path without its work, with as many stores as nodes
            shape = 100.0 + 10 * nodes
            doc["versus_ceilings"] = {
                "etcd": {"fraction_of_bound": throughput / 500.0},
                "shape": {
                    "recoveries_bound_per_s": shape,
                    "shape_fraction_of_etcd_bound": shape / 500,
                },
            }
        return doc


def test_sweep_runs_every_point_then_the_open_loop_at_half_the_peak(tmp_path: Path) -> None:
    bench = CurvesBench()
    code = curves.main(
        ["--config", "client.toml", "--clients", "1,4,16", "--nodes", "1,2",
         "--count", "10", "--out", str(tmp_path)],
        bench_main=bench,
    )  # fmt: skip
    assert code == 0
    (result_dir,) = tmp_path.iterdir()
    result = json.loads((result_dir / "curves.json").read_text())
    assert (result_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert [p["concurrency"] for p in result["clients"]] == [1, 4, 16]
    assert [p["cpu_ms_per_op"] for p in result["clients"]] == [None, 12.5, 12.5]
    assert "      12.50" in curves.table(result) and "          -" in curves.table(result)
    assert result["peak"] == {"concurrency": 16, "throughput_per_s": 86.0}
    assert result["open_loop"]["rate_per_s"] == 43.0
    assert result["open_loop"]["p99_target_met"] is True
    assert [p["nodes"] for p in result["nodes"]] == [1, 2]
    # The client sweep and the open loop use the given cluster; each node count gets its own.
    targets = [call[:2] for call in bench.calls]
    assert targets[:4] == [["--config", "client.toml"]] * 4
    assert all(call[0] == "--cluster-up" and "--fsync" in call for call in bench.calls[4:])
    assert all("--count" in call and "recover=100" in call for call in bench.calls)


def test_a_failed_run_stops_the_sweep_with_exit_code_1(tmp_path: Path) -> None:
    failing = FailingBench()
    code = curves.main(
        ["--config", "c.toml", "--clients", "1,2", "--nodes", "none", "--count", "5",
         "--out", str(tmp_path)],
        bench_main=failing,
    )  # fmt: skip
    assert code == 1 and len(failing.calls) == 1
    assert not list(tmp_path.glob("*/curves.json"))


def test_bad_arguments_exit_2_before_any_run(tmp_path: Path) -> None:
    bench = CurvesBench()
    code = curves.main(
        ["--config", "c.toml", "--clients", "0", "--out", str(tmp_path)], bench_main=bench
    )
    assert code == 2 and bench.calls == []


def test_node_sweep_with_ceilings_reports_the_no_work_path_per_node_count(tmp_path: Path) -> None:
    bench = CurvesBench()
    code = curves.main(
        ["--config", "c.toml", "--clients", "2", "--nodes", "1,6", "--count", "10",
         "--node-ceilings", "2", "--out", str(tmp_path)],
        bench_main=bench,
    )  # fmt: skip
    assert code == 0
    # Only the node sweep measures ceilings, each run for the given seconds.
    assert [("--ceilings" in c) for c in bench.calls] == [False, False, True, True]
    assert all(c[c.index("--ceiling-seconds") + 1] == "2.0" for c in bench.calls[2:])
    (result_dir,) = tmp_path.iterdir()
    result = json.loads((result_dir / "curves.json").read_text())
    assert [(p["nodes"], p["shape_per_s"]) for p in result["nodes"]] == [(1, 110.0), (6, 160.0)]
    assert result["nodes"][1]["shape_fraction_of_etcd_bound"] == pytest.approx(0.32)
    text = curves.table(result)
    assert "no-work path/s" in text and "32.0%" in text
    assert (result_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_node_ceiling_seconds_are_bounded(tmp_path: Path) -> None:
    bench = CurvesBench()
    code = curves.main(
        ["--config", "c.toml", "--node-ceilings", "0", "--count", "5", "--out", str(tmp_path)],
        bench_main=bench,
    )
    assert code == 2 and bench.calls == []
