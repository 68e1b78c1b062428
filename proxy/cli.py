"""Command line: `serve` runs the proxy, `check` validates a config and prints its routes.

Flags fall back to environment variables (`PROXY_CONFIG`, `PROXY_HOST`, `PROXY_PORT`,
`PROXY_LOG_LEVEL`, `PROXY_LOG_FORMAT`), then to the config file, then to defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from proxy.config import ConfigError, load_settings
from proxy.settings import Settings

log = logging.getLogger("proxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy",
        description="OpenAI-compatible streaming reverse proxy with tiered failover.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "tier table (env PROXY_CONFIG, default ./providers.yaml)"
    default_config = os.environ.get("PROXY_CONFIG", "providers.yaml")

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", default=default_config, help=config_help)
    serve.add_argument("--host", default=None, help="listen address (env PROXY_HOST)")
    serve.add_argument("--port", type=int, default=None, help="listen port (env PROXY_PORT)")
    serve.add_argument(
        "--log-level",
        default=os.environ.get("PROXY_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="env PROXY_LOG_LEVEL (default info)",
    )
    serve.add_argument(
        "--log-format",
        default=os.environ.get("PROXY_LOG_FORMAT", "json"),
        choices=["json", "text"],
        help="env PROXY_LOG_FORMAT (default json)",
    )

    check = sub.add_parser("check", help="validate a config and print the routing table")
    check.add_argument("--config", default=default_config, help=config_help)
    return parser


def _load(path: str) -> Settings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration:", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        settings = _load(args.config)
        if settings is None:
            return 2
        from proxy.check import render_table

        print(render_table(settings))
        return 0

    from proxy.requestlog import configure_logging

    configure_logging(args.log_level, args.log_format)
    settings = _load(args.config)
    if settings is None:
        return 2
    server = settings.server
    if args.host is not None or args.port is not None:
        server = dataclasses.replace(
            server,
            host=args.host if args.host is not None else server.host,
            port=args.port if args.port is not None else server.port,
        )
        settings = dataclasses.replace(settings, server=server)
    from proxy.lifecycle import run

    return run(settings, args.config)


if __name__ == "__main__":
    sys.exit(main())
