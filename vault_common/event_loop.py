"""The asyncio event loop a process runs on, chosen by `--event-loop`, and its stop signals.

uvloop is the default (about 20-30% less CPU per gRPC call: docs/performance.md); "asyncio" is the
standard loop. The node, the frontend and the load tester's processes all choose it this way.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT_EVENT_LOOP = "uvloop"


def add_event_loop_option(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--event-loop {uvloop,asyncio}` (default uvloop)."""
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=DEFAULT_EVENT_LOOP,
        help=help or "asyncio loop implementation (default uvloop: less CPU per gRPC call)",
    )


def run_on(event_loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a fresh loop of kind `event_loop` (one of EVENT_LOOPS)."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, on the running loop (a server's graceful stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
