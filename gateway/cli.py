"""``ws-hub``: serve the gateway, and certificate tooling."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except SettingsError as exc:
        print(f"ws-hub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from .server.config import load_config
    from .server.runner import run_worker

    settings = Settings.load(args.config)
    config = load_config(
        args.config,
        {
            "bind": args.bind,
            "insecure_bind": args.insecure_bind,
            "certfile": args.certfile,
            "keyfile": args.keyfile,
            "workers": args.workers,
        },
    )
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_worker(config, settings)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ws-hub", description="WS-Hub real-time gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway under Hypercorn")
    serve.add_argument("--config", help="hypercorn.toml (Hypercorn settings and a [wshub] table)")
    serve.add_argument(
        "--bind",
        action="append",
        help="TLS (or plain, without a certificate) address HOST:PORT; repeatable",
    )
    serve.add_argument("--insecure-bind", action="append", help="plain HTTP address; repeatable")
    serve.add_argument("--certfile", help="PEM certificate chain")
    serve.add_argument("--keyfile", help="PEM private key")
    serve.add_argument("--workers", type=int, help="worker processes")
    serve.set_defaults(func=_serve)
    return parser
