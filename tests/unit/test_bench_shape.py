"""The shape ceiling's pure parts: request layout, routing, layout checks, argument checks."""

from pathlib import Path

import pytest

from deploy.bench import shape_server
from deploy.bench.ceilings import PathShape

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
        (["store"], "store needs --etcd and --prefix"),
        (["store", "--etcd", "127.0.0.1:1", "--prefix", "/bkv/records/"], "must start with"),
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
