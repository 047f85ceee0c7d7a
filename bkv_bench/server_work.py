"""The server side of one recovery, with the node's software token standing in for SoftHSM.

One place for what both the protocol benchmark (`bkv_bench/protocol_cost.py`) and `bkv-bench
--ceilings` time (protocol 3): one HPKE envelope open (P-256 ECDH in the token) and the step keys,
OPRF + KE2 (the OPRF seed's HMAC in the token), a ticket seal and open (the token's `ticket` key),
the continued step 2 opened in software, the KE3 check, the key transport and two response
seals. The token is `vault_node.soft_token.SoftToken` with the keys of `vault_node.service`
(`TokenServerKeys`), so the work is the node's own, without its store and witnesses, plus the
account key's Ed25519 signature on step 1 checked as the node checks it. The KSF is
the client's, so it is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bkv.v1 import envelope_pb2
from vault_node.service import TokenServerKeys
from vault_node.soft_token import SoftToken
from vault_protocol import account_auth, continuation, envelope, opaque
from vault_protocol.backup_key import seal_transport

ACCOUNT = "bench-account"
TICKET_AAD = b"bkv-v3 ticket"
TICKET_PADDED = 384  # vault_node.tickets.PADDED_LEN
Rng = Callable[[int], bytes]


@dataclass(frozen=True)
class ServerRecovery:
    """A registered record, one client login's messages, and the server's work for it."""

    keys: opaque.ServerKeys
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


@dataclass(frozen=True)
class _Login:
    """One client login against a registered record: its two sealed envelopes."""

    record: bytes
    ke1: bytes
    ke3: bytes
    expected_client_mac: bytes
    envelope_start: bytes
    start_request: envelope_pb2.VaultRequest
    response_key: bytes
    ticket_nonce: bytes
    ticket: bytes
    envelope_finish: bytes


@dataclass(frozen=True)
class _Server:
    """The node's side: its software token, the OPAQUE keys from it, the fleet's public key."""

    token: SoftToken
    keys: TokenServerKeys
    config: opaque.OpaqueConfig
    fleet: envelope.FleetKey


def _login(server: _Server, rng: Rng) -> _Login:
    """A registration, then a client's login: RecoverStart sealed to the fleet, and the
    RecoverFinish continued under a ticket the token sealed."""
    token, keys, config, fleet = server.token, server.keys, server.config, server.fleet
    cred = ACCOUNT.encode()
    reg_state, reg_req = opaque.registration_start(b"correct horse", rng)
    reg_resp = opaque.server_registration_response(reg_req, cred, keys)
    record, _ = opaque.registration_finish(reg_state, reg_resp, config, rng)
    state, ke1 = opaque.login_start(b"correct horse", rng)
    ke2, server_state = opaque.server_login_start(record, cred, ke1, keys, config, rng)
    ke3 = opaque.login_finish(state, ke2, config)[0]
    response_key = rng(32)
    start = envelope_pb2.VaultRequest(
        response_key=response_key, recover_start=envelope_pb2.RecoverStart(ke1=ke1)
    )
    signer = account_auth.AccountSigner.from_private_key(Ed25519PrivateKey.generate())
    account_auth.sign_request(start, fleet.fleet_id, ACCOUNT, signer, 1)
    ticket_nonce = rng(12)
    ticket = token.aes_gcm_seal("ticket", ticket_nonce, rng(TICKET_PADDED), TICKET_AAD)
    finish = continuation.seal_continued(
        fleet.fleet_id, ACCOUNT, ticket, continuation.StepKeys.derive(response_key).request2,
        envelope_pb2.VaultRequest(recover_finish=envelope_pb2.RecoverFinish(ke3=ke3)), rng,
    )  # fmt: skip
    return _Login(
        record, ke1, ke3, server_state.expected_client_mac,
        envelope.seal_request(fleet, ACCOUNT, start), start, response_key, ticket_nonce, ticket,
        finish,
    )  # fmt: skip


def _recovery(server: _Server, login: _Login, rng: Rng) -> Callable[[], None]:
    """The server side of one whole recovery of `login`, both steps."""
    token, keys, config, fleet = server.token, server.keys, server.config, server.fleet
    cred, wrapped, pk_r = ACCOUNT.encode(), rng(60), fleet.public_key_bytes

    def one_recovery() -> None:
        req1 = envelope.open_request(
            login.envelope_start, ACCOUNT, fleet.fleet_id, token.ecdh, pk_r
        )
        account_auth.verify_request(req1, fleet.fleet_id, ACCOUNT)
        step = continuation.StepKeys.derive(req1.response_key)
        ke2, state = opaque.server_login_start(
            login.record, cred, req1.recover_start.ke1, keys, config, rng
        )
        token.aes_gcm_seal("ticket", rng(12), rng(TICKET_PADDED), TICKET_AAD)
        envelope.seal_response(
            step.answer1,
            envelope_pb2.VaultResponse(
                outcome=envelope_pb2.OUTCOME_OK,
                recover_start=envelope_pb2.RecoverStartReply(ke2=ke2),
                ticket=login.ticket,
            ),
            rng,
        )
        sealed2 = continuation.parse_continued(login.envelope_finish, fleet.fleet_id)
        # The token's one AES-GCM open of step 2: the ticket.
        token.aes_gcm_open("ticket", login.ticket_nonce, sealed2.ticket, TICKET_AAD)
        req2 = continuation.open_continued(sealed2, ACCOUNT, fleet.fleet_id, step.request2)
        opaque.server_login_finish(login.expected_client_mac, req2.recover_finish.ke3)
        transported = seal_transport(state.session_key, wrapped, rng)
        envelope.seal_response(
            step.answer2,
            envelope_pb2.VaultResponse(
                outcome=envelope_pb2.OUTCOME_OK,
                recover_finish=envelope_pb2.RecoverFinishReply(transported_key=transported),
            ),
            rng,
        )

    return one_recovery


def prepare(rng: Rng) -> ServerRecovery:
    """A fresh software token with a whole fleet's keys, a registration and one login, ready to
    time."""
    token = SoftToken(rng=rng)
    server = _Server(
        token,
        TokenServerKeys.derive(token),
        opaque.OpaqueConfig(ksf=opaque.IdentityKsf()),  # the KSF runs on the client only
        envelope.FleetKey(token.kem_public_key()),
    )
    login = _login(server, rng)
    return ServerRecovery(
        keys=server.keys,
        config=server.config,
        fleet=server.fleet,
        ecdh=token.ecdh,
        record=login.record,
        ke1=login.ke1,
        ke3=login.ke3,
        expected_client_mac=login.expected_client_mac,
        envelope_start=login.envelope_start,
        start_request=login.start_request,
        response_key=login.response_key,
        run=_recovery(server, login, rng),
    )
