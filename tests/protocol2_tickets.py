"""Tickets as protocol 2 sealed them (their AADs), for tests that prove a protocol-3 node never
opens one. Not node code: the node seals and opens only protocol 3's (`vault_node.tickets`)."""

from __future__ import annotations

from collections.abc import Callable

from bkv.store.v1 import sealed_pb2
from vault_node.records import TICKET_KEY, TokenOps, seal_sealed

LOGIN_TICKET_AAD = b"bkv-v1 ticket"
REGISTRATION_TICKET_AAD = b"bkv-v1 registration ticket"


def seal_login_ticket(
    token: TokenOps, ticket: sealed_pb2.Ticket, rng: Callable[[int], bytes]
) -> bytes:
    return seal_sealed(token, TICKET_KEY, ticket.SerializeToString(), LOGIN_TICKET_AAD, rng)


def seal_registration_ticket(
    token: TokenOps, ticket: sealed_pb2.RegistrationTicket, rng: Callable[[int], bytes]
) -> bytes:
    plaintext = ticket.SerializeToString()
    return seal_sealed(token, TICKET_KEY, plaintext, REGISTRATION_TICKET_AAD, rng)
