"""bkv_bench.pairs without a cluster: run order, ratios, summary, files, argument checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench_fakes import FailingBench, FakeBench, recover_op

from bkv_bench import pairs
from bkv_bench.pairs import order, pair_ratios, summary

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

COMMON = ["--", "--config", "client.toml", "--count", "10", "--mix", "recover=100"]


class PairsBench(FakeBench):
    """Writes a bench.json per run: side B (`--event-loop asyncio`) is slower by `slowdown`,
    and every run is slower than the one before by `drift` (a machine that slows down)."""

    def __init__(self, slowdown: float = 1.25, drift: float = 1.0) -> None:
        super().__init__()
        self.slowdown = slowdown
        self.drift = drift

    def document(self, args: list[str]) -> dict[str, Any]:
        factor = self.drift ** (len(self.calls) - 1)
        if "asyncio" in args:
            factor *= self.slowdown
        p99 = 40.0 * factor
        return {
            "ops": recover_op(
                100.0 / factor, {"p50": p99 / 2, "p90": p99, "p99": p99, "p999": p99, "max": p99}
            ),
            "cpu": {"ms_per_op": {"total": 10.0 * factor}},
        }


def test_sides_alternate_which_runs_first() -> None:
    assert order(4) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"),
                        (2, "a"), (2, "b"), (3, "b"), (3, "a")]  # fmt: skip


def test_ratios_and_summary_say_when_b_is_better() -> None:
    a = {"throughput_per_s": 100.0, "cpu_ms_per_op": 10.0, "p50": 20.0, "p99": 40.0}
    b = {"throughput_per_s": 110.0, "cpu_ms_per_op": None, "p50": 25.0, "p99": 30.0}
    r = pair_ratios(a, b)
    assert r == {"throughput_per_s": 1.1, "cpu_ms_per_op": None, "p50": 1.25, "p99": 0.75}
    s = summary([r, {**r, "throughput_per_s": 0.9}])
    assert s["throughput_per_s"] == {"median": 1.0, "min": 0.9, "max": 1.1, "b_better": 1,
                                     "pairs": 2}  # fmt: skip
    assert s["p99"]["b_better"] == 2 and s["p50"]["b_better"] == 0  # lower latency is better
    assert s["cpu_ms_per_op"] == {"median": None, "min": None, "max": None, "b_better": 0,
                                  "pairs": 0}  # fmt: skip


def test_pairs_report_the_ratio_despite_a_drifting_machine(tmp_path: Path) -> None:
    # Every run 5% slower than the last: A-then-B and B-then-A pairs err in opposite
    # directions, so the median ratio stays near the true 1.25 slowdown of B.
    bench = PairsBench(slowdown=1.25, drift=1.05)
    code = pairs.main(
        ["--pairs", "4", "--a=--event-loop uvloop", "--b=--event-loop asyncio",
         "--label-a", "uvloop", "--label-b", "asyncio", "--out", str(tmp_path), *COMMON],
        bench_main=bench,
    )  # fmt: skip
    assert code == 0
    (result_dir,) = tmp_path.iterdir()
    result = json.loads((result_dir / "pairs.json").read_text())
    assert (result_dir / "pairs.png").read_bytes()[:4] == b"\x89PNG"
    assert [p["first"] for p in result["pairs"]] == ["a", "b", "a", "b"]
    assert all(call[:2] == ["--config", "client.toml"] for call in bench.calls)
    assert [call[-4:-2] for call in bench.calls[:2]] == [
        ["--event-loop", "uvloop"],
        ["--event-loop", "asyncio"],
    ]
    cpu = result["summary"]["cpu_ms_per_op"]
    assert cpu["b_better"] == 0 and cpu["pairs"] == 4
    assert cpu["median"] == pytest.approx(1.25, rel=0.01)
    assert cpu["min"] == pytest.approx(1.25 / 1.05, rel=1e-3)
    assert cpu["max"] == pytest.approx(1.25 * 1.05, rel=1e-3)
    assert result["summary"]["throughput_per_s"]["median"] == pytest.approx(0.8, rel=0.01)
    assert result["labels"] == {"a": "uvloop", "b": "asyncio"}
    text = pairs.table(result)
    assert "B better in 0 of 4 pairs" in text and "A = uvloop: --event-loop uvloop" in text


class TopologyBench(PairsBench):
    """A run given `--topology` starts that topology's six nodes; the bench's own layout has
    three (bkv_bench.cli without --nodes-per-dc)."""

    def document(self, args: list[str]) -> dict[str, Any]:
        nodes = 6 if "--topology" in args else 3
        config = {"nodes": nodes, "frontends": 2, "etcd_members": 3}
        return {**super().document(args), "config": config}


def test_the_table_says_when_the_sides_ran_different_layouts(tmp_path: Path) -> None:
    bench = TopologyBench(slowdown=1.0)
    argv = ["--pairs", "2", "--a=", "--b=--topology /tmp/t.toml", "--out", str(tmp_path),
            "--", "--cluster-up", "--count", "10", "--mix", "recover=100"]  # fmt: skip
    assert pairs.main(argv, bench_main=bench) == 0
    (result_dir,) = tmp_path.iterdir()
    result = json.loads((result_dir / "pairs.json").read_text())
    assert result["pairs"][0]["b"]["layout"] == {"nodes": 6, "frontends": 2, "etcd_members": 3}
    text = pairs.table(result)
    assert (
        "note: the sides ran different layouts: A 3 nodes, 2 frontends, 3 etcd_members; "
        "B 6 nodes, 2 frontends, 3 etcd_members" in text
    )
    assert "give --nodes-per-dc to both" in text
    # Only the frontends differ: the note without the node-count hint.
    for p in result["pairs"]:
        p["b"]["layout"] = {**p["a"]["layout"], "frontends": 1}
    text = pairs.table(result)
    assert "B 3 nodes, 1 frontends, 3 etcd_members" in text and "--nodes-per-dc" not in text
    # The same layout on both sides: no note.
    for p in result["pairs"]:
        p["b"]["layout"] = p["a"]["layout"]
    assert "different layouts" not in pairs.table(result)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pairs", "0", "--a=--seed 1", "--b=--seed 2"], "--pairs must be between 1 and 50"),
        (["--a=--seed 1", "--b=--seed 1"], "--a and --b are the same"),
        (["--a=--out x", "--b=--seed 2"], "--a: --out is set by this tool"),
        (["--a=--seed 1", "--b=--seed '2"], "--b: No closing quotation"),
        (["--a=--seed 1", "--b=--nodes 2"], "side B: --nodes only applies with --cluster-up"),
    ],
)
def test_bad_arguments_exit_2_before_any_run(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = PairsBench()
    assert pairs.main([*argv, "--out", str(tmp_path), *COMMON], bench_main=bench) == 2
    assert message in capsys.readouterr().err
    assert bench.calls == [] and not list(tmp_path.iterdir())


def test_a_failed_run_stops_with_exit_code_1(tmp_path: Path) -> None:
    failing = FailingBench()
    code = pairs.main(
        ["--a=--seed 1", "--b=--seed 2", "--out", str(tmp_path), *COMMON], bench_main=failing
    )
    assert code == 1 and len(failing.calls) == 1
    assert not list(tmp_path.glob("*/pairs.json"))


FAKE_TREE_BENCH = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
factor = 0.5 if "--fast" in args else 1.0
doc = {"ops": {"recover": {"count": 10, "ok": 10, "errors": {}, "throughput_per_s": 100.0 / factor,
       "latency_ms": {"p50": 20.0, "p90": 40.0, "p99": 40.0, "p999": 40.0, "max": 40.0}}},
       "cpu": {"ms_per_op": {"total": 10.0 * factor}}, "tree": __file__}
out = Path(args[args.index("--out") + 1]) / "20261123T000000Z"
out.mkdir(parents=True)
(out / "bench.json").write_text(json.dumps(doc))
"""


def fake_tree(root: Path) -> Path:
    """A source tree with a .venv of its own and a bench module that writes a bench.json."""
    import sys

    tree = root / "old-tree"
    (tree / ".venv" / "bin").mkdir(parents=True)
    (tree / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (tree / "oldbench").mkdir()
    (tree / "oldbench" / "__init__.py").write_text("")
    (tree / "oldbench" / "cli.py").write_text(FAKE_TREE_BENCH)
    return tree


def test_a_side_runs_from_another_tree_with_its_own_python(tmp_path: Path) -> None:
    tree = fake_tree(tmp_path)
    bench = PairsBench()
    code = pairs.main(
        ["--pairs", "2", "--tree-a", str(tree), "--module-a", "oldbench.cli", "--a=--fast",
         "--b=", "--label-a", "old", "--label-b", "new", "--out", str(tmp_path / "out"),
         *COMMON],
        bench_main=bench,
    )  # fmt: skip
    assert code == 0
    (result_dir,) = (tmp_path / "out").iterdir()
    result = json.loads((result_dir / "pairs.json").read_text())
    assert result["trees"] == {"a": str(tree.resolve()), "b": None}
    assert len(bench.calls) == 2  # side B in this process; side A ran in the tree, twice
    for pair in result["pairs"]:
        doc = json.loads(Path(pair["a"]["bench_json"]).read_text())
        assert doc["tree"] == str(tree / "oldbench" / "cli.py")
    assert result["summary"]["cpu_ms_per_op"]["median"] == pytest.approx(2.0)
    assert "A = old (tree " in pairs.table(result)


def test_a_tree_without_its_venv_or_module_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = fake_tree(tmp_path)
    bench = PairsBench()
    argv = ["--tree-b", str(tree), "--out", str(tmp_path / "out")]
    assert pairs.main([*argv, "--module-b", "nothing.here", *COMMON], bench_main=bench) == 2
    assert "has no module nothing.here" in capsys.readouterr().err
    (tree / ".venv" / "bin" / "python").unlink()
    assert pairs.main([*argv, "--module-b", "oldbench.cli", *COMMON], bench_main=bench) == 2
    assert "has no .venv" in capsys.readouterr().err
    assert bench.calls == []


def test_a_tree_sides_path_arguments_are_made_absolute() -> None:
    here = Path("/work/here")
    argv = ["--config", "c/client.toml", "--topology=t.toml", "--seed", "1", "--dir", "/abs"]
    assert pairs.absolute_paths(argv, here) == [
        "--config", "/work/here/c/client.toml", "--topology=/work/here/t.toml", "--seed", "1",
        "--dir", "/abs",
    ]  # fmt: skip
