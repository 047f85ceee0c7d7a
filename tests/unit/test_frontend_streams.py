"""frontend_chatd.streams against the node's real servicer (vault_node.server) over loopback
gRPC: a stream answers every request as the unary Open does, deadlines and cancellation end the
node's work, a failed stream never says "not applied", and an older node gets unary calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from bkv.v1 import node_pb2, node_pb2_grpc
from frontend_chatd.relay import NodeTimedOut, NoNodeAvailable, Relay, classify
from frontend_chatd.routing import NodeInfo
from frontend_chatd.streams import StreamPool, reply_result
from vault_common.decode_guard import RejectUndecodable
from vault_node.server import LenientFrames, VaultNodeServicer
from vault_node.service import BadRequest, Precondition, Unavailable, WriteUnconfirmed

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

REFUSALS: dict[bytes, Exception] = {
    b"unavailable": Unavailable("etcd has no quorum"),
    b"unconfirmed": WriteUnconfirmed("etcd failed mid-write"),
    b"bad": BadRequest("malformed KE1"),
    b"stale": Precondition("ticket expired"),
    b"crash": RuntimeError("secret input bytes"),
}


class FakeService:
    """VaultService.handle's shape: an envelope names what happens."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.cancelled = 0
        self.started = asyncio.Event()

    async def handle(self, account_id: str, envelope: bytes, meter: object = None) -> bytes:
        self.calls.append((account_id, envelope))
        if envelope in REFUSALS:
            raise REFUSALS[envelope]
        if envelope == b"slow":
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return b"sealed:" + account_id.encode() + b":" + envelope


def add_servicer(server: Any, servicer: Any) -> None:
    node_pb2_grpc.add_VaultNodeServicer_to_server(servicer, server)


def open_stream_only(handler: Callable[..., AsyncIterator[Any]]) -> Callable[[Any, Any], None]:
    """A node (for `node`) whose VaultNode serves only OpenStream, with `handler`."""

    def add(server: Any, servicer: Any) -> None:
        method = grpc.stream_stream_rpc_method_handler(
            handler,
            request_deserializer=node_pb2.OpenFrame.FromString,
            response_serializer=node_pb2.OpenFrameReply.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bkv.v1.VaultNode", {"OpenStream": method}),)
        )

    return add


@asynccontextmanager
async def node(
    add: Callable[[Any, Any], None] = add_servicer,
) -> AsyncIterator[tuple[NodeInfo, FakeService, Any]]:
    server = grpc.aio.server(
        interceptors=[RejectUndecodable(), LenientFrames()],
        options=[("grpc.max_receive_message_length", 64 * 1024)],
    )
    servicer = VaultNodeServicer()
    service = FakeService()
    servicer.service = service  # type: ignore[assignment]
    add(server, servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield NodeInfo("n1", "dc-a", f"127.0.0.1:{port}"), service, server
    finally:
        await server.stop(None)


class Channels:
    """NodeChannels' shape, insecure (loopback only, in tests)."""

    def __init__(self) -> None:
        self.channels: dict[str, Any] = {}

    def stub(self, info: NodeInfo) -> Any:
        if info.address not in self.channels:
            self.channels[info.address] = grpc.aio.insecure_channel(info.address)
        return node_pb2_grpc.VaultNodeStub(self.channels[info.address])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close(None)


def run(body: Callable[[Channels], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        channels = Channels()
        try:
            return await body(channels)
        finally:
            await channels.close()

    return asyncio.run(main())


def request(envelope: bytes, account: str = "alice") -> node_pb2.OpenRequest:
    return node_pb2.OpenRequest(account_id=account, envelope=envelope)


async def outcome(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as e:
        return e


def status(error: grpc.aio.AioRpcError) -> tuple[Any, ...]:
    return error.code(), error.details(), tuple(error.trailing_metadata() or ())


def test_requests_share_long_lived_streams() -> None:
    async def body(channels: Channels) -> None:
        async with node() as (info, service, _):
            pool = StreamPool(channels.stub, 4)
            for i in range(3):
                reply = await pool.call(info, request(b"env%d" % i), 2.0)
                assert reply.sealed_response == b"sealed:alice:env%d" % i
            assert pool._pool(info).open == 1  # one stream carried all three
            replies = await asyncio.gather(
                *(pool.call(info, request(b"x", f"acct{i}"), 2.0) for i in range(6))
            )
            assert sorted(r.sealed_response for r in replies) == sorted(
                b"sealed:acct%d:x" % i for i in range(6)
            )
            assert pool._pool(info).open <= 4  # the overflow went as unary calls
            assert len(service.calls) == 9
            pool.close()

    run(body)


def test_a_frame_is_refused_exactly_as_the_unary_open_refuses_it() -> None:
    async def body(channels: Channels) -> None:
        async with node() as (info, _, _):
            pool = StreamPool(channels.stub, 2)
            stub = channels.stub(info)
            for envelope in REFUSALS:
                unary = await outcome(stub.Open(request(envelope), timeout=2.0))
                streamed = await outcome(pool.call(info, request(envelope), 2.0))
                assert isinstance(unary, grpc.aio.AioRpcError)
                assert isinstance(streamed, grpc.aio.AioRpcError)
                assert status(streamed) == status(unary), envelope
                assert type(classify(streamed)) is type(classify(unary))
            # Not applied only where the node said so.
            flags = {
                e: any(k == "bkv-not-applied" for k, _ in status(await outcome(
                    pool.call(info, request(e), 2.0)))[2])
                for e in REFUSALS
            }  # fmt: skip
            assert flags == {e: e == b"unavailable" for e in REFUSALS}
            assert pool._pool(info).open == 1  # a refusal leaves the stream usable
            pool.close()

    run(body)


def test_retry_after_and_unknown_codes_in_a_reply_frame() -> None:
    reply = node_pb2.OpenFrameReply(id=1, code=8, details="slow down", retry_after_ms="250")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        reply_result(reply)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert tuple(raised.value.trailing_metadata()) == (("retry-after-ms", "250"),)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        reply_result(node_pb2.OpenFrameReply(id=1, code=999, details="?"))
    assert raised.value.code() == grpc.StatusCode.UNKNOWN


def test_the_deadline_cancels_the_stream_and_the_nodes_work() -> None:
    async def body(channels: Channels) -> None:
        async with node() as (info, service, _):
            pool = StreamPool(channels.stub, 2)
            error = await outcome(pool.call(info, request(b"slow"), 0.3))
            assert isinstance(error, grpc.aio.AioRpcError)
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert isinstance(classify(error), NodeTimedOut)  # may have applied
            assert pool._pool(info).open == 0  # that stream is gone
            await wait_for(lambda: service.cancelled == 1)
            reply = await pool.call(info, request(b"next"), 2.0)  # a new stream
            assert reply.sealed_response == b"sealed:alice:next"
            pool.close()

    run(body)


def test_a_cancelled_caller_cancels_the_nodes_work() -> None:
    async def body(channels: Channels) -> None:
        async with node() as (info, service, _):
            pool = StreamPool(channels.stub, 2)
            task = asyncio.get_running_loop().create_task(pool.call(info, request(b"slow"), 5.0))
            await service.started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await wait_for(lambda: service.cancelled == 1)
            assert pool._pool(info).open == 0
            pool.close()

    run(body)


def test_a_failed_stream_fails_its_request_as_possibly_applied() -> None:
    async def body(channels: Channels) -> Any:
        async with node() as (info, service, server):
            pool = StreamPool(channels.stub, 2)
            relay = Relay(lambda _a: [info], pool.call, 5.0)
            task = asyncio.get_running_loop().create_task(relay.relay("alice", b"slow"))
            await service.started.wait()
            await server.stop(None)  # the node goes away with the frame in flight
            with pytest.raises(NoNodeAvailable) as raised:
                await task
            return raised.value

    error = run(body)
    # The frame reached the node, and the node never said "not applied": it may have counted,
    # so no second node was tried and the client is not told it may retry freely.
    assert error.maybe_applied is True


def test_a_node_never_reached_wrote_nothing_and_the_next_one_is_tried() -> None:
    async def body(channels: Channels) -> None:
        async with node() as (info, service, _):
            down = NodeInfo("n0", "dc-a", "127.0.0.1:1")  # nothing listens there
            pool = StreamPool(channels.stub, 2)
            relay = Relay(lambda _a: [down, info], pool.call, 3.0)
            assert await relay.relay("alice", b"env") == b"sealed:alice:env"
            assert service.calls == [("alice", b"env")]
            pool.close()

    run(body)


def test_an_older_node_without_streams_gets_unary_calls() -> None:
    def add_old(server: Any, servicer: Any) -> None:
        # A node built before OpenStream: only Open is served.
        handler = grpc.unary_unary_rpc_method_handler(
            servicer.Open,
            request_deserializer=node_pb2.OpenRequest.FromString,
            response_serializer=node_pb2.OpenReply.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bkv.v1.VaultNode", {"Open": handler}),)
        )

    async def body(channels: Channels) -> None:
        async with node(add_old) as (info, service, _):
            clock = [100.0]
            pool = StreamPool(channels.stub, 2, clock=lambda: clock[0])
            reply = await pool.call(info, request(b"one"), 2.0)
            assert reply.sealed_response == b"sealed:alice:one"
            assert pool._pool(info).unary_until == 160.0 and pool._pool(info).open == 0
            error = await outcome(pool.call(info, request(b"unavailable"), 2.0))
            assert isinstance(error, grpc.aio.AioRpcError)
            assert ("bkv-not-applied", "1") in tuple(error.trailing_metadata())
            assert service.calls == [("alice", b"one"), ("alice", b"unavailable")]
            assert pool._pool(info).open == 0  # no stream was tried while unary-only
            pool.close()

    run(body)


def test_a_reply_for_an_unknown_id_is_ignored_and_logged_without_its_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def confused(frames: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for frame in frames:
            yield node_pb2.OpenFrameReply(id=frame.id + 1000, sealed_response=b"SECRET-OTHER")
            yield node_pb2.OpenFrameReply(id=frame.id, sealed_response=b"mine")

    async def body(channels: Channels) -> None:
        async with node(open_stream_only(confused)) as (info, _, _):
            pool = StreamPool(channels.stub, 2)
            with caplog.at_level(logging.WARNING, logger="frontend_chatd.streams"):
                reply = await pool.call(info, request(b"SECRET-ENVELOPE"), 2.0)
            assert reply.sealed_response == b"mine"
            assert "unknown id" in caplog.text
            assert "SECRET" not in caplog.text
            pool.close()

    run(body)


async def raw_stream(info: NodeInfo, frames: list[bytes]) -> tuple[Any, list[Any]]:
    """Serialized frames written as they are; (the stream's code, the replies read)."""
    async with grpc.aio.insecure_channel(info.address) as channel:
        call = channel.stream_stream(
            "/bkv.v1.VaultNode/OpenStream",
            request_serializer=lambda b: b,
            response_deserializer=node_pb2.OpenFrameReply.FromString,
        )()
        replies = []
        for data in frames:
            await call.write(data)
        await call.done_writing()
        try:
            async for reply in call:
                replies.append(reply)
        except grpc.aio.AioRpcError:
            pass
        return await call.code(), replies


def frame(**fields: Any) -> bytes:
    return node_pb2.OpenFrame(**fields).SerializeToString()


@pytest.mark.parametrize(
    "bad",
    [b"\xff\xff\xff", frame(id=0, account_id="alice", envelope=b"x"), b"\x00" * (70 * 1024)],
    ids=["undecodable", "id-0", "oversized"],
)
def test_the_node_closes_a_stream_that_misbehaves(bad: bytes) -> None:
    async def body(channels: Channels) -> Any:
        async with node() as (info, service, _):
            good = frame(id=7, account_id="alice", envelope=b"env")
            code, replies = await raw_stream(info, [good, bad, good])
            return code, [r.id for r in replies], service.calls

    code, ids, calls = run(body)
    assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert ids == [7] and calls == [("alice", b"env")]  # nothing after the bad frame ran


def test_the_node_enforces_a_frames_deadline() -> None:
    async def body(channels: Channels) -> Any:
        async with node() as (info, service, _):
            code, replies = await raw_stream(
                info, [frame(id=3, account_id="alice", envelope=b"slow", deadline_ms=100)]
            )
            return code, replies, service.cancelled

    code, replies, cancelled = run(body)
    assert code == grpc.StatusCode.OK and cancelled == 1
    assert [(r.id, r.code, r.not_applied) for r in replies] == [
        (3, grpc.StatusCode.DEADLINE_EXCEEDED.value[0], False)
    ]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def test_a_streams_own_not_applied_trailer_is_not_taken_for_its_frame() -> None:
    async def ends(frames: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for _frame in frames:
            context.set_trailing_metadata((("bkv-not-applied", "1"),))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stream ends")
        yield node_pb2.OpenFrameReply()  # pragma: no cover (never reached)

    async def body(channels: Channels) -> Any:
        async with node(open_stream_only(ends)) as (info, _, _):
            pool = StreamPool(channels.stub, 2)
            other = NodeInfo("n2", "dc-b", "127.0.0.1:1")
            relay = Relay(lambda _a: [info, other], pool.call, 2.0)
            with pytest.raises(NoNodeAvailable) as raised:
                await relay.relay("alice", b"env")
            return raised.value

    error = run(body)
    assert error.maybe_applied is True  # a stream's status is about no one frame


def test_relay_streams_is_optional_and_bounded(tmp_path: Any) -> None:
    from test_frontend_config import write_toml

    from frontend_chatd.config import ConfigError, load_config

    path = write_toml(tmp_path)
    assert load_config(path).limits.relay_streams == 16  # the default: streams on
    text = path.read_text()
    for value, ok in (("0", True), ("256", True), ("257", False), ("-1", False), ('"x"', False)):
        path.write_text(
            text.replace("node_deadline_s = 5.0", f"node_deadline_s = 5.0\nrelay_streams = {value}")
        )
        if ok:
            assert load_config(path).limits.relay_streams == int(value)
        else:
            with pytest.raises(ConfigError, match=r"limits\.relay_streams"):
                load_config(path)
