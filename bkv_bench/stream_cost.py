"""CPU per message, client plus server, of the ways a frontend can carry Open to a vault node.

    PYTHONPATH=$PWD:$PWD/protos python -m bkv_bench.stream_cost \\
        [--messages 20000] [--concurrency 16] [--rounds 2] [--pool 16] [--mux-streams 1,4]

The server is a separate process serving bkv.v1.VaultNode over mTLS (a throwaway CA, server and
client certificates, as on the frontend-node link) on uvloop; its handlers do no work (a
1,100-byte envelope in, a 600-byte sealed response out). Variants, each against a fresh server:

* `unary`: one grpc.aio unary `Open` per message (today's relay);
* `mux-N`: N streams, each carrying many requests at once: request ids, a future per request, a
  reader task per stream, writes serialised by a lock; the server runs a task per frame;
* `pool-N`: N long-lived request/response streams, each carrying one request at a time (write a
  frame, read its reply), checked out of an idle list: what frontend_chatd/streams.py does;
* `tls-N`: no gRPC at all: N long-lived mutual-TLS connections (Python's ssl on uvloop, the same
  certificates), each carrying one request at a time as a 4-byte length and the same
  `OpenFrame` protobuf, answered with an `OpenFrameReply` the same way: the floor under any
  transport this code could write itself between frontend and node (`--tls 0` leaves it out).

CPU is utime + stime of the server process from /proc (bkv_bench.cpu.read_proc) and this
process's own process time, over the measured messages only (after a warm-up). Prints one line
per variant and round, and a JSON summary. No figure is asserted: it is a report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import uvloop

from bkv.v1 import node_pb2, node_pb2_grpc
from bkv_bench.cpu import read_proc
from deploy.pki import CertPaths, issue_client, issue_server, make_ca

ENVELOPE = b"\x01" * 1100
SEALED = b"\x02" * 600
WARMUP = 500
T = TypeVar("T")


# ---- server (a separate process) -------------------------------------------------------------


class _NoWork(node_pb2_grpc.VaultNodeServicer):  # type: ignore[misc]
    def __init__(self, mux: bool) -> None:
        self._mux = mux

    async def Open(self, request: Any, context: Any) -> Any:
        return node_pb2.OpenReply(sealed_response=SEALED)

    async def OpenStream(self, requests: AsyncIterator[Any], context: Any) -> Any:
        if not self._mux:
            async for frame in requests:
                yield node_pb2.OpenFrameReply(id=frame.id, sealed_response=SEALED)
            return
        replies: asyncio.Queue[Any] = asyncio.Queue()

        async def one(frame: Any) -> None:
            await asyncio.sleep(0)  # a handler that awaits something, as the node's does
            replies.put_nowait(node_pb2.OpenFrameReply(id=frame.id, sealed_response=SEALED))

        async def read() -> None:
            tasks = set()
            async for frame in requests:
                task = asyncio.get_running_loop().create_task(one(frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            replies.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                yield reply
        finally:
            reader.cancel()


async def _serve(pki: Path, mux: bool, port_file: Path) -> None:
    server = grpc.aio.server()
    node_pb2_grpc.add_VaultNodeServicer_to_server(_NoWork(mux), server)
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


async def _serve_tls(pki: Path, port_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as on the frontend-node link

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                frame = node_pb2.OpenFrame.FromString(await reader.readexactly(size))
                out = node_pb2.OpenFrameReply(id=frame.id, sealed_response=SEALED)
                data = out.SerializeToString()
                writer.write(len(data).to_bytes(4, "big") + data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=context)
    port_file.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


async def _tls(pki: Path, port: int, n: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "client.pem", pki / "client.key")
    idle = [
        await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
        for _ in range(n)
    ]
    opened = list(idle)

    async def exchange(
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], rid: int
    ) -> None:
        reader, writer = connection
        frame = node_pb2.OpenFrame(
            id=rid, account_id="account-0001", envelope=ENVELOPE, deadline_ms=5000
        ).SerializeToString()
        writer.write(len(frame).to_bytes(4, "big") + frame)
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 5.0), "big")
        reply = node_pb2.OpenFrameReply.FromString(await reader.readexactly(size))
        assert reply.id == rid

    async def close() -> None:
        for _, writer in opened:
            writer.close()

    return _pooled(idle, exchange), close


# ---- client variants --------------------------------------------------------------------------

Send = Callable[[int], Awaitable[None]]


async def _unary(channel: Any, _n: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    stub = node_pb2_grpc.VaultNodeStub(channel)
    request = node_pb2.OpenRequest(account_id="account-0001", envelope=ENVELOPE)

    async def send(_i: int) -> None:
        await stub.Open(request, timeout=5.0)

    async def close() -> None:
        return None

    return send, close


async def _mux(channel: Any, n: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    stub = node_pb2_grpc.VaultNodeStub(channel)
    waiting: dict[int, asyncio.Future[Any]] = {}
    streams = [stub.OpenStream() for _ in range(n)]
    locks = [asyncio.Lock() for _ in range(n)]
    ids = itertools.count(1)

    async def reader(call: Any) -> None:
        async for reply in call:
            future = waiting.pop(reply.id, None)
            if future is not None and not future.done():
                future.set_result(reply)

    readers = [asyncio.get_running_loop().create_task(reader(c)) for c in streams]

    async def send(i: int) -> None:
        rid = next(ids)
        future = asyncio.get_running_loop().create_future()
        waiting[rid] = future
        k = rid % n
        frame = node_pb2.OpenFrame(
            id=rid, account_id="account-0001", envelope=ENVELOPE, deadline_ms=5000
        )
        async with locks[k]:
            await streams[k].write(frame)
        await asyncio.wait_for(future, 5.0)

    async def close() -> None:
        for call in streams:
            await call.done_writing()
        await asyncio.gather(*readers)

    return send, close


def _pooled(idle: list[T], exchange: Callable[[T, int], Awaitable[None]]) -> Send:
    """A send that takes an idle item (stream or connection) of the pool, waiting for one,
    makes one request/reply `exchange` on it under a fresh id, and gives it back."""
    free = asyncio.Condition()
    ids = itertools.count(1)

    async def send(_i: int) -> None:
        async with free:
            await free.wait_for(lambda: bool(idle))
            item = idle.pop()
        await exchange(item, next(ids))
        async with free:
            idle.append(item)
            free.notify()

    return send


async def _pool(channel: Any, n: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    stub = node_pb2_grpc.VaultNodeStub(channel)
    idle = [stub.OpenStream() for _ in range(n)]

    async def exchange(call: Any, rid: int) -> None:
        frame = node_pb2.OpenFrame(
            id=rid, account_id="account-0001", envelope=ENVELOPE, deadline_ms=5000
        )
        await call.write(frame)
        reply = await asyncio.wait_for(call.read(), 5.0)
        assert reply.id == rid

    async def close() -> None:
        for call in idle:
            await call.done_writing()

    return _pooled(idle, exchange), close


VARIANTS: dict[str, Callable[[Any, int], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]]] = {
    "unary": _unary,
    "mux": _mux,
    "pool": _pool,
}


async def _drive(send: Send, messages: int, concurrency: int) -> None:
    counter = itertools.count()

    async def worker() -> None:
        while (i := next(counter)) < messages:
            await send(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(
    pki: Path, variant: str, streams: int, messages: int, concurrency: int
) -> dict[str, float]:
    """One variant against a fresh server: µs of CPU per message, server and client."""
    port_file = pki / f"port-{os.getpid()}-{time.monotonic_ns()}"
    flag = {"mux": ["--mux"], "tls": ["--tls"]}.get(variant, [])
    server = subprocess.Popen(
        [sys.executable, "-m", "bkv_bench.stream_cost", "serve", "--pki", str(pki),
         "--port-file", str(port_file), *flag],
    )  # fmt: skip
    try:
        while not port_file.exists() or not port_file.read_text():
            if server.poll() is not None:
                raise RuntimeError("the benchmark server did not start")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text())
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.pem").read_bytes(),
        )
        async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
            if variant == "tls":
                send, close = await _tls(pki, port, streams)
            else:
                send, close = await VARIANTS[variant](channel, streams)
            await _drive(send, WARMUP, concurrency)
            before = read_proc(server.pid)
            own = time.process_time()
            wall = time.monotonic()
            await _drive(send, messages, concurrency)
            wall = time.monotonic() - wall
            own = time.process_time() - own
            after = read_proc(server.pid)
            await close()
        assert before is not None and after is not None
        server_s = after[1] - before[1]
        return {
            "server_us": server_s / messages * 1e6,
            "client_us": own / messages * 1e6,
            "total_us": (server_s + own) / messages * 1e6,
            "per_s": messages / wall,
        }
    finally:
        server.terminate()
        server.wait()


def make_pki(directory: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = make_ca("bench-ca", now=now)
    ca.write(CertPaths(directory / "ca.pem", directory / "ca.key"))
    issue_server(ca, "node", now=now).write(
        CertPaths(directory / "server.pem", directory / "server.key")
    )
    issue_client(ca, "frontend", now=now).write(
        CertPaths(directory / "client.pem", directory / "client.key")
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    variants = [("unary", 0)] + [(f"mux-{n}", n) for n in args.mux_streams]
    variants += [(f"pool-{args.pool}", args.pool)]
    variants += [(f"tls-{args.tls}", args.tls)] if args.tls else []
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        make_pki(pki)
        for round_ in range(args.rounds):
            # Alternate the order each round: drift over the run then favours no variant.
            for name, n in variants if round_ % 2 == 0 else list(reversed(variants)):
                figures = await measure(pki, name.split("-")[0], n, args.messages, args.concurrency)
                results[name].append(figures)
                print(
                    f"round {round_ + 1} {name:8s} server {figures['server_us']:6.1f} µs  "
                    f"client {figures['client_us']:6.1f} µs  total {figures['total_us']:6.1f} µs"
                    f"  {figures['per_s']:7.0f} msg/s",
                    flush=True,
                )
    summary = {
        name: {
            key: round(statistics.median(r[key] for r in rounds), 1)
            for key in ("server_us", "client_us", "total_us", "per_s")
        }
        for name, rounds in results.items()
    }
    return {
        "messages": args.messages,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "median": summary,
        "runs": results,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bkv_bench.stream_cost", description=__doc__)
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="(internal) the benchmark's server process")
    serve.add_argument("--pki", type=Path, required=True)
    serve.add_argument("--port-file", type=Path, required=True)
    serve.add_argument("--mux", action="store_true")
    serve.add_argument("--tls", action="store_true")
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pool", type=int, default=16, help="streams in the request/response pool")
    p.add_argument("--tls", type=int, default=16, help="connections of the TLS variant (0: none)")
    p.add_argument(
        "--mux-streams",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[1, 4],
        help="comma-separated stream counts of the multiplexed variant",
    )
    args = p.parse_args(argv)
    if args.command == "serve":
        if args.tls:
            uvloop.run(_serve_tls(args.pki, args.port_file))
        else:
            uvloop.run(_serve(args.pki, args.mux, args.port_file))
        return 0
    report = uvloop.run(run(args))
    print(json.dumps(report["median"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
