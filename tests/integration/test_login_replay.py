"""A login challenge is used once (issue 17): replaying the same challenge and signature within
the challenge's lifetime gives no second session, on the issuing frontend or on another one.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from bad_input_wire import OK, UNAUTHENTICATED, Wire, get_challenge, login_with

from bkv.v1 import frontend_pb2
from client.session import AccountKey, login_request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _challenge(wire: Wire, frontend: int, account_id: str) -> bytes:
    answer = get_challenge(wire.frontend(frontend), account_id)
    assert answer.code == OK, answer
    return bytes(frontend_pb2.ChallengeReply.FromString(answer.body).challenge)


def test_replayed_login_is_refused(wire: Wire, tmp_path: Path) -> None:
    key = AccountKey.create(tmp_path, f"replay-{secrets.token_hex(8)}")
    request = login_request(key, _challenge(wire, 0, key.account_id))
    first = login_with(wire.frontend(0), request)
    assert first.code == OK, first
    for frontend in range(len(wire.frontend_addresses)):
        again = login_with(wire.frontend(frontend), request)
        assert again.code == UNAUTHENTICATED, (frontend, again)
        # The refusal tells the client to ask for a new challenge, and grants nothing.
        assert ("bkv-new-challenge", "1") in again.trailing, again
        assert "challenge" in again.details
    fresh = login_with(wire.frontend(0), login_request(key, _challenge(wire, 0, key.account_id)))
    assert fresh.code == OK, fresh
    assert frontend_pb2.LoginReply.FromString(fresh.body).session_token
