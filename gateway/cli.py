"""``ws-hub``: serve the gateway, and certificate tooling. Errors are one line, never a trace."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .api.cli import add_api_command
from .settings import CONFIG_FILE_ENV, Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except (SettingsError, ValueError, OSError) as exc:
        # ValueError covers InvalidMaterial and InspectError: both say which file and why.
        print(f"ws-hub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    from .observability.logs import configure as configure_logging
    from .server.config import load_config
    from .server.runner import run_worker
    from .server.supervisor import supervise
    from .tls import read_material, validate

    if args.config:
        # Worker processes read the same [wshub] table.
        os.environ[CONFIG_FILE_ENV] = os.path.abspath(args.config)
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
    if config.workers > 1 and settings.backend == "memory":
        raise SettingsError(
            f"workers = {config.workers} needs a shared presence store: set WSHUB_BACKEND=redis "
            "(and WSHUB_REDIS_URL), or run one worker"
        )
    files = config.tls_files()
    if files is not None:
        from datetime import UTC, datetime

        validate(read_material(files), datetime.now(UTC))  # refuse to start on bad material
    configure_logging(settings.log_level, settings.log_format)
    # A Logger object (not "-") keeps Hypercorn from adding a handler of its own.
    config.errorlog = logging.getLogger("hypercorn.error")
    if config.workers > 1:
        return supervise(config, settings)
    run_worker(config, settings)
    return 0


def _certs_generate(args: argparse.Namespace) -> int:
    from .tls import ensure_dev_pair, generate_dev_pair

    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    if args.if_missing:
        cert, key = ensure_dev_pair(args.dir, hosts, args.days)
    else:
        cert, key = generate_dev_pair(args.dir, hosts, args.days)
    print(f"certificate: {cert}\nprivate key: {key}")
    return 0


def _certs_inspect(args: argparse.Namespace) -> int:
    from .tls import inspect_files

    print(inspect_files(args.files))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ws-hub", description="WS-Hub real-time gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway under Hypercorn")
    serve.add_argument("--config", help="hypercorn.toml (Hypercorn settings and a [wshub] table)")
    serve.add_argument(
        "--bind",
        action="append",
        help="address HOST:PORT (TLS when a certificate is set); repeatable",
    )
    serve.add_argument("--insecure-bind", action="append", help="plain HTTP address; repeatable")
    serve.add_argument("--certfile", help="PEM certificate chain")
    serve.add_argument("--keyfile", help="PEM private key")
    serve.add_argument("--workers", type=int, help="worker processes")
    serve.set_defaults(func=_serve)

    certs = commands.add_parser("certs", help="certificate tooling").add_subparsers(
        dest="certs_command", required=True
    )
    generate = certs.add_parser("generate", help="create a self-signed development pair")
    generate.add_argument("--dir", default="certs", help="where cert.pem and key.pem go")
    generate.add_argument("--hosts", default="localhost,127.0.0.1,::1", help="comma-separated")
    generate.add_argument("--days", type=int, default=30, help="validity in days")
    generate.add_argument(
        "--if-missing", action="store_true", help="keep an existing pair that is still valid"
    )
    generate.set_defaults(func=_certs_generate)
    inspect = certs.add_parser("inspect", help="describe certificates and keys")
    inspect.add_argument("files", nargs="+", help="PEM or DER files")
    inspect.set_defaults(func=_certs_inspect)
    add_api_command(commands)
    return parser
