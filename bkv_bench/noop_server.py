"""A no-op unary gRPC service over TLS, the shape of the frontend's `Relay`: bytes in, bytes out.

    python -m bkv_bench.noop_server --cert C --key K [--reply-bytes 600] [--max-seconds 120]
        [--event-loop uvloop|asyncio]

Binds 127.0.0.1 on a free port, prints `PORT <n>` on stdout once serving, and exits by itself
after `--max-seconds` (or on SIGTERM/stdin EOF). Used by `bkv-bench --ceilings` to measure how many
unary TLS calls per second this machine can carry with the same concurrency as the cluster run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from vault_common.event_loop import add_event_loop_option, run_on

SERVICE = "bkv.bench.v1.Noop"
METHOD = f"/{SERVICE}/Call"


# The bench's own servers (this one, bkv_bench.shape_server) carry raw bytes: no messages to
# parse, so that they cost what gRPC costs and nothing more.


def identity(data: bytes) -> bytes:
    """The (de)serializer of a bytes-in, bytes-out method."""
    return data


def bytes_handler(
    method: str, fn: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
) -> grpc.GenericRpcHandler:
    """A generic handler serving `fn` at the full method name `/service/Method`."""
    service, name = method.strip("/").split("/")
    return grpc.method_handlers_generic_handler(
        service,
        {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=identity, response_serializer=identity
            )
        },
    )


def bytes_channel(cert: bytes, address: str) -> grpc.aio.Channel:
    """A TLS channel to a bench server on loopback, checked against its throwaway certificate."""
    return grpc.aio.secure_channel(
        address,
        grpc.ssl_channel_credentials(root_certificates=cert),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )


def bytes_call(channel: grpc.aio.Channel, method: str) -> Any:
    """The unary bytes-in, bytes-out callable of `method` on `channel`."""
    return channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)


async def serve(cert: bytes, key: bytes, reply_bytes: int, max_seconds: float) -> None:
    reply = bytes(reply_bytes)

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((bytes_handler(METHOD, call),))
    await serve_until_stopped(server, cert, key, max_seconds)


async def serve_until_stopped(
    server: grpc.aio.Server, cert: bytes, key: bytes, max_seconds: float
) -> None:
    """Bind 127.0.0.1 on a free port over TLS, print `PORT <n>`, serve until stdin closes (the
    parent stopping us, or dying) or `max_seconds` pass, then stop."""
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    print(f"PORT {port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:  # the parent closing our stdin (or dying) stops us
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        pass
    await server.stop(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bkv_bench.noop_server")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--reply-bytes", type=int, default=600)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    add_event_loop_option(parser)
    args = parser.parse_args(argv)
    run_on(
        args.event_loop,
        serve(args.cert.read_bytes(), args.key.read_bytes(), args.reply_bytes, args.max_seconds),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
