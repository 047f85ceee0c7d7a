"""bkv-bench settings: mix parsing and BenchConfig validation report every problem at once."""

import random

import pytest

from bkv_bench import cli
from bkv_bench.config import BenchConfig, BenchConfigError, Mix
from bkv_bench.topology import bench_topology
from bkv_bench.workload import pool_sizes
from deploy.errors import TopologyError
from deploy.topology import default_topology_path, load_topology

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_mix_parses_weights_and_fractions() -> None:
    mix = Mix.parse("recover=80, register=10,wrong=5,delete=5")
    assert mix.fraction("recover") == pytest.approx(0.8)
    assert mix.fraction("delete") == pytest.approx(0.05)
    assert mix.text() == "recover=80,register=10,wrong=5,delete=5"


def test_mix_reports_every_problem_at_once() -> None:
    with pytest.raises(BenchConfigError) as err:
        Mix.parse("recover=x,steal=3,register,delete=-1,delete=2")
    text = str(err.value)
    for part in ("not a number", "unknown operation 'steal'", "is not op=weight", ">= 0"):
        assert part in text


def test_mix_needs_a_positive_weight() -> None:
    with pytest.raises(BenchConfigError, match="above 0"):
        Mix.parse("recover=0")


def test_mix_choice_follows_weights() -> None:
    mix = Mix.parse("recover=3,delete=1,wrong=0")
    rng = random.Random(7)
    draws = [mix.choose(rng) for _ in range(4000)]
    assert set(draws) == {"recover", "delete"}
    assert 0.7 < draws.count("recover") / len(draws) < 0.8


def test_config_lists_every_problem() -> None:
    config = BenchConfig(
        mix=Mix.parse("recover=1"),
        concurrency=0,
        count=5,
        duration_s=3.0,
        accounts=0,
        ksf="slow",
        rate=-1,
    )
    problems = config.problems()
    assert len(problems) == 5
    with pytest.raises(BenchConfigError):
        config.validate()
    ok = BenchConfig(mix=Mix.parse("recover=1"), count=10).validate()
    assert ok.mode == "closed"
    assert BenchConfig(mix=Mix.parse("recover=1"), duration_s=1, rate=5).mode == "open"


def test_cli_arguments_validated_together() -> None:
    args = cli.parser().parse_args(
        ["--config", "c.toml", "--count", "5", "--concurrency", "0", "--mix", "bad=1",
         "--nodes", "2"]
    )  # fmt: skip
    with pytest.raises(BenchConfigError) as err:
        cli.bench_config(args)
    text = str(err.value)
    assert "unknown operation" in text
    assert "concurrency" in text
    assert "--nodes only applies with --cluster-up" in text


def test_etcd_gomaxprocs_flag_needs_the_cluster_up_and_a_sane_value() -> None:
    base = ["--count", "5"]
    with pytest.raises(BenchConfigError, match="--etcd-gomaxprocs only applies with --cluster-up"):
        cli.bench_config(
            cli.parser().parse_args(["--config", "c.toml", "--etcd-gomaxprocs", "1", *base])
        )
    with pytest.raises(BenchConfigError, match="--etcd-gomaxprocs must be between 0"):
        cli.bench_config(
            cli.parser().parse_args(["--cluster-up", "--etcd-gomaxprocs", "-1", *base])
        )
    args = cli.parser().parse_args(["--cluster-up", "--etcd-gomaxprocs", "1", *base])
    assert cli.bench_config(args) is not None and args.etcd_gomaxprocs == 1


def test_cli_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", "c.toml", "--count", "5", "--accounts", "0"]) == 2
    assert "accounts must be at least 1" in capsys.readouterr().err


def test_pool_sizes_give_wrong_guesses_their_share() -> None:
    assert pool_sizes(64, Mix.parse("recover=80,register=10,wrong=5,delete=5")) == (60, 4)
    assert pool_sizes(64, Mix.parse("recover=1")) == (64, 0)
    assert pool_sizes(1, Mix.parse("recover=1,wrong=1")) == (1, 0)
    assert pool_sizes(10, Mix.parse("wrong=1")) == (0, 10)


def test_bench_topology_resizes_and_raises_limits() -> None:
    base = load_topology(default_topology_path())
    one = bench_topology(base, nodes=1)
    assert [n.name for n in one.nodes] == ["dc-a-node-1"]
    assert one.limits.peer_rate_per_s > base.limits.peer_rate_per_s
    six = bench_topology(base, nodes_per_dc=2, keep_limits=True)
    assert len(six.nodes) == 6
    assert six.limits == base.limits
    assert six.options.event_loop == base.options.event_loop == "uvloop"
    assert bench_topology(base, event_loop="asyncio").options.event_loop == "asyncio"
    assert six.options.etcd_gomaxprocs == 0
    assert bench_topology(base, etcd_gomaxprocs=1).options.etcd_gomaxprocs == 1
    with pytest.raises(TopologyError, match="etcd_gomaxprocs"):
        bench_topology(base, etcd_gomaxprocs=-1)
    with pytest.raises(ValueError):
        bench_topology(base, nodes=0)
