"""The machine's ceilings, measured in the same run as the cluster figures.

* `etcd_cas_ceiling`: compare-and-swap transactions against the cluster's etcd with
  `etcd_client`, dialled as the vault nodes dial it (TLS, here with the cluster's admin
  identity), one key per worker under a bench prefix (deleted afterwards), each
  shaped as a vault node's record write (`vault_node.store.EtcdStore.swap`): one transaction that
  compares the key's mod_revision with the one the worker's previous commit returned, puts a
  record-sized value, and reads the key in its failure branch. That is one etcd round trip, as a
  node with its record cache makes per recovery step.
* `grpc_ceiling`: unary calls through a no-op TLS service (`bkv_bench.noop_server`, its own
  process) with envelope-sized messages.
* `crypto_ceiling`: the server-side cryptography of one recovery (two envelope opens, OPRF,
  3DH/KE2, ticket seal/open, KE3 check, key transport, two response seals) on one core with
  software keys, as `bkv_bench/protocol_cost.py` measures it. A real node also makes 7 PKCS#11 calls
  per recovery on its one token thread (`HSM_CALLS_PER_RECOVERY`).
* `shape_ceiling`: recoveries through the cluster's path with its work taken out
  (`bkv_bench.shape_server`): relays for frontends, stores for vault nodes, two relayed TLS
  calls and two CAS per recovery on the cluster's etcd, and the CPU each role spends on them. It
  is what the plumbing alone allows on this machine, so the cluster's figure against it says how
  much is our own work, and its own figure against the etcd bound says how far any
  implementation of this layout in Python gRPC could go here.

Each loop is bounded by a deadline and an operation cap and stops by itself.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bkv_bench import server_work
from bkv_bench.cpu import CpuMeter, CpuUsed, cpu_json
from bkv_bench.noop_server import METHOD, bytes_call, bytes_channel
from bkv_bench.shape_server import ACCOUNT_BYTES, RELAY_METHOD
from etcd_client import Compare, EtcdClient, EtcdClientConfig, Get, Put, RangeResult, prefix_end

BENCH_PREFIX = b"/bkv-bench/"
MAX_OPS = 10_000_000
REQUEST_BYTES = 1100  # a sealed envelope padded to the 1024-byte bucket, plus HPKE overhead
REPLY_BYTES = 600
# One recovery = 2 client round trips (KE1 -> KE2, then KE3 + ticket -> wrapped key), each
# relayed by a frontend to a node, and 2 etcd CAS transactions (attempts+1, then the reset).
ROUND_TRIPS_PER_RECOVERY = 2
CAS_PER_RECOVERY = 2
CAS_VALUE_BYTES = 322  # a sealed record as a node writes it (measured in etcd)

# PKCS#11 calls a vault node makes per successful recovery (vault_node/service.py) in the steady
# state: the record id is cached per account, and the node the frontend routes the account to
# holds the record it last wrote, so it seals records but opens none. A node without the record
# cached adds one record open per step (and one etcd read). Per-call rates: shared/PLATFORM.md.
HSM_CALLS_PER_RECOVERY: dict[str, int] = {
    "ecdh (envelope open)": 2,
    "hmac_sha512 (oprf key)": 1,
    "aes_gcm (record seal)": 2,
    "aes_gcm (ticket seal/open)": 2,
}
_HSM_RATES_PER_S = {"ecdh": 2800.0, "hmac": 47000.0, "aes_gcm": 38000.0}


def hsm_seconds_per_recovery() -> float:
    """Token-thread time of one recovery estimated from PLATFORM.md's per-call rates."""
    total = 0.0
    for name, calls in HSM_CALLS_PER_RECOVERY.items():
        kind = name.split(" ")[0].replace("_sha256", "").replace("_sha512", "")
        total += calls / _HSM_RATES_PER_S[kind]
    return total


@dataclass(frozen=True)
class Ceiling:
    """One measured ceiling."""

    name: str
    ops: int
    seconds: float
    concurrency: int
    errors: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


async def _timed_workers(
    concurrency: int, seconds: float, step: Any, clock: Any = time.monotonic
) -> tuple[int, int, float]:
    """Run `step(worker)` in `concurrency` loops for `seconds`; (ok, errors, elapsed)."""
    ok = errors = 0
    start = clock()
    deadline = start + seconds

    async def worker(index: int) -> None:
        nonlocal ok, errors
        while clock() < deadline and ok + errors < MAX_OPS:
            try:
                await step(index)
                ok += 1
            except Exception:  # noqa: BLE001 - counted; a ceiling run goes on
                errors += 1

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(concurrency))), seconds + 30.0)
    return ok, errors, clock() - start


# -- etcd --------------------------------------------------------------------------------------


async def _delete_prefix(etcd: EtcdClientConfig, prefix: bytes) -> None:
    client = EtcdClient(etcd)
    try:
        await client.delete(prefix, range_end=prefix_end(prefix))
    finally:
        await client.close()


async def etcd_cas_ceiling(
    etcd: EtcdClientConfig, concurrency: int, seconds: float, etcd_pids: Sequence[int] = ()
) -> Ceiling:
    """CAS transactions shaped as a vault node's record write, one key per worker, over TLS with
    the identity `etcd` names (the cluster's admin: only it may write under /bkv-bench/). With
    the members' PIDs, their CPU per transaction too (notes `etcd_cpu_ms_per_txn`: the floor's
    etcd part, bkv_bench.floor)."""
    prefix = BENCH_PREFIX + secrets.token_hex(4).encode() + b"/cas/"
    client = EtcdClient(etcd)
    conflicts = 0
    value = os.urandom(CAS_VALUE_BYTES)  # the size of a sealed record
    revisions: dict[int, int] = {}
    try:
        for i in range(concurrency):
            put = await client.put(prefix + str(i).encode(), value)
            revisions[i] = put.header.revision

        async def step(index: int) -> None:
            nonlocal conflicts
            key = prefix + str(index).encode()
            result = await client.txn(
                [Compare.mod_is(key, revisions[index])], [Put(key, value)], [Get(key)]
            )
            if result.succeeded:
                revisions[index] = result.header.revision
            else:  # not expected (one key per worker); the failure branch says where it is
                conflicts += 1
                found = result.responses[0]
                assert isinstance(found, RangeResult)
                revisions[index] = found.kvs[0].mod_revision if found.kvs else 0

        meter = CpuMeter({"etcd": list(etcd_pids)})
        meter.start()
        ok, errors, elapsed = await _timed_workers(concurrency, seconds, step)
        used = meter.stop()
    finally:
        try:
            await client.delete(prefix, range_end=prefix_end(prefix))
        finally:
            await client.close()
    notes: dict[str, Any] = {"conflicts": conflicts}
    if etcd_pids and ok and not used.missing:
        notes["etcd_cpu_ms_per_txn"] = round(used.seconds["etcd"] * 1000 / ok, 4)
    return Ceiling("etcd_cas", ok, elapsed, concurrency, errors, notes)


# -- gRPC --------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway P-256 certificate for localhost/127.0.0.1 and its key (0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bkv-bench noop")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "noop.pem", directory / "noop.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def _event_loop_name() -> str:
    """The running loop's implementation, which the servers we start run too."""
    return (
        "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    )


def _spawn(module: str, args: Sequence[str], max_seconds: float) -> subprocess.Popen[bytes]:
    """Start `python -m module args...`; it prints `PORT <n>` and stops when its stdin closes."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            module,
            *args,
            "--max-seconds",
            str(max_seconds),
            "--event-loop",
            _event_loop_name(),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


async def grpc_ceiling(concurrency: int, seconds: float) -> Ceiling:
    """Unary TLS calls per second to a no-op server in its own process, which runs the same
    event loop implementation as the caller (uvloop or asyncio's), as the cluster's servers do."""
    with tempfile.TemporaryDirectory(prefix="bkv-bench-tls-") as tmp:
        cert, key = self_signed(Path(tmp))
        proc = _spawn(
            "bkv_bench.noop_server",
            ["--cert", str(cert), "--key", str(key), "--reply-bytes", str(REPLY_BYTES)],
            seconds + 60.0,
        )
        try:
            (port,) = await _read_ports([proc])
            async with bytes_channel(cert.read_bytes(), f"127.0.0.1:{port}") as channel:
                call = bytes_call(channel, METHOD)
                payload = os.urandom(REQUEST_BYTES)
                await asyncio.wait_for(channel.channel_ready(), 10.0)

                async def step(_index: int) -> None:
                    await call(payload, timeout=5.0)

                ok, errors, elapsed = await _timed_workers(concurrency, seconds, step)
        finally:
            _stop(proc)
    return Ceiling(
        "grpc_unary_tls",
        ok,
        elapsed,
        concurrency,
        errors,
        {
            "request_bytes": REQUEST_BYTES,
            "reply_bytes": REPLY_BYTES,
            "server": f"grpc.aio on {_event_loop_name()}, own process",
        },
    )


# -- the recovery path's shape, without its work -----------------------------------------------


@dataclass(frozen=True)
class PathShape:
    """The process layout the shape ceiling copies: as many relays as the cluster has frontends,
    as many stores as it has vault nodes; the etcd members' PIDs, when known, for their CPU."""

    relays: int = 2
    stores: int = 6
    etcd_pids: tuple[int, ...] = ()

    def validate(self) -> list[str]:
        out = []
        if not 1 <= self.relays <= 64:
            out.append(f"relays must be 1..64, not {self.relays}")
        if not 1 <= self.stores <= 64:
            out.append(f"stores must be 1..64, not {self.stores}")
        return out


async def shape_ceiling(
    etcd: EtcdClientConfig, concurrency: int, seconds: float, shape: PathShape
) -> Ceiling:
    """Recoveries per second through the cluster's plumbing alone (`bkv_bench.shape_server`):
    relay processes (the frontends) and store processes (the vault nodes), two relayed TLS calls
    per recovery and one CAS per call on the cluster's etcd, no cryptography.

    It bounds what any implementation of this process layout in Python gRPC could reach on this
    machine; the CPU per recovery of each role (the etcd members' too, when their PIDs are given)
    is measured over the same phase and goes into the notes."""
    problems = shape.validate()
    if problems:
        raise ValueError("; ".join(problems))
    prefix = (BENCH_PREFIX + secrets.token_hex(4).encode() + b"/shape/").decode()
    procs: dict[str, list[subprocess.Popen[bytes]]] = {"store": [], "relay": []}
    with tempfile.TemporaryDirectory(prefix="bkv-bench-shape-") as tmp:
        cert, key = self_signed(Path(tmp))
        tls = ["--cert", str(cert), "--key", str(key)]
        try:
            relay_ports = await _start_shape(procs, shape, tls, etcd, prefix, seconds)
            ok, errors, elapsed, used = await _drive_shape(
                cert.read_bytes(),
                relay_ports,
                concurrency,
                seconds,
                CpuMeter(
                    {
                        "etcd": list(shape.etcd_pids),
                        "frontend": [p.pid for p in procs["relay"]],
                        "node": [p.pid for p in procs["store"]],
                    }
                ),
            )
        finally:
            for proc in procs["relay"] + procs["store"]:
                _stop(proc)
            await _delete_prefix(etcd, prefix.encode())
    return Ceiling(
        "shape_recovery",
        ok,
        elapsed,
        concurrency,
        errors,
        {
            "relays": shape.relays,
            "stores": shape.stores,
            "calls_per_recovery": ROUND_TRIPS_PER_RECOVERY,
            "cas_per_recovery": CAS_PER_RECOVERY,
            "cpu": cpu_json(used, ops=ok, elapsed_s=elapsed),
            "what": "the recovery path's processes, calls and CAS writes, with no cryptography",
        },
    )


async def _start_shape(
    procs: dict[str, list[subprocess.Popen[bytes]]],
    shape: PathShape,
    tls: list[str],
    etcd: EtcdClientConfig,
    prefix: str,
    seconds: float,
) -> list[int]:
    """Start the store processes, then the relays pointing at them (into `procs`, so that the
    caller stops every one started); returns the relays' ports."""
    for _ in range(shape.stores):
        procs["store"].append(
            _spawn(
                "bkv_bench.shape_server",
                ["store", *tls, *_etcd_args(etcd), "--prefix", prefix],
                seconds + 60.0,
            )
        )
    store_ports = await _read_ports(procs["store"])
    store_addresses = ",".join(f"127.0.0.1:{p}" for p in store_ports)
    for _ in range(shape.relays):
        procs["relay"].append(
            _spawn(
                "bkv_bench.shape_server",
                ["relay", *tls, "--stores", store_addresses],
                seconds + 60.0,
            )
        )
    return await _read_ports(procs["relay"])


async def _read_ports(procs: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    return [await asyncio.wait_for(asyncio.to_thread(_read_port, p), 30.0) for p in procs]


async def _drive_shape(
    cert: bytes, relay_ports: Sequence[int], concurrency: int, seconds: float, meter: CpuMeter
) -> tuple[int, int, float, CpuUsed]:
    """Closed loop: each worker recovers its own account, two calls per recovery, through the
    relays in turn (one shared channel per relay, as the client keeps one per frontend)."""
    channels = [bytes_channel(cert, f"127.0.0.1:{p}") for p in relay_ports]
    try:
        calls = [bytes_call(c, RELAY_METHOD) for c in channels]
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 10.0)
        padding = os.urandom(REQUEST_BYTES - ACCOUNT_BYTES)
        requests = [i.to_bytes(ACCOUNT_BYTES, "big") + padding for i in range(concurrency)]
        for index in range(concurrency):  # create every account's key before measuring
            await calls[index % len(calls)](requests[index], timeout=5.0)

        async def recovery(index: int) -> None:
            call = calls[index % len(calls)]
            for _ in range(ROUND_TRIPS_PER_RECOVERY):
                await call(requests[index], timeout=5.0)

        meter.start()
        ok, errors, elapsed = await _timed_workers(concurrency, seconds, recovery)
        used = meter.stop()
    finally:
        for channel in channels:
            await channel.close()
    return ok, errors, elapsed, used


def _etcd_args(etcd: EtcdClientConfig) -> list[str]:
    """The shape store's command-line arguments naming etcd and the identity to dial it with."""
    tls = etcd.tls
    return [
        "--etcd", ",".join(etcd.endpoints), "--etcd-ca", tls.ca, "--etcd-cert", tls.cert,
        "--etcd-key", tls.key, "--etcd-server-name", tls.server_name,
    ]  # fmt: skip


def _read_port(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("PORT "):
        raise RuntimeError("the no-op gRPC server did not start")
    return int(line.split()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server we started (close its stdin, then by its pid if it lingers)."""
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5.0)
    if proc.stdout is not None:
        proc.stdout.close()


# -- crypto ------------------------------------------------------------------------------------


def crypto_ceiling(seconds: float, clock: Any = time.perf_counter) -> Ceiling:
    """Server-side recoveries per second on one core, software keys in place of the token."""
    one_recovery = server_work.prepare(os.urandom).run
    one_recovery()  # warm up
    ops = 0
    start = clock()
    deadline = start + seconds
    while clock() < deadline and ops < MAX_OPS:
        one_recovery()
        ops += 1
    elapsed = clock() - start
    hsm_s = hsm_seconds_per_recovery()
    return Ceiling(
        "crypto_recovery",
        ops,
        elapsed,
        1,
        0,
        {
            "keys": "the software token (vault_node.soft_token), one core",
            "hsm_calls_per_recovery": dict(HSM_CALLS_PER_RECOVERY),
            "hsm_ms_per_recovery_estimate": round(hsm_s * 1000, 3),
            "hsm_recoveries_per_s_per_node_estimate": round(1 / hsm_s, 1),
        },
    )
