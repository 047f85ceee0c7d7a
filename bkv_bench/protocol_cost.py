"""Per-operation cost of the protocol core on this machine (issue: protocol core benchmark).

    .venv/bin/python -m bkv_bench.protocol_cost [--seconds 1.0] [--out results]

Measures, single-threaded, with software keys standing in for the token (so the figures are the
crypto itself, not PKCS#11 round trips): OPRF BlindEvaluate, the server's KE2 (GenerateKE2),
the server's finish (KE3 check), envelope open (HPKE with P-256 ECDH), response seal, backup-file
throughput, and the whole server-side work of one recovery (two envelope opens, KE2, ticket
seal/open, KE3 check, key transport, two response seals). It counts the ristretto255 scalar
multiplications one recovery performs and reports the ratio of the measured server cost to the
cost of those multiplications alone. Writes results/<timestamp>/protocol.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bkv.v1 import envelope_pb2
from bkv_bench import server_work
from vault_protocol import account_auth, backup_file, envelope, opaque, oprf, ristretto
from vault_protocol.backup_key import BackupKey
from vault_protocol.opaque import hazmat

ACCOUNT = server_work.ACCOUNT
CRED = ACCOUNT.encode()


@dataclass
class Measured:
    name: str
    per_op_us: float
    ops_per_s: float
    runs: int


def measure(name: str, fn: Callable[[], object], seconds: float) -> Measured:
    """Run `fn` repeatedly for about `seconds`; median of 5 batches, in microseconds per call."""
    fn()  # warm up
    batch = 1
    while True:  # size a batch to ~seconds/5
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        if time.perf_counter() - t0 > seconds / 5 or batch > 1 << 20:
            break
        batch *= 2
    per_call = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        per_call.append((time.perf_counter() - t0) / batch)
    med = statistics.median(per_call)
    return Measured(name, med * 1e6, 1 / med, batch * 5)


class MultCounter:
    """Counts ristretto255 scalar multiplications by wrapping the module's two entry points."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = (ristretto.scalar_mult, ristretto.base_mult)

    def __enter__(self) -> MultCounter:
        sm, bm = self._orig

        def scalar_mult(s: bytes, p: bytes) -> bytes:
            self.count += 1
            return sm(s, p)

        def base_mult(s: bytes) -> bytes:
            self.count += 1
            return bm(s)

        ristretto.scalar_mult = scalar_mult  # type: ignore[assignment]
        ristretto.base_mult = base_mult  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        ristretto.scalar_mult, ristretto.base_mult = self._orig  # type: ignore[assignment]


def measure_all(work: server_work.ServerRecovery, secs: float) -> list[Measured]:
    """Each server-side step of a recovery, and the whole of it, timed with software keys."""
    rng = os.urandom
    keys, config, record, ke1, ke3 = work.keys, work.config, work.record, work.ke1, work.ke3
    fleet = work.fleet
    oprf_key = hazmat.derive_oprf_key(keys.oprf_seed_hmac, CRED)
    blinded = oprf.blind(b"pw", rng)[1]
    point = ristretto.base_mult(ristretto.random_scalar(rng))
    scalar = ristretto.random_scalar(rng)
    ok = envelope_pb2.VaultResponse(outcome=envelope_pb2.OUTCOME_OK)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("ristretto255_scalar_mult", lambda: ristretto.scalar_mult(scalar, point)),
        ("oprf_blind_evaluate", lambda: oprf.blind_evaluate(oprf_key, blinded)),
        ("server_ke2", lambda: opaque.server_login_start(record, CRED, ke1, keys, config, rng)),
        ("server_finish", lambda: opaque.server_login_finish(work.expected_client_mac, ke3)),
        (
            "envelope_open",
            lambda: envelope.open_request(
                work.envelope_start, ACCOUNT, fleet.fleet_id, work.ecdh, fleet.public_key_bytes
            ),
        ),
        ("response_seal", lambda: envelope.seal_response(work.response_key, ok, rng)),
        # Issue 17: the node checks the account key's signature on every step 1.
        (
            "account_signature_verify",
            lambda: account_auth.verify_request(work.start_request, fleet.fleet_id, ACCOUNT),
        ),
        ("server_recovery_total", work.run),
    ]
    return [measure(name, fn, secs) for name, fn in steps]


def recovery_json(results: list[Measured], mults_per_recovery: int) -> dict[str, Any]:
    """One recovery's server cost against the cost of its ristretto255 multiplications alone."""
    by_name = {m.name: m for m in results}
    mult_us = by_name["ristretto255_scalar_mult"].per_op_us
    total_us = by_name["server_recovery_total"].per_op_us
    opaque_us = by_name["server_ke2"].per_op_us + by_name["server_finish"].per_op_us
    opaque_mults = mults_per_recovery  # every ristretto mult of a recovery is inside KE2
    return {
        "ristretto_mults_per_recovery": mults_per_recovery,
        "server_us_per_recovery": round(total_us, 1),
        "mults_only_us": round(mults_per_recovery * mult_us, 1),
        "ratio_total_to_mults": round(total_us / (mults_per_recovery * mult_us), 3),
        "ratio_opaque_to_mults": round(opaque_us / (opaque_mults * mult_us), 3),
        "server_recoveries_per_s_one_core": round(1e6 / total_us, 1),
    }


def backup_file_json(file_mib: int) -> dict[str, Any]:
    """Backup-file throughput, in memory: the crypto, not the disk."""
    rng = os.urandom
    size = file_mib << 20
    key = BackupKey.generate(rng)
    plain = rng(size)
    sealed_buf = io.BytesIO()
    t0 = time.perf_counter()
    backup_file.encrypt_stream(io.BytesIO(plain), sealed_buf, key, rng)
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    backup_file.decrypt_stream(io.BytesIO(sealed_buf.getvalue()), io.BytesIO(), key)
    dec_s = time.perf_counter() - t0
    return {
        "size_mib": file_mib,
        "encrypt_mb_per_s": round(size / enc_s / 1e6, 1),
        "decrypt_mb_per_s": round(size / dec_s / 1e6, 1),
    }


def print_summary(
    results: list[Measured], rec: Mapping[str, Any], bf: Mapping[str, Any], path: Path
) -> None:
    for m in results:
        print(f"{m.name:28s} {m.per_op_us:10.1f} us/op  {m.ops_per_s:10.0f} ops/s")
    print(
        f"one recovery (server side): {rec['server_us_per_recovery']} us, "
        f"{rec['ristretto_mults_per_recovery']} ristretto255 mults = {rec['mults_only_us']} us; "
        f"ratio total/mults {rec['ratio_total_to_mults']}, "
        f"OPAQUE/mults {rec['ratio_opaque_to_mults']}"
    )
    print(
        f"backup file: encrypt {bf['encrypt_mb_per_s']} MB/s, decrypt {bf['decrypt_mb_per_s']} MB/s"
    )
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--file-mib", type=int, default=64, help="backup file size for throughput")
    args = ap.parse_args(argv)

    work = server_work.prepare(os.urandom)  # software keys in place of the token's
    with MultCounter() as counter:
        work.run()
    results = measure_all(work, args.seconds)
    recovery = recovery_json(results, counter.count)
    bf = backup_file_json(args.file_mib)
    report = {
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "note": "single thread, software keys in place of the token; medians of 5 batches",
        "ops": {
            m.name: {"us_per_op": round(m.per_op_us, 2), "ops_per_s": round(m.ops_per_s, 1)}
            for m in results
        },
        "recovery": recovery,
        "backup_file": bf,
    }
    out = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps(report, indent=2) + "\n")
    print_summary(results, recovery, bf, out / "protocol.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
