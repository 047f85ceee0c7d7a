"""A no-op unary gRPC service over TLS, the shape of the frontend's `Relay`: bytes in, bytes out.

    python -m deploy.bench.noop_server --cert C --key K [--reply-bytes 600] [--max-seconds 120]
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
from collections.abc import Sequence
from pathlib import Path

import grpc
import grpc.aio
import uvloop

from deploy.topology import EVENT_LOOPS

SERVICE = "bkv.bench.v1.Noop"
METHOD = f"/{SERVICE}/Call"


def _identity(data: bytes) -> bytes:
    return data


async def serve(cert: bytes, key: bytes, reply_bytes: int, max_seconds: float) -> None:
    reply = bytes(reply_bytes)

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Call": grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
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
    parser = argparse.ArgumentParser(prog="python -m deploy.bench.noop_server")
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--reply-bytes", type=int, default=600)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="uvloop")
    args = parser.parse_args(argv)
    run = uvloop.run if args.event_loop == "uvloop" else asyncio.run
    run(serve(args.cert.read_bytes(), args.key.read_bytes(), args.reply_bytes, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
