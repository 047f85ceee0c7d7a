"""Two bkv-bench configurations side by side, in alternating pairs: is B faster than A here?

    python -m bkv_bench.pairs --pairs 5 --a="--etcd-gomaxprocs 0" --b="--etcd-gomaxprocs 1" \\
        [--label-a NAME] [--label-b NAME] [--op recover] [--out results] \\
        -- --cluster-up --fsync --mix recover=100 --concurrency 16 --duration 15 --ksf fast

(`--a=...` with `=`: a value that starts with `--` must be attached to its flag.)

On a shared or virtual machine the same run can cost a very different amount of CPU an hour
later (docs/performance.md measured 12.6 and 21.1 ms per recovery for one command on one day), so
two figures taken at different times compare nothing. This tool runs A and B back to back,
`--pairs` times, in the order A B, B A, A B, … (drift over the session then favours neither side),
and reports each pair's ratio B/A: throughput, CPU per operation, p50 and p99. The summary gives
the median ratio, its range, and in how many pairs B was better. Every run is one `bkv-bench` run
(`bkv_bench.cli.main`) with the arguments after `--` plus A's or B's own, bounded by its own
duration or count; each run's bench.json and bench.png stay under `OUT/<timestamp>/runs/`.

Writes `OUT/<timestamp>/pairs.json` and `pairs.png` (each pair's ratios) and prints a table. No
figure is asserted: it is a report. When the two sides ran different layouts (vault nodes,
frontends, etcd members, from each bench.json), the table says so: `--topology FILE` brings that
topology's node count (two per data centre in deploy/local-3dc.toml) where the bench's own layout
has one, so an option tried through a topology file needs `--nodes-per-dc` on both sides.

**Tree against tree.** `--tree-a DIR` (or `--tree-b`) runs that side from another source tree
with its own virtual environment (`DIR/.venv/bin/python -m MODULE` in `DIR`, with `DIR` and
`DIR/protos` first on its path, so that every process it starts runs that tree's code too;
`--module-a`/`--module-b` name its bench module, `bkv_bench.cli` by default, `deploy.bench.cli`
before the tools had a package of their own). A tree side's arguments are passed unchecked here
(its own bench checks them), the values of --config, --topology, --dir and --out made absolute.
To compare with an old commit, outside this repository:

    git worktree add /tmp/old f7ab7e0 && (cd /tmp/old && bash scripts/setup.sh)   # or git archive
    python -m bkv_bench.pairs --pairs 5 --tree-a /tmp/old --module-a deploy.bench.cli \\
        --label-a f7ab7e0 --label-b this-tree --a="" --b="" \\
        -- --cluster-up --fsync --mix recover=100 --concurrency 16 --duration 15 --ksf fast
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

from bkv_bench import cli
from bkv_bench.config import BenchConfigError
from bkv_bench.curves import BenchMain, CurvesError, Runner, point

MAX_PAIRS = 50
TREE_RUN_TIMEOUT_S = 1800.0  # one bench run of another tree (its own --max-seconds bounds it)
# metric → True when a higher B/A ratio means B is better.
METRICS: dict[str, bool] = {
    "throughput_per_s": True,
    "cpu_ms_per_op": False,
    "p50": False,
    "p99": False,
}
# bench.json config keys that make a run's process layout.
LAYOUT = ("nodes", "frontends", "etcd_members")
# Arguments the tool sets itself on every run.
_OWN_FLAGS = ("--out",)


class PairsError(Exception):
    """Bad arguments or a failed run; the message says which."""


def order(pairs: int) -> list[tuple[int, str]]:
    """(pair, side) in run order: A B, B A, A B, ...

    >>> order(3)
    [(0, 'a'), (0, 'b'), (1, 'b'), (1, 'a'), (2, 'a'), (2, 'b')]
    """
    out: list[tuple[int, str]] = []
    for i in range(pairs):
        out += [(i, "a"), (i, "b")] if i % 2 == 0 else [(i, "b"), (i, "a")]
    return out


def ratio(b: float | None, a: float | None) -> float | None:
    """b / a rounded to 4 places; None when either is missing or a is 0.

    >>> ratio(138.5, 119.8)
    1.1561
    >>> ratio(1.0, 0.0) is None
    True
    """
    if a is None or b is None or a == 0:
        return None
    return round(b / a, 4)


def pair_ratios(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, float | None]:
    """B/A for every metric of two points."""
    return {metric: ratio(b.get(metric), a.get(metric)) for metric in METRICS}


def summary(ratios: Sequence[Mapping[str, float | None]]) -> dict[str, Any]:
    """Per metric: the median ratio, its range, and how many pairs B was better in.

    >>> s = summary([{"p99": 0.5}, {"p99": 1.5}, {"p99": 0.9}])["p99"]
    >>> s["median"], s["min"], s["max"], s["b_better"], s["pairs"]
    (0.9, 0.5, 1.5, 2, 3)
    """
    out: dict[str, Any] = {}
    for metric, higher_is_better in METRICS.items():
        values: list[float] = [v for r in ratios if (v := r.get(metric)) is not None]
        if not values:
            out[metric] = {"median": None, "min": None, "max": None, "b_better": 0, "pairs": 0}
            continue
        better = sum((v > 1.0) if higher_is_better else (v < 1.0) for v in values)
        out[metric] = {
            "median": round(statistics.median(values), 4),
            "min": min(values),
            "max": max(values),
            "b_better": better,
            "pairs": len(values),
        }
    return out


def refuse_own_flags(args: Sequence[str], what: str) -> None:
    """Refuse the flags this tool sets itself on every run."""
    for flag in _OWN_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            raise PairsError(f"{what}: {flag} is set by this tool")


def bench_args(text: str, what: str) -> list[str]:
    """Shell-split arguments of one side; refuses the flags this tool sets itself."""
    try:
        args = shlex.split(text)
    except ValueError as err:
        raise PairsError(f"{what}: {err}") from None
    refuse_own_flags(args, what)
    return args


def check_bench_args(argv: Sequence[str], what: str) -> None:
    """Refuse, before any run, arguments that bkv-bench would refuse."""
    try:
        cli.bench_config(cli.parser().parse_args(list(argv)))
    except SystemExit:  # argparse already printed the reason
        raise PairsError(f"{what}: bkv-bench refuses these arguments") from None
    except BenchConfigError as err:
        raise PairsError(f"{what}: {err}") from None


# Arguments whose value is a path: made absolute before a tree side runs in its tree.
PATH_FLAGS = ("--config", "--topology", "--dir", "--out")


def absolute_paths(argv: Sequence[str], here: Path) -> list[str]:
    """`argv` with the values of PATH_FLAGS made absolute against `here`.

    >>> absolute_paths(["--config", "c/client.toml", "--out=r", "--seed", "1"], Path("/w"))
    ['--config', '/w/c/client.toml', '--out=/w/r', '--seed', '1']
    """
    out: list[str] = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if eq and flag in PATH_FLAGS:
            arg = f"{flag}={here / value}"
        elif i and argv[i - 1] in PATH_FLAGS:
            arg = str(here / arg)
        out.append(arg)
    return out


def tree_bench(tree: Path, module: str = "bkv_bench.cli") -> BenchMain:
    """A bench main that runs `module` from source tree `tree` with the tree's own virtual
    environment, in a child process whose working directory is the tree (so that the processes
    it starts in turn, `python -m ...` each, import the tree's code too); path arguments are
    made absolute first."""
    python = tree / ".venv" / "bin" / "python"

    def run(argv: Sequence[str]) -> int:
        path = [str(tree), str(tree / "protos")]
        if os.environ.get("PYTHONPATH"):
            path.append(os.environ["PYTHONPATH"])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        done = subprocess.run(
            [str(python), "-m", module, *absolute_paths(argv, Path.cwd())],
            cwd=tree,
            env=env,
            timeout=TREE_RUN_TIMEOUT_S,
            check=False,
        )
        return done.returncode

    return run


def check_tree(tree: Path, module: str, what: str) -> None:
    """Refuse a tree without its own virtual environment or without the bench module."""
    if not (tree / ".venv" / "bin" / "python").is_file():
        raise PairsError(f"{what}: {tree} has no .venv (run its scripts/setup.sh)")
    if not (tree / Path(*module.split("."))).with_suffix(".py").is_file():
        raise PairsError(f"{what}: {tree} has no module {module}")


def run_pairs(
    pairs: int,
    common: Sequence[str],
    a: Sequence[str],
    b: Sequence[str],
    runner: Runner,
    op: str = "recover",
    runner_b: Runner | None = None,
) -> dict[str, Any]:
    """Run every pair in `order` and collect the points, their ratios and the summary (side B
    with `runner_b` when it runs another tree)."""
    points: list[dict[str, Any]] = [{} for _ in range(pairs)]
    runners = {"a": runner, "b": runner_b or runner}
    for i, side in order(pairs):
        doc = runners[side].run(f"pair-{i + 1}-{side}", [*common, *(a if side == "a" else b)])
        if op not in doc["ops"]:
            raise PairsError(f"run pair-{i + 1}-{side} made no {op!r} operation")
        layout = {key: doc.get("config", {}).get(key) for key in LAYOUT}
        points[i][side] = {**point(doc, op), "bench_json": doc["_path"], "layout": layout}
        points[i].setdefault("first", side)
    ratios = [pair_ratios(p["a"], p["b"]) for p in points]
    return {
        "pairs": [{**p, "ratio_b_over_a": r} for p, r in zip(points, ratios, strict=True)],
        "summary": summary(ratios),
    }


def table(result: Mapping[str, Any]) -> str:
    """Each pair's figures and ratios, then the summary."""
    la, lb = result["labels"]["a"], result["labels"]["b"]
    trees = result.get("trees") or {}
    where = {side: f" (tree {trees[side]})" if trees.get(side) else "" for side in ("a", "b")}
    lines = [
        f"A = {la}{where['a']}: {' '.join(result['args']['a']) or '(no extra arguments)'}",
        f"B = {lb}{where['b']}: {' '.join(result['args']['b']) or '(no extra arguments)'}",
        f"{'pair':>4} {'first':>5} {'A ops/s':>8} {'B ops/s':>8} {'B/A':>6} "
        f"{'A cpu ms':>8} {'B cpu ms':>8} {'B/A':>6} {'A p99':>7} {'B p99':>7} {'B/A':>6}",
    ]

    def num(value: Any, width: int, places: int) -> str:
        if isinstance(value, int | float):
            return f"{value:{width}.{places}f}"
        return "-".rjust(width)

    for n, p in enumerate(result["pairs"], start=1):
        a, b, r = p["a"], p["b"], p["ratio_b_over_a"]
        lines.append(
            f"{n:>4} {p['first'].upper():>5} {num(a['throughput_per_s'], 8, 1)} "
            f"{num(b['throughput_per_s'], 8, 1)} {num(r['throughput_per_s'], 6, 3)} "
            f"{num(a['cpu_ms_per_op'], 8, 2)} {num(b['cpu_ms_per_op'], 8, 2)} "
            f"{num(r['cpu_ms_per_op'], 6, 3)} {num(a['p99'], 7, 1)} {num(b['p99'], 7, 1)} "
            f"{num(r['p99'], 6, 3)}"
        )
    layouts = {side: _layouts(result["pairs"], side) for side in ("a", "b")}
    if layouts["a"] != layouts["b"]:
        nodes = {side: _layouts(result["pairs"], side, ("nodes",)) for side in ("a", "b")}
        hint = (
            " (a --topology file brings its own node count: give --nodes-per-dc to both)"
            if nodes["a"] != nodes["b"]
            else ""
        )
        lines.append(
            f"note: the sides ran different layouts: A {layouts['a']}; B {layouts['b']}{hint}"
        )
    for metric, s in result["summary"].items():
        if s["median"] is None:
            lines.append(f"{metric}: no figures")
            continue
        lines.append(
            f"{metric}: B/A median {s['median']:.3f} (range {s['min']:.3f}-{s['max']:.3f}); "
            f"B better in {s['b_better']} of {s['pairs']} pairs"
        )
    return "\n".join(lines)


def _layouts(pairs: Sequence[Mapping[str, Any]], side: str, keys: Sequence[str] = LAYOUT) -> str:
    """The layouts one side ran, as text ("3 nodes, 2 frontends, 3 etcd_members")."""
    seen = {", ".join(f"{p[side].get('layout', {}).get(key)} {key}" for key in keys) for p in pairs}
    return " or ".join(sorted(seen))


def plot_pairs(path: Path, result: Mapping[str, Any]) -> None:
    """Each pair's B/A ratio per metric, with the line of no difference."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        xs = list(range(1, len(result["pairs"]) + 1))
        for metric in METRICS:
            ys = [p["ratio_b_over_a"][metric] for p in result["pairs"]]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=metric)
        ax.axhline(1.0, color="grey", linewidth=1, linestyle="--")
        ax.set_xlabel("pair")
        ax.set_ylabel("B / A")
        ax.set_xticks(xs)
        ax.set_title(f"B = {result['labels']['b']} against A = {result['labels']['a']}")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bkv_bench.pairs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pairs", type=int, default=3, help=f"pairs to run (1..{MAX_PAIRS})")
    p.add_argument("--a", default="", help="bkv-bench arguments of side A (one string)")
    p.add_argument("--b", default="", help="bkv-bench arguments of side B (one string)")
    p.add_argument("--label-a", default="A")
    p.add_argument("--label-b", default="B")
    p.add_argument("--op", default="recover", help="the operation compared (default recover)")
    for side in ("a", "b"):
        p.add_argument(
            f"--tree-{side}",
            type=Path,
            help=f"run side {side.upper()} from this source tree with its own .venv",
        )
        p.add_argument(
            f"--module-{side}",
            default="bkv_bench.cli",
            help=f"side {side.upper()}'s bench module in its tree (default bkv_bench.cli)",
        )
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("common", nargs=argparse.REMAINDER, help="-- then bkv-bench arguments of both")
    return p


def main(argv: Sequence[str] | None = None, bench_main: BenchMain = cli.main) -> int:
    args = parser().parse_args(argv)
    common = list(args.common[1:] if args.common[:1] == ["--"] else args.common)
    try:
        if not 1 <= args.pairs <= MAX_PAIRS:
            raise PairsError(f"--pairs must be between 1 and {MAX_PAIRS}")
        a = bench_args(args.a, "--a")
        b = bench_args(args.b, "--b")
        trees = {"a": args.tree_a, "b": args.tree_b}
        if a == b and trees["a"] == trees["b"]:
            raise PairsError("--a and --b are the same: there is nothing to compare")
        refuse_own_flags(common, "the common arguments")
        for side, extra in (("a", a), ("b", b)):
            tree = trees[side]
            if tree is None:
                check_bench_args([*common, *extra], f"side {side.upper()}")
            else:
                check_tree(tree.resolve(), getattr(args, f"module_{side}"), f"--tree-{side}")
    except PairsError as err:
        print(f"pairs: {err}", file=sys.stderr)
        return 2
    out = cli.out_dir(args.out.resolve())

    def runner(side: str) -> Runner:
        tree = trees[side]
        if tree is None:
            return Runner(out, bench_main)
        return Runner(out, tree_bench(tree.resolve(), getattr(args, f"module_{side}")))

    try:
        result = run_pairs(args.pairs, common, a, b, runner("a"), args.op, runner_b=runner("b"))
    except (CurvesError, PairsError) as err:
        print(f"pairs: {err}", file=sys.stderr)
        return 1
    result = {
        "labels": {"a": args.label_a, "b": args.label_b},
        "args": {"common": common, "a": a, "b": b},
        "trees": {side: str(tree.resolve()) if tree else None for side, tree in trees.items()},
        "op": args.op,
        **result,
    }
    (out / "pairs.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    plot_pairs(out / "pairs.png", result)
    print(table(result))
    print(f"wrote {out / 'pairs.json'} and {out / 'pairs.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
