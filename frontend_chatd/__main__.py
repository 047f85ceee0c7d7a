"""`python -m frontend_chatd --config frontend.toml`: run one frontend until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvloop

from frontend_chatd.config import ConfigError, load_config
from frontend_chatd.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend_chatd", description=__doc__)
    parser.add_argument("--config", required=True, help="path to frontend.toml")
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="asyncio loop implementation (default uvloop: less CPU per gRPC call)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format=f"%(asctime)s {config.frontend.name} %(levelname)s %(name)s: %(message)s",
    )
    run = uvloop.run if args.event_loop == "uvloop" else asyncio.run
    run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
