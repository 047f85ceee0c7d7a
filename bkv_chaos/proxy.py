"""A fault-injecting TCP proxy on loopback: what `slow-link` uses instead of netem.

    proxy = LinkProxy(("127.0.0.1", 40001), rng=random.Random(7))
    proxy.start()                       # listens on 127.0.0.1:<free port>, forwards untouched
    proxy.set_fault(LinkFault(delay_s=0.2, jitter_s=0.1, reset_probability=0.02))
    proxy.set_fault(LinkFault())        # healed
    proxy.stop()                        # closes the listener and every connection

The kernel here has no netem (PLATFORM.md), so delay and loss are made in userspace: every chunk
read from either side waits `delay_s` (+ up to `jitter_s`) before it is written on, and with
`reset_probability` the whole connection is torn down instead (TCP cannot lose a byte without
losing the stream, so "drop" means a reset, as a middlebox that drops a flow would cause).
The proxy relays bytes as they come: TLS passes through it unopened. Everything runs on one
asyncio loop in one daemon thread, bounded by the connections the clients open.

`peer_proxy_cluster` puts one in front of an etcd member's peer port: the member advertises the
proxy's port to its peers (`EtcdMember.advertise_peer_port`), so every peer's traffic towards it
crosses the proxy, and `slow-link` can slow an etcd peer link too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from deploy.cluster import Cluster, free_ports
from deploy.topology import Topology

CHUNK = 64 * 1024


@dataclass(frozen=True)
class LinkFault:
    """What the link does to each chunk: all zero = a healthy link."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    reset_probability: float = 0.0

    def validate(self) -> None:
        problems = []
        if not 0 <= self.delay_s <= 30:
            problems.append("delay_s must be in 0..30")
        if not 0 <= self.jitter_s <= 30:
            problems.append("jitter_s must be in 0..30")
        if not 0 <= self.reset_probability <= 1:
            problems.append("reset_probability must be in 0..1")
        if problems:
            raise ValueError("link fault: " + "; ".join(problems))

    @property
    def healthy(self) -> bool:
        return self == LinkFault()


class LinkProxy:
    """One listening port forwarding to one upstream `host:port`, with a switchable fault."""

    def __init__(
        self, upstream: tuple[str, int], *, rng: random.Random, host: str = "127.0.0.1"
    ) -> None:
        self.upstream = upstream
        self._host = host
        self._rng = rng
        self._rng_lock = threading.Lock()
        self._fault = LinkFault()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # the connection handlers
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0
        self.resets = 0

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    def set_fault(self, fault: LinkFault) -> None:
        fault.validate()
        self._fault = fault  # one reference swap: readers see the old or the new one

    def start(self) -> None:
        ready: Future[int] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="link-proxy", daemon=True
        )
        self._thread.start()
        self.port = ready.result(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
        thread.join(timeout)
        self._loop = self._thread = None

    def __enter__(self) -> LinkProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop thread ------------------------------------------------------------------------

    def _run(self, ready: Future[int]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._accept, self._host, 0, reuse_address=True)
            )
        except OSError as err:
            ready.set_exception(err)
            loop.close()
            return
        self._server = server
        ready.set_result(int(server.sockets[0].getsockname()[1]))
        try:
            loop.run_forever()
        finally:
            _drain(loop)
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        # Aborting every connection ends every pump, and with them the handlers.
        for writer in list(self._writers):
            _abort(writer)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), timeout=5
            )
            upstream_writer = up_writer
            self._writers.add(up_writer)
            pumps = {
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            }
            try:
                # Both directions run until each has seen its end (half-closes pass through);
                # a reset or an error in either ends the whole connection.
                while pumps:
                    done, pumps = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                    if not all(_clean_end(task) for task in done):
                        break
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (TimeoutError, OSError):
            pass  # upstream down: the client sees the connection close, as without a proxy
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    _abort(w)
                    self._writers.discard(w)
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Copy one direction; True at a clean end of stream, False for a reset."""
        while True:
            data = await reader.read(CHUNK)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return True
            fault = self._fault
            if not fault.healthy:
                with self._rng_lock:
                    roll, jitter = self._rng.random(), self._rng.random() * fault.jitter_s
                if roll < fault.reset_probability:
                    self.resets += 1
                    return False  # the caller aborts both sides: a reset flow
                await asyncio.sleep(fault.delay_s + jitter)
            writer.write(data)
            await writer.drain()


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Finish what the stop left behind: a connection accepted just before it has a handler
    (or gets one once the loop runs its callbacks); cancelling that aborts the connection, so no
    transport is left for the garbage collector to find unclosed."""
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))  # run pending callbacks (connection_made)
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not pending:
            return
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _clean_end(task: asyncio.Task[bool]) -> bool:
    return not task.cancelled() and task.exception() is None and task.result()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


@contextmanager
def peer_proxy_cluster(
    directory: Path,
    topology: Topology,
    *,
    rng: random.Random,
    fsync: bool = False,
    echo: Callable[[str], None] = lambda _m: None,
) -> Iterator[tuple[Cluster, LinkProxy]]:
    """A cluster in `directory` whose last etcd member is reached by its peers through a
    `LinkProxy` (yielded). The proxy runs only as long as the block: the cluster is stopped
    (`down`) on exit, since that member is cut off from its peers without it."""
    host = topology.host
    # The proxy binds its port before the cluster's ports are chosen, and holds it: a port that
    # free_ports found free and released can no longer be handed to the proxy as well (seen
    # once: the proxy's port equal to a vault node's). Its upstream is known only afterwards.
    proxy = LinkProxy((host, 0), rng=rng, host=host)
    proxy.start()
    cluster = Cluster(directory, echo=echo)
    try:
        fixed = topology.with_ports(lambda n: free_ports(host, n))
        member = fixed.etcd[-1]
        proxy.upstream = (fixed.host_of(member.dc), member.peer_port)
        fixed = replace(fixed, etcd=tuple(
            replace(m, advertise_peer_port=proxy.port) if m == member else m for m in fixed.etcd
        ))  # fmt: skip
        echo(f"etcd peer link to {member.name} through {proxy.address}")
        cluster.up(fixed, fsync=fsync)
        yield cluster, proxy
    finally:
        try:
            if cluster.exists():
                cluster.down()
        finally:
            proxy.stop()
