"""An independent gRPC implementation talks to the frontend: the wire contract does not depend on
grpcio's quirks.

Stubs are generated from protos/ at test time with grpclib's protoc plugin; the client runs in a
subprocess whose import path holds only the generated code (not the installed `bkv` package),
over grpclib's own HTTP/2 stack and TLS with the cluster CA, and proves it never imported grpcio.
It passes the health check, logs in with an Ed25519 challenge, gets INVALID_ARGUMENT for a garbage
envelope and UNAUTHENTICATED without (or with a forged) token, and a sealed answer to a genuine
status request.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from deploy.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("grpclib_client_probe.py")


def generate(out: Path) -> None:
    """protoc with the grpclib plugin from the virtual environment: pb2 + grpclib stubs."""
    plugin = Path(sys.executable).parent / "protoc-gen-grpclib_python"
    assert plugin.exists(), f"grpclib's protoc plugin is missing: {plugin}"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "protos"),
            f"--plugin=protoc-gen-grpclib_python={plugin}",
            f"--python_out={out}", f"--grpclib_python_out={out}",
            str(ROOT / "protos/bkv/v1/frontend.proto"), str(ROOT / "protos/bkv/v1/envelope.proto"),
        ],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    # Regular packages, so that nothing falls through to the installed `bkv`.
    for package in (out / "bkv", out / "bkv" / "v1"):
        (package / "__init__.py").touch()


@pytest.fixture(scope="module")
def probe(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cluster.start_all()  # an earlier test (or a failed chaos test) may have left a process down
    out = tmp_path_factory.mktemp("grpclib")
    generate(out)
    assert (out / "bkv/v1/frontend_grpc.py").exists()
    section = tomllib.loads(cluster.client_config_path.read_text())["cluster"]
    args = {
        "frontend": section["frontends"][0],
        "ca": section["ca"],
        "fleet_public_key": section["fleet_public_key"],
        "account_id": f"grpclib-{secrets.token_hex(8)}",
    }
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(out)
    result = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(args)],
        cwd=out, env=env, capture_output=True, text=True, timeout=45,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    answer: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    answer["_generated"] = str(out)
    return answer


def test_runs_on_generated_code_without_grpcio(probe: dict[str, Any]) -> None:
    assert probe["grpcio_imported"] == []
    assert Path(probe["bkv_from"]) == Path(probe["_generated"])


def test_health_check_is_serving(probe: dict[str, Any]) -> None:
    assert probe["health[]"] == "SERVING"
    assert probe["health[bkv.v1.Frontend]"] == "SERVING"


def test_account_challenge_login(probe: dict[str, Any]) -> None:
    assert probe["token"] is True and probe["expires_in_future"] is True
    assert probe["bad_account_id"] == "INVALID_ARGUMENT"
    assert probe["bad_signature"] == "UNAUTHENTICATED"


def test_relay_statuses(probe: dict[str, Any]) -> None:
    assert probe["garbage_envelope"] == "INVALID_ARGUMENT"
    assert probe["missing_token"] == "UNAUTHENTICATED"
    assert probe["forged_token"] == "UNAUTHENTICATED"


def test_genuine_envelope_gets_a_sealed_answer(probe: dict[str, Any]) -> None:
    # A fresh account has no record: the node says so inside the sealed response.
    assert probe["status_outcome"] == "OUTCOME_OK"
    assert probe["registered"] is False
