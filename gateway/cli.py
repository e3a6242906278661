"""The `crowd-gateway` command: serve the gateway, and the tools around it."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from gateway.tools import UsageError, annotate, demo, evaluate, pool, report, tune
from gateway.config import CONFIG_ENV, ConfigError, load_config


def serve(args: argparse.Namespace) -> int:
    """Run the gateway under uvicorn; several workers share metrics through a multiprocess dir."""
    import uvicorn

    from gateway.app import create_app

    config = load_config(args.config)  # fail here, with the field named, before any worker starts
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    common = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=False, loop="uvloop",
                  http="httptools", timeout_keep_alive=65)
    if args.workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="crowd-gateway-metrics-"))
        uvicorn.run("gateway.app:create_app", factory=True, workers=args.workers, **common)
    else:
        uvicorn.run(create_app(config), **common)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crowd-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the OpenAI-compatible gateway")
    p.add_argument("--config", help=f"YAML config (default: ${CONFIG_ENV})")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=serve)

    annotate.add_parser(sub)
    report.add_parser(sub)
    evaluate.add_parser(sub)
    tune.add_parser(sub)
    demo.add_parser(sub)
    pool.add_pool_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"crowd-gateway: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"crowd-gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
