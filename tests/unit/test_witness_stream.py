"""witnessing.PeerWitness's capture stream against a real gRPC witness server on loopback:
many captures on one stream, answers matched by id, a broken stream reopened, and unary calls
to a witness that has no stream."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import grpc
import pytest

from bkv.v1 import witness_pb2, witness_pb2_grpc
from vault_node.heads import ZERO_HASH
from vault_node.soft_token import SoftToken
from vault_node.witness_core import NONCE_LEN, Ref, Verdict, capture_mac_input
from vault_node.witness_server import WitnessServer
from vault_node.witnessing import PeerWitness

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def h(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def request(group: int, version: int) -> witness_pb2.CaptureRequest:
    prev = ZERO_HASH if version <= 1 else h(1000 * group + version - 1)
    return witness_pb2.CaptureRequest(
        nonce=os.urandom(NONCE_LEN),
        base=witness_pb2.HeadRef(group=group, version=version - 1, hash=prev),
        base_prev=ZERO_HASH if version <= 2 else h(1000 * group + version - 2),
        head=witness_pb2.HeadRef(group=group, version=version, hash=h(1000 * group + version)),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(servicer: object, port: int, *, unary_only: bool = False) -> grpc.aio.Server:
    server = grpc.aio.server()
    if unary_only:  # an older witness: Capture and Heads, no stream
        handlers = {
            "Capture": grpc.unary_unary_rpc_method_handler(
                servicer.Capture,  # type: ignore[attr-defined]
                request_deserializer=witness_pb2.CaptureRequest.FromString,
                response_serializer=witness_pb2.CaptureReply.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bkv.v1.Witness", handlers),)
        )
    else:
        witness_pb2_grpc.add_WitnessServicer_to_server(servicer, server)
    server.add_secure_port(
        f"127.0.0.1:{port}", grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    )
    await server.start()
    return server


def witness(tmp_path: Path, token: SoftToken) -> WitnessServer:
    server = WitnessServer("w2", 16, 1, token, tmp_path / "w2.jsonl", checkpoint_interval_s=60)
    assert server.state.ready  # the only witness: ready at once
    return server


def verified(token: SoftToken, req: witness_pb2.CaptureRequest, reply: object) -> bool:
    r: witness_pb2.CaptureReply = reply  # type: ignore[assignment]
    data = capture_mac_input(r.witness, req.nonce, r.verdict, Ref.of(req.head), Ref.of(r.held))
    return r.mac == token.hmac_sha256("witness", data)


def test_many_captures_share_one_stream_and_each_gets_its_own_answer(tmp_path: Path) -> None:
    token = SoftToken()
    state = witness(tmp_path, token.same_fleet())

    async def go() -> None:
        port = free_port()
        server = await serve(state, port)
        peer = PeerWitness("w2", f"127.0.0.1:{port}", grpc.local_channel_credentials())
        try:
            requests = [request(g, 1) for g in range(12)]
            replies = await asyncio.gather(*(peer.capture(r) for r in requests))
            stream = peer._stream
            later = [request(g, 2) for g in range(3)]
            replies += [await peer.capture(r) for r in later]  # one after another, same stream
            assert peer._stream is stream and not peer.unary_only
            requests += later
            for req, reply in zip(requests, replies, strict=True):
                assert reply.verdict == Verdict.CAPTURED and reply.held == req.head
                assert verified(token, req, reply)
        finally:
            await peer.close()
            await server.stop(None)

    try:
        asyncio.run(go())
    finally:
        state.close()


def test_a_broken_stream_is_no_answer_and_the_next_capture_reopens_it(tmp_path: Path) -> None:
    token = SoftToken()
    state = witness(tmp_path, token.same_fleet())

    async def go() -> None:
        port = free_port()
        server = await serve(state, port)
        peer = PeerWitness("w2", f"127.0.0.1:{port}", grpc.local_channel_credentials())
        try:
            assert (await peer.capture(request(1, 1))).verdict == Verdict.CAPTURED
            await server.stop(None)  # the witness goes away: its stream breaks
            with pytest.raises((ConnectionError, TimeoutError)):
                await peer.capture(request(1, 2))
            assert state.state.latest(1).version == 1  # nothing was applied
            server = await serve(state, port)
            for _ in range(50):  # the channel reconnects within its backoff (at most 1 s)
                try:
                    reply = await peer.capture(request(1, 2))
                    break
                except (ConnectionError, TimeoutError):
                    await asyncio.sleep(0.05)
            assert reply.verdict == Verdict.CAPTURED and state.state.latest(1).version == 2
        finally:
            await peer.close()
            await server.stop(None)

    try:
        asyncio.run(go())
    finally:
        state.close()


def test_a_witness_without_the_stream_gets_unary_calls(tmp_path: Path) -> None:
    token = SoftToken()
    state = witness(tmp_path, token.same_fleet())

    async def go() -> None:
        port = free_port()
        server = await serve(state, port, unary_only=True)
        peer = PeerWitness("w2", f"127.0.0.1:{port}", grpc.local_channel_credentials())
        try:
            with pytest.raises(ConnectionError):  # UNIMPLEMENTED: this one counts as no answer
                await peer.capture(request(1, 1))
            assert peer.unary_only
            req = request(1, 1)
            reply = await peer.capture(req)
            assert reply.verdict == Verdict.CAPTURED and verified(token, req, reply)
        finally:
            await peer.close()
            await server.stop(None)

    try:
        asyncio.run(go())
    finally:
        state.close()
