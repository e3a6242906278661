"""The `crowd-gateway` command: serve the gateway, and the tools around it."""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import logging
import os
import signal
import sys
import tempfile
from importlib import metadata
from typing import Any

from gateway.config import CONFIG_ENV, Config, ConfigError, load_config
from gateway.server.gc_tuning import tune_for_serving
from gateway.tools import UsageError

SERVE = """Serve the OpenAI-compatible gateway: POST /v1/chat/completions and /v1/completions with `model` naming
an ensemble of the config (fanned out to its members, their votes aggregated into one label with a calibrated
confidence and its cost) or one member (proxied unchanged); GET /v1/models, /healthz, /readyz, /metrics; the
annotation, Files and Batches routes. Members, ensembles and tasks come from the YAML config (--config or
$CROWD_GATEWAY_CONFIG); keys from the variable `gateway.api_keys_env` names."""
TOOLS = {"annotate": "annotate", "report": "report", "review": "review", "eval": "evaluate", "tune": "tune",
         "demo": "demo", "pool": "pool"}
"""Each tool's command -> its module in gateway/tools, imported only when that command runs (or for the full help),
so `serve` loads no tool (and no tool's dependencies) and one tool does not load the others."""
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""uvicorn's levels; `info` (the default) shows the startup line, refits and warnings, not every request."""
log = logging.getLogger("crowd_gateway")


def version() -> str:
    try:
        return metadata.version("crowd-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the gateway's own loggers at the same level and format, so `serve` shows them;
    a gateway line logged while answering a request names its `x-request-id` (gateway/server/requestid.py)."""
    from uvicorn.config import LOG_LEVELS as LEVELS, LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["crowd"] = {**config["formatters"]["default"],
                                     "fmt": "%(levelprefix)s %(request_tag)s%(message)s"}
    config.setdefault("filters", {})["request_id"] = {"()": "gateway.server.requestid.RequestIdFilter"}
    config["handlers"]["crowd"] = {**config["handlers"]["default"], "formatter": "crowd", "filters": ["request_id"]}
    config["loggers"]["crowd_gateway"] = {"handlers": ["crowd"], "level": LEVELS[level], "propagate": False}
    return config


def log_startup(config: Config, args: argparse.Namespace) -> None:
    """One line that says what this gateway serves; a warning when any client may call it without a key."""
    keys = config.gateway.api_keys()
    env = config.gateway.api_keys_env
    auth = f"on ({len(keys)} keys in ${env})" if keys else f"off (${env} is empty)" if env else \
        "off (gateway.api_keys_env: null)"
    ensembles = ", ".join(f"{e.name} ({len(e.members)} members, {e.aggregator})" for e in config.ensembles)
    log.info("crowd-gateway %s on http://%s:%d, %d worker(s): ensembles %s; %d members; store %s; auth %s",
             version(), args.host, args.port, args.workers, ensembles or "none", len(config.members),
             config.store.backend, auth)
    if not keys and env:
        log.warning("auth is off: $%s is empty, so any client may call this gateway without a key", env)


def serve(args: argparse.Namespace) -> int:
    """Run the gateway under uvicorn; several workers share metrics through a multiprocess dir."""
    import logging.config

    import uvicorn

    from gateway.app import create_app
    from gateway.server.connections import DeadlineProtocol

    config = load_config(args.config)  # fail here, with the field named, before any worker starts
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    logging_config = log_config(args.log_level)
    logging.config.dictConfig(logging_config)
    log_startup(config, args)
    limits = config.gateway.connections
    http = functools.partial(DeadlineProtocol, header_timeout_s=limits.header_timeout_s,
                             body_timeout_s=limits.body_timeout_s)
    # requests in flight get half the shutdown timeout; the app's stop steps the other half (gateway/server/lifecycle.py)
    common = dict(host=args.host, port=args.port, log_level=args.log_level, log_config=logging_config,
                  access_log=args.access_log, loop="gateway.server.listener:GreedyLoop", http=http,
                  timeout_keep_alive=limits.keep_alive_s, timeout_graceful_shutdown=config.gateway.shutdown_timeout_s / 2)
    if args.workers > 1:
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="crowd-gateway-metrics-"))
        uvicorn.run("gateway.cli:worker_app", factory=True, workers=args.workers, **common)
    else:
        app = create_app(config)
        tune_for_serving()
        uvicorn.run(app, **common)
    return 0


def worker_app() -> Any:
    """The app of one of several `serve` workers (each its own process, with its own collector to set); a worker
    whose supervisor is gone (SIGKILLed) stops as if it had been sent SIGTERM, instead of serving on as an orphan."""
    from gateway.app import create_app
    from gateway.server.lifecycle import on_parent_exit

    app = create_app()
    tune_for_serving()
    on_parent_exit(lambda: os.kill(os.getpid(), signal.SIGTERM))
    return app


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; given the `command` about to run, only that tool's module is imported (any other,
    or none: every tool, for the full help and the error naming what exists)."""
    parser = argparse.ArgumentParser(prog="crowd-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the OpenAI-compatible gateway", description=SERVE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"YAML config (default: ${CONFIG_ENV})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log level (default: info)")
    p.add_argument("--access-log", action="store_true", help="log every request (at info level)")
    p.set_defaults(func=serve)

    wanted = [command] if command in TOOLS else [] if command == "serve" else list(TOOLS)
    for name in wanted:
        importlib.import_module(f"gateway.tools.{TOOLS[name]}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"crowd-gateway: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:  # a ModelError too: an engine or model file is missing, the message says what to run
        print(f"crowd-gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
