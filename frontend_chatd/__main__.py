"""`python -m frontend_chatd --config frontend.toml`: run one frontend until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys

from frontend_chatd.config import ConfigError, load_config
from frontend_chatd.server import serve
from vault_common.event_loop import add_event_loop_option, run_on


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend_chatd", description=__doc__)
    parser.add_argument("--config", required=True, help="path to frontend.toml")
    add_event_loop_option(parser)
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
    run_on(args.event_loop, serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
