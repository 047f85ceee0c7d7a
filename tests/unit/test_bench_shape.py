"""The shape ceiling's pure parts: request layout, routing, layout checks, argument checks."""

from pathlib import Path

import pytest

from bkv_bench import shape_server
from bkv_bench.ceilings import PathShape

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def test_account_of_and_route_are_stable() -> None:
    request = (123456789).to_bytes(8, "big") + bytes(1092)
    assert shape_server.account_of(request) == 123456789
    # One account always goes to the same store, as the frontend routes one account to one node.
    assert {shape_server.route(shape_server.account_of(request), 6) for _ in range(5)} == {3}
    assert sorted({shape_server.route(a, 6) for a in range(60)}) == list(range(6))


def test_a_short_request_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter than its account key"):
        shape_server.account_of(b"\x00" * 7)


def test_path_shape_reports_every_problem() -> None:
    assert PathShape().validate() == []
    assert PathShape(relays=0, stores=65).validate() == [
        "relays must be 1..64, not 0",
        "stores must be 1..64, not 65",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["store"], "store needs --etcd, --etcd-ca, --etcd-cert, --etcd-key and --prefix"),
        (
            [
                "store",
                "--etcd",
                "127.0.0.1:1",
                "--prefix",
                "/bkv/records/",
                "--etcd-ca",
                "/c",
                "--etcd-cert",
                "/c",
                "--etcd-key",
                "/k",
            ],
            "must start with",
        ),
        (["relay"], "relay needs --stores"),
        (["relay", "--stores", "127.0.0.1:1", "--max-seconds", "0"], "--max-seconds positive"),
    ],
)
def test_bad_arguments_exit_2_before_serving(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    with pytest.raises(SystemExit) as exit_info:
        shape_server.main([*argv, "--cert", str(cert), "--key", str(key)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bkv_bench_refuses_a_layout_it_cannot_copy_before_running(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cluster with more vault nodes than the shape ceiling starts stores: exit 2, no run."""
    import contextlib
    from collections.abc import Iterator
    from typing import Any

    from bkv_bench import cli
    from bkv_bench.result import ClusterFacts

    @contextlib.contextmanager
    def no_cluster(_args: Any, _echo: Any) -> Iterator[tuple[Path, None]]:
        yield Path("client.toml"), None

    def must_not_run(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the bench ran")

    monkeypatch.setattr(cli, "cluster_for", no_cluster)
    monkeypatch.setattr(cli, "cluster_facts", lambda _c: ClusterFacts(frontends=2, nodes=65))
    monkeypatch.setattr(cli, "run_bench", must_not_run)
    assert cli.main(["--config", "client.toml", "--ceilings", "--count", "1"]) == 2
    assert "stores must be 1..64, not 65" in capsys.readouterr().err
    # Without --ceilings the layout does not matter (the run would go ahead).
    with pytest.raises(AssertionError, match="the bench ran"):
        cli.main(["--config", "client.toml", "--count", "1"])
