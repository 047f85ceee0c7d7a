"""The key ceremony: make the fleet keys once and carry them, wrapped, into every node's token.

    (a) a fresh ceremony token makes the fleet keys (EXTRACTABLE, SENSITIVE) and a transport pair
    (b) every node token makes a transport pair and hands out its public point
    (c) per node, KEK = ECDH(ceremony transport, node transport) straight into AES-256 (WRAP);
        every fleet key is wrapped with AES_KEY_WRAP_PAD into that node's blob file;
    (e) the ceremony token's keys are destroyed right after wrapping (the copies exist in
        extractable form as briefly as possible) and its directory is deleted;
    (d) every node derives the same KEK (UNWRAP), unwraps the keys as SENSITIVE, not
        EXTRACTABLE, stores the kem public key, checks it against the published point, and
        destroys its transport pair.

SoftHSM binds a process to one SOFTHSM2_CONF, so each step on a token runs in a subprocess
(`python -m vault_node.ceremony_cli`), as it would on separate machines. Node steps run in
parallel, at most one per core. The transport points travel through this process, which is
trusted here; across real machines operators compare their fingerprints.

A failed ceremony publishes nothing; node tokens that were provisioned before the failure hold
keys of a fleet that never existed and must be re-initialised (the error names them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vault_node.softhsm import SoftHsmError, TokenSpec, create_token
from vault_node.token_api import FIRST_EPOCH

FLEET_PUB: Final = "fleet.pub"
FLEET_JSON: Final = "fleet.json"
FLEET_ID_LEN: Final = 16
STEP_TIMEOUT_S: Final = 120.0
_CEREMONY: Final = "ceremony"


class CeremonyError(Exception):
    """The ceremony failed at `step` on `node` (a token label, or "ceremony"); nothing published."""

    def __init__(self, node: str, step: str, reason: str) -> None:
        super().__init__(f"key ceremony failed at step {step!r} on {node!r}: {reason}")
        self.node = node
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class FleetPublic:
    """What clients pin: the fleet's kem public key and its id."""

    public_key: bytes
    """Uncompressed P-256 point (65 bytes)."""
    fleet_id: bytes
    """First 16 bytes of SHA-256(public_key)."""

    @classmethod
    def from_point(cls, point: bytes) -> FleetPublic:
        """Build from the uncompressed point (validated)."""
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        if len(point) != 65:
            raise ValueError("fleet public key must be an uncompressed P-256 point")
        return cls(public_key=point, fleet_id=hashlib.sha256(point).digest()[:FLEET_ID_LEN])

    def pem(self) -> bytes:
        """The public key as a SubjectPublicKeyInfo PEM."""
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.public_key)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def load_fleet_public(
    out_dir: Path, pub_name: str = FLEET_PUB, json_name: str = FLEET_JSON
) -> FleetPublic:
    """Read `fleet.pub` (a rotation's `fleet-<epoch>.pub`) from `out_dir` and check its JSON's
    fleet id against it."""
    key = serialization.load_pem_public_key((out_dir / pub_name).read_bytes())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"{out_dir / pub_name} is not a P-256 public key")
    fleet = FleetPublic.from_point(
        key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    meta = json.loads((out_dir / json_name).read_text(encoding="utf-8"))
    if meta.get("fleet_id") != fleet.fleet_id.hex():
        raise ValueError(f"{out_dir / json_name} does not match {pub_name}")
    return fleet


def _now() -> datetime:
    return datetime.now(UTC)


def _check_nodes(nodes: Sequence[TokenSpec], out_dir: Path, published: Sequence[str] = ()) -> None:
    problems: list[str] = []
    if not nodes:
        problems.append("no node tokens given")
    seen: set[tuple[Path, str]] = set()
    for spec in nodes:
        problems.extend(spec.problems())
        key = (spec.softhsm_conf.resolve(), spec.token_label)
        if key in seen:
            problems.append(f"token {spec.token_label!r} of {spec.softhsm_conf} given twice")
        seen.add(key)
    if len({spec.token_label for spec in nodes}) != len(nodes):
        problems.append("node token labels must be unique (they name the nodes)")
    for name in published:
        if (out_dir / name).exists():
            # Overwriting a pinned fleet key would orphan every client that pinned it.
            problems.append(f"{out_dir / name} already exists")
    if problems:
        raise CeremonyError("-", "check", "; ".join(problems))


def _step(
    step: str,
    spec: TokenSpec,
    node: str,
    *,
    in_file: Path | None = None,
    out_file: Path | None = None,
    extra: Sequence[str] = (),
) -> None:
    """Run one ceremony step on `spec`'s token in a subprocess; raise `CeremonyError`."""
    from vault_node.ceremony_cli import spec_args  # light import: no library is loaded

    command = [sys.executable, "-m", "vault_node.ceremony_cli", step, *spec_args(spec), *extra]
    if in_file is not None:
        command += ["--in", str(in_file)]
    if out_file is not None:
        command += ["--out", str(out_file)]
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # the child sets its own from the spec
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CeremonyError(node, step, type(exc).__name__) from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit {result.returncode}"
        raise CeremonyError(node, step, reason)


def _read(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def _parallel(fn: Callable[[TokenSpec], None], nodes: Sequence[TokenSpec], workers: int) -> None:
    """Run `fn` for every node, at most `workers` at a time; raise the first failure."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, spec) for spec in nodes]
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_ceremony(
    nodes: Sequence[TokenSpec],
    out_dir: Path,
    *,
    now: Callable[[], datetime] = _now,
    max_parallel: int | None = None,
    work_root: Path | None = None,
    etcd_cluster_id: int = 0,
) -> FleetPublic:
    """Provision every token of `nodes` with one new fleet; write out_dir/fleet.pub, fleet.json.

    Each node token must be initialised and hold no fleet key. The ceremony token and the
    exchanged files live in a fresh directory under `work_root` (default: the system temp dir),
    deleted at the end whatever happens. Raises `CeremonyError` naming the node and the step.

    `etcd_cluster_id` (non-zero) is pinned in every node token: the node then refuses any other
    etcd cluster (`vault_node.store_guard`). Without it a node pins the first cluster it meets
    and says so in its log.
    """
    if not 0 <= etcd_cluster_id < 1 << 64:
        raise CeremonyError("-", "check", "etcd_cluster_id must be an unsigned 64-bit number")
    pin = ["--etcd-cluster-id", f"{etcd_cluster_id:016x}"] if etcd_cluster_id else []
    out_dir = out_dir.resolve()
    _check_nodes(nodes, out_dir, (FLEET_PUB, FLEET_JSON))
    workers = _workers(nodes, max_parallel)
    work = Path(tempfile.mkdtemp(prefix="bkv-ceremony-", dir=work_root))
    try:
        fleet = _generate_and_wrap(nodes, work, workers, FIRST_EPOCH)
        done = _unwrap_all(nodes, work, workers, fleet, pin)
        if len(done) != len(nodes):
            raise AssertionError("every node is provisioned or an error was raised")
        meta = {
            "fleet_id": fleet.fleet_id.hex(),
            "etcd_cluster_id": f"{etcd_cluster_id:016x}" if etcd_cluster_id else "",
            "created": now().isoformat(timespec="seconds"),
            "curve": "P-256",
            "nodes": [spec.token_label for spec in nodes],
        }
        _publish(out_dir, FLEET_PUB, FLEET_JSON, fleet, meta)
        return fleet
    finally:
        # Blobs are wrapped (not secret) but have no use after the ceremony; the ceremony token
        # directory goes too, whatever happened.
        shutil.rmtree(work, ignore_errors=True)


def rotation_files(epoch: int) -> tuple[str, str]:
    """(public key PEM, metadata JSON) file names of a rotation's `epoch` in the fleet folder."""
    return f"fleet-{epoch}.pub", f"fleet-{epoch}.json"


def run_rotation_ceremony(
    nodes: Sequence[TokenSpec],
    out_dir: Path,
    epoch: int,
    work: Path,
    *,
    now: Callable[[], datetime] = _now,
    max_parallel: int | None = None,
) -> FleetPublic:
    """A fleet rotation's install: new `kem`, `record` and `ticket` keys of `epoch` (> 1) made
    once and carried into every token of `nodes` (provisioned with the fleet already), which
    then accept the epoch (sealing stays as it was); writes out_dir/fleet-<epoch>.pub/.json.

    Resumable: the exchanged files live in `work` (kept until every token holds the keys; they
    are wrapped for one token each, not secret). Run again after an interruption: a ceremony
    interrupted before its keys were wrapped for every node starts over with new keys (no token
    holds them yet); after that, only the tokens that lack them are provisioned from their blob.
    """
    if epoch <= FIRST_EPOCH:
        raise CeremonyError("-", "check", "a rotation makes an epoch above the first")
    out_dir = out_dir.resolve()
    _check_nodes(nodes, out_dir)
    pub_name, json_name = rotation_files(epoch)
    work.mkdir(parents=True, exist_ok=True)
    workers = _workers(nodes, max_parallel)
    wrapped = work / "wrapped.json"  # the keys are wrapped for every node: never make new ones
    if not wrapped.exists():
        for stale in work.iterdir():  # an interrupted start: nothing of it reached a node
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        fleet = _generate_and_wrap(nodes, work, workers, epoch)
        _write_atomic(wrapped, json.dumps({"kem_point": fleet.public_key.hex()}).encode())
    fleet = FleetPublic.from_point(bytes.fromhex(_read(wrapped)["kem_point"]))
    _unwrap_all(nodes, work, workers, fleet, [])
    meta = {
        "fleet_id": fleet.fleet_id.hex(),
        "epoch": epoch,
        "created": now().isoformat(timespec="seconds"),
        "curve": "P-256",
        "nodes": [spec.token_label for spec in nodes],
    }
    _publish(out_dir, pub_name, json_name, fleet, meta)
    shutil.rmtree(work, ignore_errors=True)
    return fleet


def token_step(
    step: str, spec: TokenSpec, *, epoch: int = FIRST_EPOCH, payload: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run one `ceremony_cli` step that answers with JSON (fleet-seal, fleet-retire,
    fleet-destroy, fleet-status, root-generate, root-sign) on `spec`'s token in a subprocess;
    `payload` is its `--in` file. Raises `CeremonyError` naming the token and the step."""
    with tempfile.TemporaryDirectory(prefix="bkv-step-") as scratch:
        out = Path(scratch) / "out.json"
        in_file = None
        if payload is not None:
            in_file = Path(scratch) / "in.json"
            in_file.write_text(json.dumps(payload), encoding="utf-8")
        _step(step, spec, spec.token_label, in_file=in_file, out_file=out,
              extra=["--epoch", str(epoch)])  # fmt: skip
        return _read(out)


def _workers(nodes: Sequence[TokenSpec], max_parallel: int | None) -> int:
    return max(1, min(len(nodes), max_parallel or os.cpu_count() or 1))


def _publish(
    out_dir: Path, pub_name: str, json_name: str, fleet: FleetPublic, meta: dict[str, Any]
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / pub_name, fleet.pem())
    _write_atomic(out_dir / json_name, (json.dumps(meta, indent=1) + "\n").encode())


def _generate_and_wrap(
    nodes: Sequence[TokenSpec], work: Path, workers: int, epoch: int
) -> FleetPublic:
    """A ceremony token in `work` makes `epoch`'s keys, every node a transport pair, and the
    ceremony wraps the keys into one blob file per node, then destroys its own copies."""
    epoch_arg = ["--epoch", str(epoch)]
    try:
        ceremony = create_token(work / "ceremony-token", "bkv-ceremony")
    except SoftHsmError as exc:
        raise CeremonyError(_CEREMONY, "init ceremony token", str(exc)) from None
    generated = work / "generated.json"
    _step("fleet-generate", ceremony, _CEREMONY, out_file=generated, extra=epoch_arg)

    def transport(spec: TokenSpec) -> None:
        point = work / f"{_safe(spec)}.point"
        _step("node-transport", spec, spec.token_label, out_file=point, extra=epoch_arg)

    _parallel(transport, nodes, workers)
    fleet = FleetPublic.from_point(bytes.fromhex(_read(generated)["kem_point"]))
    wrap_request = work / "wrap.json"
    requests = [
        {
            "token_label": spec.token_label,
            "transport_point": _read(work / f"{_safe(spec)}.point")["transport_point"],
            "out": str(work / f"{_safe(spec)}.blob"),
        }
        for spec in nodes
    ]
    wrap = {"kem_point": fleet.public_key.hex(), "epoch": epoch, "nodes": requests}
    wrap_request.write_text(json.dumps(wrap), encoding="utf-8")
    _step("fleet-wrap", ceremony, _CEREMONY, in_file=wrap_request)
    shutil.rmtree(work / "ceremony-token")  # its keys are already destroyed by fleet-wrap
    return fleet


def _unwrap_all(
    nodes: Sequence[TokenSpec],
    work: Path,
    workers: int,
    fleet: FleetPublic,
    extra: Sequence[str],
) -> list[str]:
    """Every node unwraps its blob (those with a `.done` file did already); the labels done."""
    done: list[str] = []

    def unwrap(spec: TokenSpec) -> None:
        result = work / f"{_safe(spec)}.done"
        if not result.exists():
            blob = work / f"{_safe(spec)}.blob"
            _step("node-unwrap", spec, spec.token_label, in_file=blob, out_file=result,
                  extra=extra)  # fmt: skip
        if _read(result).get("kem_point") != fleet.public_key.hex():
            raise CeremonyError(spec.token_label, "node-unwrap", "kem point mismatch")
        done.append(spec.token_label)

    try:
        _parallel(unwrap, nodes, workers)
    except CeremonyError as exc:
        if done:
            reason = f"{exc.reason} (already provisioned: {', '.join(sorted(done))})"
            raise CeremonyError(exc.node, exc.step, reason) from None
        raise
    return done


def _safe(spec: TokenSpec) -> str:
    """A file-name-safe, unique name for a node's work files."""
    return hashlib.sha256(
        f"{spec.softhsm_conf.resolve()}\0{spec.token_label}".encode()
    ).hexdigest()[:16]
