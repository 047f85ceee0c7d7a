"""The server side of one recovery, with software keys standing in for the token.

One place for what both the protocol benchmark (`benchmarks/protocol.py`) and `bkv-bench
--ceilings` time (protocol 3): one HPKE envelope open (P-256 ECDH) and the step keys, the
account key's Ed25519 signature on step 1, OPRF + KE2, a ticket seal and open, the continued
step 2 opened in software, the KE3 check, the key transport and two response seals. The KSF is
the client's, so it is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bkv.v1 import envelope_pb2
from vault_protocol import account_auth, continuation, envelope, opaque
from vault_protocol.backup_key import seal_transport

ACCOUNT = "bench-account"
TICKET_AAD = b"bkv-v3 ticket"
TICKET_PADDED = 384  # vault_node.tickets.PADDED_LEN


@dataclass(frozen=True)
class ServerRecovery:
    """A registered record, one client login's messages, and the server's work for it."""

    keys: opaque.SoftwareServerKeys
    config: opaque.OpaqueConfig
    fleet: envelope.FleetKey
    ecdh: Callable[[bytes], bytes]
    record: bytes
    ke1: bytes
    ke3: bytes
    expected_client_mac: bytes
    envelope_start: bytes  # sealed RecoverStart
    start_request: envelope_pb2.VaultRequest  # its plaintext, signed by the account key
    response_key: bytes  # of envelope_start
    run: Callable[[], None]  # the server side of one whole recovery

    @property
    def credential_identifier(self) -> bytes:
        return ACCOUNT.encode()


def prepare(rng: Callable[[int], bytes]) -> ServerRecovery:
    """Fresh software keys, a registration and one login, ready to time."""
    cred = ACCOUNT.encode()
    keys = opaque.SoftwareServerKeys.generate(rng)
    kem = ec.generate_private_key(ec.SECP256R1())
    pk_r = kem.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    fleet = envelope.FleetKey(pk_r)

    def ecdh(enc: bytes) -> bytes:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc)
        return kem.exchange(ec.ECDH(), peer)

    ticket_key = AESGCM(rng(32))
    config = opaque.OpaqueConfig(ksf=opaque.IdentityKsf())  # the KSF runs on the client only
    reg_state, reg_req = opaque.registration_start(b"correct horse", rng)
    reg_resp = opaque.server_registration_response(reg_req, cred, keys)
    record, _ = opaque.registration_finish(reg_state, reg_resp, config, rng)
    st, ke1 = opaque.login_start(b"correct horse", rng)
    ke2_0, server_state = opaque.server_login_start(record, cred, ke1, keys, config, rng)
    ke3 = opaque.login_finish(st, ke2_0, config)[0]
    expected_mac = server_state.expected_client_mac
    rk1, wrapped = rng(32), rng(60)
    start = envelope_pb2.VaultRequest(
        response_key=rk1, recover_start=envelope_pb2.RecoverStart(ke1=ke1)
    )
    signer = account_auth.AccountSigner.from_private_key(Ed25519PrivateKey.generate())
    account_auth.sign_request(start, fleet.fleet_id, ACCOUNT, signer, 1)
    env1 = envelope.seal_request(fleet, ACCOUNT, start)
    step_keys = continuation.StepKeys.derive(rk1)
    ticket_nonce = rng(12)
    ticket_ct = ticket_key.encrypt(ticket_nonce, rng(TICKET_PADDED), TICKET_AAD)
    env2 = continuation.seal_continued(
        fleet.fleet_id,
        ACCOUNT,
        ticket_ct,
        step_keys.request2,
        envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3)),
        rng,
    )

    def one_recovery() -> None:
        req1 = envelope.open_request(env1, ACCOUNT, fleet.fleet_id, ecdh, pk_r)
        account_auth.verify_request(req1, fleet.fleet_id, ACCOUNT)
        step = continuation.StepKeys.derive(req1.response_key)
        ke2, state = opaque.server_login_start(
            record, cred, req1.recover_start.ke1, keys, config, rng
        )
        ticket_key.encrypt(rng(12), rng(TICKET_PADDED), TICKET_AAD)
        envelope.seal_response(
            step.answer1,
            envelope_pb2.VaultResponse(
                outcome=envelope_pb2.OUTCOME_OK,
                recover_start=envelope_pb2.RecoverStartReply(ke2=ke2),
                ticket=ticket_ct,
            ),
            rng,
        )
        sealed2 = continuation.parse_continued(env2, fleet.fleet_id)
        ticket_key.decrypt(ticket_nonce, sealed2.ticket, TICKET_AAD)  # the token's one AES-GCM
        req2 = continuation.open_continued(sealed2, ACCOUNT, fleet.fleet_id, step.request2)
        opaque.server_login_finish(expected_mac, req2.recover_finish.ke3)
        transported = seal_transport(state.session_key, wrapped, rng)
        envelope.seal_response(
            step.answer2,
            envelope_pb2.VaultResponse(
                outcome=envelope_pb2.OUTCOME_OK,
                recover_finish=envelope_pb2.RecoverFinishReply(transported_key=transported),
            ),
            rng,
        )

    return ServerRecovery(
        keys=keys,
        config=config,
        fleet=fleet,
        ecdh=ecdh,
        record=record,
        ke1=ke1,
        ke3=ke3,
        expected_client_mac=expected_mac,
        envelope_start=env1,
        start_request=start,
        response_key=rk1,
        run=one_recovery,
    )
