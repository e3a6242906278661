"""The one embedded gateway of the tools (eval, annotate, demo, the benchmarks).

The app is served by uvicorn in a thread of the calling process, on a free port: there is no second
process to leak when the tool is killed, and the thread's own event loop leaves the caller free to
call it from one `asyncio.run`, several, or plain blocking HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gateway.tools import UsageError

LOGGERS = ("uvicorn", "crowd_gateway")
"""What `serve` prints: uvicorn's lines and the gateway's own."""


def v1_url(url: str) -> str:
    """A gateway's URL as users type it, with or without `/v1`, as the openai client wants it."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


@contextlib.contextmanager
def gateway_v1(url: str | None, config: str | None, log: Path | None = None) -> Iterator[str]:
    """The /v1 URL of the gateway at `url`, or of one embedded from `config` for the time of the block."""
    if url:
        yield v1_url(url)
        return
    if not config:
        raise UsageError("give --gateway URL (a running gateway) or --config FILE (embed one)")
    with embedded_gateway(config, log) as v1:
        yield v1


@contextlib.contextmanager
def embedded_gateway(config: str | Path, log: Path | None = None) -> Iterator[str]:
    """Serve a gateway for the config file until the block exits; yields its /v1 URL.

    With `log`, the gateway's lines from INFO up are appended to that file; without, its warnings
    and errors reach stderr through Python's last-resort handler."""
    import uvicorn

    from gateway.app import create_app
    from gateway.config import load_config

    app = create_app(load_config(config))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10))
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported by the caller's thread, which waits on `started`
            failure.append(exc)

    with _logging_to(log):
        thread = threading.Thread(target=serve, name="embedded-gateway", daemon=True)
        thread.start()
        try:
            while not server.started:
                if not thread.is_alive():
                    reason = f": {failure[0]}" if failure else " (its startup failed; see the lines above)"
                    raise UsageError(f"the embedded gateway did not start{reason}")
                time.sleep(0.01)
            yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        finally:
            server.should_exit = True
            thread.join()
            sock.close()


@contextlib.contextmanager
def _logging_to(log: Path | None) -> Iterator[None]:
    """Append the gateway's log lines to `log` while the block runs; the loggers are restored after."""
    if log is None:
        yield
        return
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, (level, propagate) in zip(loggers, saved):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
        handler.close()
