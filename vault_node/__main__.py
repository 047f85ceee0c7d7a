"""`python -m vault_node --config node.toml`: run one vault node until SIGTERM or SIGINT; SIGHUP
makes it take its token's fleet key epochs again (vault_node.fleet_keys)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from vault_common.event_loop import add_event_loop_option, run_on, stop_on_signals
from vault_node.config import ConfigError, NodeConfig
from vault_node.server import VaultNodeServer

log = logging.getLogger("vault_node")


async def _run(config: NodeConfig) -> int:
    server = VaultNodeServer(config)
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        # SIGHUP: take the token's fleet state again (a fleet rotation's steps); requests in
        # flight go on. The task is kept until done (the loop holds only weak references).
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await server.start()
    except Exception as exc:  # noqa: BLE001 (startup failure: say what, exit non-zero)
        log.error("startup failed: %s: %s", type(exc).__name__, exc)
        await server.stop(grace_s=0)
        return 1
    await stop.wait()
    log.info("signal received; stopping")
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vault_node", description=__doc__)
    parser.add_argument("--config", required=True, help="path of node.toml")
    add_event_loop_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        config = NodeConfig.load(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return run_on(args.event_loop, _run(config))


if __name__ == "__main__":
    sys.exit(main())
