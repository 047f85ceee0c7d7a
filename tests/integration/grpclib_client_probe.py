"""Talks to a frontend with grpclib only (its own HTTP/2 stack) — run by test_grpclib_client.py.

    PYTHONPATH=<generated dir> python grpclib_client_probe.py '<json arguments>'

The generated dir holds `bkv/v1/frontend_pb2.py`, `frontend_grpc.py` (grpclib stubs) and
`envelope_pb2.py`, made from protos/ at test time; this script must import no grpcio at all.
Prints one JSON object: what each step answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

import bkv.v1
from bkv.v1 import envelope_pb2, frontend_grpc, frontend_pb2

LOGIN_CONTEXT = b"bkv-v1 login"


async def _status_of(call: Any) -> str:
    try:
        await call
    except GRPCError as err:
        return str(err.status.name)
    return "OK"


async def probe(args: dict[str, Any]) -> dict[str, Any]:
    host, _, port = str(args["frontend"]).rpartition(":")
    context = ssl.create_default_context(cafile=args["ca"])
    context.set_alpn_protocols(["h2"])  # gRPC over TLS needs HTTP/2 by ALPN
    out: dict[str, Any] = {}
    # The certificate carries IP 127.0.0.1 and "localhost": default hostname checking applies.
    channel = Channel(host, int(port), ssl=context)
    try:
        health = HealthStub(channel)
        for service in ("", "bkv.v1.Frontend"):
            reply = await health.Check(HealthCheckRequest(service=service), timeout=5)
            out[f"health[{service}]"] = HealthCheckResponse.ServingStatus.Name(reply.status)

        stub = frontend_grpc.FrontendStub(channel)
        account = str(args["account_id"])
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        challenge = (
            await stub.GetChallenge(frontend_pb2.ChallengeRequest(account_id=account), timeout=5)
        ).challenge
        out["bad_account_id"] = await _status_of(
            stub.GetChallenge(frontend_pb2.ChallengeRequest(account_id="no spaces"), timeout=5)
        )
        out["bad_signature"] = await _status_of(
            stub.Login(
                frontend_pb2.LoginRequest(
                    account_id=account,
                    public_key=public,
                    challenge=challenge,
                    signature=key.sign(b"something else"),
                ),
                timeout=5,
            )
        )
        login = await stub.Login(
            frontend_pb2.LoginRequest(
                account_id=account,
                public_key=public,
                challenge=challenge,
                signature=key.sign(LOGIN_CONTEXT + challenge),
            ),
            timeout=5,
        )
        out["token"] = bool(login.session_token)
        out["expires_in_future"] = login.expires_at_ms > time.time() * 1000
        auth = {"authorization": f"Bearer {login.session_token}"}

        garbage = frontend_pb2.RelayRequest(envelope=os.urandom(300))
        out["garbage_envelope"] = await _status_of(stub.Relay(garbage, metadata=auth, timeout=10))
        out["missing_token"] = await _status_of(stub.Relay(garbage, timeout=10))
        out["forged_token"] = await _status_of(
            stub.Relay(garbage, metadata={"authorization": "Bearer forged"}, timeout=10)
        )

        # A genuine sealed status request (vault_protocol imports no grpcio either).
        # Protocol 3: a Begin, then the status question continued under step 1's keys.
        from vault_protocol.account_auth import AccountSigner, sign_request
        from vault_protocol.continuation import StepKeys, seal_continued
        from vault_protocol.envelope import FleetKey, open_response, seal_request

        with open(args["fleet_public_key"], "rb") as f:
            fleet = FleetKey.from_pem(f.read())
        response_key = os.urandom(32)
        keys = StepKeys.derive(response_key)
        request = envelope_pb2.VaultRequest(
            response_key=response_key,
            begin=envelope_pb2.Begin(op=envelope_pb2.Begin.Op.OP_STATUS),
        )
        # Signed by the account key, as every first step (issue 17).
        signer = AccountSigner.from_private_key(key)
        sign_request(request, fleet.fleet_id, account, signer, time.time_ns() // 1_000_000)
        reply = await stub.Relay(
            frontend_pb2.RelayRequest(envelope=seal_request(fleet, account, request)),
            metadata=auth,
            timeout=10,
        )
        begun = open_response(keys.answer1, reply.sealed_response)
        status = envelope_pb2.VaultRequest(status=envelope_pb2.StatusRequest())
        second = seal_continued(
            fleet.fleet_id, account, begun.ticket, keys.request2, status, os.urandom
        )
        reply = await stub.Relay(
            frontend_pb2.RelayRequest(envelope=second), metadata=auth, timeout=10
        )
        response = open_response(keys.answer2, reply.sealed_response)
        out["status_outcome"] = envelope_pb2.Outcome.Name(response.outcome)
        out["registered"] = response.status.registered
    finally:
        channel.close()
    out["grpcio_imported"] = sorted(m for m in sys.modules if m == "grpc" or m.startswith("grpc."))
    # bkv/v1/__init__.py -> the folder that holds the `bkv` package
    out["bkv_from"] = os.path.dirname(os.path.dirname(os.path.dirname(bkv.v1.__file__ or "")))
    out["grpclib_status_names_ok"] = Status.INVALID_ARGUMENT.name == "INVALID_ARGUMENT"
    return out


def main() -> None:
    print(json.dumps(asyncio.run(probe(json.loads(sys.argv[1])))))


if __name__ == "__main__":
    main()
